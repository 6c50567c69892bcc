"""Suites on Ray (``compare --executor ray``): on a local 2-CPU cluster the tasks, evaluation shards
included, give the table of the local runner; bad executor settings are refused. Needs the ``ray``
extra (skipped without it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from robustprune.compare import parse_suite, run_suite
from test_eval_shards import shard_suite

ray = pytest.importorskip("ray")


@pytest.fixture
def local_cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def _accuracies(suite_dir: Path) -> dict[str, Any]:
    """Each row's accuracy and vulnerability values in table.json (not times or latency)."""
    table = json.loads((suite_dir / "table.json").read_text())
    keys = ("clean", "white_box", "black_box", "autoattack", "eot_pgd", "vuln_white_box", "vuln_black_box")
    return {row["run_id"]: {k: row["metrics"][k]["values"] for k in keys} for row in table["rows"]}

def test_ray_suite_with_shards_gives_the_local_table(tiny_mnist: Path, tmp_path: Path, local_cluster: None,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_suite(parse_suite(shard_suite(tiny_mnist)), local, progress=False, threads=1)
    suite = parse_suite(shard_suite(tiny_mnist, shard_size=8))
    run_suite(suite, on_ray, progress=True, threads=1, executor="ray")
    err = capsys.readouterr().err
    assert "[6/6]" in err  # 2 trainings, 3 shards, 1 merge
    assert "evaluate standard-s0: merged from 3 shards" in err
    table = _accuracies(on_ray)
    assert table["standard"]["white_box"] and table["standard"]["vuln_white_box"]  # numbers, not empty cells
    assert table == _accuracies(local)
    a, b = (json.loads((d / "cards" / "standard-s0.json").read_text())["eval"] for d in (local, on_ray))
    assert (a["clean_acc"], [x["robust_acc"] for x in a["attacks"]]) == \
        (b["clean_acc"], [x["robust_acc"] for x in b["attacks"]])


def test_ray_executor_settings_are_checked(tiny_mnist: Path, tmp_path: Path) -> None:
    suite = parse_suite(shard_suite(tiny_mnist))
    with pytest.raises(ValueError, match="jobs=2 is for the local executor"):
        run_suite(suite, tmp_path / "x", executor="ray", jobs=2)
    with pytest.raises(ValueError, match="executor must be one of .*, got 'slurm'"):
        run_suite(suite, tmp_path / "x", executor="slurm")


def _fault_cluster(monkeypatch: pytest.MonkeyPatch, fault: str | None) -> None:
    """A fresh local cluster whose workers inherit ``$ROBUSTPRUNE_FAULT`` (or run without one)."""
    if ray.is_initialized():
        ray.shutdown()
    if fault is None:
        monkeypatch.delenv("ROBUSTPRUNE_FAULT", raising=False)
    else:
        monkeypatch.setenv("ROBUSTPRUNE_FAULT", fault)
    ray.init(num_cpus=2, include_dashboard=False)


def test_worker_killed_in_training_is_retried_from_its_checkpoint(
        tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of the Ray worker at its 3rd training step (epoch 2 of 2): Ray's retry resumes the run
    from its epoch-1 checkpoint and the command ends with the table of an uninterrupted run."""
    data = shard_suite(tiny_mnist, shard_size=8)
    data["defaults"]["epochs"] = 2
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_suite(parse_suite(data), local, progress=False, threads=1)
    try:
        _fault_cluster(monkeypatch, "train-step:3")
        run_suite(parse_suite(data), on_ray, progress=True, threads=1, executor="ray")
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    assert "train standard-s0: resumed" in err or "train src-s7: resumed" in err  # a retry after the kill
    assert _accuracies(on_ray) == _accuracies(local)


def test_worker_killed_in_an_evaluation_shard_then_rerun_redoes_only_unfinished_shards(
        tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of the Ray worker after the 2nd batch of a shard (before its record is written), in
    every retry: the command stops naming the task; rerun without the fault, it reuses the finished
    shards, evaluates the others and ends with the uninterrupted table."""
    from robustprune.compare.parallel import TaskFailed

    data = shard_suite(tiny_mnist, shard_size=8)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_suite(parse_suite(data), local, progress=False, threads=1)
    suite = parse_suite(data)
    try:
        _fault_cluster(monkeypatch, "eval-batch:2")
        with pytest.raises(TaskFailed, match="task shard:standard-s0@"):
            run_suite(suite, on_ray, progress=False, threads=1, executor="ray")
        shards = sorted(p.name for p in on_ray.glob("runs/standard-s0/eval/*.shards/*.json"))
        assert len(shards) < 3
        _fault_cluster(monkeypatch, None)
        capsys.readouterr()
        run_suite(suite, on_ray, progress=True, threads=1, executor="ray")
    finally:
        ray.shutdown()
    err = capsys.readouterr().err
    for name in ("0-8", "8-16", "16-24"):
        a, b = name.split("-")
        verb = "reused" if f"{name}.json" in shards else "evaluated"
        assert f"shard standard-s0 [{a}, {b}): {verb} (" in err, (name, shards, err)
    assert _accuracies(on_ray) == _accuracies(local)
