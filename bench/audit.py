"""Benchmark: the robustness audit of MNIST LeNet5-Caffe runs (AT, ANP-VS): ladder, checks, wall time.

For each run, ``robustprune.eval.audit.audit_run`` on the first ``--limit`` test points (default
1000): FGSM, PGD-40 (step 0.01), PGD-100 × 5 restarts, EOT-PGD-40 if the model is random,
AutoAttack standard (package defaults: 100 APGD/FAB iterations, 5000 Square queries), transfer
from ``--source``; the ε sweep, the unbounded attack and the loss surface. Prints a markdown
section for bench/RESULTS.md (date, machine, command, the ladder, the checks, wall time, the
targets: AutoAttack within 3 points of PGD-40 and the whole audit within 15 min on 2 CPU cores).

    python bench/audit.py runs/at runs/anp-vs --source runs/at-seed1 --limit 1000 \\
        --data-dir DATA --out bench/audit --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from robustprune.jobs.audit import audit_run
from robustprune.utils import atomic_write_json

TARGET_GAP, TARGET_MIN = 3.0, 15.0


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories to audit")
    p.add_argument("--source", default=None, help="run the transfer attack is crafted on")
    p.add_argument("--limit", type=int, default=1000, help="test points")
    p.add_argument("--data-dir", default=None, help="dataset directory")
    p.add_argument("--out", default="bench/audit", help="one sub-directory per run, plus audit_bench.json")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--autoattack", default="auto", choices=["auto", "yes", "no"])
    return p.parse_args()


def summarise(card: dict[str, Any], wall: float) -> dict[str, Any]:
    acc = {e["name"]: e["robust_acc"] for e in card["ladder"]}
    aa = next((e for e in card["ladder"] if e["name"] == "autoattack"), None)
    out = {"run": card["run"], "method": card["method"], "n": card["n"], "clean": card["clean_acc"], **acc,
           "stages": aa["breakdown"]["stages"] if aa else None,
           "ladder_s": {e["name"]: round(e["wall_s"], 1) for e in card["ladder"]},
           "checks": {c["name"]: c["status"] for c in card["checks"]}, "verdict": card["verdict"],
           "audit_wall_min": wall / 60}
    if aa:
        out["aa_gap_vs_pgd40"] = acc["pgd-40"] - acc["autoattack"]
    return out


def markdown(rows: list[dict[str, Any]], argv: list[str], load: str) -> str:
    names = ["fgsm", "pgd-40", "pgd-100x5", "eot-pgd-40", "autoattack", "transfer-pgd-40"]
    cols = [n for n in names if any(n in r for r in rows)]
    lines = [f"## Robustness audit (bench/audit.py) — {time.strftime('%Y-%m-%d')}", "",
             f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"torch {torch.__version__}; load average at start {load}.", "",
             f"Command: `python {' '.join(argv)}`", "",
             "| run | n | clean | " + " | ".join(cols) + " | AA gap vs PGD-40 | verdict | wall min |",
             "|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for r in rows:
        vals = " | ".join(f"{r[c]:.2f}" if c in r else "-" for c in cols)
        gap = f"{r['aa_gap_vs_pgd40']:.2f}" if "aa_gap_vs_pgd40" in r else "-"
        lines.append(f"| {r['method']} `{r['run']}` | {r['n']} | {r['clean']:.2f} | {vals} | {gap} | "
                     f"{r['verdict']} | {r['audit_wall_min']:.1f} |")
    for r in rows:
        stages = " → ".join(f"{s['name']} {s['robust_acc']:.2f}" for s in r["stages"] or [])
        warned = [k for k, v in r["checks"].items() if v == "warn"]
        lines += ["", f"- {r['method']}: AutoAttack stages {stages or '-'}; checks warned: {warned or 'none'}; "
                      f"seconds per rung {r['ladder_s']}"]
    for r in rows:
        ok_gap = "aa_gap_vs_pgd40" in r and r["aa_gap_vs_pgd40"] <= TARGET_GAP
        lines.append(f"- target {r['method']}: AutoAttack within {TARGET_GAP} points of PGD-40: "
                     f"{'met' if ok_gap else 'NOT met'}; audit within {TARGET_MIN} min: "
                     f"{'met' if r['audit_wall_min'] <= TARGET_MIN else 'NOT met'}")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    rows = []
    for run in args.runs:
        t0 = time.perf_counter()
        card = audit_run(run, out=Path(args.out) / Path(run).name, limit=args.limit, source=args.source,
                         autoattack=args.autoattack, data_dir=args.data_dir, device="cpu")
        rows.append(summarise(card, time.perf_counter() - t0))
        print(json.dumps(rows[-1], indent=1), file=sys.stderr)
    atomic_write_json(Path(args.out) / "audit_bench.json", {"rows": rows, "argv": sys.argv, "load_avg": load})
    print(markdown(rows, sys.argv, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
