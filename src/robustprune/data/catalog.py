"""What robustprune knows about each dataset, and where its files live."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

DATA_ENV = "ROBUSTPRUNE_DATA"


class DataError(RuntimeError):
    """A dataset could not be found or read; the message names the file or value at fault."""


@dataclass(frozen=True)
class DatasetInfo:
    """Fixed facts about one dataset.

    ``mean``/``std`` are per-channel statistics of the training images in [0, 1], meant for a
    Normalize layer *inside* a model (inputs stay in pixel space). ``default_eps`` is the L-inf
    budget in pixel units that the literature uses for this dataset.

    >>> dataset_info("mnist").default_eps
    0.3
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: float


# Statistics: MNIST and Fashion-MNIST recomputed from the training IDX files; CIFAR from the
# training batches (the often-quoted CIFAR-10 std (0.2023, 0.1994, 0.2010) is a per-image average,
# not the per-channel pixel std used here).
_INFOS = MappingProxyType(
    {
        "mnist": DatasetInfo("mnist", 10, 1, 28, 60000, 10000, (0.1307,), (0.3081,), 0.3),
        "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, 60000, 10000, (0.2860,), (0.3530,), 0.1),
        "cifar10": DatasetInfo(
            "cifar10", 10, 3, 32, 50000, 10000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 8 / 255
        ),
        "cifar100": DatasetInfo(
            "cifar100", 100, 3, 32, 50000, 10000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 8 / 255
        ),
    }
)


def dataset_names() -> list[str]:
    """The names ``dataset_info`` and ``load_split`` accept."""
    return list(_INFOS)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return _INFOS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_INFOS)}") from None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$ROBUSTPRUNE_DATA``, else the user cache.

    The cache is ``$XDG_CACHE_HOME/robustprune`` or ``~/.cache/robustprune``. Nothing is created.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "robustprune"
