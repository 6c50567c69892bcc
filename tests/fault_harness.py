"""Fault injection for the suite runner, shared by ``tests/test_faults.py`` and ``bench/faults.py``.

A tiny suite (LeNet5-Caffe, two runs of 2 epochs on 128 generated images, PGD-2 on 64 test points) is
run once uninterrupted (the reference), then again with ``$ROBUSTPRUNE_FAULT`` set
(:func:`robustprune.utils.fault_point`) so that the process is SIGKILLed, stopped or told the disk is
full at a named point, then rerun without a fault. :func:`results` reads what a suite directory holds
that must not depend on the interruption: every card and the table with the wall times left out,
and the bytes of every weights file.

A fault run is either a forked child of this process (:func:`run_forked`: fast, torch is already
imported; ``--jobs 1``) or a ``python -m robustprune compare`` subprocess (:func:`run_cli`: any
``--jobs``, its own process group).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from conftest import write_tiny_mnist
from robustprune import utils
from robustprune.compare import parse_suite, run_suite
from robustprune.utils import atomic_write

SRC = Path(__file__).resolve().parents[1] / "src"
#: card and table keys that hold measured time or when/where a file was made, not results
VOLATILE = {"wall_s", "total_wall_s", "epoch_time_s", "time_s", "created", "train_min", "min_per_epoch", "eval_min",
            "git_sha"}


def write_case(root: Path) -> tuple[Path, Path]:
    """Generated MNIST-like data and the tiny suite file in ``root``; returns (suite file, data dir)."""
    data = write_tiny_mnist(root / "data")
    suite = {
        "name": "faults", "seeds": [0],
        "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 2, "limit_train": 128,
                     "batch_size": 32, "adv_steps": 2, "adv_step_size": 0.1, "data_dir": str(data)},
        "runs": [{"id": "standard", "method": "standard"}, {"id": "at", "method": "at"}],
        "eval": {"attacks": ["pgd"], "eps": 0.3, "steps": 2, "step_size": 0.1, "limit": 64, "batch_size": 32},
    }
    path = root / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path, data


def run_inprocess(suite: Path, out: Path) -> None:
    """The suite in this process with one torch thread (as ``run_cli``'s ``--threads 1``)."""
    torch.set_num_threads(1)
    run_suite(parse_suite(yaml.safe_load(suite.read_text())), out, progress=False)


def stub_plot(cards: list[dict[str, Any]], path: Path) -> Path:
    """Stands in for the report's matplotlib plots where only the table is compared (they take most
    of a tiny suite's time); still one atomic write, like a plot."""
    atomic_write(path, lambda p: p.write_bytes(b"plot stub\n"))
    return path


def run_forked(suite: Path, out: Path, fault: str | None) -> int:
    """Run the suite in a forked child with ``$ROBUSTPRUNE_FAULT=fault``; returns its wait status
    as ``subprocess`` does: the exit code, or minus the signal that ended it."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the test
        code = 1
        try:
            utils._fault_hits.clear()
            if fault is None:
                os.environ.pop(utils.FAULT_ENV, None)
            else:
                os.environ[utils.FAULT_ENV] = fault
            run_inprocess(suite, out)
            code = 0
        except utils.DiskFullError:
            code = 3
        except BaseException:  # noqa: BLE001 - any other failure is reported as exit 1
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def run_cli(suite: Path, out: Path, fault: str | None = None, *, jobs: int = 1, timeout: float = 600,
            progress: bool = False, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m robustprune compare`` in a new process group (so ``killgroup`` ends it and its
    workers, and nothing else); a group that outlives its leader is killed before returning."""
    cmd = cli_command(suite, out, jobs=jobs, progress=progress, extra=extra)
    proc = subprocess.Popen(cmd, env=cli_env(fault), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        _reap_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def cli_command(suite: Path, out: Path, *, jobs: int = 1, progress: bool = False,
                extra: Sequence[str] = ()) -> list[str]:
    """The ``compare`` command line (``extra``: more options, e.g. ``--executor ray``)."""
    return [sys.executable, "-m", "robustprune", "compare", str(suite), "--out", str(out),
            "--progress" if progress else "--no-progress", "--jobs", str(jobs), "--threads", "1", *extra]


def cli_env(fault: str | None) -> dict[str, str]:
    """This environment, running this checkout's robustprune, with ``$ROBUSTPRUNE_FAULT=fault`` (or unset)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop(utils.FAULT_ENV, None)
    if fault is not None:
        env[utils.FAULT_ENV] = fault
    return env


def _reap_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _strip(obj: Any, out: str) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v, out) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v, out) for v in obj]
    if isinstance(obj, str):
        return obj.replace(out, "<OUT>")
    return obj


def _table_md(text: str) -> str:
    """table.md without its wall-time section."""
    head, sep, rest = text.partition("## Wall time")
    return head + ("" if not sep else rest[rest.find("\nNotes:"):])


def results(out: Path) -> dict[str, Any]:
    """What must not depend on an interruption: cards and table (times left out), weights' bytes."""
    res: dict[str, Any] = {"cards": {}, "weights": {}}
    for card in sorted((out / "cards").glob("*.json")):
        res["cards"][card.name] = _strip(json.loads(card.read_text()), str(out))
    for card in sorted((out / "runs").glob("*/eval/*.json")):
        res["cards"][str(card.relative_to(out))] = _strip(json.loads(card.read_text()), str(out))
    res["table"] = _strip(json.loads((out / "table.json").read_text()), str(out))
    res["table_md"] = _table_md((out / "table.md").read_text())
    for w in sorted(out.glob("runs/*/model.safetensors")) + sorted(out.glob("runs/*/checkpoints/*/*.safetensors")):
        res["weights"][str(w.relative_to(out))] = hashlib.sha256(w.read_bytes()).hexdigest()
    return res


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two :func:`results` differ (paths into the nested data), for failure messages."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {str(a)[:80]} != {str(b)[:80]}"]


def unreadable(out: Path) -> list[str]:
    """Files of a suite directory (temporary ones aside) that do not read whole: what a fault must
    never leave, even before the rerun."""
    from safetensors.torch import load_file

    bad = []
    for p in sorted(out.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(out).parts):
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text())
            elif p.suffix == ".yaml":
                yaml.safe_load(p.read_text())
            elif p.suffix == ".safetensors":
                load_file(str(p))
            elif p.suffix == ".pt":
                torch.load(p, map_location="cpu", weights_only=True)
            elif p.name == "LATEST":
                assert (p.parent / p.read_text().strip()).is_dir()
            elif p.suffix == ".png":
                assert p.read_bytes().startswith((b"\x89PNG\r\n\x1a\n", b"plot stub"))
            elif p.suffix == ".md":
                assert p.read_text().startswith("# ")
        except Exception:  # noqa: BLE001 - any failure to read is the finding
            bad.append(str(p.relative_to(out)))
    return bad


def leftovers(out: Path) -> list[str]:
    """Temporary files and directories left in a suite directory (there should be none after a rerun)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".compare.lock")


def count_points(suite: Path, out: Path) -> dict[str, int]:
    """How often an uninterrupted run passes each fault point (run in this process, counted)."""
    counts: dict[str, int] = {}
    orig = utils.fault_point

    def counting(name: str) -> None:
        counts[name] = counts.get(name, 0) + 1

    # by name: robustprune.eval.evaluate is also a function the package exports
    modules = [utils] + [importlib.import_module(f"robustprune.{m}") for m in
                         ("compare.runner", "eval.evaluate", "train.checkpoint", "train.loop")]
    try:
        for m in modules:
            m.fault_point = counting  # type: ignore[attr-defined]
        run_inprocess(suite, out)
    finally:
        for m in modules:
            m.fault_point = orig  # type: ignore[attr-defined]
    return counts


def wait_for(pred: Any, timeout: float = 60.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False
