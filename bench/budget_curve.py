"""AutoAttack and PGD-40 against the training budget E, and the verdict on ANP-VS vs AT at E = 200.

Reads the ``table.json`` that ``robustprune compare`` wrote for ``configs/suites/mnist_budget_cpu.yaml``
(E = 10 and 50) and ``configs/suites/mnist_paper_cpu.yaml`` (E = 200), and writes

- ``OUT.json``: per method (AT, faithful ANP-VS, TRADES; the PGD-5 of 0.04 stand-in protocol) and per
  E, the mean, spread and seeds of clean, AutoAttack and PGD-40 accuracy, minutes per epoch, and
  unit sparsity; the PGD-20-of-0.01 rows at E = 10 beside their stand-in rows (difference against
  the seed spread); and the verdict: ANP-VS's AutoAttack minus AT's at the largest E both reached,
  against the spread of that difference over the E = 10 seeds;
- ``OUT.png``: AutoAttack (solid) and PGD-40 (dashed) against E, one colour per method, with the
  paper's PGD-40 points (E = 200) marked.

Rows that have not run yet are left out and listed under ``missing``: the script can be run while
the suites are still training.

    python bench/budget_curve.py --budget runs/budget_cpu/table.json --paper runs/paper_cpu/table.json \\
        --out bench/budget_curve
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from datetime import date
from pathlib import Path
from typing import Any

#: the paper's MNIST LeNet5-Caffe rows (ICML 2020, Table 1): clean and PGD-40 accuracy, %
PAPER = {"at": {"clean": 99.14, "pgd40": 88.03}, "anp-vs": {"clean": 99.05, "pgd40": 91.31},
         "trades": {"clean": 99.07, "pgd40": 89.67}}

#: (suite, row id) -> (method line, E) for the stand-in protocol's curve
CURVE_ROWS = {
    ("budget", "at-e10"): ("at", 10), ("budget", "anp-vs-e10"): ("anp-vs", 10),
    ("budget", "at-e50"): ("at", 50), ("budget", "anp-vs-e50"): ("anp-vs", 50),
    ("budget", "trades-e50"): ("trades", 50),
    ("paper", "at"): ("at", 200), ("paper", "anp-vs"): ("anp-vs", 200),
}
#: the paper's own training attack at E = 10, beside the stand-in row of the same method
PGD20_ROWS = {"at-e10-pgd20": "at-e10", "anp-vs-e10-pgd20": "anp-vs-e10"}
#: card metric -> name here
METRICS = {"clean": "clean", "autoattack": "autoattack", "white_box": "pgd40",
           "min_per_epoch": "min_per_epoch", "unit_sparsity": "unit_sparsity"}


def read_rows(path: Path | None) -> dict[str, dict[str, Any]]:
    """A suite table's rows by run id (an absent file gives none)."""
    if path is None or not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {r["run_id"]: r for r in data["rows"]}


def values(row: dict[str, Any], metric: str) -> list[float]:
    """The per-seed values of a metric of a table row (the seeds that have it)."""
    m = row.get("metrics", {}).get(metric) or {}
    return [float(v) for v in m.get("values", []) if v is not None]


def summary(vals: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals), "values": vals}


def curve(tables: dict[str, dict[str, dict[str, Any]]]) -> tuple[dict[str, dict[int, Any]], list[str]]:
    """Per method line and E, the summary of every metric; and the rows not (yet) in a table."""
    out: dict[str, dict[int, Any]] = {}
    missing = []
    for (suite, run_id), (line, epochs) in CURVE_ROWS.items():
        row = tables[suite].get(run_id)
        if row is None or not values(row, "autoattack"):
            missing.append(f"{suite}:{run_id}")
            continue
        out.setdefault(line, {})[epochs] = {
            "row": f"{suite}:{run_id}", "seeds": row.get("seeds"),
            **{name: summary(values(row, key)) for key, name in METRICS.items()}}
    return out, missing


def seed_difference(a: dict[str, Any], b: dict[str, Any], metric: str) -> dict[str, Any]:
    """``b - a`` of one metric: per seed when both have the same seeds, its mean and spread."""
    va, vb = a[metric]["values"], b[metric]["values"]
    if a.get("seeds") == b.get("seeds") and len(va) == len(vb):
        return summary([y - x for x, y in zip(va, vb, strict=True)])
    return summary([statistics.fmean(vb) - statistics.fmean(va)]) if va and vb else summary([])


def verdict(lines: dict[str, dict[int, Any]]) -> dict[str, Any] | None:
    """ANP-VS's AutoAttack minus AT's at the largest E both reached, against the E = 10 seed spread."""
    at, anp = lines.get("at", {}), lines.get("anp-vs", {})
    common = sorted(set(at) & set(anp))
    if not common:
        return None
    top = common[-1]
    diff = seed_difference(at[top], anp[top], "autoattack")
    noise = seed_difference(at[10], anp[10], "autoattack") if 10 in common else summary([])
    out: dict[str, Any] = {"epochs": top, "aa_difference": diff["mean"],
                           "e10_difference": noise, "at_e10_std": at.get(10, {}).get("autoattack", {}).get("std"),
                           "anp_vs_e10_std": anp.get(10, {}).get("autoattack", {}).get("std")}
    spread = noise["std"]
    if diff["mean"] is None or spread is None:
        out["reading"] = "no seed spread yet: the difference cannot be judged"
    else:
        z = abs(diff["mean"] - 0.0) / spread if spread > 0 else math.inf
        side = "above" if diff["mean"] > 0 else "below"
        out["reading"] = (f"ANP-VS is {abs(diff['mean']):.1f} AutoAttack points {side} AT at E = {top}; "
                          f"the E = 10 per-seed difference spreads by {spread:.1f} (std over "
                          f"{noise['n']} seeds): {z:.1f} spreads from zero"
                          + (" (within the noise)" if z < 2 else " (outside twice the spread)"))
    return out


def pgd20(tables: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Each PGD-20-of-0.01 row at E = 10 against its stand-in row (same seed) and the stand-in's spread."""
    out = {}
    for row_id, standin_id in PGD20_ROWS.items():
        row, standin = tables["budget"].get(row_id), tables["budget"].get(standin_id)
        if row is None or standin is None or not values(row, "autoattack"):
            continue
        entry: dict[str, Any] = {}
        for key, name in (("autoattack", "autoattack"), ("white_box", "pgd40"), ("clean", "clean")):
            seeds = standin.get("seeds") or []
            mine = dict(zip(seeds, values(standin, key), strict=False))
            same_seed = [mine[s] for s in row.get("seeds", []) if s in mine]
            theirs = values(row, key)
            entry[name] = {"pgd20": statistics.fmean(theirs) if theirs else None,
                           "standin_same_seed": same_seed[0] if same_seed else None,
                           "standin_spread": summary(values(standin, key))["std"]}
        out[row_id] = entry
    return out


def plot(lines: dict[str, dict[int, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"at": "tab:blue", "anp-vs": "tab:red", "trades": "tab:green"}
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for line, points in sorted(lines.items()):
        es = sorted(points)
        for metric, style, label in (("autoattack", "-o", "AutoAttack"), ("pgd40", "--s", "PGD-40")):
            means = [points[e][metric]["mean"] for e in es]
            stds = [points[e][metric]["std"] or 0.0 for e in es]
            ax.errorbar(es, means, yerr=stds, fmt=style, color=colours.get(line), capsize=3,
                        label=f"{line} {label}")
    for line, paper in PAPER.items():
        if line in lines:
            ax.plot([200], [paper["pgd40"]], marker="*", markersize=13, color=colours.get(line),
                    linestyle="none", label=f"{line} PGD-40, paper")
    ax.set_xscale("log")
    ax.set_xticks([10, 50, 200], labels=["10", "50", "200"])
    ax.set_xlabel("training epochs E (staircase at 50 % / 70 % of E)")
    ax.set_ylabel("robust accuracy, % (ε 0.3, first 1,000 test images)")
    ax.set_title("LeNet5-Caffe MNIST: robustness against the training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=Path, help="table.json of mnist_budget_cpu.yaml")
    ap.add_argument("--paper", type=Path, help="table.json of mnist_paper_cpu.yaml")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    args = ap.parse_args(argv)
    tables = {"budget": read_rows(args.budget), "paper": read_rows(args.paper)}
    if not tables["budget"] and not tables["paper"]:
        print(f"error: no table found at {args.budget} or {args.paper}", file=sys.stderr)
        return 2
    lines, missing = curve(tables)
    command = "python bench/budget_curve.py " + " ".join(argv or sys.argv[1:])
    report = {"date": date.today().isoformat(), "command": command,
              "paper": PAPER, "curve": {k: {str(e): v for e, v in sorted(p.items())} for k, p in lines.items()},
              "pgd20_vs_standin_e10": pgd20(tables), "verdict": verdict(lines), "missing": missing}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out.with_suffix(".json"))
    if lines:
        plot(lines, args.out.with_suffix(".png"))
    print(json.dumps(report["verdict"], indent=1))
    if missing:
        print("not yet in a table:", ", ".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
