"""Search for an ANP-VS variant that reaches the paper's trade-off on a small CPU budget.

Trains one standard LeNet5-Caffe (the starting point), one AT run, and ANP-VS variants (method
arguments given as JSON), all with the same training attack and budget, then evaluates each with
PGD-40 (ε 0.3, step 0.01) on a test prefix: clean and robust accuracy, white-box vulnerability,
unit sparsity, paper memory %, seconds per epoch.

    python bench/anpvs_variants.py --out /tmp/variants --limit-train 20000 --epochs 2 \
        --variant faithful='{}' --variant keep75='{"a_init_fc": 2.95, "a_init_conv": 2.95}'
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from robustprune.config import TrainConfig
from robustprune.eval import evaluate_run
from robustprune.train import fit


def train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if (out / "run.json").exists():
        return out
    return fit(replace(cfg, resume=(out / "checkpoints").exists()))


def row(name: str, run: Path, args: argparse.Namespace) -> dict:
    card = evaluate_run(run, attacks=["pgd"], eps=0.3, steps=40, step_size=0.01, limit=args.eval_limit,
                        data_dir=args.data_dir, progress=False)
    hist = json.loads((run / "run.json").read_text())["history"]
    pgd = card["attacks"][0]
    paper = card["sparsity"].get("paper", {})
    return {
        "name": name, "clean": card["clean_acc"], "pgd40": pgd["robust_acc"],
        "vuln": pgd.get("vulnerability", {}).get("mean"), "unit_sparsity": card["sparsity"]["unit_sparsity"],
        "memory_pct": paper.get("memory_pct"), "flops_x": paper.get("flops_speedup"),
        "s_per_epoch": sum(h["time_s"] for h in hist) / len(hist),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit-train", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--adv-steps", type=int, default=5)
    ap.add_argument("--adv-step-size", type=float, default=0.1)
    ap.add_argument("--eval-limit", type=int, default=1000)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON method_args for anp-vs")
    ap.add_argument("--method", default="anp-vs", help="method of the variants")
    ap.add_argument("--standard", default=None, help="reuse this finished standard run")
    ap.add_argument("--at", default=None, help="reuse this finished AT run (same budget)")
    args = ap.parse_args()
    root = Path(args.out)
    base = TrainConfig(model="lenet5-caffe", dataset="mnist", data_dir=args.data_dir, limit_train=args.limit_train,
                       epochs=args.epochs, adv_steps=args.adv_steps, adv_step_size=args.adv_step_size,
                       progress=False)
    std = Path(args.standard) if args.standard else train(replace(base, method="standard", out=str(root / "standard")))
    rows = [row("standard", std, args)]
    print(json.dumps(rows[-1]), flush=True)
    at = Path(args.at) if args.at else train(replace(base, method="at", out=str(root / "at")))
    rows.append(row("at", at, args))
    print(json.dumps(rows[-1]), flush=True)
    for spec in args.variant:
        name, _, js = spec.partition("=")
        cfg = replace(base, method=args.method, init_from=str(std), method_args=json.loads(js or "{}"),
                      out=str(root / name))
        rows.append({**row(name, train(cfg), args), "method_args": cfg.method_args})
        print(json.dumps(rows[-1]), flush=True)
    (root / "variants.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
