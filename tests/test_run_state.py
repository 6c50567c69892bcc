"""scripts/run_state.py: a suite's resumable state saved to a folder that travels (a repository) and
restored on another machine, where ``compare`` then reuses what was finished and resumes the rest."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

import robustprune.compare.runner as runner_mod
from repo_scripts import load_script
from robustprune.compare import parse_suite, run_suite

ROOT = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    return load_script("scripts/run_state.py")


def fake_suite(root: Path) -> Path:
    run = root / "runs" / "at-s0"
    for epoch in ("epoch-0001", "epoch-0002"):
        (run / "checkpoints" / epoch).mkdir(parents=True)
        (run / "checkpoints" / epoch / "state.pt").write_bytes(epoch.encode())
    (run / "checkpoints" / "LATEST").write_text("epoch-0002\n")
    (run / "config.yaml").write_text("method: at\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events").write_bytes(b"x")
    (root / ".compare.lock").write_text("123")
    (root / "cards").mkdir()
    (root / "cards" / "at-s0.json").write_text("{}")
    return root


def test_save_keeps_the_newest_checkpoint_and_leaves_out_logs_and_the_lock(tmp_path: Path) -> None:
    rs = _script()
    suite = fake_suite(tmp_path / "suite")
    assert rs.main(["save", str(suite), str(tmp_path / "state")]) == 0
    manifest = json.loads((tmp_path / "state" / "manifest.json").read_text())
    assert sorted(manifest) == ["cards/at-s0.json", "runs/at-s0/checkpoints/LATEST",
                                "runs/at-s0/checkpoints/epoch-0002/state.pt", "runs/at-s0/config.yaml"]
    assert not (tmp_path / "state" / "runs" / "at-s0" / "checkpoints" / "epoch-0001").exists()


def test_save_refuses_a_destination_whose_files_git_would_ignore(tmp_path: Path) -> None:
    """The state of the paper suite was once saved under bench/inflight/paper_cpu/ and committed while
    .gitignore's ``runs/`` left every run out: the commit carried a manifest and nothing to resume."""
    rs = _script()
    suite = fake_suite(tmp_path / "suite")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("runs/\n")
    with pytest.raises(ValueError, match=r"git ignores 3 of the files .*runs/at-s0/checkpoints/LATEST"):
        rs.save(suite, repo / "state")
    assert not (repo / "state").exists() and not (repo / "state.tmp").exists()
    with pytest.raises(ValueError, match=r"git ignores 3 of the files"):  # a destination not made yet
        rs.save(suite, repo / "new" / "deeper" / "state")
    assert not (repo / "new").exists()  # refused before any folder was made
    (repo / ".gitignore").write_text("runs/\n!/state/runs/\n")  # the project's own exception
    assert rs.main(["save", str(suite), str(repo / "state")]) == 0
    # and the repository's own .gitignore lets bench/inflight/*/runs travel
    probe = "bench/inflight/paper_cpu/runs/at-s0/checkpoints/LATEST"
    out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "--no-index", probe], capture_output=True,
                         check=False)
    assert out.returncode == 1, f"{probe} is ignored by the repository's .gitignore"


def test_restore_sets_the_saved_times_and_refuses_corrupt_files_and_existing_suites(tmp_path: Path) -> None:
    rs = _script()
    suite = fake_suite(tmp_path / "suite")
    card = suite / "cards" / "at-s0.json"
    os.utime(card, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    state = tmp_path / "state"
    assert rs.main(["save", str(suite), str(state)]) == 0
    for f in state.rglob("*"):  # a clone writes every file now, in no useful order
        if f.is_file():
            os.utime(f, None)
    out = tmp_path / "restored"
    assert rs.main(["restore", str(state), str(out)]) == 0
    assert (out / "cards" / "at-s0.json").stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert rs.main(["restore", str(state), str(out)]) == 2  # exists: refused without --force
    assert rs.main(["restore", str(state), str(out), "--force"]) == 0
    (state / "runs" / "at-s0" / "config.yaml").write_text("method: standard\n")
    with pytest.raises(ValueError, match=r"config\.yaml does not match its SHA-256"):
        rs.restore(state, tmp_path / "other")
    assert not (tmp_path / "other").exists() and not (tmp_path / "other.tmp").exists()


def test_a_restored_suite_reuses_its_finished_runs_and_cards(
        tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rs = _script()
    torch.manual_seed(0)
    suite = parse_suite({
        "name": "carry", "seeds": [0],
        "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 1, "limit_train": 64,
                     "batch_size": 32, "data_dir": str(tiny_mnist)},
        "runs": [{"id": "standard", "method": "standard"}],
        "eval": {"attacks": ["pgd"], "eps": 0.3, "steps": 1, "step_size": 0.3, "limit": 16},
    })
    first = tmp_path / "first"
    run_suite(suite, first, progress=False)
    state = tmp_path / "state"
    assert rs.main(["save", str(first), str(state)]) == 0
    weights = state / "runs" / "standard-s0" / "model.safetensors"
    for f in sorted(state.rglob("*.json")):  # cards written first, the weights last: as a clone may leave them
        os.utime(f, None)
    later = weights.stat().st_mtime_ns + 10_000_000_000
    os.utime(weights, ns=(later, later))
    second = tmp_path / "second"
    assert rs.main(["restore", str(state), str(second)]) == 0
    calls: list[str] = []
    trains: list[Any] = []
    monkeypatch.setattr(runner_mod, "evaluate_run", lambda run, **kw: calls.append(Path(run).name))
    monkeypatch.setattr(runner_mod, "fit", lambda *a, **kw: trains.append(a), raising=False)
    run_suite(suite, second, progress=False)
    assert calls == [] and trains == []
    a = json.loads((first / "table.json").read_text())["rows"][0]["metrics"]
    b = json.loads((second / "table.json").read_text())["rows"][0]["metrics"]
    assert a == b


def test_saved_records_name_no_machine_path_and_a_moved_run_resumes_where_it_now_is(
        tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.cli import main

    rs = _script()
    first = tmp_path / "first"
    run = first / "runs" / "std-s0"
    base = ["train", "--method", "standard", "--model", "lenet5-caffe", "--dataset", "mnist", "--limit-train", "64",
            "--batch-size", "32", "--no-progress", "--data-dir", str(tiny_mnist), "--out", str(run)]
    assert main([*base, "--epochs", "1"]) == 0
    state = tmp_path / "state"
    assert rs.main(["save", str(first), str(state)]) == 0
    for f in (state / "runs" / "std-s0").glob("*.*"):
        if f.suffix in (".yaml", ".json"):
            text = f.read_text()
            assert str(tmp_path) not in text and "DATA" in text, f
    moved = tmp_path / "moved"
    assert rs.main(["restore", str(state), str(moved)]) == 0
    new_run = moved / "runs" / "std-s0"
    assert main([*base[:-1], str(new_run), "--data-dir", str(tiny_mnist), "--epochs", "2", "--resume"]) == 0
    assert (new_run / "checkpoints" / "LATEST").read_text().strip() == "epoch-0002"
    assert not (run / "checkpoints" / "epoch-0002").exists()  # nothing written where the run used to be
