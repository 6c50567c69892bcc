"""The sparsity-robustness study of Guo et al. (NeurIPS 2018): robustness against weight sparsity.

``sweep_sparsity(run, rounds=M)`` starts from a trained run and, for each round t = 1..M, trains
one ``magnitude`` run (``OUT/round-XX``, initialised from round t − 1) that removes ρ of every
layer's remaining weights and retrains for ``epochs_per_round`` epochs; then it measures, for the
dense start and every round: clean accuracy, FGSM and R+FGSM accuracy at ε (Guo's r∞), the mean
L2 norms of minimal DeepFool and C&W-L2 perturbations on correctly classified points (r₂),
weight sparsity and the zero fraction of the activations feeding the last layer. It writes
``OUT/sweep.json`` and ``OUT/sweep.png`` (each metric against sparsity, peaks marked).

Each round also trains for ``epochs_per_round`` more epochs, so a rise over the dense start can be
extra training rather than sparsity. ``control=True`` separates the two: for every round t it also
trains a dense run (``OUT/control-XX``, the same method, loss, data and epochs with pruning switched
off) and measures it, so round t is compared with a dense model of the same training history; the
JSON gets ``control`` (its points) and ``vs_control`` (pruned − dense per metric and round).
Resumable: finished rounds (``run.json``) and their measurements (``metrics-XX.json`` with the
same evaluation settings) are reused; an interrupted round resumes from its last checkpoint.

>>> sweep_sparsity("runs/mnist-lenet", rounds=8, limit=1000)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.attacks import build_attack, is_stochastic, model_mode, seeded_generator
from robustprune.attacks.cw import CarliniWagnerL2
from robustprune.attacks.deepfool import DeepFool
from robustprune.config import EvalConfig, job_config, load_train_config
from robustprune.data import TensorLoader
from robustprune.eval.context import EvalContext
from robustprune.eval.evaluate import evaluate
from robustprune.metrics.minnorm import minnorm_robustness
from robustprune.metrics.sparsity import weight_sparsity
from robustprune.metrics.unstructured import activation_zero_fraction
from robustprune.train import fit, load_run
from robustprune.train.checkpoint import latest_checkpoint
from robustprune.utils import atomic_write, atomic_write_json, keeps_global_rng, provenance

METRICS = (("clean_acc", "clean"), ("fgsm_acc", "FGSM"), ("rfgsm_acc", "R+FGSM"), ("deepfool_r2", "DeepFool r2"),
           ("cw_r2", "C&W-L2 r2"))


@dataclass(frozen=True)
class SweepEval:
    """Evaluation settings of a sweep (a cached measurement is reused only under the same ones)."""

    eps: float
    limit: int | None = 1000
    deepfool_steps: int = 50
    cw_steps: int = 100
    cw_search: int = 5
    cw_const: float = 0.1
    cw_lr: float = 0.01
    batch_size: int = 250
    seed: int = 0


def _check(rounds: int | None, rho: float, epochs_per_round: int, limit: int | None) -> None:
    for ok, msg in ((isinstance(rounds, int) and rounds >= 1, f"rounds must be >= 1, got {rounds}"),
                    (0 < rho < 1, f"rho must be in (0, 1), got {rho}"),
                    (epochs_per_round >= 1, f"epochs_per_round must be >= 1, got {epochs_per_round}"),
                    (limit is None or limit >= 1, f"limit must be >= 1, got {limit}")):
        if not ok:
            raise ValueError(msg)


def train_round(run_dir: Path, prev: Path, out: Path, cfg: SweepConfig, *, data_dir: str | None, device: str,
                progress: bool, prune: bool = True) -> None:
    """One pruning round of ``cfg``: a ``magnitude`` run from ``prev`` (resumed when interrupted,
    skipped when done), with the base run's config otherwise (optimiser, lr held constant, batch
    size, seed, data). ``prune=False`` is the dense control: the same run with ``max_rounds`` 0,
    so nothing is removed."""
    if (out / "run.json").is_file():
        return
    base = load_train_config(run_dir / "config.yaml")
    train = replace(
        base, method="magnitude", epochs=cfg.epochs_per_round, out=str(out), init_from=str(prev),
        schedule="constant", resume=latest_checkpoint(out) is not None, device=device, progress=progress,
        data_dir=data_dir or base.data_dir,
        limit_train=base.limit_train if cfg.limit_train is None else cfg.limit_train,
        method_args={"rho": cfg.rho, "epochs_per_round": cfg.epochs_per_round, "max_rounds": int(prune),
                     "scope": cfg.scope, "keep_first_last": cfg.keep_first_last, "adversarial": cfg.adversarial},
    )
    fit(train)


def measure(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ev: SweepEval, *,
            device: torch.device, progress: bool) -> dict[str, Any]:
    """Clean / FGSM / R+FGSM accuracy (%), DeepFool and C&W r₂, sparsity of one model."""
    loader = TensorLoader(images, labels, batch_size=ev.batch_size, device=device)
    x0 = next(iter(loader))[0]
    with model_mode(model):
        stochastic = is_stochastic(model, x0)
    gen = None if stochastic else seeded_generator(ev.seed, x0.device)  # R+FGSM's random step
    if gen is None:  # a model random at test time draws from the global RNG, and so does R+FGSM, as
        torch.manual_seed(ev.seed)  # it always did: its numbers stay the same
    attacks = [("fgsm", build_attack("fgsm", eps=ev.eps, generator=gen)),
               ("rfgsm", build_attack("rfgsm", eps=ev.eps, generator=gen))]
    res = evaluate(model, loader, attacks, vulnerability=False, passes=1, progress=progress)
    df = minnorm_robustness(model, loader, DeepFool(steps=ev.deepfool_steps), progress=progress)
    cw = minnorm_robustness(model, loader, CarliniWagnerL2(steps=ev.cw_steps, binary_search_steps=ev.cw_search,
                                                     initial_const=ev.cw_const, lr=ev.cw_lr),
                            progress=progress)
    x0 = next(iter(loader))[0]
    return {
        "weight_sparsity": weight_sparsity(model), "clean_acc": res.clean_acc,
        "fgsm_acc": res.attacks[0].summary()["robust_acc"], "rfgsm_acc": res.attacks[1].summary()["robust_acc"],
        "deepfool_r2": df["r2"], "deepfool_r2_normalised": df["r2_normalised"], "deepfool_success": df["success_rate"],
        "cw_r2": cw["r2"], "cw_r2_normalised": cw["r2_normalised"], "cw_success": cw["success_rate"],
        "cw_failed": cw["n_failed"], "activation_zero_fraction": activation_zero_fraction(model, x0),
    }


def measured(run: Path, cache: Path, ev: SweepEval, data: tuple[torch.Tensor, torch.Tensor], *,
             device: torch.device, progress: bool) -> dict[str, Any]:
    """``measure`` the run, or reuse ``cache`` when it holds the same settings."""
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("eval") == asdict(ev):
            return old
    t0 = time.perf_counter()
    out = {"run": str(run), "eval": asdict(ev),
           **measure(load_run(run, device=device).model, *data, ev, device=device, progress=progress)}
    out["wall_s"] = time.perf_counter() - t0
    atomic_write_json(cache, out)
    return out


def peaks(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the sparsity where it peaks, its value, and the dense and last values."""
    out = {}
    for key, _ in METRICS:
        pts = [(p["weight_sparsity"], p[key]) for p in points if p.get(key) is not None]
        if pts:
            best = max(pts, key=lambda t: t[1])
            out[key] = {"peak_sparsity": best[0], "peak": best[1], "dense": pts[0][1], "last": pts[-1][1]}
    return out


def vs_control(points: list[dict[str, Any]], control: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: pruned − dense control at each round (same training; the two lists run round
    by round), and the round (and sparsity) where that difference is largest."""
    out: dict[str, Any] = {}
    for key, _ in METRICS:
        rows = [{"round": p["round"], "weight_sparsity": p["weight_sparsity"], "pruned": p[key], "control": c[key],
                 "diff": p[key] - c[key]}
                for p, c in zip(points, control, strict=True) if p.get(key) is not None and c.get(key) is not None]
        if rows:
            best = max(rows, key=lambda r: r["diff"])
            out[key] = {"rounds": rows, "best_round": best["round"], "best_sparsity": best["weight_sparsity"],
                        "best_diff": best["diff"]}
    return out


@dataclass(frozen=True)
class SweepConfig:
    """A sparsity sweep: the evaluation settings it uses (``eval``: the FGSM/R+FGSM ``eps``, default
    the dataset's; ``limit``, default 1,000 test points; ``seed``), the pruning rounds (``rounds``
    of removing ``rho`` of every layer's remaining weights, ``scope`` ``layer`` or ``global``,
    ``keep_first_last``; each retrained for ``epochs_per_round`` epochs, with the AT loss when
    ``adversarial``, on ``limit_train`` training examples, default the run's), the minimum-norm
    attacks' own settings (DeepFool 50 steps; C&W 100 steps × 5 binary-search rounds from c = 0.1 —
    few steps need a larger starting c than C&W's 1e-3 to succeed at all) and ``control``: a dense
    run per round with the same training (about doubles the cost)."""

    eval: EvalConfig = field(default_factory=lambda: EvalConfig(limit=1000))
    rounds: int | None = None
    rho: float = 1 / 3
    epochs_per_round: int = 1
    adversarial: bool = False
    scope: str = "layer"
    keep_first_last: bool = False
    limit_train: int | None = None
    deepfool_steps: int = 50
    cw_steps: int = 100
    cw_search: int = 5
    cw_const: float = 0.1
    cw_lr: float = 0.01
    control: bool = False

    def validate(self) -> None:
        """``ValueError`` naming the first bad value."""
        self.eval.validate()
        _check(self.rounds, self.rho, self.epochs_per_round, self.eval.limit)

    def training(self) -> dict[str, Any]:
        """The settings of the rounds' training, as the result records them."""
        return {"rounds": self.rounds, "rho": self.rho, "epochs_per_round": self.epochs_per_round,
                "adversarial": self.adversarial, "scope": self.scope, "keep_first_last": self.keep_first_last,
                "limit_train": self.limit_train, "control": self.control}


@keeps_global_rng
def sweep_sparsity(run_dir: str | Path, config: SweepConfig | None = None, *, out: str | Path | None = None,
                   data_dir: str | None = None, device: str = "auto", progress: bool = True,
                   **settings: Any) -> dict[str, Any]:
    """Run (or resume) the sweep; returns the JSON data (also written to ``OUT/sweep.json``).

    ``config`` (:class:`SweepConfig`) with ``settings`` replacing its fields or its ``eval``'s
    (``sweep_sparsity(run, rounds=8, limit=1000)``); ``OUT`` = ``RUN/sparsity-sweep``. The base
    run and its test points come from one :class:`~robustprune.eval.context.EvalContext`.
    """
    cfg = job_config(config or SweepConfig(), **settings)
    ecfg = cfg.eval
    run_dir = Path(run_dir)
    ctx = EvalContext.open(run_dir, limit=ecfg.limit, seed=ecfg.seed, data_dir=data_dir, device=device)
    out = Path(out) if out is not None else run_dir / "sparsity-sweep"
    dev = ctx.device
    ev = SweepEval(eps=ctx.info.eps(ecfg.eps), limit=ecfg.limit, seed=ecfg.seed, deepfool_steps=cfg.deepfool_steps,
                   cw_steps=cfg.cw_steps, cw_search=cfg.cw_search, cw_const=cfg.cw_const, cw_lr=cfg.cw_lr)
    data = (ctx.images, ctx.labels)
    control, rounds = cfg.control, int(cfg.rounds or 0)
    points = [dict(measured(run_dir, out / "metrics-00.json", ev, data, device=dev, progress=progress), round=0)]
    dense = [dict(points[0])] if control else []
    train: dict[str, Any] = {"data_dir": data_dir, "device": device, "progress": progress}
    prev, prev_dense = run_dir, run_dir
    for t in range(1, rounds + 1):
        rd = out / f"round-{t:02d}"
        train_round(run_dir, prev, rd, cfg, **train)
        points.append(dict(measured(rd, out / f"metrics-{t:02d}.json", ev, data, device=dev, progress=progress),
                           round=t))
        prev = rd
        if control:
            cd = out / f"control-{t:02d}"
            train_round(run_dir, prev_dense, cd, cfg, prune=False, **train)
            dense.append(dict(measured(cd, out / f"control-metrics-{t:02d}.json", ev, data, device=dev,
                                       progress=progress), round=t))
            prev_dense = cd
    cfg_run = ctx.run.cfg
    result = {
        "kind": "sparsity-sweep", "run": str(run_dir), "model": cfg_run.model, "dataset": cfg_run.dataset,
        "settings": {**cfg.training(), **asdict(ev)},
        "points": points, "peaks": peaks(points),
        **({"control": dense, "vs_control": vs_control(points, dense)} if control else {}), **provenance(dev),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out / "sweep.json", result)
    plot_sweep(result, out / "sweep.png")
    return result


def plot_sweep(result: dict[str, Any], path: Path) -> None:
    """Guo et al.'s figure: r∞ accuracies and r₂ norms against weight sparsity, peaks marked."""
    from matplotlib.figure import Figure

    pts = result["points"]
    dense = result.get("control", [])
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, keys, ylabel in ((axes[0], METRICS[:3], "accuracy % (r∞: FGSM, R+FGSM at ε)"),
                             (axes[1], METRICS[3:], "mean minimal L2 perturbation (r₂)")):
        for key, label in keys:
            xs = [p["weight_sparsity"] for p in pts if p.get(key) is not None]
            ys = [p[key] for p in pts if p.get(key) is not None]
            if not ys:
                continue
            (line,) = ax.plot(xs, ys, marker="o", label=label)
            i = max(range(len(ys)), key=ys.__getitem__)
            ax.scatter([xs[i]], [ys[i]], s=140, facecolors="none", edgecolors=line.get_color())
            if dense:  # the dense model of each round's training history, drawn at that round's sparsity
                cx = [p["weight_sparsity"] for p, c in zip(pts, dense, strict=True) if c.get(key) is not None]
                cy = [c[key] for c in dense if c.get(key) is not None]
                ax.plot(cx, cy, linestyle="--", marker="x", color=line.get_color(), alpha=0.7,
                        label=f"{label}, dense control")
        ax.set_xlabel("weight sparsity %")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    note = " (dashed: dense, same training epochs)" if dense else ""
    fig.suptitle(f"{result['model']} / {result['dataset']}: robustness vs sparsity "
                 f"(ε = {result['settings']['eps']:g}){note}")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
