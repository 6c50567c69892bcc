"""Sharded evaluation: shards of whole batches, seeded per batch, merge into the unsharded card
(accuracies, vulnerability, AutoAttack's stage counts); bad shard sizes and gaps are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustprune.eval import evaluate_run
from robustprune.eval.evaluate import batch_seed
from robustprune.eval.shards import read_shard, shard_ranges


def numbers(card: dict[str, Any]) -> dict[str, Any]:
    """What a card measures (not wall times or latency)."""
    out: dict[str, Any] = {"clean": card["clean_acc"], "n": card["n"], "stochastic": card["stochastic"]}
    for a in card["attacks"]:
        stages = (a.get("breakdown") or {}).get("stages", [])
        out[a["name"]] = (a["robust_acc"], a["n"], a.get("vulnerability"),
                          [(s["name"], s["robust_acc"]) for s in stages])
    return out


def sharded(run: Path, data: Path, out: Path, *, size: int, n: int, **settings: Any) -> dict[str, Any]:
    paths = []
    for start, stop in shard_ranges(n, shard_size=size, batch_size=settings["batch_size"]):
        path = out / f"{start}-{stop}.json"
        evaluate_run(run, data_dir=str(data), out=path, progress=False, shard=(start, stop), limit=n, **settings)
        paths.append(path)
    return evaluate_run(run, data_dir=str(data), out=out / "merged.json", progress=False, shards=paths[::-1],
                        limit=n, measure=False, **settings)


def test_merged_card_equals_the_unsharded_one_pgd(at_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    settings = {"attacks": ["pgd", "fgsm"], "steps": 3, "batch_size": 8, "seed": 5}
    whole = evaluate_run(at_run, data_dir=str(tiny_mnist), out=tmp_path / "whole.json", progress=False, limit=40,
                         measure=False, **settings)
    merged = sharded(at_run, tiny_mnist, tmp_path / "shards", size=16, n=40, **settings)
    assert numbers(merged) == numbers(whole)
    assert merged["attacks"][0]["vulnerability"] is not None  # the meter's sums merged too
    # per-example results are kept in each shard, one entry per test point
    shard = read_shard(tmp_path / "shards" / "16-32.json")
    assert (shard["start"], shard["stop"], shard["n"]) == (16, 32, 16)
    assert sum(len(b["clean"]) for b in shard["batches"]) == 16
    assert all(len(b["attacks"][0]["robust"]) == len(b["clean"]) for b in shard["batches"])
    # the batch seed depends on the eval seed and the batch's first test point, nothing else
    assert len({batch_seed(5, 0), batch_seed(5, 8), batch_seed(6, 0)}) == 3
    assert batch_seed(5, 8) == batch_seed(5, 8)

def test_merged_card_equals_the_unsharded_one_autoattack(at_run: Path, tiny_mnist: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import robustprune.attacks.autoattack as aa

    class Quick(aa.AutoAttack):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw, n_iter=3, n_queries=20)

    monkeypatch.setattr(aa, "AutoAttack", Quick)
    settings = {"attacks": ["autoattack"], "batch_size": 4, "seed": 2}
    whole = evaluate_run(at_run, data_dir=str(tiny_mnist), out=tmp_path / "whole.json", progress=False, limit=12,
                         measure=False, **settings)
    merged = sharded(at_run, tiny_mnist, tmp_path / "shards", size=4, n=12, **settings)
    assert numbers(merged) == numbers(whole)
    assert merged["attacks"][0]["breakdown"]["n"] == 12


def test_shard_sizes_and_coverage_are_checked(at_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    assert shard_ranges(10, shard_size=4, batch_size=2) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="shard_size 6 must be a multiple of the evaluation batch_size 4"):
        shard_ranges(10, shard_size=6, batch_size=4)
    with pytest.raises(ValueError, match="shard_size must be an integer >= 1, got 0"):
        shard_ranges(10, shard_size=0, batch_size=1)
    settings = {"attacks": ["fgsm"], "batch_size": 4, "limit": 12}
    path = tmp_path / "0-4.json"
    evaluate_run(at_run, data_dir=str(tiny_mnist), out=path, progress=False, shard=(0, 4), **settings)
    with pytest.raises(ValueError, match=r"do not cover the test points \[0, 12\)"):
        evaluate_run(at_run, data_dir=str(tiny_mnist), out=tmp_path / "m.json", progress=False, shards=[path],
                     measure=False, **settings)
    with pytest.raises(ValueError, match=r"shard \[8, 20\) is not inside the 12 test points"):
        evaluate_run(at_run, data_dir=str(tiny_mnist), out=tmp_path / "x.json", progress=False, shard=(8, 20),
                     **settings)
