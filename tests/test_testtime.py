"""The test-time defense contract: every registered defense as data, its card hash."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from torch import nn

from robustprune.compare import parse_suite
from robustprune.compare.runner import card_path, plan_suite
from robustprune.defenses import (
    TEST_TIME,
    MethodContext,
    TestTimeDefense,
    TestTimeSpec,
    build_method,
)
from robustprune.models import build_model

CTX = MethodContext(dataset="mnist", train_size=64, num_classes=10, adv_eps=0.3, adv_steps=2, adv_step_size=0.1)
#: a method each registered defense accepts
METHOD_FOR = {"sap": "standard", "bnn-sample": "at-bnn"}
SRC = Path(__file__).resolve().parents[1] / "src" / "robustprune"


@pytest.mark.parametrize("name", TEST_TIME.names())
def test_every_registered_defense_wraps_a_model_and_says_so(name: str) -> None:
    defense = TestTimeSpec.parse(name).build()  # defaults only
    assert isinstance(defense, TestTimeDefense) and defense.name == name
    method = build_method(METHOD_FOR[name], ctx=CTX)
    defense.check(method)
    model = method.prepare(build_model("lenet5-caffe")).eval()
    wrapped = defense.wrap(model, method)
    assert isinstance(wrapped, nn.Module)
    fields = defense.card_fields()
    assert fields["test_time"]["name"] == name and fields["test_time"]["label"]
    assert defense.row_label("m").startswith("m") and defense.tag().startswith("-")
    assert defense.settings()


def test_text_and_mapping_spellings_are_one_spec() -> None:
    text = TestTimeSpec.parse("sap:pct=100,mode=fast")
    assert text == TestTimeSpec.parse({"name": "sap", "mode": "fast", "pct": 100})
    assert TestTimeSpec.parse(str(text)) == text


@pytest.mark.parametrize(("value", "match"), [
    ("nope", "unknown test-time defense 'nope'"),
    ("sap:pct=-5", "got -5"),
    ("sap:pct", "not key=value"),
    ("sap:size=3", "bad options for test-time defense 'sap'"),
    ({"pct": 100}, "needs a name"),
])
def test_bad_specs_are_refused_naming_the_value(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TestTimeSpec.parse(value)


def test_bnn_sample_refuses_a_run_without_gaussian_weights() -> None:
    with pytest.raises(ValueError, match="method is 'at'"):
        TestTimeSpec.parse("bnn-sample").build().check(build_method("at", ctx=CTX))


def _suite(eval_row: dict[str, object]) -> dict[str, object]:
    return {"name": "t", "seeds": [0], "defaults": {"model": "lenet5-caffe", "dataset": "mnist"},
            "eval": {"attacks": ["pgd"]},
            "runs": [{"id": "standard", "method": "standard"},
                     {"id": "row", "model_of": "standard", "eval": eval_row}]}


def test_suite_defense_as_data_names_its_own_card(tmp_path: Path) -> None:
    """The card of a row with a test-time defense is named by the defense's canonical settings: the
    text and mapping spellings, with or without the default mode, are one card; no defense is another."""
    def path(row: dict[str, object]) -> Path:
        suite = parse_suite(_suite(row))
        task = next(t for t in plan_suite(suite, tmp_path) if t.name == "evaluate:row-s0")
        return card_path(suite, task.spec)

    assert path({"defense": {"name": "sap", "pct": 100}}) == path({"defense": "sap:pct=100.0,mode=exact"})
    assert path({"defense": "sap:pct=100,mode=fast"}) != path({"defense": "sap:pct=100"}) != path({})


def test_no_module_outside_defenses_imports_a_defense_module() -> None:
    """Outside ``defenses/`` only the package's exported contract is used, never ``defenses.<module>``."""
    bad = []
    for f in SRC.rglob("*.py"):
        if f.parent.name == "defenses":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("robustprune.defenses."):
                bad.append(f"{f.relative_to(SRC)}: {node.module}")
    assert not bad


def test_cli_names_the_defense_as_data(at_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    import json

    from robustprune.cli import main

    out = tmp_path / "card.json"
    assert main(["eval", str(at_run), "--attack", "fgsm", "--defense", "sap:pct=100,mode=fast", "--limit", "8",
                 "--passes", "2", "--data-dir", str(tiny_mnist), "--out", str(out), "--no-progress"]) == 0
    card = json.loads(out.read_text())
    assert card["stochastic"] and card["test_time"] == {"name": "sap", "pct": 100, "mode": "fast",
                                                        "label": "SAP-100 (fast)"}
