"""bench/epoch_history.py: epoch times read from a run's newest checkpoint, the epochs asked for only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from repo_scripts import load_script


def _suite(tmp_path: Path, runs: dict[str, list[float]]) -> Path:
    for name, secs in runs.items():
        ckpt = tmp_path / "suite" / "runs" / name / "checkpoints"
        (ckpt / f"epoch-{len(secs):04d}").mkdir(parents=True)
        history = [{"epoch": i + 1, "time_s": s, "acc": 0.5} for i, s in enumerate(secs)]
        torch.save({"epoch": len(secs), "history": history}, ckpt / f"epoch-{len(secs):04d}" / "state.pt")
        (ckpt / "LATEST").write_text(f"epoch-{len(secs):04d}\n")
    return tmp_path / "suite"


def test_epoch_history_reads_the_asked_epochs_and_their_ratio(tmp_path: Path) -> None:
    module = load_script("bench/epoch_history.py", "epoch_history")
    suite = _suite(tmp_path, {"a": [300.0, 70.0, 72.0, 80.0], "b": [400.0, 400.0, 90.0, 100.0, 95.0]})
    out = tmp_path / "rec.json"
    assert module.main([str(suite), "--runs", "a=2-4,b=3-9", "--ratio", "b/a", "--conditions", "idle",
                        "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["runs"]["a"]["epochs"] == [2, 4] and rec["runs"]["a"]["median_s"] == 72.0
    assert rec["runs"]["b"]["time_s"] == {"3": 90.0, "4": 100.0, "5": 95.0}
    assert rec["runs"]["b"]["checkpoint_epoch"] == 5
    assert rec["ratio"] == {"runs": ["b", "a"], "median_ratio": round(95.0 / 72.0, 3)}
    assert rec["conditions"] == "idle" and rec["command"] == (
        "python bench/epoch_history.py SUITE --runs a=2-4,b=3-9 --ratio b/a --conditions idle --out OUT")


@pytest.mark.parametrize("runs", ["a", "a=3", "a=4-2", "a=0-2", "=1-2x", ""])
def test_epoch_history_names_a_bad_span(runs: str) -> None:
    module = load_script("bench/epoch_history.py", "epoch_history")
    with pytest.raises(ValueError, match="--runs"):
        module.parse_runs(runs)


def test_epoch_history_refuses_what_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = load_script("bench/epoch_history.py", "epoch_history")
    suite = _suite(tmp_path, {"a": [70.0, 71.0]})
    out = tmp_path / "rec.json"
    assert module.main([str(suite), "--runs", "a=5-9", "--conditions", "x", "--out", str(out)]) == 2
    assert "no epoch of 5-9" in capsys.readouterr().err
    assert module.main([str(suite), "--runs", "zz=1-2", "--conditions", "x", "--out", str(out)]) == 2
    assert "zz has no checkpoints/LATEST" in capsys.readouterr().err
    assert module.main([str(suite), "--runs", "a=1-2", "--ratio", "a/q", "--conditions", "x", "--out", str(out)]) == 2
    assert "--ratio 'a/q'" in capsys.readouterr().err and not out.exists()
