"""bench/budget_curve.py: the curve, the PGD-20 comparison and the verdict from suite tables."""

from __future__ import annotations

import json

import pytest

from repo_scripts import load_script


@pytest.fixture(scope="module")
def bc():
    return load_script("bench/budget_curve.py")


def _row(run_id, seeds, aa, pgd, clean=None):
    def m(vals):
        return {"mean": sum(vals) / len(vals), "values": vals}
    return {"run_id": run_id, "seeds": seeds,
            "metrics": {"autoattack": m(aa), "white_box": m(pgd), "clean": m(clean or [99.0] * len(aa)),
                        "min_per_epoch": m([1.0] * len(aa)), "unit_sparsity": m([0.0] * len(aa))}}


def _write(path, rows):
    path.write_text(json.dumps({"rows": rows}))
    return path


def test_verdict_difference_and_spread_are_per_seed(tmp_path, bc):
    budget = _write(tmp_path / "budget.json", [
        _row("at-e10", [0, 1, 2], [50.0, 52.0, 54.0], [70.0, 71.0, 72.0]),
        _row("anp-vs-e10", [0, 1, 2], [51.0, 55.0, 53.0], [69.0, 70.0, 71.0]),
        _row("at-e10-pgd20", [0], [48.0], [69.0]),
    ])
    paper = _write(tmp_path / "paper.json", [_row("at", [0], [80.0], [90.0]), _row("anp-vs", [0], [77.0], [91.0])])
    assert bc.main(["--budget", str(budget), "--paper", str(paper), "--out", str(tmp_path / "bc")]) == 0
    report = json.loads((tmp_path / "bc.json").read_text())
    v = report["verdict"]
    assert v["epochs"] == 200
    assert v["aa_difference"] == pytest.approx(-3.0)
    # per-seed differences 1, 3, -1: mean 1, sample std 2
    assert v["e10_difference"]["values"] == [1.0, 3.0, -1.0]
    assert v["e10_difference"]["std"] == pytest.approx(2.0)
    assert "1.5 spreads" in v["reading"] and "below" in v["reading"]
    assert report["curve"]["at"]["10"]["autoattack"]["std"] == pytest.approx(2.0)
    p20 = report["pgd20_vs_standin_e10"]["at-e10-pgd20"]["autoattack"]
    assert p20 == {"pgd20": 48.0, "standin_same_seed": 50.0, "standin_spread": pytest.approx(2.0)}
    assert "budget:at-e50" in report["missing"] and "paper:at" not in report["missing"]
    assert (tmp_path / "bc.png").stat().st_size > 0


def test_no_table_is_an_error_naming_the_paths(tmp_path, bc, capsys):
    assert bc.main(["--budget", str(tmp_path / "none.json"), "--out", str(tmp_path / "x")]) == 2
    assert "none.json" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
