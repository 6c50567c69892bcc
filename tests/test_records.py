"""Typed result records (robustprune.records): schema and code version, the migration of cards
written before them, staleness decided by versions in `compare`, and the table's columns as data."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import robustprune.compare.runner as runner_mod
from robustprune.attacks import FGSM
from robustprune.cli import main
from robustprune.compare import parse_suite, run_suite
from robustprune.defenses.standard import Standard
from robustprune.records import (
    SCHEMA,
    CodeVersion,
    EvalCard,
    RecordError,
    eval_card,
    read_suite_card,
    run_record,
    suite_card,
    write_suite_card,
)
from robustprune.reports import render_markdown, summarize
from robustprune.reports.table import COLUMNS, Column


def old_suite_card(run_id: str = "at", seed: int = 0) -> dict[str, Any]:
    """A suite card as `compare` wrote it before records had a schema (no ``schema``, no ``code``)."""
    pgd = {"name": "pgd", "params": {"name": "pgd", "eps": 0.3, "steps": 40, "step_size": 0.01}, "robust_acc": 88.0,
           "n": 100, "wall_s": 1.0, "vulnerability": {"mean": 0.1, "per_layer": [0.1], "per_unit": [[0.0, 0.2]]}}
    return {
        "kind": "suite-run", "suite": "old", "run_id": run_id, "seed": seed, "order": 0, "method": "at",
        "label": "at", "model": "lenet5-caffe", "dataset": "mnist", "init_from": None, "model_of": None,
        "source": None, "train": {"wall_s": 60.0, "epochs": 1, "epoch_time_s": [60.0], "train_size": 64,
                                  "device": "cpu (2 threads)", "method_info": {}},
        "eval": {"kind": "eval", "run": "runs/at-s0", "method": "at", "model": "lenet5-caffe", "dataset": "mnist",
                 "train_seed": 0, "eval_seed": 0, "source": None, "n": 100, "clean_acc": 99.0, "stochastic": False,
                 "passes": 1, "attacks": [pgd], "warnings": [], "wall_s": 2.0, "config": {"method": "at"},
                 "robustprune_version": "0.1.0", "git_sha": "abc123", "torch_version": "2", "device": "cpu",
                 "device_name": "cpu (2 threads)", "created": "2026-12-01T00:00:00+0000", "total_wall_s": 3.0,
                 "memory_factor": 2.0,
                 "sparsity": {"unit_sparsity": 0.0, "weight_sparsity": 0.0, "active_units": [20],
                              "total_units": [20], "paper": {"memory_pct": 100.0, "flops_speedup": 1.0,
                                                             "memory": 5.0}},
                 "compact": None, "measured": None},
    }


# ---------------------------------------------------------------- records and migration


def test_an_old_card_is_migrated_and_written_back_unchanged_but_for_schema_and_code() -> None:
    old = old_suite_card()
    card = suite_card(old)
    assert card.read_schema == 1 and card.eval.read_schema == 1 and card.schema == SCHEMA
    assert card.eval.code == CodeVersion(package="0.1.0", git="abc123", parts={})
    assert card.eval.code.version("eval") == 1  # a part not named: the code before versions
    assert card.eval.sparsity is not None and card.eval.sparsity.paper is not None
    assert card.eval.sparsity.paper.memory_pct == 100.0 and card.eval.attacks[0].vulnerability.per_unit == [[0.0, 0.2]]
    back = card.to_dict()
    assert back["schema"] == SCHEMA and back["eval"]["schema"] == SCHEMA and "code" in back["eval"]
    for key in ("schema", "code"):
        back["eval"].pop(key)
    back.pop("schema")
    assert back.pop("stale") == []
    assert back == old  # every field kept (method fields like memory_factor in `extra`), the layout unchanged


def test_a_newer_schema_or_a_wrong_kind_is_refused_with_the_remedy() -> None:
    future = {**old_suite_card()["eval"], "schema": SCHEMA + 1}
    with pytest.raises(RecordError, match=r"newer robustprune \(schema 3.*re-make it with `robustprune eval"):
        eval_card(future, source="x.json")
    with pytest.raises(RecordError, match="x.json is not a suite card"):
        suite_card({"kind": "eval"}, source="x.json")
    with pytest.raises(RecordError, match="schema 'two'"):
        run_record({"status": "complete", "schema": "two"})
    with pytest.raises(RecordError, match="missing 1 required"):
        EvalCard.from_dict({"attacks": [{"name": "pgd"}]})  # an attack without its accuracy


def test_report_reads_cards_written_before_records_had_a_schema(tmp_path: Path) -> None:
    (tmp_path / "cards").mkdir()
    for seed in (0, 1):
        (tmp_path / "cards" / f"at-s{seed}.json").write_text(json.dumps(old_suite_card(seed=seed)))
    assert main(["report", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table.json").read_text())
    assert table["rows"][0]["metrics"]["clean"]["values"] == [99.0, 99.0]
    assert "†" not in (tmp_path / "table.md").read_text()  # only `compare --reuse-stale` marks rows


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_a_card_written_by_the_code_before_records_reports_the_same_row(tmp_path: Path) -> None:
    """fixtures/suite_card_schema1.json is a suite card written by `robustprune compare` at 06f7bdb (before
    records; a tiny LeNet5-Caffe ANP-VS run), *_table_row.json the row that code's report made of it: the
    report of today reads the card through the migration and gives every old column the same numbers."""
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "anp-vs-s0.json").write_text((FIXTURES / "suite_card_schema1.json").read_text())
    assert main(["report", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "table.json").read_text())["rows"][0]
    old = json.loads((FIXTURES / "suite_card_schema1_table_row.json").read_text())
    assert {k: row["metrics"][k] for k in old["metrics"]} == old["metrics"]
    assert {k: v for k, v in row.items() if k not in ("metrics", "stale")} == {k: v for k, v in old.items()
                                                                              if k != "metrics"}
    assert row["metrics"]["vuln_active_white_box"]["mean"] is None  # not measured then: "—" until re-made


# ---------------------------------------------------------------- columns as data


def test_a_column_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    err = Column("clean_err", "clean error %", lambda c: None if c.eval.clean_acc is None else 100 - c.eval.clean_acc,
                 decimals=1, note="clean error: 100 − clean accuracy.")
    monkeypatch.setattr("robustprune.reports.table.COLUMNS", (*COLUMNS, err))
    cards = [suite_card(old_suite_card(seed=0)), suite_card(old_suite_card(seed=1))]
    cards[1].eval.clean_acc = 97.0
    summary = summarize(cards)
    assert summary["rows"][0]["metrics"]["clean_err"]["values"] == [1.0, 3.0]
    assert {"key": "clean_err", "header": "clean error %", "decimals": 1, "optional": False,
            "note": "clean error: 100 − clean accuracy.", "table": "main"} in summary["columns"]
    md = render_markdown(summary)
    assert "| clean error % |" in md.splitlines()[4] and "| 2.0 ± 1.4 |" in md
    assert "- clean error: 100 − clean accuracy." in md


# ---------------------------------------------------------------- staleness in compare


def two_row_suite(data: Path) -> dict[str, Any]:
    """Two standard rows, one attacked by PGD and one by FGSM (its own eval)."""
    return {
        "name": "versions", "seeds": [0],
        "defaults": {"model": "lenet-300-100", "dataset": "mnist", "epochs": 1, "limit_train": 64, "batch_size": 32,
                     "data_dir": str(data)},
        "runs": [{"id": "a", "method": "standard"},
                 {"id": "b", "method": "standard", "epochs": 1, "lr": 0.05,
                  "eval": {"attacks": ["fgsm"], "eps": 0.3, "limit": 16}}],
        "eval": {"attacks": ["pgd"], "eps": 0.3, "steps": 1, "step_size": 0.3, "limit": 16},
    }


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    calls: list[str] = []
    orig = getattr(runner_mod, name)

    def counting(*a: Any, **kw: Any) -> Any:
        calls.append(Path(a[0]).name if name == "evaluate_run" else Path(a[0].out).name)
        return orig(*a, **kw)

    monkeypatch.setattr(runner_mod, name, counting)
    return calls


def test_a_changed_attack_version_remakes_exactly_its_cards(tiny_mnist: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    suite, out = parse_suite(two_row_suite(tiny_mnist)), tmp_path / "suite"
    evaluated = _counting(monkeypatch, "evaluate_run")
    run_suite(suite, out, progress=False)
    assert sorted(evaluated) == ["a-s0", "b-s0"]
    card = read_suite_card(out / "cards" / "b-s0.json")
    assert card.eval.code.parts["attack:fgsm"] == 1 and card.eval.schema == SCHEMA and card.stale == []
    capsys.readouterr()

    monkeypatch.setattr(FGSM, "code_version", 2)  # the change that alters FGSM's numbers
    run_suite(suite, out, progress=False, reuse_stale=True)  # kept, marked
    assert sorted(evaluated) == ["a-s0", "b-s0"]
    assert "evaluate b-s0: reused, stale (attack:fgsm 1 < 2" in capsys.readouterr().err
    md = (out / "table.md").read_text()
    assert "| b | standard † |" in md and "| a | standard |" in md and "- b-s0: attack:fgsm 1 < 2" in md

    run_suite(suite, out, progress=False)  # made again: FGSM's row only
    assert sorted(evaluated) == ["a-s0", "b-s0", "b-s0"]
    assert "evaluate b-s0: evaluated again (stale: attack:fgsm 1 < 2)" in capsys.readouterr().err
    assert read_suite_card(out / "cards" / "b-s0.json").eval.code.parts["attack:fgsm"] == 2
    assert "†" not in (out / "table.md").read_text()
    run_suite(suite, out, progress=False)
    assert len(evaluated) == 3  # up to date now


def test_an_old_card_is_remade_and_a_changed_method_retrains_its_runs(tiny_mnist: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = two_row_suite(tiny_mnist)
    data["runs"][1]["method"] = "at"
    data["runs"][1]["adv_steps"] = 1
    suite, out = parse_suite(data), tmp_path / "suite"
    evaluated, trained = _counting(monkeypatch, "evaluate_run"), _counting(monkeypatch, "fit")
    run_suite(suite, out, progress=False)
    assert sorted(trained) == ["a-s0", "b-s0"] and sorted(evaluated) == ["a-s0", "b-s0"]

    # a's card as an older robustprune wrote it: no schema, no code; it is made again
    path = next((out / "runs" / "a-s0" / "eval").glob("suite-*.json"))
    old = json.loads(path.read_text())
    del old["schema"], old["code"]
    path.write_text(json.dumps(old))
    run_suite(suite, out, progress=False)
    assert sorted(evaluated) == ["a-s0", "a-s0", "b-s0"] and len(trained) == 2

    monkeypatch.setattr(Standard, "code_version", 2)  # a's method changed (at is its own class): a only
    run_suite(suite, out, progress=False, reuse_stale=True)
    assert len(trained) == 2 and "method:standard 1 < 2" in " ".join(read_suite_card(out / "cards" / "a-s0.json").stale)
    run_suite(suite, out, progress=False)
    assert sorted(trained) == ["a-s0", "a-s0", "b-s0"]
    assert sorted(evaluated) == ["a-s0", "a-s0", "a-s0", "b-s0"]  # its card follows its new weights
    record = json.loads((out / "runs" / "a-s0" / "run.json").read_text())
    assert record["code"]["parts"]["method:standard"] == 2 and record["schema"] == SCHEMA
    card = read_suite_card(out / "cards" / "a-s0.json")
    assert card.stale == []
    write_suite_card(tmp_path / "copy.json", card)
    assert json.loads((tmp_path / "copy.json").read_text()) == json.loads((out / "cards" / "a-s0.json").read_text())


def test_a_cards_sparsity_block_has_one_builder() -> None:
    """The evaluation card (eval.card.model_cost) and a compacted run's record of its masked source
    (jobs.compact._source_cost) write the same block, unstructured zeros included."""
    import torch

    from robustprune.data import dataset_info
    from robustprune.eval.card import model_cost
    from robustprune.jobs.compact import _source_cost
    from robustprune.models import build_model

    model = build_model("lenet5-caffe")
    with torch.no_grad():
        model.fc1.weight[:, ::2] = 0.0  # unstructured zeros
    info = dataset_info("mnist")
    block = model_cost("lenet5-caffe", model, info)
    assert block["weight_sparsity"] > 0 and "unstructured" in block and "paper" in block
    assert _source_cost("lenet5-caffe", model, info) == block


def test_a_field_of_the_wrong_type_is_refused_naming_it() -> None:
    card = old_suite_card()
    card["eval"]["clean_acc"] = "99"
    with pytest.raises(RecordError, match=r"EvalCard.clean_acc must be float \| None, got '99'"):
        suite_card(card)
    card = old_suite_card()
    card["seed"] = True
    with pytest.raises(RecordError, match="SuiteCard.seed must be int, got True"):
        suite_card(card)
    card = old_suite_card()
    card["eval"]["attacks"][0]["robust_acc"] = None
    with pytest.raises(RecordError, match="AttackEntry.robust_acc must be float, got None"):
        suite_card(card)
    assert suite_card(old_suite_card()).eval.n == 100  # and the well-formed card reads


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)


@st.composite
def mutated_cards(draw: st.DrawFn) -> dict[str, Any]:
    """The old suite card with a few of its values, at any depth, replaced by arbitrary JSON."""
    card = old_suite_card()
    for _ in range(draw(st.integers(1, 3))):
        node: Any = card
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            if isinstance(node[key], (dict, list)) and node[key] and draw(st.booleans()):
                node = node[key]
                continue
            node[key] = draw(JSON_VALUES)
            break
    return card


@settings(max_examples=150, deadline=None, database=None)
@given(mutated_cards())
def test_fuzz_a_card_reads_or_is_refused_by_name(card: dict[str, Any]) -> None:
    """Whatever a card file holds, reading it gives a record that writes back the same JSON, or a
    RecordError (a ValueError): never another exception."""
    try:
        record = suite_card(copy.deepcopy(card))
    except RecordError:
        return
    again = suite_card(record.to_dict())
    assert again.to_dict() == record.to_dict()


def test_a_run_started_from_a_run_trained_again_is_trained_again(tiny_mnist: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from test_compare import tiny_suite

    suite, out = parse_suite(tiny_suite(tiny_mnist)), tmp_path / "suite"  # standard -> anp-vs; at: the source
    trained = _counting(monkeypatch, "fit")
    run_suite(suite, out, progress=False, report=False)
    assert sorted(trained) == ["anp-vs-s0", "at-s7", "standard-s0"]
    capsys.readouterr()
    monkeypatch.setattr(Standard, "code_version", 2)
    run_suite(suite, out, progress=False, report=False)
    assert trained[3:] == ["standard-s0", "anp-vs-s0"]  # the source (at) is kept
    err = capsys.readouterr().err
    assert "train standard-s0: trained again (stale: method:standard 1 < 2)" in err
    assert "train anp-vs-s0: trained again (stale: init_from standard-s0 was trained again)" in err
    run_suite(suite, out, progress=False, report=False)
    assert len(trained) == 5  # up to date now
