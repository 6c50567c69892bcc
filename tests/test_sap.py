"""SAP: unbiased rescaling, r -> inf is the identity, stochastic detection, EOT warnings, CLI flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustprune.attacks import build_attack
from robustprune.data import TensorLoader
from robustprune.defenses.sap import SAPModel, keep_probability, sap_multiplier
from robustprune.eval.evaluate import evaluate, is_stochastic
from robustprune.models import build_model


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_expected_activation_equals_input(mode: str) -> None:
    torch.manual_seed(0)
    h = torch.relu(torch.randn(2, 12))
    h[1] = 0.0
    h[1, 3] = 2.0  # a map with one active unit: kept with probability 1
    draws = 4000
    mean = sum(h * sap_multiplier(h, pct=50.0, mode=mode) for _ in range(draws)) / draws
    assert torch.allclose(mean, h, atol=0.08, rtol=0.08), (mean - h).abs().max()
    assert torch.equal(h * sap_multiplier(h, pct=50.0, mode=mode), h * sap_multiplier(h, pct=50.0, mode=mode)) is False


def test_some_units_are_dropped_at_small_r() -> None:
    torch.manual_seed(0)
    h = torch.rand(4, 200)
    m = sap_multiplier(h, pct=10.0, mode="exact")
    kept = (m > 0).sum(1)
    assert (kept <= 20).all() and (kept >= 1).all()  # at most r = 20 distinct units drawn


def test_exact_keeps_only_drawn_units_and_zero_maps_stay_zero() -> None:
    h = torch.zeros(3, 5)
    h[0, 2] = 1.0
    m = sap_multiplier(h, pct=100.0, mode="exact")
    assert torch.equal(m[0], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
    assert torch.equal(m[1:], torch.zeros(2, 5))


def test_keep_probability_is_numerically_safe() -> None:
    p = torch.tensor([0.0, 1e-12, 0.5, 1.0])
    q = keep_probability(p, 10)
    assert torch.isfinite(q).all() and q[0] == 0 and q[3] == 1
    assert torch.allclose(q[1], torch.tensor(1e-11), rtol=1e-3)  # 1 - (1 - p)^r ~ r p, no cancellation
    assert torch.allclose(q[2], torch.tensor(1 - 0.5**10))


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_large_r_tends_to_identity(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-caffe").eval()
    x = torch.rand(4, 1, 28, 28)
    pct = 1e5 if mode == "fast" else 3000.0
    out = SAPModel(model, pct=pct, mode=mode).eval()(x)
    small = SAPModel(model, pct=20.0, mode=mode).eval()(x)
    ref = model(x)
    assert (out - ref).abs().max() < 0.15 * (small - ref).abs().max()
    if mode == "fast":
        assert torch.allclose(out, ref, atol=1e-4)


def test_sap_hooks_every_hidden_relu_not_input_or_logits() -> None:
    model = build_model("lenet5-caffe").eval()
    sap = SAPModel(model, pct=100.0)
    logits, feats = sap(torch.rand(2, 1, 28, 28), features=True)
    assert sap.last_layers == 3 and len(feats) == 3 and logits.shape == (2, 10)
    assert sap.latent_count == model.latent_count


def test_sap_is_stochastic_in_eval_mode_and_evaluate_warns_without_eot() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-caffe").eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    assert not is_stochastic(model, x)
    sap = SAPModel(model, pct=100.0, mode="fast")
    assert is_stochastic(sap, x)
    loader = TensorLoader(x, y, batch_size=16)
    attacks = [("pgd", build_attack("pgd", eps=0.1, steps=2)), ("eot-pgd", build_attack("eot-pgd", eps=0.1, steps=2))]
    with pytest.warns(UserWarning, match="stochastic"):
        res = evaluate(sap, loader, attacks, progress=False, passes=10)
    assert res.stochastic and res.passes == 10
    assert any("'pgd'" in w for w in res.warnings) and not any("'eot-pgd'" in w for w in res.warnings)


def test_gradient_flows_through_kept_units() -> None:
    model = build_model("lenet5-caffe").eval()
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    SAPModel(model, pct=100.0, mode="exact")(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0.0, -5.0, float("nan"), "100"])
def test_bad_percentage_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=repr(bad) if isinstance(bad, str) else str(bad)):
        SAPModel(build_model("lenet5-caffe"), pct=bad)  # type: ignore[arg-type]


def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'bernoulli'"):
        SAPModel(build_model("lenet5-caffe"), pct=100.0, mode="bernoulli")


def test_eval_run_with_sap_writes_a_stochastic_card(tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.cli import main
    from robustprune.config import TrainConfig
    from robustprune.eval import evaluate_run
    from robustprune.train import fit

    run = fit(TrainConfig(method="standard", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(tmp_path / "r"),
                          data_dir=str(tiny_mnist), limit_train=64, batch_size=32, progress=False))
    with pytest.raises(ValueError, match="'wrong'"):
        evaluate_run(run, attacks=["fgsm"], defense="sap:pct=100.0,mode=wrong", limit=8, progress=False)
    assert not (Path(run) / "eval").exists()  # refused before any file
    rc = main(["eval", str(run), "--attack", "fgsm,eot-pgd", "--steps", "2", "--eot", "2",
               "--defense", "sap:pct=100,mode=fast", "--limit", "16", "--passes", "3",
               "--out", str(tmp_path / "card.json"), "--no-progress", "--json"])
    assert rc == 0
    import json

    card = json.loads((tmp_path / "card.json").read_text())
    assert card["stochastic"] and card["passes"] == 3
    assert card["defense"] == {"defense": "sap", "pct": 100.0, "mode": "fast",
                               "paper": "Dhillon et al. 2018, Stochastic Activation Pruning"}
    assert any("'fgsm'" in w for w in card["warnings"])
    rc = main(["calibration", str(run), "--defense", "sap:pct=100,mode=fast", "--limit", "16", "--passes", "3",
               "--out", str(tmp_path / "calib")])
    assert rc == 0
    data = json.loads((tmp_path / "calib" / "calibration.json").read_text())
    assert [m["label"] for m in data["models"]] == ["standard", "standard+SAP-100"]
    assert [m["stochastic"] for m in data["models"]] == [False, True]
    assert (tmp_path / "calib" / "calibration.png").stat().st_size > 1000


def test_reliability_bins_and_ece_by_hand() -> None:
    from robustprune.reports.calibration import reliability

    conf = torch.tensor([0.95, 0.91, 0.55, 0.15])
    correct = torch.tensor([1.0, 0.0, 1.0, 0.0])
    r = reliability(conf, correct, bins=10)
    assert r["count"][9] == 2 and r["count"][5] == 1 and r["count"][1] == 1
    want = (2 * abs(0.5 - 0.93) + abs(1 - 0.55) + abs(0 - 0.15)) / 4
    assert abs(r["ece"] - want) < 1e-6
    with pytest.raises(ValueError, match="0"):
        reliability(conf, correct, bins=0)
