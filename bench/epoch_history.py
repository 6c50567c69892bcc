"""Wall time per epoch of full-length runs, read from their checkpoints: the training loop writes each
epoch's seconds (``time_s``: the epoch's batches and the method's end-of-epoch step, not the checkpoint
or any evaluation) into the history it saves with every checkpoint, so a suite's newest checkpoint holds
the time of every epoch the run has trained, whichever sitting trained it.

``bench/epoch_cost.py`` times short epochs of both methods in one process on an idle machine; this
reads the epochs of all 60,000 images that the 200-epoch runs actually trained. Sittings ran under
different loads, so ``--epochs FROM-TO`` picks the epochs of one stretch and ``--conditions`` says what
else ran then (the record cannot know). Writes, per run, every selected epoch's seconds and their
median, minimum and maximum, and with ``--ratio A/B`` the ratio of A's median to B's.

    python bench/epoch_history.py bench/inflight/paper_cpu --runs at-s0=66-140,anp-vs-s0=48-110 \\
        --ratio anp-vs-s0/at-s0 --conditions "..." --out bench/paper_epoch_times.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from robustprune.utils import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def parse_runs(text: str) -> dict[str, tuple[int, int]]:
    """``"at-s0=66-140,anp-vs-s0=48-110"`` -> {run: (first epoch, last epoch)}, epochs counted from 1."""
    out: dict[str, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, span = part.partition("=")
        lo, dash, hi = span.partition("-")
        if not sep or not dash or not lo.isdigit() or not hi.isdigit() or not 1 <= int(lo) <= int(hi):
            raise ValueError(f"--runs: {part!r} is not RUN=FIRST-LAST with 1 <= FIRST <= LAST")
        out[name] = (int(lo), int(hi))
    if not out:
        raise ValueError("--runs names no run")
    return out


def newest_history(run_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    """(epoch, history) of the newest complete checkpoint of ``run_dir``."""
    latest = run_dir / "checkpoints" / "LATEST"
    if not latest.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoints/LATEST")
    state = torch.load(latest.parent / latest.read_text().strip() / "state.pt", map_location="cpu", weights_only=False)
    return int(state["epoch"]), list(state["history"])


def summarise(history: list[dict[str, Any]], first: int, last: int) -> dict[str, Any]:
    times = {int(h["epoch"]): float(h["time_s"]) for h in history if first <= int(h["epoch"]) <= last}
    if not times:
        raise ValueError(f"no epoch of {first}-{last} in the history (it holds epochs 1-{len(history)})")
    secs = list(times.values())
    return {"epochs": [min(times), max(times)], "count": len(secs),
            "median_s": round(statistics.median(secs), 2), "min_s": round(min(secs), 2), "max_s": round(max(secs), 2),
            "time_s": {str(k): round(v, 2) for k, v in sorted(times.items())}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("suite_dir", type=Path, help="a suite directory (or a run_state.py copy of one)")
    ap.add_argument("--runs", required=True, help="RUN=FIRST-LAST,... : the epochs of each run to read")
    ap.add_argument("--ratio", default=None, help="A/B: the ratio of run A's median epoch to run B's")
    ap.add_argument("--conditions", required=True, help="what else the machine ran while those epochs trained")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        spans = parse_runs(args.runs)
        runs = {}
        for name, (first, last) in spans.items():
            epoch, history = newest_history(args.suite_dir / "runs" / name)
            runs[name] = {"checkpoint_epoch": epoch, **summarise(history, first, last)}
        ratio = None
        if args.ratio:
            a, slash, b = args.ratio.partition("/")
            if not slash or a not in runs or b not in runs:
                raise ValueError(f"--ratio {args.ratio!r}: give A/B with both runs among --runs")
            ratio = {"runs": [a, b], "median_ratio": round(runs[a]["median_s"] / runs[b]["median_s"], 3)}
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"epoch_history: {e}", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    # the record names no path of this machine: the suite directory is SUITE, another absolute path OUT
    shown = ["SUITE" if a == str(args.suite_dir) else "OUT" if Path(a).is_absolute() else a
             for a in (argv if argv is not None else sys.argv[1:])]
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python bench/epoch_history.py " + " ".join(shown), "commit": commit,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "cpu_model": _cpu_model(), "torch": torch.__version__},
              "conditions": args.conditions, "runs": runs, "ratio": ratio}
    atomic_write(args.out, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    print(json.dumps({k: {kk: v[kk] for kk in ("epochs", "median_s")} for k, v in runs.items()} | {"ratio": ratio}))
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
