"""AutoAttack (Croce & Hein, ICML 2020) through its authors' code, behind our :class:`Attack` contract.

The algorithms (APGD-CE, APGD-T, FAB-T, Square, APGD-DLR) come from the ``pyautoattack`` package
(PyPI 0.2.0, the reference implementation; a dependency of robustprune); this module only
adapts it: it picks the version, runs its attacks as a cascade on the points still robust (as
``run_standard_evaluation`` does), tallies the robust accuracy after each stage, and keeps the
package's side effects in: its log goes to a private logger (the self-check warnings are kept as
``flags``), its ``torch.manual_seed`` calls do not leak into the global RNG, and the trace function
its dynamic-defence check clears is restored.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.attacks.base import Attack, check_count, is_stochastic

__all__ = ["AutoAttack"]

_LOG = logging.getLogger(__name__)
VERSIONS = ("auto", "standard", "rand")
#: the stages of each version, in order (pyautoattack's ``_set_version``)
STAGES = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
#: fewest classes each version's losses are defined for (targeted DLR needs the 4th-largest logit)
MIN_CLASSES = {"standard": 4, "rand": 3}
PACKAGE = "pyautoattack"


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "not installed"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _contained(device: torch.device) -> Iterator[None]:
    """Restore the global RNG and the trace function that pyautoattack overwrites."""
    trace = sys.gettrace()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        sys.settrace(trace)


class AutoAttack(Attack):
    """AutoAttack, the parameter-free ensemble, for one batch: ``attack(model, x, y) -> x_adv``.

    ``version="standard"`` runs APGD-CE → APGD-T (9 target classes) → FAB-T (9 targets) → Square
    (5000 queries), each on the points the previous stages left robust; ``"rand"`` (for models
    that are random in eval mode) runs APGD-CE and APGD-DLR with EOT over 20 samples.
    ``"auto"`` (default) picks ``rand`` when :func:`robustprune.attacks.is_stochastic` says the
    model is random, else ``standard``. With fewer than 10 classes the number of target classes
    is lowered to ``classes - 1``. After each call, :meth:`breakdown` holds the robust accuracy
    after every stage, summed over all batches since construction (or :meth:`reset`), and the
    package's self-check warnings (randomised model, probability outputs, zero gradients,
    Square beating the gradient attacks...).

    Args:
        eps: radius in pixel units. norm: ``"linf"`` (default) or ``"l2"``.
        version: ``"auto"``, ``"standard"`` or ``"rand"``.
        seed: the package's attack seed (default 0; its RNG use is kept off the global RNG); an
            evaluation passes its own (``EvalConfig.seed``), so two seeds draw differently.
        n_iter: APGD/FAB iterations (default ``None``: the package's 100). For quick checks only;
            recorded in :meth:`params`.
        n_queries: Square queries (default ``None``: the package's 5000). Same caveat.
        eval_mode: attack the eval-mode model (default ``True``).

    Runs ``pyautoattack==0.2.0``, a dependency of robustprune.

    >>> attack = AutoAttack(eps=0.3)                 # MNIST L-inf
    >>> x_adv = attack(model, x, y)                  # doctest: +SKIP
    >>> attack.breakdown()["stages"]                 # doctest: +SKIP
    [{'name': 'apgd-ce', 'robust_acc': 89.1}, {'name': 'apgd-t', ...}, ...]
    """

    name = "autoattack"

    def __init__(self, *, eps: float, norm: str = "linf", version: str = "auto", seed: int = 0,
                 n_iter: int | None = None, n_queries: int | None = None, eval_mode: bool = True) -> None:
        super().__init__(eps=eps, norm=norm, eval_mode=eval_mode)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.version, self.seed = version, seed
        self.n_iter = None if n_iter is None else check_count("n_iter", n_iter)
        self.n_queries = None if n_queries is None else check_count("n_queries", n_queries)
        self.reset()

    def params(self) -> dict[str, Any]:
        eot = 1 if self.version == "standard" else 20  # "auto" uses EOT-20 exactly when the model is random
        return super().params() | {
            "version": self.version, "seed": self.seed, "eot": eot, "n_iter": self.n_iter or 100,
            "n_queries": self.n_queries or 5000, "package": f"{PACKAGE} {package_version()}",
        }

    def reset(self) -> None:
        """Forget the per-stage tallies and flags."""
        self._n = 0
        self._clean = 0
        self._robust: dict[str, int] = {}
        self._seconds: dict[str, float] = {}
        self._versions: set[str] = set()
        self._flags: list[str] = []

    def breakdown(self) -> dict[str, Any]:
        """Robust accuracy (%) after each stage (and its seconds) over every point attacked since :meth:`reset`."""
        pct = (lambda c: 100.0 * c / self._n) if self._n else (lambda c: 0.0)
        return {
            "versions": sorted(self._versions), "n": self._n, "clean_acc": pct(self._clean),
            "stages": [{"name": k, "robust_acc": pct(v), "wall_s": self._seconds[k]} for k, v in self._robust.items()],
            "flags": list(self._flags),
        }

    def tallies(self) -> dict[str, Any]:
        """The counts behind :meth:`breakdown` (points, clean, robust after each stage, seconds,
        versions, flags), JSON-ready: an evaluation shard keeps them, and :meth:`add_tallies` sums
        the shards' into the breakdown of the whole set (the counts exactly)."""
        return {"n": self._n, "clean": self._clean, "robust": dict(self._robust), "seconds": dict(self._seconds),
                "versions": sorted(self._versions), "flags": list(self._flags)}

    def add_tallies(self, tallies: dict[str, Any]) -> None:
        """Add the counts of :meth:`tallies` (another batch's, another shard's) to this attack's."""
        self._n += int(tallies["n"])
        self._clean += int(tallies["clean"])
        for stage, count in tallies["robust"].items():
            self._robust[stage] = self._robust.get(stage, 0) + int(count)
            self._seconds[stage] = self._seconds.get(stage, 0.0) + float(tallies["seconds"].get(stage, 0.0))
        self._versions.update(tallies["versions"])
        self._flags += [f for f in tallies["flags"] if f not in self._flags]

    # ---- one batch --------------------------------------------------------------------------------

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        version = self._resolve(model, x)
        collector = _Collect()
        with _contained(x.device):
            aa = self._build(model, x, y, version, collector)
            x_adv = self._cascade(aa, model, x, y, STAGES[version])
        self._versions.add(version)
        for rec in collector.records:
            msg = rec.getMessage()
            if rec.levelno >= logging.WARNING and msg not in self._flags:
                self._flags.append(msg)
            _LOG.debug("pyautoattack: %s", msg)
        return x_adv

    def _resolve(self, model: nn.Module, x: Tensor) -> str:
        if self.version != "auto":
            return self.version
        return "rand" if is_stochastic(model, x) else "standard"

    def _build(self, model: nn.Module, x: Tensor, y: Tensor, version: str, collector: _Collect) -> Any:
        """pyautoattack's ``AutoAttack`` for ``version``, logging into ``collector`` only."""
        from pyautoattack import AutoAttack as PackageAutoAttack
        from pyautoattack import checks

        for key in checks.funcs:  # its dynamic-defence check counts into a module-level dict, never reset
            checks.funcs[key] = 0
        with torch.no_grad():
            classes = int(model(x[:1]).shape[1])
        if classes < MIN_CLASSES[version]:
            raise ValueError(f"AutoAttack {version!r} needs a model with >= {MIN_CLASSES[version]} classes, "
                             f"got {classes}")
        aa = PackageAutoAttack(model, eps=self.eps, norm={"linf": "Linf", "l2": "L2"}[self.norm],
                               version=version, seed=self.seed, device=x.device)
        log = logging.Logger(f"{__name__}.package")  # unregistered: no global logging state changes
        log.addHandler(collector)
        aa.logger = aa.apgd.logger = aa.apgd_targeted.logger = log
        aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, classes - 1)
        aa.fab.n_target_classes = min(aa.fab.n_target_classes, classes - 1)
        if self.n_iter is not None:
            for apgd in (aa.apgd, aa.apgd_targeted):
                _set_apgd_iterations(apgd, self.n_iter)
            aa.fab.n_iter = self.n_iter
        if self.n_queries is not None:
            aa.square.n_queries = self.n_queries
        return aa

    def _cascade(self, aa: Any, model: nn.Module, x: Tensor, y: Tensor, stages: tuple[str, ...]) -> Tensor:
        """Run each stage through the package's own ``run_standard_evaluation`` on the points still
        robust; keep the first adversarial example found per point."""
        with torch.no_grad():
            robust = model(x).argmax(1) == y
        self._n += len(y)
        self._clean += int(robust.sum())
        x_adv = x.clone()
        for stage in stages:
            t0 = time.perf_counter()
            idx = robust.nonzero().squeeze(1)
            if idx.numel():
                aa.attacks_to_run = [stage]
                cand, _ = aa.run_standard_evaluation(x[idx], y[idx], batch_size=len(idx))
                cand = cand.to(x.dtype)
                with torch.no_grad():
                    fooled = model(cand).argmax(1) != y[idx]
                x_adv[idx[fooled]] = cand[fooled]
                robust[idx[fooled]] = False
            self._robust[stage] = self._robust.get(stage, 0) + int(robust.sum())
            self._seconds[stage] = self._seconds.get(stage, 0.0) + time.perf_counter() - t0
        return x_adv


def _set_apgd_iterations(apgd: Any, n_iter: int) -> None:
    """Change an APGD object's iterations and the checkpoint schedule derived from them (the same
    formulas as ``APGDAttack.__init__`` in pyautoattack 0.2.0)."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)
