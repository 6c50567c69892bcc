"""Guo et al.'s sparsity-robustness study on MNIST, and ADMM at 80 % sparsity against dense AT.

Part ``sweep``: for each model (linear, LeNet-300-100, LeNet5-Caffe) train a standard reference
run, then ``sweep_sparsity`` for ``--rounds`` rounds (ρ = 1/3, one retraining epoch each) and
report where FGSM / R+FGSM accuracy (r∞) and DeepFool / C&W r₂ peak against weight sparsity.

Part ``admm``: from one standard LeNet5-Caffe, (a) dense AT and (b) ADMM (80 % irregular
sparsity, ADMM for the first half of the epochs, masked adversarial retraining for the second),
the same epochs, data and training attack; PGD-40 (ε 0.3, step 0.01) accuracy of both.

Usage (the budget of bench/RESULTS.md; full scale: --limit-train 60000 --epochs 10 --limit 10000)::

    PYTHONPATH=src python bench/sparsity_sweep.py sweep --models linear,lenet-300-100,lenet5-caffe \\
        --limit-train 10000 --rounds 8 --limit 200 --eps 0.1 --out /tmp/rp-sweep
    PYTHONPATH=src python bench/sparsity_sweep.py admm --limit-train 5000 --epochs 2 --adv-steps 10 \\
        --limit 500 --out /tmp/rp-admm
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from robustprune.config import TrainConfig
from robustprune.eval.card import evaluate_run
from robustprune.jobs.sweep import sweep_sparsity
from robustprune.train import fit
from robustprune.train.checkpoint import latest_checkpoint

DATA = os.environ.get("ROBUSTPRUNE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


def reference(args: argparse.Namespace, model: str, out: Path, **kw: Any) -> Path:
    """Train (or reuse) a run; ``kw`` overrides the standard config."""
    if (out / "run.json").is_file():
        return out
    cfg = TrainConfig(model=model, dataset="mnist", epochs=args.epochs, out=str(out), data_dir=args.data_dir,
                      limit_train=args.limit_train, progress=False, device="cpu")
    return fit(replace(cfg, resume=latest_checkpoint(out) is not None, **kw))


def run_sweeps(args: argparse.Namespace) -> dict[str, Any]:
    results = {}
    for model in args.models.split(","):
        t0 = time.perf_counter()
        ref = reference(args, model, Path(args.out) / model / "standard")
        res = sweep_sparsity(ref, rounds=args.rounds, limit=args.limit, cw_steps=args.cw_steps,
                             cw_search=args.cw_search, cw_const=args.cw_const, cw_lr=args.cw_lr,
                             eps=args.eps, device="cpu", control=args.control,
                             progress=False)
        keys = ("round", "weight_sparsity", "clean_acc", "fgsm_acc", "rfgsm_acc", "deepfool_r2", "cw_r2", "cw_failed",
                "activation_zero_fraction")
        results[model] = {"peaks": res["peaks"], "points": [{k: p[k] for k in keys} for p in res["points"]],
            "wall_s": time.perf_counter() - t0, "plot": str(ref / "sparsity-sweep" / "sweep.png")}
        if args.control:
            results[model]["control"] = [{k: p[k] for k in keys} for p in res["control"]]
            results[model]["vs_control"] = {k: {kk: v[kk] for kk in ("best_round", "best_sparsity", "best_diff")}
                                            for k, v in res["vs_control"].items()}
        print(json.dumps({model: results[model]}, indent=1), flush=True)
    return results


def run_admm(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.out)
    std = reference(args, "lenet5-caffe", root / "standard")
    half = max(1, args.epochs // 2)
    adv = {"adv_steps": args.adv_steps, "adv_step_size": args.adv_step_size, "init_from": str(std)}
    at = reference(args, "lenet5-caffe", root / "at", method="at", **adv)
    if args.from_at:  # Ye et al.'s recipe: ADMM starts from the AT model; dense AT continues as long
        adv["init_from"] = str(at)
    tag = "-from-at" if args.from_at else ""
    runs = {
        "at": reference(args, "lenet5-caffe", root / "at-continued", method="at", **adv) if args.from_at else at,
        "admm": reference(args, "lenet5-caffe", root / f"admm{tag}", method="admm",
                          method_args={"sparsity": 0.8, "prune_epoch": half, "admm_every": 1}, **adv),
    }
    out: dict[str, Any] = {}
    for name, run in runs.items():
        card = evaluate_run(run, attacks=["pgd"], steps=40, limit=args.limit, device="cpu", progress=False)
        out[name] = {"clean_acc": card["clean_acc"], "pgd40_acc": card["attacks"][0]["robust_acc"],
                     "weight_sparsity": card["sparsity"]["weight_sparsity"]}
    out["pgd40_gap_points"] = out["at"]["pgd40_acc"] - out["admm"]["pgd40_acc"]
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["sweep", "admm"])
    p.add_argument("--models", default="linear,lenet-300-100,lenet5-caffe")
    p.add_argument("--limit-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1, help="epochs of the reference (and AT / ADMM) runs")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--eps", type=float, default=0.1, help="FGSM / R+FGSM radius of the sweep (0.3 leaves "
                   "standard MNIST models at ~0 %%)")
    p.add_argument("--limit", type=int, default=200, help="test points evaluated")
    p.add_argument("--cw-steps", type=int, default=30)
    p.add_argument("--cw-search", type=int, default=4)
    p.add_argument("--cw-const", type=float, default=0.1)
    p.add_argument("--cw-lr", type=float, default=0.1, help="C&W Adam lr (0.01 barely moves saturated pixels "
                   "in tanh space within a few dozen steps)")
    p.add_argument("--adv-steps", type=int, default=20, help="training PGD steps (AT and ADMM)")
    p.add_argument("--adv-step-size", type=float, default=0.01)
    p.add_argument("--from-at", action="store_true", help="admm: start ADMM and a continued dense AT from the AT run")
    p.add_argument("--control", action="store_true", help="sweep: also a dense run per round with the same "
                   "training (separates sparsity from the extra epochs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", default=DATA)
    p.add_argument("--out", default="bench/out/sparsity_sweep")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run_sweeps(args) if args.part == "sweep" else run_admm(args)
    summary = {"part": args.part, "args": vars(args), "wall_s": time.perf_counter() - t0, "results": res}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tag = f"-eps{args.eps:g}" if args.part == "sweep" else ("-from-at" if args.from_at else "")
    (Path(args.out) / f"{args.part}{tag}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
