"""``robustprune audit``: an attack ladder plus automatic gradient-masking checks for one model.

"Robustness numbers are only as good as the attack." The audit runs, on the same test points,
FGSM → PGD-40 → PGD-100 with 5 restarts → EOT-PGD-40 (when the model is random in eval mode) →
AutoAttack (pyautoattack, a dependency; ``rand`` for random models; the evaluation seed) → transfer from a
source model (when given), plus a robust-accuracy-vs-ε sweep with FMN-L∞'s security curve beside
it (deterministic models), an unbounded (ε = 1) attack and an input-gradient census, and turns them
into the checks of :mod:`robustprune.eval.checks`. The
result is a JSON card (``audit.json``), a markdown report (``audit.md``) and the curve and
loss-surface plots beside them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustprune.attacks import EOTPGD, FGSM, PGD, Attack, TransferAttack, seeded_generator
from robustprune.attacks import autoattack as aa
from robustprune.config import EvalConfig, job_config, to_dict
from robustprune.data import TensorLoader
from robustprune.eval import checks as C
from robustprune.eval.card import with_defense
from robustprune.eval.context import EvalContext
from robustprune.eval.evaluate import evaluate
from robustprune.jobs.curve import (
    FMN_STEPS,
    FMN_TARGETS,
    check_eps_list,
    default_sweep,
    fmn_attack,
    robust_curve,
    with_security,
)
from robustprune.jobs.surface import surface_of, write_surface
from robustprune.reports.audit_plots import plot_curve
from robustprune.reports.audit_report import render_audit_markdown
from robustprune.train import load_run
from robustprune.utils import atomic_write_json, atomic_write_text, keeps_global_rng, provenance

AUTOATTACK_MODES = ("yes", "no")


@dataclass
class Rung:
    """One attack of the ladder; ``kind`` is single, multi, eot, autoattack or transfer."""

    name: str
    kind: str
    attack: Attack


def build_ladder(*, eps: float, step_size: float, stochastic: bool, source: nn.Module | None = None,
                 autoattack: bool = True, aa_options: dict[str, Any] | None = None,
                 generator: torch.Generator | None = None, seed: int = 0) -> list[Rung]:
    """The attack ladder at ``eps`` (L∞); PGD uses ``step_size`` and random starts, drawn from
    ``generator`` (``None``: the global RNG). AutoAttack draws from its own generators, seeded with
    ``seed`` (the audit's) unless ``aa_options`` name one."""
    gen = generator
    rungs = [
        Rung("fgsm", "single", FGSM(eps=eps, generator=gen)),
        Rung("pgd-40", "multi", PGD(eps=eps, steps=40, step_size=step_size, generator=gen)),
        Rung("pgd-100x5", "multi", PGD(eps=eps, steps=100, step_size=step_size, restarts=5, generator=gen)),
    ]
    if stochastic:
        rungs.append(Rung("eot-pgd-40", "eot", EOTPGD(eps=eps, steps=40, step_size=step_size, eot=10,
                                                      generator=gen)))
    if autoattack:
        rungs.append(Rung("autoattack", "autoattack", aa.AutoAttack(eps=eps, version="auto",
                                                                       **({"seed": seed} | (aa_options or {})))))
    if source is not None:
        inner = PGD(eps=eps, steps=40, step_size=step_size, generator=gen)
        rungs.append(Rung("transfer-pgd-40", "transfer", TransferAttack(source=source, attack=inner)))
    return rungs


def run_rung(model: nn.Module, loader: TensorLoader, rung: Rung, *, passes: int, seed: int,
             progress: bool, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Evaluate one rung, its attack's random stream started at ``seed``: ``generator`` (the one
    the ladder was built with), or the global RNG when ``None``. evaluate()'s own sanity warnings
    are kept in the entry, not printed."""
    if generator is not None:
        generator.manual_seed(seed)
    else:  # a model random at test time (SAP, sampled BNN) draws from the global RNG, and so do its
        torch.manual_seed(seed)  # attacks, as they always did: its numbers stay the same
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate(model, loader, [(rung.name, rung.attack)], vulnerability=False, passes=passes,
                       progress=progress)
    entry = {"name": rung.name, "kind": rung.kind, "params": rung.attack.params(), "clean_acc": res.clean_acc,
             "robust_acc": res.attacks[0].summary()["robust_acc"], "n": res.total,
             "wall_s": time.perf_counter() - t0, "warnings": sorted({str(w.message) for w in caught})}
    if rung.kind == "autoattack":
        entry["breakdown"] = rung.attack.breakdown()  # type: ignore[attr-defined]
    return entry


def _autoattack_mode(mode: str) -> tuple[bool, str]:
    """(run AutoAttack?, why not) for ``"yes"``/``"no"``."""
    if mode not in AUTOATTACK_MODES:
        raise ValueError(f"autoattack must be one of {AUTOATTACK_MODES}, got {mode!r}")
    if mode == "no":
        return False, "AutoAttack disabled (--autoattack no)"
    return True, ""


@dataclass(frozen=True)
class AuditConfig:
    """What an audit runs: the evaluation settings it uses (``eval``: ε, step size, test points,
    batch size, passes, seed, test-time defense; by default the first 1,000 test points) and its own.

    Args:
        eps_sweep: ε values of the curve (default :func:`~robustprune.jobs.curve.default_sweep`).
        autoattack: ``"yes"`` (default) or ``"no"``.
        aa_options: ``n_iter``/``n_queries`` (or ``seed``) for a quick AutoAttack (recorded in the card).
        fmn, fmn_steps, fmn_targets: FMN-L∞'s security curve at the sweep's ε (card ``security``,
            :func:`~robustprune.jobs.curve.with_security`); skipped for random models.
        surface: also draw the loss surface (``audit_run``).
    """

    eval: EvalConfig = field(default_factory=lambda: EvalConfig(limit=1000))
    eps_sweep: tuple[float, ...] | None = None
    autoattack: str = "yes"
    aa_options: dict[str, Any] | None = None
    fmn: bool = True
    fmn_steps: int = FMN_STEPS
    fmn_targets: int | None = FMN_TARGETS
    surface: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.eps_sweep, list):
            object.__setattr__(self, "eps_sweep", tuple(self.eps_sweep))

    def validate(self) -> None:
        """``ValueError`` naming the first bad value (before anything runs)."""
        self.eval.validate()
        if self.eps_sweep is not None:
            check_eps_list(list(self.eps_sweep))
        _autoattack_mode(self.autoattack)
        if self.fmn:  # bad FMN settings fail before the ladder runs
            fmn_attack(steps=self.fmn_steps, targets=self.fmn_targets)


@keeps_global_rng
def audit(model: nn.Module, images: Tensor, labels: Tensor, config: AuditConfig | None = None, *,
          source: nn.Module | None = None, device: torch.device | str = "cpu", progress: bool = True,
          **settings: Any) -> dict[str, Any]:
    """Audit ``model`` on ``images``/``labels`` (uint8 or [0, 1] floats): ladder, sweep, checks.

    ``config`` (:class:`AuditConfig`) with ``settings`` replacing its fields or its ``eval``'s
    (``audit(model, x, y, eps=0.3, step_size=0.01, autoattack="no")``): ``eps`` and ``step_size``
    (the threat model's L∞ radius and the ladder's PGD step) must be given; ``passes`` is the
    forward passes averaged for models random in eval mode. ``source``: model the transfer attack
    is crafted on (skipped when ``None``).

    Returns the audit card: ``ladder``, ``curve``, ``security``, ``unbounded``, ``gradients``, ``determinism``,
    ``checks`` (each pass/warn/skip with evidence) and ``verdict``.

    >>> card = audit(model, x, y, eps=0.3, step_size=0.01)          # doctest: +SKIP
    >>> [(c["name"], c["status"]) for c in card["checks"]]          # doctest: +SKIP
    """
    cfg = job_config(config or AuditConfig(), **settings)
    ev = cfg.eval
    if ev.eps is None or ev.step_size is None:
        raise ValueError(f"audit needs eps and step_size (pixel units), got eps={ev.eps!r}, step_size={ev.step_size!r}")
    eps, step_size, batch_size, passes, seed = ev.eps, ev.step_size, ev.batch_size, ev.passes, ev.seed
    fmn, fmn_steps, fmn_targets = cfg.fmn, cfg.fmn_steps, cfg.fmn_targets
    sweep = check_eps_list(default_sweep(eps) if cfg.eps_sweep is None else list(cfg.eps_sweep))
    run_aa, aa_reason = _autoattack_mode(cfg.autoattack)
    loader = TensorLoader(images, labels, batch_size=batch_size, device=device)
    x0, _ = next(iter(loader))
    det = C.determinism_stats(model, x0)
    t0 = time.perf_counter()
    gen = None if det["stochastic"] else seeded_generator(seed, x0.device)
    rungs = build_ladder(eps=eps, step_size=step_size, stochastic=det["stochastic"], source=source,
                         autoattack=run_aa, aa_options=cfg.aa_options, generator=gen, seed=seed)
    bar = tqdm(rungs, desc="audit", disable=not progress, dynamic_ncols=True)
    ladder = []
    for rung in bar:
        bar.set_postfix_str(rung.name)
        ladder.append(run_rung(model, loader, rung, passes=passes, seed=seed, progress=progress, generator=gen))
    eot = 10 if det["stochastic"] else 1
    curve = robust_curve(model, loader, sweep, steps=40, eot=eot, passes=passes, seed=seed, progress=progress)
    security = with_security(curve, model, loader, fmn=fmn, steps=fmn_steps, targets=fmn_targets,
                             progress=progress)["security"]
    unbounded = robust_curve(model, loader, [1.0], steps=100, eot=eot, passes=passes, seed=seed, progress=False)
    grads = C.gradient_stats(model, loader)
    card = {
        "kind": "audit", "n": ladder[0]["n"], "eps": eps, "step_size": step_size, "norm": "linf", "seed": seed,
        "clean_acc": ladder[0]["clean_acc"], "stochastic": det["stochastic"], "determinism": det,
        "ladder": ladder, "curve": curve, "security": security, "unbounded": unbounded, "gradients": grads,
    }
    checks = run_checks(card, autoattack_reason=aa_reason)
    warned = [c.name for c in checks if c.status == "warn"]
    card["checks"] = [c.to_dict() for c in checks]
    card["verdict"] = "warn" if warned else "pass"
    card["warned"] = warned
    card["wall_s"] = time.perf_counter() - t0
    return card


def run_checks(card: dict[str, Any], *, autoattack_reason: str = "") -> list[C.Check]:
    """The checks of :mod:`~robustprune.eval.checks` on a card's measurements."""
    by = {e["name"]: e for e in card["ladder"]}
    acc = {name: e["robust_acc"] for name, e in by.items()}
    tol = C.tolerance(card["n"])
    ref = "eot-pgd-40" if "eot-pgd-40" in by else "pgd-40"
    multi = [n for n, e in by.items() if e["kind"] in ("multi", "eot")]
    strongest = min(reversed(multi), key=lambda n: acc[n])  # ties: the later (stronger) rung
    white = [n for n, e in by.items() if e["kind"] != "transfer"]
    best_white = min(white, key=lambda n: acc[n])
    transfer = next(((n, acc[n]) for n, e in by.items() if e["kind"] == "transfer"), None)
    eot = [n for n, e in by.items() if e["kind"] == "eot"]
    aa = by.get("autoattack")
    if aa is not None:
        aa = dict(aa["breakdown"], robust_acc=aa["robust_acc"])
        if "rand" in aa["versions"]:
            eot.append("autoattack (rand, EOT-20)")
    points = card["curve"]["points"]
    unb = card["unbounded"]
    return [
        C.check_determinism(card["determinism"], eot_attacks=eot),
        C.check_gradients(card["gradients"]),
        C.check_single_vs_eot(("pgd-40", acc["pgd-40"]) if "pgd-40" in acc else None,
                              ("eot-pgd-40", acc["eot-pgd-40"]) if "eot-pgd-40" in acc else None,
                              stochastic=card["stochastic"], tol=tol),
        C.check_monotone([p["eps"] for p in points], [p["robust_acc"] for p in points], tol=tol),
        C.check_unbounded(unb["points"][0]["robust_acc"], n=card["n"],
                          attack=f"PGD-100 at eps=1, step 0.025, random start, EOT-{unb['attack']['eot']}"),
        C.check_multistep(("fgsm", acc["fgsm"]), (ref, acc[ref]), tol=tol),
        C.check_blackbox((best_white, acc[best_white]), transfer, tol=tol),
        C.check_autoattack(aa, (ref, acc[ref]), (strongest, acc[strongest]), tol=tol, reason=autoattack_reason),
    ]


def audit_run(run_dir: str | Path, config: AuditConfig | None = None, *, out: str | Path,
              source: str | Path | None = None, data_dir: str | None = None, device: str = "auto",
              progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Audit run ``run_dir`` on its first ``limit`` test points; write into ``out``: ``audit.json``,
    ``audit.md``, ``curve.json``/``curve.png`` and (``surface``) ``surface.json``/``surface.png``.

    ``config`` (:class:`AuditConfig`; by default the first 1,000 test points) with ``settings``
    replacing its fields or its ``eval``'s: ``eps``/``step_size`` (default: the dataset's, MNIST
    0.3 / 0.01, CIFAR 8/255 / 2/255), ``limit``, ``batch_size``, ``passes``, ``seed`` and
    ``defense`` (a test-time defense as data, e.g. ``"sap:pct=100"``), which audits the model as
    ``robustprune eval`` would wrap it: random at test time, so the EOT rung runs and the card
    records the defense. The ladder's attacks are the audit's own. The run, its test points and
    the defense come from one :class:`~robustprune.eval.context.EvalContext`.

    >>> audit_run("runs/at", out="runs/at/audit", limit=1000, source="runs/at-seed1")   # doctest: +SKIP
    """
    base = config or AuditConfig()
    cfg = job_config(base, **with_defense({"defense": base.eval.defense, **settings}))
    ev = cfg.eval
    ctx = EvalContext.open(run_dir, limit=ev.limit, defense=ev.defense, seed=ev.seed, data_dir=data_dir,
                           device=device)
    eps, step_size = ctx.info.eps(ev.eps), ctx.info.step(ev.step_size)
    src = load_run(source, device=ctx.device).model if source is not None else None
    card = audit(ctx.model, ctx.images, ctx.labels, cfg, eps=eps, step_size=step_size, source=src,
                 device=ctx.device, progress=progress)
    run = ctx.run
    meta = {**ctx.describe(), "source": None if source is None else str(source), "limit": ev.limit, **ctx.fields}
    card = {**meta, "train_seed": run.cfg.seed, **card, "config": to_dict(run.cfg), **provenance(ctx.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    seed, model, images, labels, surface = ev.seed, ctx.model, ctx.images, ctx.labels, cfg.surface
    out = Path(out)
    curve = {**meta, **card["curve"], "security": card["security"], "default_eps": eps, "marks": [
        {"label": e["name"], "eps": eps, "robust_acc": e["robust_acc"]} for e in card["ladder"]]}
    atomic_write_json(out / "curve.json", curve)
    plot_curve(curve, out / "curve.png")
    if surface:
        card["surface_wall_s"] = -time.perf_counter()
        write_surface({**meta, **surface_of(model, images, labels, points=4, eps=eps, seed=seed)}, out)
        card["surface_wall_s"] += time.perf_counter()
    atomic_write_json(out / "audit.json", card)
    atomic_write_text(out / "audit.md", render_audit_markdown(card, surface=surface))
    return card
