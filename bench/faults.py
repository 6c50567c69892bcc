"""Benchmark: faults survived by the suite runner (``robustprune compare``).

Runs a tiny suite (LeNet5-Caffe, a standard and an AT run of 2 epochs on 128 generated images,
PGD-2 on 64 test points; ``tests/fault_harness.py``) once uninterrupted, then again and again with
one fault injected through ``$ROBUSTPRUNE_FAULT`` (``robustprune.utils.fault_point``), each followed
by a rerun without the fault:

* ``kill``: SIGKILL at the n-th pass of a point, for every n an uninterrupted run passes it
  (``--jobs 1``, a forked child of this process);
* ``enospc``: a full disk (``OSError(ENOSPC)``) at the n-th atomic write: the first, middle and
  last (every n with ``--enospc-all``; in-process); it must be the named ``DiskFullError``;
* ``--jobs 2``, ``python -m robustprune compare`` subprocesses with both workers training: the
  whole process group killed at several steps, one worker killed, the runner killed (its workers
  must exit), all killed during evaluation;
* a second ``compare`` on the directory while the first is stopped (SIGSTOP) inside training: it
  must be refused;
* with ``--tmpfs`` (root only) the suite written to a 1 MiB tmpfs: a real full disk.

An injection is *survived* when the faulted run ended as expected (killed, or the named error),
every file it left outside temporary names reads whole, and the rerun leaves every card, the table
(wall times aside) and every weights file (bit for bit) equal to the uninterrupted run's, with no
temporary file left. *Data lost* counts files left unreadable plus results that differ after the
rerun: it must be 0. The ``kill``/``enospc`` rows stub the report's two plots (as the tests do; they
are not compared and take most of a tiny run's time), the ``--jobs 2`` rows draw them.

    PYTHONPATH=src python bench/faults.py --tmpfs        # ~20-30 min on 2 busy CPU cores
    PYTHONPATH=src python bench/faults.py --quick        # a few injections of each kind
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the harness the tests use

from fault_harness import (  # noqa: E402
    count_points,
    differences,
    leftovers,
    results,
    run_cli,
    run_forked,
    run_inprocess,
    stub_plot,
    unreadable,
    write_case,
)
from robustprune import utils  # noqa: E402
from robustprune.utils import FAULT_ENV, DiskFullError  # noqa: E402


class Tally:
    """Rows of the fault table: (kind, point) -> injected, survived, unreadable files, differing results."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[int]] = {}
        self.notes: list[str] = []

    def add(self, kind: str, point: str, *, ended_ok: bool, bad_files: list[str], diffs: list[str],
            temp: list[str], label: str) -> None:
        row = self.rows.setdefault((kind, point), [0, 0, 0, 0])
        survived = ended_ok and not bad_files and not diffs and not temp
        row[0] += 1
        row[1] += survived
        row[2] += len(bad_files)
        row[3] += len(diffs)
        if not survived:
            self.notes.append(f"{label}: ended_ok={ended_ok} unreadable={bad_files} temp={temp} diffs={diffs[:3]}")
        print(f"  {label}: {'survived' if survived else 'NOT SURVIVED'}", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| fault | point | injected | survived | files left unreadable | results differing | data lost |",
                 "|---|---|---|---|---|---|---|"]
        tot = [0, 0, 0, 0]
        for (kind, point), (n, ok, bad, diff) in self.rows.items():
            lines.append(f"| {kind} | {point} | {n} | {ok} | {bad} | {diff} | {bad + diff} |")
            tot = [a + b for a, b in zip(tot, (n, ok, bad, diff), strict=True)]
        lines.append(f"| **all** | | **{tot[0]}** | **{tot[1]}** | {tot[2]} | {tot[3]} | **{tot[2] + tot[3]}** |")
        return "\n".join(lines)


def _pick(total: int, quick: bool) -> list[int]:
    return sorted({1, (total + 1) // 2, total}) if quick else list(range(1, total + 1))


def forked_kills(tally: Tally, suite: Path, work: Path, counts: dict[str, int], ref: dict[str, Any],
                 quick: bool) -> None:
    for point, total in sorted(counts.items()):
        for n in _pick(total, quick):
            out = work / f"kill-{point}-{n}"
            status = run_forked(suite, out, f"{point}:{n}:kill")
            bad = unreadable(out)
            run_inprocess(suite, out)
            tally.add("kill -9 (--jobs 1)", point, ended_ok=status == -signal.SIGKILL, bad_files=bad,
                      diffs=differences(results(out), ref), temp=leftovers(out), label=f"{point}:{n}:kill")
            shutil.rmtree(out)


def full_disk(tally: Tally, suite: Path, work: Path, counts: dict[str, int], ref: dict[str, Any],
              every: bool) -> None:
    for n in _pick(counts["atomic-write"], not every):
        out = work / f"enospc-{n}"
        utils._fault_hits.clear()
        os.environ[FAULT_ENV] = f"atomic-write:{n}:enospc"
        try:
            run_inprocess(suite, out)
            named = False
        except DiskFullError as e:
            named = str(out) in str(e) and "no space left on device" in str(e)
        finally:
            del os.environ[FAULT_ENV]
        bad, temp = unreadable(out), leftovers(out)
        run_inprocess(suite, out)
        tally.add("disk full (ENOSPC)", "atomic-write", ended_ok=named, bad_files=bad,
                  diffs=differences(results(out), ref), temp=temp + leftovers(out), label=f"atomic-write:{n}:enospc")
        shutil.rmtree(out)


def jobs2(tally: Tally, suite: Path, work: Path, ref_cli: dict[str, Any], quick: bool) -> None:
    faults = ["train-step:6:killgroup", "train-step:6:kill", "train-step:6:killparent", "eval-batch:1:killgroup"]
    if not quick:
        faults[1:1] = ["checkpoint-written:2:killgroup"]
    for fault in faults:
        out = work / f"jobs2-{fault.replace(':', '-')}"
        proc = run_cli(suite, out, fault, jobs=2)
        ended_ok = proc.returncode == (2 if fault.endswith(":kill") else -signal.SIGKILL)
        bad = unreadable(out)
        rerun = run_cli(suite, out, jobs=2)
        diffs = (differences(results(out), ref_cli) if rerun.returncode == 0
                 else [f"rerun failed: {rerun.stderr[-300:]}"])
        point, _, action = fault.rpartition(":")
        tally.add(f"--jobs 2: {action}", point.split(":")[0], ended_ok=ended_ok, bad_files=bad, diffs=diffs,
                  temp=leftovers(out), label=f"--jobs 2 {fault} (exit {proc.returncode})")
        shutil.rmtree(out)


def second_runner(tally: Tally, suite: Path, work: Path, ref: dict[str, Any]) -> None:
    out = work / "lock"
    pid = os.fork()
    if pid == 0:
        try:
            utils._fault_hits.clear()
            os.environ[FAULT_ENV] = "train-step:3:stop"
            run_inprocess(suite, out)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, os.WUNTRACED)
    refused = False
    try:
        run_inprocess(suite, out)
    except ValueError as e:
        refused = f"in use by another robustprune compare (pid {pid})" in str(e)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    bad = unreadable(out)
    run_inprocess(suite, out)
    tally.add("second compare while one runs", "train-step", ended_ok=os.WIFSTOPPED(status) and refused,
              bad_files=bad, diffs=differences(results(out), ref), temp=leftovers(out), label="lock")


def tmpfs(tally: Tally, suite: Path, work: Path) -> None:
    mnt = work / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        tally.notes.append("tmpfs: could not mount a 1 MiB tmpfs (not root?); row skipped")
        return
    try:
        try:
            run_inprocess(suite, mnt / "suite")
            named = False
        except DiskFullError:
            named = True
        tally.add("real full disk (1 MiB tmpfs)", "first write that does not fit", ended_ok=named,
                  bad_files=unreadable(mnt / "suite"), diffs=[], temp=leftovers(mnt / "suite"), label="tmpfs")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="kill at the first, middle and last pass of each point only "
                    "(default: every pass), and the basic --jobs 2 faults only")
    ap.add_argument("--enospc-all", dest="enospc_all", action="store_true",
                    help="a full disk at every atomic write (default: the first, middle and last)")
    ap.add_argument("--tmpfs", action="store_true", help="also fill a real 1 MiB tmpfs (needs root)")
    ap.add_argument("--no-jobs2", dest="jobs2", action="store_false", help="skip the --jobs 2 subprocess runs")
    args = ap.parse_args()
    t0 = time.time()
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="robustprune-faults-") as tmp:
        work = Path(tmp)
        suite, _ = write_case(work)
        import robustprune.reports.report as report

        draw: list[Callable[..., Any]] = [report.plot_vulnerability, report.plot_robust_vs_memory]
        report.plot_vulnerability = report.plot_robust_vs_memory = stub_plot  # type: ignore[assignment]
        counts = count_points(suite, work / "reference")
        ref = results(work / "reference")
        print(f"fault points passed by an uninterrupted run: {counts}", file=sys.stderr)
        forked_kills(tally, suite, work, counts, ref, args.quick)
        full_disk(tally, suite, work, counts, ref, args.enospc_all)
        second_runner(tally, suite, work, ref)
        if args.tmpfs:
            tmpfs(tally, suite, work)
        report.plot_vulnerability, report.plot_robust_vs_memory = draw  # type: ignore[assignment]
        if args.jobs2:
            ref_proc = run_cli(suite, work / "reference-cli", jobs=2)
            if ref_proc.returncode != 0:
                raise SystemExit(f"reference --jobs 2 run failed: {ref_proc.stderr[-500:]}")
            ref_cli = results(work / "reference-cli")
            tally.notes.append(f"--jobs 2 reference equals the in-process reference: "
                               f"{differences(ref_cli, ref) == []}")
            jobs2(tally, suite, work, ref_cli, args.quick)
    print(tally.markdown())
    print()
    print(f"{platform.node()} / {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{time.time() - t0:.0f} s")
    for note in tally.notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
