"""The robustness audit: each check flags a model built to fail it and passes a plain trained model.

Models and data in robust_toys.py. AutoAttack's part of the audit is tested in test_autoattack.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robust_toys import Interval, Noisy, Quantised, Trap, grey, levels, trained_mlp
from robustprune.cli import main
from robustprune.data import TensorLoader
from robustprune.eval import checks as C
from robustprune.jobs.audit import audit
from robustprune.jobs.surface import loss_surface
from robustprune.reports.audit_plots import plot_curve, plot_surface

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.04  # the plain model keeps ~80 % of its ~95 % clean accuracy here: a non-trivial operating point
PNG = b"\x89PNG\r\n\x1a\n"


def statuses(card: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in card["checks"]}


def evidence(card: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c["evidence"] for c in card["checks"] if c["name"] == name)


def test_plain_model_passes_every_check(plain: nn.Module) -> None:
    x, y = levels(64, seed=1)
    source = trained_mlp(seed=1, epochs=4)
    card = audit(plain, x, y, eps=EPS, step_size=2.5 * EPS / 40, source=source, autoattack="no", progress=False)
    st = statuses(card)
    assert st == {"deterministic": "pass", "gradients": "pass", "monotone_eps": "pass", "unbounded": "pass",
                  "multistep_vs_single": "pass", "whitebox_vs_blackbox": "pass", "autoattack_vs_pgd": "skip",
                  "single_sample_vs_eot": "skip"}, card
    acc = {e["name"]: e["robust_acc"] for e in card["ladder"]}
    assert 20 < acc["pgd-40"] < card["clean_acc"] - 5, "the operating point must be non-trivial"
    assert acc["pgd-100x5"] <= acc["pgd-40"] and card["verdict"] == "pass"
    assert [e["name"] for e in card["ladder"]] == ["fgsm", "pgd-40", "pgd-100x5", "transfer-pgd-40"]
    assert card["curve"]["points"][0]["robust_acc"] == pytest.approx(card["clean_acc"])
    json.dumps(card)  # the card is JSON as it stands


def test_quantised_model_flags_gradients_unbounded_and_blackbox(plain: nn.Module) -> None:
    x, y = levels(64, seed=1)
    card = audit(Quantised(plain), x, y, eps=EPS, step_size=2.5 * EPS / 40, source=plain, autoattack="no",
                 progress=False)
    st = statuses(card)
    assert st["gradients"] == "warn" and evidence(card, "gradients")["zero"] == 64
    assert st["unbounded"] == "warn" and st["whitebox_vs_blackbox"] == "warn"
    assert card["verdict"] == "warn" and "gradients" in card["warned"]


def test_randomised_model_is_detected_and_attacked_with_eot(plain: nn.Module) -> None:
    x, y = levels(32, seed=2)
    card = audit(Noisy(plain), x, y, eps=EPS, step_size=2.5 * EPS / 40, autoattack="no", passes=3, progress=False)
    assert card["stochastic"] and card["determinism"]["max_logit_diff"] > 0
    eot = next(e for e in card["ladder"] if e["name"] == "eot-pgd-40")
    assert eot["params"]["eot"] == 10 and card["curve"]["attack"]["eot"] == 10
    assert statuses(card)["deterministic"] == "pass"
    assert evidence(card, "deterministic")["eot_attacks"] == ["eot-pgd-40"]
    assert evidence(card, "multistep_vs_single")["multi_step"] == "eot-pgd-40"
    pair = evidence(card, "single_sample_vs_eot")
    assert (pair["single_sample"], pair["eot"]) == ("pgd-40", "eot-pgd-40")
    assert statuses(card)["single_sample_vs_eot"] == ("warn" if pair["gap"] > pair["tolerance"] else "pass")
    # evaluate()'s own warning about the plain (non-EOT) PGD rungs is kept in the card, not printed
    assert any("stochastic" in w for w in next(e for e in card["ladder"] if e["name"] == "pgd-40")["warnings"])


def test_a_random_model_without_eot_is_flagged() -> None:
    stats = {"stochastic": True, "max_logit_diff": 0.3, "prediction_flips": 2, "passes": 5, "n": 8}
    assert C.check_determinism(stats, eot_attacks=[]).status == "warn"
    assert C.check_determinism(stats, eot_attacks=["eot-pgd-40"]).status == "pass"


def test_non_monotone_accuracy_is_flagged() -> None:
    x = torch.full((16, 1, 8, 8), 0.4)
    y = torch.zeros(16, dtype=torch.long)
    card = audit(Interval(), x, y, eps=0.2, step_size=0.005, autoattack="no", progress=False)
    assert statuses(card)["monotone_eps"] == "warn"
    rises = evidence(card, "monotone_eps")["rises"]
    assert rises and rises[0]["to_eps"] > rises[0]["from_eps"] and rises[0]["to_acc"] > rises[0]["from_acc"]


def test_single_step_beating_multi_step_is_flagged() -> None:
    x, y = grey(16)
    card = audit(Trap(), x, y, eps=0.3, step_size=0.01, autoattack="no", progress=False)
    acc = {e["name"]: e["robust_acc"] for e in card["ladder"]}
    assert acc["fgsm"] == 0 and acc["pgd-40"] == 100
    assert statuses(card)["multistep_vs_single"] == "warn"


def test_check_functions_on_numbers() -> None:
    assert C.tolerance(1000) == 0.5 and C.tolerance(50) == 2.0
    with pytest.raises(ValueError, match="0"):
        C.tolerance(0)
    assert C.check_monotone([0, 0.1, 0.2], [90, 60, 60.4], tol=0.5).status == "pass"
    assert C.check_monotone([0.2, 0.1, 0], [70, 60, 90], tol=0.5).status == "warn"  # order of eps does not matter
    with pytest.raises(ValueError, match="length"):
        C.check_monotone([0, 0.1], [1.0], tol=0.5)
    assert C.check_unbounded(0.0, n=100, attack="pgd").status == "pass"
    assert C.check_unbounded(2.0, n=100, attack="pgd").status == "warn"
    assert C.check_blackbox(("pgd", 50.0), None, tol=1).status == "skip"
    aa = {"robust_acc": 40.0, "stages": [{"name": "apgd-ce", "robust_acc": 45.0},
                                         {"name": "square", "robust_acc": 40.0}], "flags": []}
    check = C.check_autoattack(aa, ("pgd-40", 47.0), ("pgd-100x5", 45.0), tol=0.5)
    assert check.status == "warn" and "7.00 points" in check.summary and "Square" in check.summary
    ok = C.check_autoattack(dict(aa, robust_acc=45.0, stages=aa["stages"][:1]), ("pgd-40", 46.0), ("p", 45.5), tol=0.5)
    assert ok.status == "pass"
    with pytest.raises(ValueError, match="maybe"):
        C.Check("x", "maybe", "")


def test_loss_surface_rises_along_the_adversarial_direction(plain: nn.Module) -> None:
    x, y = levels(3, seed=3)
    before = torch.random.get_rng_state()
    surf = loss_surface(plain, x, y, eps=EPS, resolution=5)
    assert torch.equal(before, torch.random.get_rng_state())
    for p, xi, yi in zip(surf["points"], x, y, strict=True):
        loss = torch.tensor(p["loss"])
        centre = torch.nn.functional.cross_entropy(plain(xi[None]), yi[None]).item()
        assert loss[2, 2].item() == pytest.approx(centre, rel=1e-5)
        assert loss[4, 2] > loss[2, 2] > loss[0, 2] and not p["zero_gradient"]
    flat = loss_surface(Quantised(plain), x, y, eps=EPS, resolution=5)
    assert all(p["zero_gradient"] for p in flat["points"])
    with pytest.raises(ValueError, match="resolution"):
        loss_surface(plain, x, y, eps=EPS, resolution=1)


def test_plots_are_pngs(tmp_path: Path, plain: nn.Module) -> None:
    x, y = levels(2, seed=4)
    curve = {"points": [{"eps": 0.0, "robust_acc": 90.0}, {"eps": 0.1, "robust_acc": 40.0}], "n": 2,
             "attack": {"steps": 40, "eot": 1}, "default_eps": 0.1, "marks": [{"label": "fgsm", "eps": 0.1,
                                                                              "robust_acc": 50.0}]}
    assert plot_curve(curve, tmp_path / "c.png").read_bytes().startswith(PNG)
    surf = loss_surface(plain, x, y, eps=EPS, resolution=5)
    assert plot_surface(surf, tmp_path / "s.png").read_bytes().startswith(PNG)
    with pytest.raises(ValueError, match="no points"):
        plot_curve(dict(curve, points=[]), tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()


def test_bad_arguments_raise(plain: nn.Module) -> None:
    x, y = levels(4, seed=5)
    with pytest.raises(ValueError, match="1.5"):
        audit(plain, x, y, eps=1.5, step_size=0.01, progress=False)
    with pytest.raises(ValueError, match="-0.1"):
        audit(plain, x, y, eps=0.1, step_size=0.01, eps_sweep=[0, -0.1], progress=False)
    with pytest.raises(ValueError, match="sometimes"):
        audit(plain, x, y, eps=0.1, step_size=0.01, autoattack="sometimes", progress=False)


# ---- the command line, on a tiny trained run ----------------------------------------------------





def test_cli_audit_curve_surface(at_run: Path, tiny_mnist: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit"
    rc = main(["audit", str(at_run), "--limit", "12", "--autoattack", "no", "--source", str(at_run),
               "--eps-sweep", "0,0.1,0.3", "--data-dir", str(tiny_mnist), "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "audit.json").read_text())
    assert card["kind"] == "audit" and card["n"] == 12 and card["method"] == "at" and card["eps"] == 0.3
    assert [p["eps"] for p in card["curve"]["points"]] == [0, 0.1, 0.3] and len(card["checks"]) == 8
    for name in ("audit.md", "curve.png", "curve.json", "surface.png", "surface.json"):
        assert (out / name).stat().st_size > 0, name
    assert "## Checks" in capsys.readouterr().out
    md = (out / "audit.md").read_text()
    assert md.startswith("# Robustness audit: at / lenet5-caffe / mnist") and "| FMN security % |" in md
    sec = card["security"]  # FMN-L∞ on the sweep's ε, from per-example distances
    assert [p["eps"] for p in sec["points"]] == [0, 0.1, 0.3] and len(sec["distances"]) == 12
    assert sec["points"][0]["robust_acc"] == pytest.approx(card["clean_acc"])
    assert json.loads((out / "curve.json").read_text())["security"]["points"] == sec["points"]
    assert main(["curve", str(at_run), "--eps", "0,0.2", "--steps", "3", "--limit", "8", "--fmn-steps", "5",
                 "--fmn-targets", "2", "--data-dir", str(tiny_mnist), "--out", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    curve = json.loads((tmp_path / "c" / "curve.json").read_text())
    atk = curve["security"]["attack"]
    assert len(curve["points"]) == 2 and (atk["name"], atk["steps"], atk["targets"]) == ("fmn", 5, 2)
    assert "FMN security %" in capsys.readouterr().out
    assert main(["curve", str(at_run), "--eps", "0,0.2", "--steps", "3", "--limit", "8", "--no-fmn", "--data-dir",
                 str(tiny_mnist), "--out", str(tmp_path / "c2"), "--no-progress"]) == 0
    assert "skipped" in json.loads((tmp_path / "c2" / "curve.json").read_text())["security"]
    assert main(["surface", str(at_run), "--points", "2", "--resolution", "5", "--data-dir", str(tiny_mnist),
                 "--out", str(tmp_path / "s")]) == 0
    surf = json.loads((tmp_path / "s" / "surface.json").read_text())
    assert len(surf["points"]) == 2 and len(surf["points"][0]["loss"]) == 5


@pytest.mark.parametrize(
    ("cmd", "flags", "needle"),
    [("audit", ["--eps", "1.5"], "1.5"), ("audit", ["--autoattack", "maybe"], "maybe"),
     ("audit", ["--limit", "0"], "limit"), ("audit", ["--eps-sweep", "0,x"], "'x'"), ("curve", ["--eps", "0,2"], "2"),
     ("surface", ["--points", "0"], "points"), ("curve", ["--fmn-steps", "0"], "steps"),
     ("audit", ["--fmn-targets", "-1"], "-1")],
)
def test_cli_bad_input_names_the_value_and_writes_nothing(at_run: Path, tiny_mnist: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], cmd: str,
                                                          flags: list[str], needle: str) -> None:
    out = tmp_path / "out"
    rc = main([cmd, str(at_run), "--data-dir", str(tiny_mnist), "--out", str(out), *flags])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_gradient_stats_counts_zero_gradients(plain: nn.Module) -> None:
    x, y = levels(8, seed=7)
    assert C.gradient_stats(plain, TensorLoader(x, y, batch_size=4))["zero"] == 0
    stats = C.gradient_stats(Quantised(plain), TensorLoader(x, y, batch_size=4))
    assert stats["zero"] == 8 and stats["n"] == 8 and stats["nonfinite"] == 0


def test_single_sample_attacks_on_a_random_model_are_flagged_when_they_overstate() -> None:
    tol = C.tolerance(1000)
    flagged = C.check_single_vs_eot(("pgd-40", 51.3), ("eot-pgd-40", 45.7), stochastic=True, tol=tol)
    assert flagged.status == "warn" and "5.60 points" in flagged.summary
    assert C.check_single_vs_eot(("pgd-40", 45.8), ("eot-pgd-40", 45.7), stochastic=True, tol=tol).status == "pass"
    assert C.check_single_vs_eot(("pgd-40", 60.0), None, stochastic=True, tol=tol).status == "skip"
    assert C.check_single_vs_eot(("pgd-40", 60.0), ("eot-pgd-40", 10.0), stochastic=False, tol=tol).status == "skip"


def test_cli_audit_of_a_sap_wrapped_run_runs_the_eot_rung(at_run: Path, tiny_mnist: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit-sap"
    rc = main(["audit", str(at_run), "--defense", "sap:pct=100,mode=fast", "--limit", "8", "--autoattack", "no",
               "--passes", "2", "--eps-sweep", "0,0.3", "--no-surface", "--data-dir", str(tiny_mnist),
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "audit.json").read_text())
    assert card["defense"]["defense"] == "sap" and card["stochastic"]
    assert "eot-pgd-40" in [e["name"] for e in card["ladder"]]
    assert statuses(card)["single_sample_vs_eot"] in ("pass", "warn")
    assert "+ SAP-100 (fast)" in (out / "audit.md").read_text()
    assert main(["audit", str(at_run), "--defense", "sap:pct=-1", "--out", str(tmp_path / "bad"), "--data-dir",
                 str(tiny_mnist), "--no-progress"]) == 2
    assert "SAP percentage must be a number > 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
