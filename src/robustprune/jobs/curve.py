"""``robustprune curve``: robust accuracy as a function of ε, the standard picture that nothing is masked.

For an honestly evaluated model the curve starts at the clean accuracy, falls monotonically and
reaches ~0 % well before ε = 1 (Carlini et al. 2019, "On evaluating adversarial robustness"). Each
point is PGD with random start and the step size scaled with ε (``2.5·ε/steps``, Madry et al.'s
heuristic), with EOT for models that are random in eval mode.

Beside it, for deterministic models, the **security curve** of a minimum-norm attack (FMN-L∞,
:class:`~robustprune.attacks.fmn.FMN`): one run gives every point's minimal distance ``d_i``, and
``robust_acc(ε)`` = % of points correctly classified with ``d_i > ε`` — the whole curve from one
attack, exact at every ε, not only on the PGD grid (Pintor et al. 2021; the "security evaluation
curve" of Biggio & Roli 2018). The two should agree; an FMN curve well above PGD means FMN
under-converged, well below means PGD did. :func:`fmn_distances_run` returns the per-example
distances of a run for other consumers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from robustprune.attacks import PGD, is_stochastic, seeded_generator
from robustprune.attacks.fmn import FMN, FMN_STEPS, FMN_TARGETS
from robustprune.attacks.minnorm import check_norm
from robustprune.config import EvalConfig, eval_config, job_config
from robustprune.data import TensorLoader, check_eps
from robustprune.eval.context import EvalContext
from robustprune.eval.evaluate import evaluate
from robustprune.metrics.minnorm import minimal_distances, security_points
from robustprune.reports.audit_plots import plot_curve
from robustprune.utils import atomic_write_json, keeps_global_rng, provenance

#: default sweep, as multiples of the dataset's ε (capped at 1)
SWEEP_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def default_sweep(eps: float) -> list[float]:
    """``[0, ε/4, ε/2, 3ε/4, ε, 1.5ε, 2ε]`` capped at 1 (duplicates dropped)."""
    return sorted({min(1.0, round(f * eps, 6)) for f in SWEEP_FACTORS})


def check_eps_list(eps_list: list[float], *, norm: str = "linf") -> list[float]:
    """``ValueError`` naming the bad value unless every radius passes :func:`~robustprune.data.check_eps`
    for ``norm`` (L∞: in [0, 1]; L2/L1 radii may exceed 1)."""
    if not eps_list:
        raise ValueError("eps list is empty")
    return [check_eps(e, what="every eps", norm=norm) for e in eps_list]


def sweep_attack(eps: float, *, steps: int = 40, eot: int = 1, restarts: int = 1,
                 generator: torch.Generator | None = None) -> PGD:
    """PGD at ``eps`` with step ``2.5·eps/steps`` (random start from ``generator``; EOT when ``eot > 1``)."""
    return PGD(eps=eps, steps=steps, step_size=2.5 * eps / steps, eot=eot, restarts=restarts, generator=generator)


def robust_curve(model: nn.Module, loader: TensorLoader, eps_list: list[float], *, steps: int = 40,
                 eot: int | None = None, passes: int = 10, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Robust accuracy (%) of ``model`` at each ε of ``eps_list`` (L∞ PGD, see module doc).

    ``eot=None`` uses 10 gradient samples when the model is random in eval mode, else 1. Every
    point's random starts come from a generator seeded with ``seed``; for a model random at test
    time, from the global RNG seeded with ``seed`` (wrap the call in ``keeps_global_rng``).

    >>> robust_curve(model, loader, [0, 0.1, 0.2, 0.3])["points"]     # doctest: +SKIP
    [{'eps': 0.0, 'robust_acc': 99.1, ...}, ...]
    """
    eps_list = check_eps_list(eps_list)
    x0, _ = next(iter(loader))
    stochastic = is_stochastic(model, x0)
    if eot is None:
        eot = 10 if stochastic else 1
    gen = None if stochastic else seeded_generator(seed, x0.device)
    points = []
    for eps in tqdm(eps_list, desc="eps sweep", disable=not progress, leave=False, dynamic_ncols=True):
        if gen is not None:
            gen.manual_seed(seed)
        else:  # a model random at test time (SAP, sampled BNN) draws from the global RNG, and so does
            torch.manual_seed(seed)  # the attack, as it always did: its numbers stay the same
        t0 = time.perf_counter()
        pgd = sweep_attack(eps, steps=steps, eot=eot, generator=gen)
        res = evaluate(model, loader, [("pgd", pgd)], vulnerability=False, passes=passes, progress=False)
        points.append({"eps": eps, "robust_acc": res.attacks[0].summary()["robust_acc"],
                       "wall_s": time.perf_counter() - t0})
        clean = res.clean_acc
    attack = {"name": "pgd", "norm": "linf", "steps": steps, "step_size": "2.5*eps/steps", "eot": eot,
              "restarts": 1, "random_start": True}
    return {"kind": "curve", "n": res.total, "clean_acc": clean, "stochastic": res.stochastic, "attack": attack,
            "points": points}


def fmn_attack(*, norm: str = "linf", steps: int = FMN_STEPS, targets: int | None = FMN_TARGETS) -> FMN:
    """The FMN of the security curves: ``steps`` iterations, ``targets`` class-directed passes."""
    return FMN(norm=norm, steps=steps, targets=targets)


def security_curve(model: nn.Module, loader: TensorLoader, eps_list: list[float], *, norm: str = "linf",
                   steps: int = FMN_STEPS, targets: int | None = FMN_TARGETS,
                   progress: bool = True) -> dict[str, Any]:
    """FMN's per-example minimal distances on ``loader`` and the security curve at ``eps_list``.

    Returns :func:`~robustprune.metrics.minnorm.minimal_distances`'s fields (``distances``,
    ``correct``, ``n_failed``, ``median``, ...) plus ``kind`` ``"security"``, ``points``
    (``[{"eps", "robust_acc"}]``) and ``wall_s``. The model must be deterministic in eval mode.

    >>> security_curve(model, loader, [0, 0.1, 0.2, 0.3])["points"]      # doctest: +SKIP
    """
    eps_list = check_eps_list(eps_list, norm=norm)
    x0, _ = next(iter(loader))
    if is_stochastic(model, x0):
        raise ValueError("the security curve needs a model that is deterministic in eval mode; a minimum-norm "
                         "distance of a random model is not defined")
    t0 = time.perf_counter()
    d = minimal_distances(model, loader, fmn_attack(norm=norm, steps=steps, targets=targets), progress=progress)
    return {"kind": "security", **d, "points": security_points(d["distances"], d["correct"], eps_list),
            "wall_s": time.perf_counter() - t0}


def with_security(curve: dict[str, Any], model: nn.Module, loader: TensorLoader, *, fmn: bool, steps: int,
                  targets: int | None, progress: bool) -> dict[str, Any]:
    """``curve`` plus ``security``: FMN-L∞'s security curve at the curve's ε values, or
    ``{"skipped": why}`` (``fmn=False``, or a model random in eval mode)."""
    if not fmn:
        return curve | {"security": {"skipped": "FMN disabled (--no-fmn)"}}
    if curve["stochastic"]:
        return curve | {"security": {"skipped": "the model is random in eval mode: no minimal distance"}}
    eps = [p["eps"] for p in curve["points"]]
    return curve | {"security": security_curve(model, loader, eps, steps=steps, targets=targets, progress=progress)}


@dataclass(frozen=True)
class CurveConfig:
    """What ``robustprune curve`` measures: the evaluation settings it uses (``eval``: ``steps``,
    ``eot``, ``limit``, ``batch_size``, ``passes``, ``seed``), the sweep's ε values (``eps_list``,
    default :func:`default_sweep` of the dataset's ε; each point's step is ``2.5·ε/steps``) and
    FMN-L∞'s security curve beside it (``fmn``; ``fmn_steps`` iterations, ``fmn_targets``
    class-directed passes)."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    eps_list: tuple[float, ...] | None = None
    fmn: bool = True
    fmn_steps: int = FMN_STEPS
    fmn_targets: int | None = FMN_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.eps_list, list):
            object.__setattr__(self, "eps_list", tuple(self.eps_list))

    def validate(self) -> None:
        """``ValueError`` naming the first bad value (before anything runs)."""
        self.eval.validate()
        if self.eps_list is not None:
            check_eps_list(list(self.eps_list))
        if self.fmn:  # bad FMN settings fail before the sweep runs
            fmn_attack(steps=self.fmn_steps, targets=self.fmn_targets)


@keeps_global_rng
def curve_run(run_dir: str | Path, config: CurveConfig | None = None, *, out: str | Path,
              data_dir: str | None = None, device: str = "auto", progress: bool = True,
              **settings: Any) -> dict[str, Any]:
    """Sweep ε for run ``run_dir``; write ``curve.json`` and ``curve.png`` into ``out``.

    ``config`` (:class:`CurveConfig`) with ``settings`` replacing its fields or its ``eval``'s. With
    ``fmn`` (default) the card's ``security`` holds FMN-L∞'s per-example distances and its security
    curve at the same ε (:func:`security_curve`), drawn in the same plot.

    >>> curve_run("runs/at", out="runs/at/curve", eps_list=[0, 0.1, 0.2, 0.3, 0.4])   # doctest: +SKIP
    """
    cfg = job_config(config or CurveConfig(), **settings)
    ev = cfg.eval
    ctx = EvalContext.open(run_dir, limit=ev.limit, seed=ev.seed, data_dir=data_dir, device=device)
    info = ctx.info
    eps_list = default_sweep(info.default_eps) if cfg.eps_list is None else list(cfg.eps_list)
    loader = ctx.loader(ev.batch_size)
    t0 = time.perf_counter()
    curve = robust_curve(ctx.model, loader, eps_list, steps=ev.steps, eot=ev.eot, passes=ev.passes, seed=ev.seed,
                         progress=progress)
    curve = with_security(curve, ctx.model, loader, fmn=cfg.fmn, steps=cfg.fmn_steps, targets=cfg.fmn_targets,
                          progress=progress)
    curve |= {**ctx.describe(), "default_eps": info.default_eps, "seed": ev.seed, **provenance(ctx.device),
              "wall_s": time.perf_counter() - t0}
    out = Path(out)
    atomic_write_json(out / "curve.json", curve)
    plot_curve(curve, out / "curve.png")
    return curve


def fmn_distances_run(run_dir: str | Path, config: EvalConfig | None = None, *, norm: str = "linf",
                      steps: int = FMN_STEPS, targets: int | None = FMN_TARGETS, data_dir: str | None = None,
                      device: str = "auto", progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Per-example FMN minimal distances of run ``run_dir`` on its first ``limit`` test points.

    ``config``/``settings`` give ``limit`` and ``batch_size``. Returns
    :func:`~robustprune.metrics.minnorm.minimal_distances`'s dict (``distances`` in ``norm``, one
    per test point in order, 0 for misclassified points, ``None`` where FMN found no adversarial
    example; ``correct``; ``attack``; ``n_failed``; ``median``) plus ``labels`` and the run's
    ``run``/``method``/``model``/``dataset`` and provenance. Nothing is written. The run's model must
    be deterministic in eval mode.

    >>> d = fmn_distances_run("runs/at", limit=1000, norm="l2")          # doctest: +SKIP
    >>> d["distances"][:3], d["correct"][:3]                               # doctest: +SKIP
    """
    cfg = eval_config(config, **settings)
    check_norm(norm)
    ctx = EvalContext.open(run_dir, limit=cfg.limit, data_dir=data_dir, device=device)
    run, labels, dev = ctx.run, ctx.labels, ctx.device
    loader = ctx.loader(cfg.batch_size)
    x0, _ = next(iter(loader))
    if is_stochastic(run.model, x0):
        raise ValueError(f"run {str(run_dir)!r}: its model is random in eval mode; minimal distances need a "
                         "deterministic model")
    t0 = time.perf_counter()
    d = minimal_distances(run.model, loader, fmn_attack(norm=norm, steps=steps, targets=targets), progress=progress)
    return {**ctx.describe(), **d, "labels": labels.tolist(), **provenance(dev), "wall_s": time.perf_counter() - t0}
