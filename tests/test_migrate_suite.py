"""scripts/migrate_suite.py and the retired spellings (see CHANGELOG.md): each is refused with the spelling to use.

The old names appear only here and in the script (a test elsewhere uses the current spelling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from repo_scripts import load_script
from robustprune.cli import main
from robustprune.compare import load_suite, parse_suite
from robustprune.compare.runner import card_path, plan_suite

ROOT = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    return load_script("scripts/migrate_suite.py")


OLD = """\
# a suite in the old spelling
name: old
defaults: {model: lenet5-caffe, dataset: mnist}
runs:
  - id: at
    method: at
  - id: at-bnn
    method: at-bnn
  - id: at+sap   # SAP-100 around the AT model
    model_of: at
    eval: {sap: 100, sap_mode: fast, attacks: [pgd, eot-pgd]}
  - id: at-bnn-sampled
    model_of: at-bnn
    eval:
      bnn_sample: true
      attacks: [pgd, eot-pgd]
  - id: at+sap-exact
    model_of: at
    eval:
      attacks: [pgd]
      sap: 50
eval:
  attacks: [pgd]
  sap_mode: exact
"""


def test_the_script_rewrites_old_keys_keeping_comments(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(OLD)
    with pytest.raises(ValueError, match="not an evaluation setting"):
        load_suite(path)
    mig = _script()
    assert mig.main(["--check", str(path)]) == 1 and path.read_text() == OLD
    assert mig.main([str(path)]) == 0
    text = path.read_text()
    assert "# SAP-100 around the AT model" in text and "# a suite in the old spelling" in text
    suite = load_suite(path)
    defense = {r.id: suite.eval_of(r).defense for r in suite.runs}
    assert defense == {"at": None, "at-bnn": None, "at+sap": "sap:mode=fast,pct=100",
                       "at-bnn-sampled": "bnn-sample", "at+sap-exact": "sap:pct=50"}
    assert mig.main(["--check", str(path)]) == 0  # nothing left to migrate
    assert mig.main([str(path)]) == 0 and path.read_text() == text  # idempotent


def test_the_script_refuses_a_defense_named_twice(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "runs": [{"id": "a", "method": "at"}],
                                    "eval": {"sap": 100, "defense": "sap:pct=50"}}))
    assert _script().main([str(path)]) == 2


def test_the_repositorys_suites_need_no_migration() -> None:
    suites = sorted(str(p) for p in (ROOT / "configs" / "suites").glob("*.yaml"))
    assert suites and _script().main(["--check", *suites]) == 0


@pytest.mark.parametrize(("key", "hint"), [
    ("sap", "defense: {name: sap, pct: VALUE, mode: VALUE}"),
    ("sap_mode", "defense: {name: sap, pct: VALUE, mode: VALUE}"),
    ("bnn_sample", "defense: {name: bnn-sample}"),
])
def test_an_old_suite_key_is_refused_naming_the_replacement(key: str, hint: str) -> None:
    data = {"name": "t", "defaults": {"model": "lenet5-caffe", "dataset": "mnist"},
            "runs": [{"id": "a", "method": "at"}, {"id": "b", "model_of": "a", "eval": {key: 100}}]}
    with pytest.raises(ValueError, match=f"'{key}' is not an evaluation setting") as err:
        parse_suite(data)
    assert hint in str(err.value) and "scripts/migrate_suite.py" in str(err.value)


@pytest.mark.parametrize(("argv", "message"), [
    (["--sap", "100"], "--sap is not a flag: name the test-time defense as data, --defense sap:pct=VALUE,mode=VALUE"),
    (["--sap-mode=fast"], "--sap-mode is not a flag: name the test-time defense as data, --defense sap:"),
    (["--bnn-sample"], "--bnn-sample is not a flag: name the test-time defense as data, --defense bnn-sample"),
    (["--no_progress"], "--no_progress is not a flag: flags are spelled with hyphens, --no-progress"),
])
def test_an_old_flag_is_refused_naming_the_replacement(argv: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "RUN", *argv]) == 2
    assert message in capsys.readouterr().err


def test_an_old_library_keyword_is_refused_naming_the_replacement() -> None:
    from robustprune.eval import evaluate_run

    with pytest.raises(ValueError, match=r"'sap' is not an evaluation setting.*defense='sap:pct=VALUE"):
        evaluate_run("no-such-run", sap=100)


def test_rows_without_a_defense_keep_their_card_names(tmp_path: Path) -> None:
    """Retiring the old card-hash keys renamed only the cards of rows with a test-time defense:
    every row of mnist_quick keeps the card it had before (its name, computed then)."""
    suite = load_suite(ROOT / "configs" / "suites" / "mnist_quick.yaml")
    names = {t.spec.key: card_path(suite, t.spec).name for t in plan_suite(suite, tmp_path) if t.kind == "evaluate"}
    assert names == dict.fromkeys(["standard-s0", "at-s0", "anp-vs-fast-s0", "anp-vs-fast-novs-s0"],
                                  "suite-9ab69e02b891.json")
