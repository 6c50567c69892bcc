"""Suite rows with their own evaluation: per-run ``eval`` overrides and ``model_of`` rows that evaluate
another run's model under a test-time defense (SAP, sampled BNN weights), and the table columns
that show single-sample and adaptive attacks side by side."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from robustprune.compare import parse_suite, plan_suite, run_suite
from robustprune.compare.runner import card_path
from robustprune.defenses import TestTimeSpec
from robustprune.reports import render_markdown, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def sap_suite(data: Path) -> dict[str, Any]:
    """A standard run, and a row evaluating the same model wrapped in SAP-100 with and without EOT."""
    return {
        "name": "sap",
        "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 1, "limit_train": 64,
                     "batch_size": 32, "data_dir": str(data)},
        "runs": [
            {"id": "standard", "method": "standard", "seeds": [0, 1]},
            {"id": "standard+sap", "model_of": "standard",
             "eval": {"defense": {"name": "sap", "pct": 100, "mode": "fast"}, "attacks": ["pgd", "eot-pgd"],
                      "passes": 2}},
        ],
        "eval": {"attacks": ["pgd"], "eps": 0.3, "steps": 2, "step_size": 0.1, "limit": 32},
    }


def test_model_of_row_takes_its_targets_training_and_merges_its_eval(tmp_path: Path) -> None:
    suite = parse_suite(sap_suite(tmp_path))
    row, target = suite.run("standard+sap"), suite.run("standard")
    assert row.model_of == "standard" and row.seeds == (0, 1) and row.train == target.train
    ev = suite.eval_of(row)
    sap = TestTimeSpec("sap", (("mode", "fast"), ("pct", 100)))
    assert (TestTimeSpec.parse(ev.defense), ev.attacks, ev.passes) == (sap, ("pgd", "eot-pgd"), 2)
    assert (ev.steps, ev.limit) == (2, 32)  # the suite's values where the row is silent
    assert suite.eval_of(target) is suite.eval


@pytest.mark.parametrize(("change", "needle"), [
    ("train-key", r"model_of row trains nothing.*'epochs'"),
    ("unknown-target", "'ghost', which the suite does not define"),
    ("chained", "itself a model_of row"),
    ("bad-sap", "SAP percentage must be a number > 0, got -5"),
    ("bad-mode", "SAP mode must be one of"),
    ("bnn-sample", "bnn-sample samples the weights of an at-bnn run; method is 'standard'"),
    ("eval-type", "eval must be a mapping"),
    ("eval-key", "stepz"),
])
def test_bad_eval_rows_are_named(change: str, needle: str, tmp_path: Path) -> None:
    data = sap_suite(tmp_path)
    parse_suite(copy.deepcopy(data))
    row = data["runs"][1]
    if change == "train-key":
        row["epochs"] = 3
    elif change == "unknown-target":
        row["model_of"] = "ghost"
    elif change == "chained":
        data["runs"].append({"id": "again", "model_of": "standard+sap"})
    elif change == "bad-sap":
        row["eval"]["defense"]["pct"] = -5
    elif change == "bad-mode":
        row["eval"]["defense"]["mode"] = "approximate"
    elif change == "bnn-sample":
        row["eval"] = {"defense": "bnn-sample"}
    elif change == "eval-type":
        row["eval"] = [1]
    elif change == "eval-key":
        row["eval"]["stepz"] = 1
    with pytest.raises(ValueError, match=needle):
        parse_suite(data)


def test_model_of_row_is_evaluated_not_trained(tmp_path: Path) -> None:
    suite = parse_suite(sap_suite(tmp_path))
    tasks = plan_suite(suite, tmp_path / "out")
    assert [t.name for t in tasks if t.kind == "train"] == ["train:standard-s0", "train:standard-s1"]
    ev = {t.spec.key: t for t in tasks if t.kind == "evaluate"}
    sap = ev["standard+sap-s1"]
    assert sap.needs == ("train:standard-s1",) and sap.spec.out == tmp_path / "out" / "runs" / "standard-s1"
    assert card_path(suite, sap.spec) != card_path(suite, ev["standard-s1"].spec)  # another card, same model


def test_a_row_without_transfer_needs_no_source(tmp_path: Path) -> None:
    data = sap_suite(tmp_path)
    data["eval"].update(attacks=["pgd", "transfer"], source="src")
    data["runs"].append({"id": "src", "method": "standard", "seeds": [9], "report": False})
    suite = parse_suite(data)
    specs = {t.spec.key: t.spec for t in plan_suite(suite, tmp_path / "out") if t.kind == "evaluate"}
    assert specs["standard-s0"].source_key == "src-s9" and specs["standard+sap-s0"].source_key is None


@pytest.mark.filterwarnings("ignore:model is stochastic in eval mode")
def test_sap_row_runs_and_the_table_shows_single_sample_beside_eot(tiny_mnist: Path, tmp_path: Path) -> None:
    data = sap_suite(tiny_mnist)
    data["runs"][0]["seeds"] = [0]
    out = tmp_path / "suite"
    run_suite(parse_suite(data), out, progress=False)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["standard-s0"]  # nothing trained for the row
    card = json.loads((out / "cards" / "standard+sap-s0.json").read_text())
    assert card["label"] == "standard + SAP-100 (fast)" and card["model_of"] == "standard-s0"
    assert card["eval"]["defense"]["pct"] == 100 and card["eval"]["stochastic"]
    assert [a["name"] for a in card["eval"]["attacks"]] == ["pgd", "eot-pgd"]
    assert "wall_s" not in card["train"]  # the training time belongs to the standard row
    table = json.loads((out / "table.json").read_text())
    sap_row = table["rows"][1]["metrics"]
    accs = {a["name"]: a["robust_acc"] for a in card["eval"]["attacks"]}
    assert sap_row["white_box"]["mean"] == accs["pgd"] and sap_row["eot_pgd"]["mean"] == accs["eot-pgd"]
    assert sap_row["worst_white_box"]["mean"] == min(accs.values())
    assert sap_row["train_min"]["mean"] is None
    md = (out / "table.md").read_text()
    assert "EOT-PGD %" in md and "strongest white-box %" in md and "single-sample" in md
    assert "| standard+sap | standard + SAP-100 (fast) | 1 |" in md


def _card(run_id: str, attacks: list[tuple[str, float]], weight_sparsity: float = 0.0,
          order: int = 0) -> dict[str, Any]:
    return {
        "kind": "suite-run", "suite": "hand", "run_id": run_id, "seed": 0, "order": order, "method": run_id,
        "model": "lenet5-caffe", "dataset": "mnist", "source": None, "train": {"wall_s": 60.0, "epochs": 1},
        "eval": {"n": 100, "clean_acc": 99.0, "total_wall_s": 10.0, "warnings": [],
                 "attacks": [{"name": n, "params": {"name": n, "eps": 0.3, "steps": 40, "step_size": 0.01},
                              "robust_acc": acc} for n, acc in attacks],
                 "sparsity": {"unit_sparsity": 0.0, "weight_sparsity": weight_sparsity}},
    }


def test_optional_columns_appear_only_when_a_row_has_them() -> None:
    plain = render_markdown(summarize([_card("at", [("pgd", 80.0)])]))
    for header in ("EOT-PGD %", "AutoAttack %", "strongest white-box %", "weight sparsity %"):
        assert header not in plain
    cards = [_card("at", [("fgsm", 85.0), ("pgd", 80.0), ("autoattack", 78.5)]),
             _card("admm", [("pgd", 79.0)], weight_sparsity=80.0, order=1)]
    summary = summarize(cards)
    at, admm = (r["metrics"] for r in summary["rows"])
    assert at["autoattack"]["mean"] == 78.5 and at["worst_white_box"]["mean"] == 78.5
    assert at["white_box"]["mean"] == 80.0  # the column is PGD's even when FGSM is listed first
    assert admm["weight_sparsity"]["mean"] == 80.0 and at["weight_sparsity"]["mean"] is None
    md = render_markdown(summary)
    assert "AutoAttack %" in md and "weight sparsity %" in md and "EOT-PGD %" not in md


def test_shipped_activation_suite_pairs_single_sample_with_adaptive_attacks() -> None:
    from robustprune.compare import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "configs" / "suites" / "mnist_activation_small.yaml")
    random_rows = [r for r in suite.runs if suite.eval_of(r).defense is not None]
    assert {r.id for r in random_rows} == {"standard+sap", "at+sap", "at+sap-aa", "at-bnn-sampled"}
    for row in random_rows:
        attacks = suite.eval_of(row).attacks
        assert row.model_of is not None and "pgd" in attacks
        assert {"eot-pgd", "autoattack"} & set(attacks), f"{row.id} has no adaptive attack"
        assert suite.eval_of(row).eot is None  # so that `pgd` stays single-sample


def test_eval_reports_minimum_norm_r2(at_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.eval import evaluate_run
    from robustprune.eval.card import format_table

    card = evaluate_run(at_run, attacks=["pgd", "deepfool"], steps=2, step_size=0.1, limit=16, data_dir=str(tiny_mnist),
                        out=tmp_path / "card.json", progress=False, measure=False)
    assert [a["name"] for a in card["attacks"]] == ["pgd"]
    (df,) = card["minnorm"]
    assert df["name"] == "deepfool" and df["attack"]["overshoot"] == 0.02 and df["n"] == 16
    assert df["n_success"] + df["n_failed"] == df["n_correct"]
    if df["n_success"]:
        assert df["r2"] > 0 and 0 < df["r2_normalised"] < df["r2"]
    assert "| deepfool | minimum-norm L2" in format_table(card)
    with pytest.raises(ValueError, match="need a deterministic model"):
        evaluate_run(at_run, attacks=["deepfool"], defense="sap:pct=100", data_dir=str(tiny_mnist), progress=False)


def test_a_run_with_dataset_default_attack_settings_is_the_same_run(tmp_path: Path) -> None:
    import dataclasses

    from robustprune.compare.runner import config_diff

    suite = parse_suite(sap_suite(tmp_path))
    spelled = suite.run("standard").config(0, out="-")
    implicit = dataclasses.replace(spelled, adv_eps=None, adv_steps=None, adv_step_size=None)
    explicit = dataclasses.replace(spelled, adv_eps=0.3, adv_steps=20, adv_step_size=0.01)
    assert config_diff(implicit, explicit) == []  # MNIST's training-attack defaults
    assert config_diff(implicit, dataclasses.replace(explicit, adv_eps=0.1)) == ["adv_eps: 0.3 -> 0.1"]
