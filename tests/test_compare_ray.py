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
