"""Run the slow fuzzing tests (tests/test_fuzz.py, 10,000 inputs per parser) and tabulate, per
parser, how many inputs hypothesis generated and how many failed (a failure is a traceback, or a
named error whose message does not name the fault).

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/fuzz_parsers.py [--out bench/fuzz_parsers.json]
    python bench/fuzz_parsers.py --log LOG [LOG ...]   # tabulate saved logs of that pytest command
                                                       # (e.g. one per parser, run in parallel)

The numbers come from hypothesis's own statistics (``--hypothesis-show-statistics``): passing,
failing and invalid (filtered out before the property ran) examples of every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST = [sys.executable, "-m", "pytest", "-m", "slow", "tests/test_fuzz.py", "--hypothesis-show-statistics",
          "-p", "no:cacheprovider", "-q", "-rf"]
STATS = re.compile(r"(\d+) passing examples?, (\d+) failing examples?, (\d+) invalid examples?")
PHASE = re.compile(r"during (\w+) phase \(([\d.]+) seconds\)")


def tabulate(log: str) -> dict[str, dict[str, float]]:
    """Per test: passing, failing and invalid examples summed over phases, and the seconds spent."""
    out: dict[str, dict[str, float]] = {}
    current = None
    for line in log.splitlines():
        head = re.match(r"^(tests/test_fuzz\.py::\w+):$", line.strip())
        if head:
            current = head.group(1).split("::")[1]
            out[current] = {"passing": 0, "failing": 0, "invalid": 0, "seconds": 0.0}
            continue
        if current is None:
            continue
        if m := PHASE.search(line):
            out[current]["seconds"] += float(m.group(2))
        if m := STATS.search(line):
            for key, value in zip(("passing", "failing", "invalid"), m.groups(), strict=True):
                out[current][key] += int(value)
    for name in out:
        out[name]["failed_test"] = bool(re.search(rf"FAILED \S+::{name}\b", log))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log", type=Path, nargs="+", help="tabulate these saved pytest logs instead of running pytest")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.log is not None:
        log = "\n".join(p.read_text() for p in args.log)
    else:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(PYTEST, cwd=ROOT, env=env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
    table = tabulate(log)
    if not table:
        print(log[-3000:], file=sys.stderr)
        raise SystemExit("no hypothesis statistics found in the log")
    print("| test | inputs run | failing | invalid (filtered) | seconds | test result |\n|---|---|---|---|---|---|")
    for name, row in table.items():
        inputs = int(row["passing"] + row["failing"])
        print(f"| {name} | {inputs:,} | {int(row['failing'])} | {int(row['invalid'])} | {row['seconds']:.0f} | "
              f"{'FAILED' if row['failed_test'] else 'passed'} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"date": started, "machine": platform.platform(), "cpus": os.cpu_count(),
                                        "command": " ".join(PYTEST), "tests": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
