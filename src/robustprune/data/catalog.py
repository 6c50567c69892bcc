"""What robustprune knows about each dataset, and where its files live."""

from __future__ import annotations

import dataclasses
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
    #: two-class subset ``(a, b)`` of a base dataset (name ``mnist-1v7``): a -> label 0, b -> 1
    pair: tuple[int, int] | None = None


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
    """The :class:`DatasetInfo` of ``name``; an unknown name raises ``ValueError`` listing the known ones.

    ``<base>-<a>v<b>`` (e.g. ``mnist-1v7``) is the two-class subset of classes a and b of a base
    dataset (Guo et al.'s binary linear models): ``name`` stays the base's (files, attack
    defaults), ``num_classes`` is 2, ``pair`` is (a, b); the sizes are the base's (upper bounds).
    """
    base, sep, tail = str(name).rpartition("-")
    if sep and base in _INFOS and "v" in tail:
        a, _, b = tail.partition("v")
        info = _INFOS[base]
        if not (a.isdigit() and b.isdigit() and int(a) != int(b) and max(int(a), int(b)) < info.num_classes):
            raise ValueError(f"bad class pair in dataset {name!r}: expected <base>-<a>v<b> with two different "
                             f"classes below {info.num_classes}")
        return dataclasses.replace(info, num_classes=2, pair=(int(a), int(b)))
    try:
        return _INFOS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_INFOS)} "
                         "(or a pair such as mnist-1v7)") from None


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
