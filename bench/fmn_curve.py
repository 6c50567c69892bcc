"""Benchmark: FMN-L∞'s security curve against the PGD ε-sweep on an adversarially trained MNIST LeNet5.

``robustprune.jobs.curve.curve_run`` on the first ``--limit`` test points of a run: the PGD sweep
(PGD-``--steps`` with random start, step 2.5·ε/steps, seeded) and FMN-L∞'s security curve (``--fmn-steps``
iterations × ``--fmn-targets`` class-directed passes) at the same ε. Target: at every ε the FMN
curve lies at or below the PGD curve, or above it by at most 2 points (``fmn − pgd <= 2``).
Prints a markdown section for bench/RESULTS.md (date, machine, command, the table) and writes
``curve.json``/``curve.png``/``fmn_curve.json`` into ``--out``.

Without ``--run`` it first trains the run with the command line (AT, LeNet5-Caffe, 1 epoch on the
first ``--limit-train`` MNIST training images, PGD-5 of step 0.1):

    python bench/fmn_curve.py --data-dir DATA --work runs/bench_fmn --out bench/fmn_curve --limit 1000
    python bench/fmn_curve.py --run runs/at --data-dir DATA --out bench/fmn_curve
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robustprune.jobs.curve import curve_run
from robustprune.utils import atomic_write_json

TARGET = 2.0  # points FMN may lie above PGD at any ε
GRID = "0,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=None, help="run directory (default: train one into --work)")
    p.add_argument("--work", default="runs/bench_fmn", help="where the run is trained when --run is not given")
    p.add_argument("--limit-train", type=int, default=10000, help="training images of the trained run")
    p.add_argument("--data-dir", default=None, help="dataset directory")
    p.add_argument("--limit", type=int, default=1000, help="test points")
    p.add_argument("--eps", default=GRID, help="comma-separated eps values")
    p.add_argument("--steps", type=int, default=40, help="PGD iterations of the sweep")
    p.add_argument("--fmn-steps", type=int, default=100, help="FMN iterations per pass")
    p.add_argument("--fmn-targets", type=int, default=3, help="FMN class-directed passes (0: one untargeted pass)")
    p.add_argument("--out", default="bench/fmn_curve", help="output directory")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args()


def train(args: argparse.Namespace) -> str:
    """Train the AT run with the command line; returns its directory (reused when finished)."""
    out = Path(args.work) / "at"
    if (out / "model.safetensors").exists():
        return str(out)
    cmd = [sys.executable, "-m", "robustprune", "train", "--method", "at", "--model", "lenet5-caffe",
           "--dataset", "mnist", "--epochs", "1", "--limit-train", str(args.limit_train), "--adv-steps", "5",
           "--adv-step-size", "0.1", "--out", str(out), "--no-progress"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    print("training:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return str(out)


def rows_of(curve: dict[str, Any]) -> list[dict[str, float]]:
    sec = curve["security"]["points"]
    return [{"eps": p["eps"], "fmn": s["robust_acc"], "pgd": p["robust_acc"], "gap": s["robust_acc"] - p["robust_acc"]}
            for p, s in zip(curve["points"], sec, strict=True)]


def markdown(curve: dict[str, Any], rows: list[dict[str, float]], argv: list[str], load: str) -> str:
    sec = curve["security"]
    worst = max(r["gap"] for r in rows)
    met = worst <= TARGET
    machine = f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), " + (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU") + f"; load average {load}"
    median = "-" if sec["median"] is None else f"{sec['median']:.4f}"
    lines = [
        f"## FMN security curve vs the PGD ε-sweep (bench/fmn_curve.py) — {time.strftime('%Y-%m-%d')}", "",
        f"Machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} thread(s).", "",
        "```", "PYTHONPATH=src python bench/fmn_curve.py " + " ".join(argv), "```", "",
        f"Run: {curve['method']} / {curve['model']} / {curve['dataset']} (`{curve['run']}`); first {curve['n']} test "
        f"points, clean {curve['clean_acc']:.2f} %. PGD: {curve['attack']['steps']} steps, step 2.5·ε/"
        f"{curve['attack']['steps']}, random start, seed {curve['seed']}. FMN-L∞: {sec['attack']['steps']} steps × "
        f"{sec['attack']['targets'] or 1} pass(es) ({'class-directed' if sec['attack']['targets'] else 'untargeted'}), "
        f"α₀ {sec['attack']['step_size']:g}, γ₀ {sec['attack']['gamma']:g}; median minimal L∞ distance {median} "
        f"over correct points, {sec['n_failed']} without an adversarial example. Wall time: PGD sweep "
        f"{sum(p['wall_s'] for p in curve['points']):.0f} s, FMN {sec['wall_s']:.0f} s.", "",
        "| ε | FMN security curve % | PGD sweep % | FMN − PGD |", "|---|---|---|---|",
        *[f"| {r['eps']:g} | {r['fmn']:.2f} | {r['pgd']:.2f} | {r['gap']:+.2f} |" for r in rows], "",
        f"Target (FMN at or below PGD, at most {TARGET:g} points above, at every ε): "
        f"**{'met' if met else 'not met'}** (largest FMN − PGD {worst:+.2f} points).",
    ]
    return "\n".join(lines) + "\n"


def shown(argv: list[str], data_dir: str | None) -> list[str]:
    """``argv`` with the dataset directory written as ``DATA`` (no machine paths in RESULTS)."""
    return ["DATA" if data_dir and a == data_dir else a for a in argv]


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    run = args.run or train(args)
    eps = [float(e) for e in args.eps.split(",")]
    load = "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
    curve = curve_run(run, out=args.out, eps_list=eps, steps=args.steps, limit=args.limit,
                      fmn_steps=args.fmn_steps, fmn_targets=args.fmn_targets or None, data_dir=args.data_dir,
                      progress=False)
    rows = rows_of(curve)
    atomic_write_json(Path(args.out) / "fmn_curve.json", {"args": vars(args) | {"data_dir": "DATA"}, "rows": rows,
                                                          "target_met": max(r["gap"] for r in rows) <= TARGET})
    print(markdown(curve, rows, shown(sys.argv[1:], args.data_dir), load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
