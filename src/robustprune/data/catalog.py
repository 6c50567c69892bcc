"""What robustprune knows about each dataset, and where its files live."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from robustprune.utils import UserError

DATA_ENV = "ROBUSTPRUNE_DATA"


class DataError(UserError, RuntimeError):
    """A dataset could not be found or read; the message names the file or value at fault."""


def check_eps(eps: float, *, what: str = "eps", norm: str = "linf") -> float:
    """The one rule for a threat-model radius; ``ValueError`` naming the value otherwise.

    An L∞ radius (``norm="linf"``, the default) is a finite number in [0, 1] (pixel units); an L2 or
    L1 radius (``"l2"``, ``"l1"``) a finite number >= 0 (it may exceed 1)."""
    ok = not isinstance(eps, bool) and isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0
    if norm == "linf":
        if not (ok and eps <= 1):
            raise ValueError(f"{what} must be a number in [0, 1] (pixel units), got {eps!r}")
    elif norm in ("l2", "l1"):
        if not ok:
            raise ValueError(f"{what} must be a finite number >= 0 (an {norm} radius in pixel units), got {eps!r}")
    else:
        raise ValueError(f"norm must be linf, l2 or l1, got {norm!r}")
    return float(eps)


@dataclass(frozen=True)
class DatasetInfo:
    """Fixed facts about one dataset, its threat model included.

    ``mean``/``std`` are per-channel statistics of the training images in [0, 1], meant for a
    Normalize layer *inside* a model (inputs stay in pixel space). The threat model: ``default_eps``
    is the L∞ budget in pixel units that the literature uses for this dataset, ``eval_step`` the
    evaluation PGD's step size, ``train_steps``/``train_step_size`` the training PGD's, and
    ``paper_beta_lambda`` ANP-VS's (β, λ) on this dataset (its README), ``None`` where it has none.

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
    eval_step: float
    train_steps: int
    train_step_size: float
    paper_beta_lambda: tuple[float, float] | None = None
    #: two-class subset ``(a, b)`` of a base dataset (name ``mnist-1v7``): a -> label 0, b -> 1
    pair: tuple[int, int] | None = None

    def eps(self, eps: float | None = None) -> float:
        """``eps`` checked by :func:`check_eps`, or this dataset's ``default_eps`` when ``None``."""
        return self.default_eps if eps is None else check_eps(eps)

    def step(self, step_size: float | None = None) -> float:
        """The evaluation PGD step: ``step_size`` (must be > 0), or ``eval_step`` when ``None``."""
        if step_size is None:
            return self.eval_step
        if isinstance(step_size, bool) or not isinstance(step_size, int | float) or not step_size > 0:
            raise ValueError(f"step_size must be a number > 0, got {step_size!r}")
        return float(step_size)

    def train_attack(self, *, eps: float | None = None, steps: int | None = None,
                     step_size: float | None = None) -> tuple[float, int, float]:
        """The training PGD's (ε, steps, step size): the given values, this dataset's where ``None``."""
        return (self.eps(eps), self.train_steps if steps is None else steps,
                self.train_step_size if step_size is None else step_size)

    def anpvs_beta_lambda(self, *, beta: float | None = None, lam: float | None = None) -> tuple[float, float]:
        """ANP-VS's (β, λ): the given values, the paper's for this dataset where ``None``; a
        dataset without paper values needs both given (``ValueError`` otherwise)."""
        if (beta is None or lam is None) and self.paper_beta_lambda is None:
            raise ValueError(f"the ANP-VS paper has no beta/lambda for dataset {self.name!r}: pass method_args "
                             "beta and lam")
        paper = self.paper_beta_lambda or (0.0, 0.0)
        return (paper[0] if beta is None else beta, paper[1] if lam is None else lam)


# Statistics: MNIST and Fashion-MNIST recomputed from the training IDX files; CIFAR from the
# training batches (the often-quoted CIFAR-10 std (0.2023, 0.1994, 0.2010) is a per-image average,
# not the per-channel pixel std used here).
# Threat model: ε and the evaluation step of the literature (MNIST 0.3 / 0.01, CIFAR 8/255 / 2/255);
# training PGD-20 of 0.01 on MNIST-like data, PGD-10 of 2/255 on CIFAR; (β, λ) from ANP-VS's README.
_INFOS = MappingProxyType(
    {
        "mnist": DatasetInfo("mnist", 10, 1, 28, 60000, 10000, (0.1307,), (0.3081,), 0.3, eval_step=0.01,
                             train_steps=20, train_step_size=0.01, paper_beta_lambda=(4.0, 1e-3)),
        "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, 60000, 10000, (0.2860,), (0.3530,), 0.1,
                                     eval_step=0.01, train_steps=20, train_step_size=0.01,
                                     paper_beta_lambda=(4.0, 1e-3)),
        "cifar10": DatasetInfo(
            "cifar10", 10, 3, 32, 50000, 10000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 8 / 255,
            eval_step=2 / 255, train_steps=10, train_step_size=2 / 255, paper_beta_lambda=(2.0, 1e-4),
        ),
        "cifar100": DatasetInfo(
            "cifar100", 100, 3, 32, 50000, 10000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 8 / 255,
            eval_step=2 / 255, train_steps=10, train_step_size=2 / 255, paper_beta_lambda=(1.0, 0.1),
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
