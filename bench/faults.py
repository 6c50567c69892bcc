"""Benchmark: faults survived by the suite runner (``robustprune compare``).

Runs a tiny suite (LeNet5-Caffe, a standard and an AT run of 2 epochs on 128 generated images,
PGD-2 on 64 test points; ``tests/fault_harness.py``) once uninterrupted, then again and again with
one fault injected through ``$ROBUSTPRUNE_FAULT`` (``robustprune.utils.fault_point``), each followed
by a rerun without the fault:

* ``kill``: SIGKILL at the n-th pass of a point, for every n an uninterrupted run passes it
  (``--jobs 1``, a forked child of this process);
* ``enospc``: a full disk (``OSError(ENOSPC)``) at the n-th atomic write: the first, middle and
  last (every n with ``--enospc-all``; in-process); it must be the named ``DiskFullError``;
* ``jobs2``: ``python -m robustprune compare --jobs 2`` subprocesses with both workers training: the
  whole process group killed at several steps, one worker killed, the runner killed (its workers
  must exit), all killed during evaluation;
* ``second-runner``: a second ``compare`` on the directory while the first is stopped (SIGSTOP) inside training: it
  must be refused;
* ``tmpfs`` (root only): the suite written to a 1 MiB tmpfs: a real full disk;
* ``ray``: ``python -m robustprune compare --executor ray --shard-size 24`` subprocesses (a local Ray
  cluster with one CPU a core, the suite's evaluation in batches of 8, so 3 shards a run), whose Ray
  workers inherit the fault: a worker SIGKILLed at its 6th training step (mid epoch 2, after the
  epoch-1 checkpoint), which Ray retries from that checkpoint (the command must end with both
  trainings ``resumed``); and a worker SIGKILLed after its 3rd evaluation batch, inside a 3-batch
  shard on every retry, so the command stops with ``WorkerDied`` naming the shard (exit 2). Then the
  same command again without the fault; the shards it evaluates must be exactly those with no record
  left by the faulted run. The reference is an uninterrupted ``--executor ray`` run of the same
  suite. Needs the ``ray`` extra.

An injection is *survived* when the faulted run ended as expected (killed, or the named error),
every file it left outside temporary names reads whole, and the rerun leaves every card, the table
(wall times aside) and every weights file (bit for bit) equal to the uninterrupted run's, with no
temporary file left. *Data lost* counts files left unreadable plus results that differ after the
rerun: it must be 0. The ``kill``/``enospc`` rows stub the report's two plots (as the tests do; they
are not compared and take most of a tiny run's time), the ``jobs2`` and ``ray`` rows draw them.

``--only GROUP[,GROUP]`` runs those groups (default: all but ``tmpfs``, which ``--tmpfs`` adds, and
``jobs2`` unless ``--no-jobs2``); ``--json PATH`` also writes the tally (per group: injections,
survived, data lost, its rows and one entry per injection) with the date, machine, command line,
git commit and wall time. The tables are printed either way.

    PYTHONPATH=src python bench/faults.py --tmpfs        # ~20-30 min on 2 busy CPU cores
    PYTHONPATH=src python bench/faults.py --quick        # a few injections of each kind
    PYTHONPATH=src python bench/faults.py --only ray --json bench/faults_ray.json   # ~2-3 min
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

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
from robustprune.utils import FAULT_ENV, DiskFullError, atomic_write_text  # noqa: E402


class Tally:
    """Rows of the fault table: (group, fault, point) -> injected, survived, unreadable files, differing
    results; and one entry per injection (what :meth:`record` writes)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, str], list[int]] = {}
        self.injections: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def add(self, group: str, kind: str, point: str, *, ended_ok: bool, bad_files: list[str], diffs: list[str],
            temp: list[str], label: str, **details: Any) -> None:
        row = self.rows.setdefault((group, kind, point), [0, 0, 0, 0])
        survived = ended_ok and not bad_files and not diffs and not temp
        row[0] += 1
        row[1] += survived
        row[2] += len(bad_files)
        row[3] += len(diffs)
        self.injections.append({"group": group, "fault": kind, "point": point, "label": label, "ended_ok": ended_ok,
                                "survived": survived, "unreadable": bad_files, "temporary_left": temp,
                                "differences": diffs, **details})
        if not survived:
            self.notes.append(f"{label}: ended_ok={ended_ok} unreadable={bad_files} temp={temp} diffs={diffs[:3]}")
        print(f"  {label}: {'survived' if survived else 'NOT SURVIVED'}", file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| fault | point | injected | survived | files left unreadable | results differing | data lost |",
                 "|---|---|---|---|---|---|---|"]
        tot = [0, 0, 0, 0]
        for (_, kind, point), (n, ok, bad, diff) in self.rows.items():
            lines.append(f"| {kind} | {point} | {n} | {ok} | {bad} | {diff} | {bad + diff} |")
            tot = [a + b for a, b in zip(tot, (n, ok, bad, diff), strict=True)]
        lines.append(f"| **all** | | **{tot[0]}** | **{tot[1]}** | {tot[2]} | {tot[3]} | **{tot[2] + tot[3]}** |")
        return "\n".join(lines)

    def groups(self) -> dict[str, Any]:
        """Per group: injections, survived, data lost, the table's rows and every injection."""
        out: dict[str, Any] = {}
        for (group, kind, point), (n, ok, bad, diff) in self.rows.items():
            g = out.setdefault(group, {"injections": 0, "survived": 0, "files_unreadable": 0, "results_differing": 0,
                                       "data_lost": 0, "rows": [], "details": []})
            g["rows"].append({"fault": kind, "point": point, "injected": n, "survived": ok, "files_unreadable": bad,
                              "results_differing": diff, "data_lost": bad + diff})
            for key, value in (("injections", n), ("survived", ok), ("files_unreadable", bad),
                               ("results_differing", diff), ("data_lost", bad + diff)):
                g[key] += value
        for inj in self.injections:
            out[inj["group"]]["details"].append(inj)
        return out


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
            tally.add("kill", "kill -9 (--jobs 1)", point, ended_ok=status == -signal.SIGKILL, bad_files=bad,
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
        tally.add("enospc", "disk full (ENOSPC)", "atomic-write", ended_ok=named, bad_files=bad,
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
        tally.add("jobs2", f"--jobs 2: {action}", point.split(":")[0], ended_ok=ended_ok, bad_files=bad, diffs=diffs,
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
    tally.add("second-runner", "second compare while one runs", "train-step",
              ended_ok=os.WIFSTOPPED(status) and refused, bad_files=bad, diffs=differences(results(out), ref),
              temp=leftovers(out), label="lock")


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
        tally.add("tmpfs", "real full disk (1 MiB tmpfs)", "first write that does not fit", ended_ok=named,
                  bad_files=unreadable(mnt / "suite"), diffs=[], temp=leftovers(mnt / "suite"), label="tmpfs")
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


#: the ``--executor ray`` rows: shards of 24 of the 64 test points, evaluated in batches of 8 (3, 3, 2)
RAY_OPTIONS = ("--executor", "ray", "--shard-size", "24")
RAY_EVAL_BATCH = 8
SHARD_LINE = re.compile(r"shard (\S+) \[(\d+), (\d+)\): (reused|evaluated)")


def ray_case(work: Path, suite: Path) -> Path:
    """The tiny suite with its evaluation in batches of 8, so that a shard of 24 points has 3 batches."""
    data = yaml.safe_load(suite.read_text())
    data["eval"]["batch_size"] = RAY_EVAL_BATCH
    path = work / "suite-ray.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_ray(suite: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    """``compare --executor ray`` (a local cluster of this machine's CPUs, started and stopped by the
    command) with progress lines, the fault inherited by its Ray workers."""
    return run_cli(suite, out, fault, timeout=1800, progress=True, extra=RAY_OPTIONS)


def shard_verbs(stderr: str) -> dict[str, str]:
    """``{"standard-s0@0-24": "evaluated" | "reused", ...}`` from a command's progress lines."""
    return {f"{m[1]}@{m[2]}-{m[3]}": m[4] for m in SHARD_LINE.finditer(stderr)}


def progress_lines(stderr: str) -> list[str]:
    """A command's task lines (``[3/10] train at-s0: resumed (3 s)``, ``[failed] ...``) and its error line,
    without the progress bar."""
    return [line.strip() for line in stderr.splitlines()
            if re.match(r"\[(\d+/\d+|failed)\] ", line) or line.startswith("robustprune compare: error")]


def ray_faults(tally: Tally, suite: Path, work: Path) -> None:
    ref_proc = run_ray(suite, work / "reference-ray")
    if ref_proc.returncode != 0:
        raise SystemExit(f"reference --executor ray run failed: {ref_proc.stderr[-800:]}")
    ref = results(work / "reference-ray")
    expected = set(shard_verbs(ref_proc.stderr))
    tally.notes.append(f"--executor ray: each command starts a local Ray cluster with this machine's "
                       f"{os.cpu_count()} CPUs (ray.init() without an address) and stops it at its end")
    tally.notes.append(f"--executor ray reference: {len(expected)} shards evaluated "
                       f"({', '.join(sorted(expected))})")
    for fault in ("train-step:6:kill", "eval-batch:3:kill"):
        point = fault.split(":")[0]
        out = work / f"ray-{fault.replace(':', '-')}"
        proc = run_ray(suite, out, fault)
        bad = unreadable(out)
        left = {f"{p.parts[-4]}@{p.stem}" for p in out.glob("runs/*/eval/*.shards/*.json")}
        rerun = run_ray(suite, out)
        verbs = shard_verbs(rerun.stderr)
        details: dict[str, Any] = {
            "exit": proc.returncode, "rerun_exit": rerun.returncode, "shard_records_left": sorted(left),
            "rerun_shards": verbs, "lines": progress_lines(proc.stderr), "rerun_lines": progress_lines(rerun.stderr)}
        if point == "train-step":  # Ray's retry resumes from the epoch-1 checkpoint and finishes the command
            ended_ok = proc.returncode == 0 and sum(": resumed" in line for line in details["lines"]) == 2
        else:  # every retry of a 3-batch shard is killed: the command stops naming a shard task
            ended_ok = proc.returncode == 2 and "task shard:" in proc.stderr and "WorkerDied" in proc.stderr
            redo = {k for k, v in verbs.items() if v == "evaluated"}
            if set(verbs) != expected or redo != expected - left:
                ended_ok = False
                tally.notes.append(f"ray {fault}: shards left {sorted(left)}, rerun {verbs}")
        diffs = differences(results(out), ref) if rerun.returncode == 0 else [f"rerun failed: {rerun.stderr[-300:]}"]
        tally.add("ray", "Ray worker kill -9 (--executor ray)", point, ended_ok=ended_ok, bad_files=bad,
                  diffs=diffs, temp=leftovers(out), label=f"--executor ray {fault} (exit {proc.returncode})",
                  **details)
        shutil.rmtree(out)


GROUPS = ("kill", "enospc", "second-runner", "tmpfs", "jobs2", "ray")


def parse_groups(text: str) -> list[str]:
    """``--only``'s comma-separated groups; ``ArgumentTypeError`` naming an unknown one."""
    groups = [g.strip() for g in text.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        raise argparse.ArgumentTypeError(f"unknown group(s) {', '.join(map(repr, unknown)) or repr(text)}; "
                                         f"choose from {', '.join(GROUPS)}")
    return groups


def run_groups(groups: list[str], tally: Tally, work: Path, args: argparse.Namespace) -> None:
    suite, _ = write_case(work)
    import robustprune.reports.report as report

    draw: list[Callable[..., Any]] = [report.plot_vulnerability, report.plot_robust_vs_memory]
    report.plot_vulnerability = report.plot_robust_vs_memory = stub_plot  # type: ignore[assignment]
    ref: dict[str, Any] | None = None
    if {"kill", "enospc", "second-runner"} & set(groups):
        counts = count_points(suite, work / "reference")
        ref = results(work / "reference")
        print(f"fault points passed by an uninterrupted run: {counts}", file=sys.stderr)
        if "kill" in groups:
            forked_kills(tally, suite, work, counts, ref, args.quick)
        if "enospc" in groups:
            full_disk(tally, suite, work, counts, ref, args.enospc_all)
        if "second-runner" in groups:
            second_runner(tally, suite, work, ref)
    if "tmpfs" in groups:
        tmpfs(tally, suite, work)
    report.plot_vulnerability, report.plot_robust_vs_memory = draw  # type: ignore[assignment]
    if "jobs2" in groups:
        ref_proc = run_cli(suite, work / "reference-cli", jobs=2)
        if ref_proc.returncode != 0:
            raise SystemExit(f"reference --jobs 2 run failed: {ref_proc.stderr[-500:]}")
        ref_cli = results(work / "reference-cli")
        if ref is not None:
            diffs = differences(ref_cli, ref)
            tally.notes.append(f"--jobs 2 reference equals the in-process reference: {diffs == []}"
                               + (f" (differences: {diffs[:5]})" if diffs else ""))
        jobs2(tally, suite, work, ref_cli, args.quick)
    if "ray" in groups:
        ray_faults(tally, ray_case(work, suite), work)


def git_commit() -> dict[str, Any]:
    """This checkout's commit and the tracked files that differ from it (the code that ran)."""
    root = Path(__file__).resolve().parents[1]

    def git(*argv: str) -> str:
        proc = subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True)
        return proc.stdout.rstrip("\n") if proc.returncode == 0 else ""  # porcelain lines start with a space

    return {"commit": git("rev-parse", "HEAD").strip() or None,
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]}


def versions(groups: list[str]) -> dict[str, str]:
    import torch

    out: dict[str, str] = {"torch": str(torch.__version__)}
    if "ray" in groups:
        import ray

        out["ray"] = ray.__version__
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="kill at the first, middle and last pass of each point only "
                    "(default: every pass), and the basic --jobs 2 faults only")
    ap.add_argument("--enospc-all", dest="enospc_all", action="store_true",
                    help="a full disk at every atomic write (default: the first, middle and last)")
    ap.add_argument("--tmpfs", action="store_true", help="also fill a real 1 MiB tmpfs (needs root)")
    ap.add_argument("--no-jobs2", dest="jobs2", action="store_false", help="skip the --jobs 2 subprocess runs")
    ap.add_argument("--only", type=parse_groups, default=None, metavar="GROUP[,GROUP]",
                    help=f"run only these groups of injections, of {', '.join(GROUPS)} "
                         "(default: all but tmpfs, which --tmpfs adds, and jobs2 unless --no-jobs2)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="also write the tally, date, machine, command line, git commit and wall time to PATH")
    args = ap.parse_args()
    if args.only is not None:
        groups = args.only
    else:
        groups = [g for g in GROUPS if (g != "tmpfs" or args.tmpfs) and (g != "jobs2" or args.jobs2)]
    tally = Tally()
    if "ray" in groups and importlib.util.find_spec("ray") is None:
        if args.only is not None:
            raise SystemExit("--only ray needs the ray extra: pip install -e '.[ray]'")
        groups.remove("ray")
        tally.notes.append("ray group skipped: the ray extra is not installed (pip install -e '.[ray]')")
    started, code = datetime.datetime.now(datetime.UTC), git_commit()  # the code that runs, before it runs
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="robustprune-faults-") as tmp:
        run_groups(groups, tally, Path(tmp), args)
    wall = time.time() - t0
    print(tally.markdown())
    print()
    print(f"{platform.node()} / {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {wall:.0f} s")
    for note in tally.notes:
        print(f"- {note}")
    if args.json is not None:
        record = {"date": started.isoformat(timespec="seconds"), "command": shlex.join(["python", *sys.argv]),
                  "git": code, "wall_s": round(wall, 1), "groups_run": groups,
                  "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "python": platform.python_version(),
                              "load_average_at_end": list(os.getloadavg())},
                  "versions": versions(groups),
                  "groups": tally.groups(), "notes": tally.notes}
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
