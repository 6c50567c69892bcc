"""Sharded evaluation: shards of whole batches, seeded per batch, merge into the unsharded card
(accuracies, vulnerability, AutoAttack's stage counts); bad shard sizes and gaps are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from robustprune.eval import evaluate_run, evaluate_shard, merge_run_shards
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
        evaluate_shard(run, data_dir=str(data), out=path, progress=False, shard=(start, stop), limit=n, **settings)
        paths.append(path)
    return merge_run_shards(run, paths[::-1], data_dir=str(data), out=out / "merged.json", progress=False, limit=n,
                            **settings)


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
    evaluate_shard(at_run, data_dir=str(tiny_mnist), out=path, progress=False, shard=(0, 4), **settings)
    with pytest.raises(ValueError, match=r"do not cover the test points \[0, 12\)"):
        merge_run_shards(at_run, [path], data_dir=str(tiny_mnist), out=tmp_path / "m.json", progress=False,
                         **settings)
    with pytest.raises(ValueError, match=r"shard \[8, 20\) is not inside the 12 test points"):
        evaluate_shard(at_run, data_dir=str(tiny_mnist), out=tmp_path / "x.json", progress=False, shard=(8, 20),
                       **settings)


# ---------------------------------------------------------------- suites


def shard_suite(data: Path, **eval_kw: Any) -> dict[str, Any]:
    """One trained row (PGD + transfer from an AT source) on 24 test points in batches of 4."""
    return {
        "name": "shards",
        "seeds": [0],
        "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 1, "limit_train": 64,
                     "batch_size": 32, "adv_steps": 1, "adv_step_size": 0.3, "data_dir": str(data)},
        "runs": [
            {"id": "standard", "method": "standard"},
            {"id": "src", "method": "at", "seeds": [7], "report": False},
        ],
        "eval": {"attacks": ["pgd", "transfer"], "eps": 0.3, "steps": 2, "step_size": 0.1, "limit": 24,
                 "batch_size": 4, "source": "src", **eval_kw},
    }


def test_sharded_suite_card_equals_unsharded_and_resumes_only_missing_shards(
        tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustprune.compare import parse_suite, plan_suite, run_suite

    plain, sharded_dir = tmp_path / "plain", tmp_path / "sharded"
    run_suite(parse_suite(shard_suite(tiny_mnist)), plain, progress=False, threads=1)
    suite = parse_suite(shard_suite(tiny_mnist, shard_size=8))
    tasks = plan_suite(suite, sharded_dir)
    shards = [t for t in tasks if t.kind == "shard"]
    assert [t.shard for t in shards] == [(0, 8), (8, 16), (16, 24)]
    merge = next(t for t in tasks if t.kind == "evaluate")
    assert set(merge.needs) == {t.name for t in shards}
    assert all(set(t.needs) == {"train:standard-s0", "train:src-s7"} for t in shards)

    run_suite(suite, sharded_dir, progress=True, threads=1)
    capsys.readouterr()
    card = lambda d: json.loads((d / "cards" / "standard-s0.json").read_text())["eval"]  # noqa: E731
    assert numbers(card(sharded_dir)) == numbers(card(plain))

    # a kill that lost one shard and the card: the rerun evaluates that shard only and merges again
    from robustprune.compare.runner import card_path, shard_path

    spec = merge.spec
    card_path(suite, spec).unlink()
    lost = shard_path(suite, spec, (8, 16))
    kept = {r: shard_path(suite, spec, r).stat().st_mtime_ns for r in [(0, 8), (16, 24)]}
    lost.unlink()
    run_suite(suite, sharded_dir, progress=True, threads=1)
    err = capsys.readouterr().err
    assert "shard standard-s0 [8, 16): evaluated" in err
    assert "shard standard-s0 [0, 8): reused" in err and "shard standard-s0 [16, 24): reused" in err
    assert "evaluate standard-s0: merged from 3 shards" in err
    assert {r: shard_path(suite, spec, r).stat().st_mtime_ns for r in kept} == kept
    assert numbers(card(sharded_dir)) == numbers(card(plain))

    # a made card: shards are not even looked at
    run_suite(suite, sharded_dir, progress=True, threads=1)
    assert "shard standard-s0 [8, 16): reused (the card is made)" in capsys.readouterr().err


def test_shard_size_is_checked_in_the_suite_and_on_the_command_line(tiny_mnist: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from robustprune.cli import main
    from robustprune.compare import parse_suite

    with pytest.raises(ValueError, match="eval.shard_size 6 must be a multiple of the evaluation batch_size 4"):
        parse_suite(shard_suite(tiny_mnist, shard_size=6))
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(shard_suite(tiny_mnist)))
    assert main(["compare", str(path), "--out", str(tmp_path / "o"), "--shard-size", "0"]) != 0
    assert "--shard-size must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_merged_card_equals_the_unsharded_one_for_a_model_random_at_test_time(at_run: Path, tiny_mnist: Path,
                                                                               tmp_path: Path) -> None:
    """SAP makes the model random: its draws (and the attacks') come from the global RNG, seeded per
    batch; accuracies are averages over passes, summed exactly."""
    settings = {"attacks": ["pgd", "eot-pgd"], "steps": 2, "eot": 2, "passes": 3, "batch_size": 4, "seed": 1,
                "defense": "sap:pct=100"}
    with pytest.warns(UserWarning, match="stochastic"):
        whole = evaluate_run(at_run, data_dir=str(tiny_mnist), out=tmp_path / "whole.json", progress=False,
                             limit=16, measure=False, **settings)
    with pytest.warns(UserWarning, match="stochastic"):
        merged = sharded(at_run, tiny_mnist, tmp_path / "shards", size=8, n=16, **settings)
    assert whole["stochastic"] and whole["passes"] == 3
    assert numbers(merged) == numbers(whole)
