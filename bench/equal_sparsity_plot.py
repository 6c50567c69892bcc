"""AutoAttack accuracy against sparsity, one line per pruning method, from the equal-sparsity suite.

Reads ``DIR/table.json`` written by ``robustprune compare configs/suites/mnist_equal_sparsity.yaml
--out DIR``. A row whose id ends in ``-50``, ``-75`` or ``-90`` is a method's point at that level
(the method is the id without the suffix: ``anp-vs-75`` -> ``anp-vs``); its x is the row's measured
``unit_sparsity`` where it has one (the mask methods' cut: equal to the level to the unit) and the
level otherwise (ADMM's filters are weight masks, not unit masks). The dense continuation row
(``--dense``, default ``at-more``) is a horizontal line. Points are the mean over seeds, with the
seeds' min-max as an error bar where there are two or more. Writes ``OUT.png`` and ``OUT.json``
(the points as data, so the plot can be checked without looking at it).

    python bench/equal_sparsity_plot.py runs/equal_sparsity/table.json --out bench/equal_sparsity
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

LEVEL = re.compile(r"^(?P<method>.+)-(?P<level>50|75|90)$")


def _values(row: dict[str, Any], metric: str) -> list[float]:
    vals = (row.get("metrics", {}).get(metric) or {}).get("values") or []
    return [float(v) for v in vals if v is not None]


def points(table: dict[str, Any], *, dense: str = "at-more", metric: str = "autoattack") -> dict[str, Any]:
    """``{"lines": {method: [{level, x, y, lo, hi, n}, ...]}, "dense": {y, lo, hi, n} | None}``."""
    lines: dict[str, list[dict[str, Any]]] = {}
    dense_point = None
    for row in table.get("rows", []):
        ys = _values(row, metric)
        if not ys:
            continue
        point = {"y": sum(ys) / len(ys), "lo": min(ys), "hi": max(ys), "n": len(ys)}
        if row.get("run_id") == dense:
            dense_point = point
            continue
        m = LEVEL.match(str(row.get("run_id", "")))
        if m is None:
            continue
        level = int(m.group("level"))
        measured = _values(row, "unit_sparsity")
        x = sum(measured) / len(measured) if measured and max(measured) > 0 else float(level)
        lines.setdefault(m.group("method"), []).append({"level": level, "x": x, **point})
    for pts in lines.values():
        pts.sort(key=lambda p: p["level"])
    return {"metric": metric, "lines": lines, "dense": dense_point}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, pts in sorted(data["lines"].items()):
        xs, ys = [p["x"] for p in pts], [p["y"] for p in pts]
        err = [[p["y"] - p["lo"] for p in pts], [p["hi"] - p["y"] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
    if data["dense"] is not None:
        ax.axhline(data["dense"]["y"], color="black", linestyle="--", label="dense (AT trained on)")
    ax.set_xlabel("units pruned (%)")
    ax.set_ylabel(f"{data['metric']} accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("table", type=Path, help="the suite's table.json")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.png and .json)")
    ap.add_argument("--dense", default="at-more", help="run id of the dense continuation")
    ap.add_argument("--metric", default="autoattack", help="table.json metric on the y axis")
    args = ap.parse_args(argv)
    data = points(json.loads(args.table.read_text()), dense=args.dense, metric=args.metric)
    if not data["lines"]:
        raise SystemExit(f"{args.table}: no row named METHOD-50/75/90 has a {args.metric} value")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
    plot(data, args.out.with_suffix(".png"))
    print(f"written: {args.out.with_suffix('.png')}, {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
