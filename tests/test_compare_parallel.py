"""Parallel suites (``compare --jobs N``): the sequential runner's weights and cards, every run started
after the run it starts from, a failed task named with its exception, bad counts refused."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from robustprune.cli import main
from robustprune.compare import parse_suite, plan_runs, plan_suite, run_suite
from robustprune.compare.parallel import TaskFailed
from robustprune.config import save_yaml, to_dict
from test_compare import tiny_suite

KEYS = ("standard-s0", "anp-vs-s0", "at-s7")


def _numbers(card: dict[str, Any]) -> dict[str, Any]:
    """What a card measures (not wall times, paths or latency)."""
    ev = card["eval"]
    return {"clean": ev["clean_acc"], "n": ev["n"], "sparsity": ev["sparsity"],
            "attacks": [(a["name"], a["robust_acc"], a.get("vulnerability")) for a in ev["attacks"]]}


def _mtime(path: Path) -> int:
    return path.stat().st_mtime_ns


def test_parallel_matches_sequential_and_waits_for_dependencies(tiny_mnist: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    suite = parse_suite(tiny_suite(tiny_mnist))
    seq, par = tmp_path / "seq", tmp_path / "par"
    run_suite(suite, seq, progress=False, threads=1)
    written = run_suite(suite, par, progress=True, jobs=2, threads=1)
    err = capsys.readouterr().err
    for line in ("train standard-s0: trained", "train anp-vs-s0: trained", "train at-s7: trained",
                 "evaluate standard-s0: evaluated", "evaluate anp-vs-s0: evaluated"):
        assert line in err
    assert "[5/5]" in err and {p.name for p in written} >= {"table.md", "table.json"}

    for key in KEYS:
        a, b = load_file(str(seq / "runs" / key / "model.safetensors")), load_file(str(par / "runs" / key /
                                                                                         "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    assert sorted(p.name for p in (par / "cards").iterdir()) == ["anp-vs-s0.json", "standard-s0.json"]
    for name in ("anp-vs-s0.json", "standard-s0.json"):
        a, b = (json.loads((d / "cards" / name).read_text()) for d in (seq, par))
        assert _numbers(a) == _numbers(b)
        assert (a["init_from"], a["source"]) == (b["init_from"], b["source"])

    # anp-vs-s0 started (wrote its config) after standard-s0 wrote its final weights; cards after both models
    runs = par / "runs"
    assert _mtime(runs / "anp-vs-s0" / "config.yaml") >= _mtime(runs / "standard-s0" / "model.safetensors")
    card = next((runs / "anp-vs-s0" / "eval").glob("suite-*.json"))
    assert _mtime(card) >= max(_mtime(runs / k / "model.safetensors") for k in ("anp-vs-s0", "at-s7"))

    # a rerun in parallel reuses everything
    run_suite(suite, par, progress=True, jobs=2, threads=1, report=False)
    err = capsys.readouterr().err
    assert err.count(": reused") == 5 and "trained" not in err


def test_a_failed_task_is_named_and_its_dependents_never_start(tiny_mnist: Path, tmp_path: Path) -> None:
    data = tiny_suite(tiny_mnist, attacks=["pgd"])
    data["eval"].pop("source")
    data["runs"] = data["runs"][:2]  # standard -> anp-vs
    suite, out = parse_suite(data), tmp_path / "suite"
    spec = next(s for s in plan_runs(suite, out) if s.key == "standard-s0")
    spec.out.mkdir(parents=True)  # a run with another config in the way: train:standard-s0 raises
    save_yaml(to_dict(dataclasses.replace(spec.cfg, epochs=3)), spec.out / "config.yaml")
    with pytest.raises(TaskFailed, match=r"task train:standard-s0 failed: ValueError: .*epochs: 3 -> 1.*"
                                         r"3 task\(s\) not started") as info:
        run_suite(suite, out, progress=False, jobs=2, threads=1)
    assert info.value.task == "train:standard-s0" and isinstance(info.value.__cause__, ValueError)
    assert not (out / "runs" / "anp-vs-s0").exists()
    assert not list((out / "cards").glob("*.json"))


def test_tasks_pickle_for_spawned_workers(tiny_mnist: Path, tmp_path: Path) -> None:
    suite = parse_suite(tiny_suite(tiny_mnist))
    tasks = plan_suite(suite, tmp_path)
    assert pickle.loads(pickle.dumps((tasks, suite))) == (tasks, suite)


def test_cli_jobs_and_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_suite(tmp_path / "data")))
    for flag in ("--jobs", "--threads"):
        assert main(["compare", str(path), "--out", str(tmp_path / "never"), flag, "0"]) == 2
        assert f"{flag} must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
    assert main(["eval", str(tmp_path), "--threads", "-1"]) == 2
    assert "--threads must be >= 1, got -1" in capsys.readouterr().err

    seen: dict[str, Any] = {}

    def fake_run_suite(suite: Any, out: str, **kw: Any) -> list[Path]:
        seen.update(kw)
        (tmp_path / "table.md").write_text("| table |\n")
        return [tmp_path / "table.md"]

    monkeypatch.setattr("robustprune.compare.run_suite", fake_run_suite)
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--jobs", "3", "--threads", "2"]) == 0
    assert (seen["jobs"], seen["threads"]) == (3, 2)
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        run_suite(parse_suite(tiny_suite(tmp_path / "data")), tmp_path / "never", jobs=0)
    assert not (tmp_path / "never").exists()
