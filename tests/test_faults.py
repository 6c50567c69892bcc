"""Faults survived: a suite killed (SIGKILL) anywhere, stopped, or out of disk space, then rerun,
gives every card, the table and the weights (bit for bit) of an uninterrupted run, and leaves no
half-written file. Kills are injected at named points by ``$ROBUSTPRUNE_FAULT``
(``robustprune.utils.fault_point``); the harness is ``tests/fault_harness.py``. The default run
takes a few kill points; ``-m slow`` kills at every point an uninterrupted run passes, and runs
``--jobs 2`` suites as subprocesses."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fault_harness import (
    cli_command,
    cli_env,
    count_points,
    differences,
    group_alive,
    leftovers,
    results,
    run_cli,
    run_forked,
    run_inprocess,
    stub_plot,
    unreadable,
    wait_for,
    write_case,
)
from robustprune import utils
from robustprune.cli import main
from robustprune.utils import FAULT_ENV, DiskFullError


@pytest.fixture(scope="module", autouse=True)
def _stub_plots() -> Iterator[None]:
    """The report's plots are not compared and take most of the time: stubbed in this module's
    in-process runs (the ``--jobs 2`` subprocesses draw them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("robustprune.reports.report.plot_vulnerability", stub_plot)
        mp.setattr("robustprune.reports.report.plot_robust_vs_memory", stub_plot)
        yield


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny suite, its uninterrupted results, and how often that run passes each fault point."""
    root = tmp_path_factory.mktemp("faults")
    suite, data = write_case(root)
    counts = count_points(suite, root / "reference")
    return {"suite": suite, "data": data, "counts": counts, "reference": results(root / "reference"),
            "root": root}


@pytest.fixture(autouse=True)
def _no_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    monkeypatch.setattr(utils, "_fault_hits", {})


def _check_survived(case: dict[str, Any], out: Path) -> None:
    """Rerun without a fault: the results equal the reference's, and nothing temporary is left."""
    run_inprocess(case["suite"], out)
    assert differences(results(out), case["reference"]) == []
    assert leftovers(out) == []


def test_the_reference_passes_every_fault_point(case: dict[str, Any]) -> None:
    c = case["counts"]
    assert c["train-step"] == 16  # 2 runs x 2 epochs x 128/32 steps
    assert c["checkpoint-written"] == c["checkpoint-renamed"] == 4
    assert c["eval-batch"] == 4 and c["task-done"] == 4
    assert c["atomic-write"] > 20
    assert len(case["reference"]["weights"]) == 4  # 2 final + the 2 last checkpoints' weights


@pytest.mark.parametrize("fault", [
    "train-step:6",          # in the second epoch of the first run: resumed from its epoch-1 checkpoint
    "checkpoint-written:2",  # epoch 2's files written, not yet renamed into place
    "checkpoint-renamed:2",  # renamed, LATEST still names epoch 1
    "eval-batch:1",          # during the first evaluation
])
def test_killed_then_rerun_equals_an_uninterrupted_run(case: dict[str, Any], tmp_path: Path, fault: str) -> None:
    out = tmp_path / "suite"
    assert run_forked(case["suite"], out, f"{fault}:kill") == -signal.SIGKILL
    assert (out / "runs").is_dir() and not (out / "table.md").exists()
    assert unreadable(out) == []  # what the killed run left is whole
    _check_survived(case, out)


def test_killed_between_writing_and_renaming_a_file(case: dict[str, Any], tmp_path: Path) -> None:
    """``atomic-write:n``: the n-th file of the run (here half-way: a checkpoint, a card or a
    report file) is written and synced under its temporary name when the process dies."""
    out = tmp_path / "suite"
    assert run_forked(case["suite"], out, f"atomic-write:{case['counts']['atomic-write'] // 2}") == -signal.SIGKILL
    assert any(p.endswith(".tmp") or ".tmp-" in p for p in leftovers(out))  # the kill left its temporary file
    assert unreadable(out) == []
    _check_survived(case, out)


def test_a_second_runner_is_refused_while_the_first_runs(case: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The first runner is stopped (SIGSTOP) inside training, alive and holding the directory."""
    out = tmp_path / "suite"
    pid = os.fork()
    if pid == 0:
        try:
            utils._fault_hits.clear()
            os.environ[FAULT_ENV] = "train-step:3:stop"
            run_inprocess(case["suite"], out)
        finally:
            os._exit(0)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        with pytest.raises(ValueError, match=f"{out} is in use by another robustprune compare \\(pid {pid}\\)"):
            run_inprocess(case["suite"], out)
        assert main(["compare", str(case["suite"]), "--out", str(out), "--no-progress"]) == 2
        assert f"in use by another robustprune compare (pid {pid})" in capsys.readouterr().err
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    _check_survived(case, out)  # the dead runner's lock is taken over


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_full_disk_is_a_named_error_and_leaves_nothing_half_written(case: dict[str, Any], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      which: str) -> None:
    n = case["counts"]["atomic-write"]
    k = {"first": 1, "middle": n // 2, "last": n}[which]
    out = tmp_path / "suite"
    monkeypatch.setenv(FAULT_ENV, f"atomic-write:{k}:enospc")
    with pytest.raises(DiskFullError, match=f"cannot write {out}/.*: no space left on device") as err:
        run_inprocess(case["suite"], out)
    assert not Path(str(err.value).split()[2].rstrip(":")).exists()  # a new file: not there, not half there
    assert leftovers(out) == [] and unreadable(out) == []  # every file there is whole
    monkeypatch.delenv(FAULT_ENV)
    _check_survived(case, out)


def test_a_full_disk_in_the_cli_is_one_line(case: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(FAULT_ENV, "atomic-write:3:enospc")
    assert main(["compare", str(case["suite"]), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"robustprune compare: error: cannot write {tmp_path / 's'}")
    assert "no space left on device" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_real_full_filesystem(case: dict[str, Any], tmp_path: Path) -> None:
    """A 1 MiB tmpfs (root only): the writers' own errors (torch.save's has no errno) become the
    named error, and the directory holds no temporary file."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        with pytest.raises(DiskFullError, match="no space left on device"):
            run_inprocess(case["suite"], mnt / "suite")
        assert leftovers(mnt / "suite") == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---------------------------------------------------------------- exhaustive, and --jobs 2 (slow)


@pytest.mark.slow
def test_killed_at_every_point_then_rerun_equals_an_uninterrupted_run(case: dict[str, Any], tmp_path: Path) -> None:
    failures = []
    for point, total in sorted(case["counts"].items()):
        for n in range(1, total + 1):
            out = tmp_path / f"{point}-{n}"
            status = run_forked(case["suite"], out, f"{point}:{n}:kill")
            run_inprocess(case["suite"], out)
            if status != -signal.SIGKILL or results(out) != case["reference"] or leftovers(out):
                failures.append((point, n, status, leftovers(out)))
            shutil.rmtree(out)
    assert failures == []


@pytest.mark.slow
@pytest.mark.parametrize("fault", [
    "train-step:6:killgroup",   # both workers training: the runner and both workers die at once
    "train-step:6:kill",        # one worker dies: the runner names the task and stops
    "train-step:6:killparent",  # the runner dies: its workers must not live on
    "eval-batch:1:killgroup",
])
def test_jobs_2_killed_then_rerun_equals_an_uninterrupted_run(case: dict[str, Any], tmp_path: Path,
                                                              fault: str) -> None:
    out = tmp_path / "suite"
    proc = run_cli(case["suite"], out, fault, jobs=2)
    assert proc.returncode != 0, proc.stderr
    if fault.endswith(":kill"):
        assert proc.returncode == 2 and "worker" in proc.stderr and "rerun" in proc.stderr, proc.stderr
    rerun = run_cli(case["suite"], out, jobs=2)
    assert rerun.returncode == 0, rerun.stderr
    assert results(out) == case["reference"] and leftovers(out) == []


@pytest.mark.slow
def test_jobs_2_workers_exit_with_their_runner(case: dict[str, Any], tmp_path: Path) -> None:
    proc = subprocess.Popen(cli_command(case["suite"], tmp_path / "s", jobs=2), env=cli_env("train-step:3:killparent"),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=600)
        assert proc.returncode == -signal.SIGKILL
        assert wait_for(lambda: not _group_has_workers(proc.pid), timeout=10)  # the orphaned workers exit
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def _group_has_workers(pgid: int) -> bool:
    if not group_alive(pgid):
        return False
    ps = subprocess.run(["ps", "-o", "pid=,stat=", "-s", str(pgid)], capture_output=True, text=True).stdout
    return any("Z" not in line.split()[1] for line in ps.strip().splitlines() if line.strip())


# ---------------------------------------------------------------- the hook and the disk-full error themselves


def test_the_fault_hook_is_inert_unless_set_and_acts_on_the_nth_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        utils.fault_point("atomic-write")  # unset: nothing happens
    monkeypatch.setenv(FAULT_ENV, "train-step:2:enospc")
    utils.fault_point("atomic-write")  # another point: nothing
    utils.fault_point("train-step")  # the first pass: nothing
    with pytest.raises(OSError, match="No space left on device"):
        utils.fault_point("train-step")
    utils.fault_point("train-step")  # only the n-th pass acts
    monkeypatch.setenv(FAULT_ENV, "eval-batch:1:explode")
    with pytest.raises(ValueError, match="unknown action 'explode'"):
        utils.fault_point("eval-batch")


def test_a_writer_failing_on_a_full_disk_without_errno_is_named(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.save reports a full disk as RuntimeError('... unexpected pos ...'): recognised by the
    free space left, the target untouched and no temporary file left."""
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")

    def torch_like(p: Path) -> None:
        p.write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    full = os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(utils.os, "statvfs", lambda d: full)
    with pytest.raises(DiskFullError, match=f"cannot write {target}: no space left on device .*unexpected pos"):
        utils.atomic_write(target, torch_like)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="unexpected pos"):  # with room on the disk it stays a bug
        utils.atomic_write(target, torch_like)
