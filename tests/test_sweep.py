"""The sparsity-robustness sweep (Guo et al. 2018) and the unstructured cost metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import robustprune.jobs.sweep as sweep_mod
from robustprune.cli import main
from robustprune.config import TrainConfig
from robustprune.eval.card import evaluate_run
from robustprune.jobs.sweep import peaks, sweep_sparsity
from robustprune.metrics.unstructured import unstructured_cost
from robustprune.models import build_model
from robustprune.sparsity.magnitude import install_weight_masks, prune_by_magnitude
from robustprune.train import fit

FAST = {"limit": 16, "deepfool_steps": 5, "cw_steps": 5, "cw_search": 1, "progress": False}


@pytest.fixture
def linear_run(tiny_mnist: Path, tmp_path: Path) -> Path:
    cfg = TrainConfig(model="linear", dataset="mnist", epochs=1, out=str(tmp_path / "lin"), data_dir=str(tiny_mnist),
                      limit_train=64, batch_size=32, progress=False)
    return fit(cfg)


def test_sweep_writes_json_and_plot_and_resumes(linear_run: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sweep"
    res = sweep_sparsity(linear_run, rounds=2, out=out, rho=0.5, **FAST)
    assert (out / "sweep.png").stat().st_size > 1000
    data = json.loads((out / "sweep.json").read_text())
    sp = [p["weight_sparsity"] for p in data["points"]]
    assert [p["round"] for p in data["points"]] == [0, 1, 2]
    assert sp == pytest.approx([0.0, 50.0, 75.0], abs=0.5)
    for p in data["points"]:
        assert 0 <= p["fgsm_acc"] <= p["clean_acc"] and 0 <= p["rfgsm_acc"] <= p["clean_acc"]
        assert p["activation_zero_fraction"] is None  # the linear model has no hidden layer
    assert set(res["peaks"]) >= {"clean_acc", "fgsm_acc", "rfgsm_acc"}
    calls: list[object] = []
    monkeypatch.setattr(sweep_mod, "fit", lambda cfg: calls.append(cfg))
    monkeypatch.setattr(sweep_mod, "measure", lambda *a, **k: calls.append(a))
    again = sweep_sparsity(linear_run, rounds=2, out=out, rho=0.5, **FAST)  # everything reused
    assert calls == [] and again["points"] == res["points"]
    monkeypatch.undo()
    more = sweep_sparsity(linear_run, rounds=3, out=out, rho=0.5, **FAST)  # one new round only
    assert [p["weight_sparsity"] for p in more["points"]] == pytest.approx([0.0, 50.0, 75.0, 87.5], abs=0.5)


def test_sweep_control_trains_dense_runs_with_the_same_history(linear_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    res = sweep_sparsity(linear_run, rounds=2, out=out, rho=0.5, control=True, **FAST)
    assert [c["round"] for c in res["control"]] == [0, 1, 2]
    assert [c["weight_sparsity"] for c in res["control"]] == [0.0, 0.0, 0.0]
    assert res["control"][0] == res["points"][0]  # both start from the same dense run
    for t in (1, 2):  # control t continues control t - 1 for the same epochs, pruning switched off
        cfg = yaml.safe_load((out / f"control-{t:02d}" / "config.yaml").read_text())
        pruned = yaml.safe_load((out / f"round-{t:02d}" / "config.yaml").read_text())
        assert cfg["method_args"]["max_rounds"] == 0 and pruned["method_args"]["max_rounds"] == 1
        assert cfg["init_from"] == str(linear_run if t == 1 else out / f"control-{t - 1:02d}")
        assert {k: v for k, v in cfg.items() if k not in ("out", "init_from", "method_args", "resume")} == \
               {k: v for k, v in pruned.items() if k not in ("out", "init_from", "method_args", "resume")}
    diffs = res["vs_control"]["fgsm_acc"]["rounds"]
    assert [d["round"] for d in diffs] == [0, 1, 2] and diffs[0]["diff"] == 0.0
    for d, p, c in zip(diffs, res["points"], res["control"], strict=True):
        assert d["diff"] == pytest.approx(p["fgsm_acc"] - c["fgsm_acc"])
    assert res["vs_control"]["fgsm_acc"]["best_diff"] == max(d["diff"] for d in diffs)
    assert json.loads((out / "sweep.json").read_text())["settings"]["control"] is True
    monkeypatch.setattr(sweep_mod, "fit", lambda cfg: pytest.fail("a finished round was retrained"))
    assert sweep_sparsity(linear_run, rounds=2, out=out, rho=0.5, control=True, **FAST)["control"] == res["control"]
    assert "control" not in sweep_sparsity(linear_run, rounds=2, out=out, rho=0.5, **FAST)
    argv = ["sweep-sparsity", str(linear_run), "--rounds", "2", "--out", str(out), "--rho", "0.5", "--control",
            "--limit", "16", "--deepfool-steps", "5", "--cw-steps", "5", "--cw-search", "1", "--no-progress"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "FGSM % (dense)" in lines[0] and len(lines) == 2 + 3
    last = [c.strip() for c in lines[-1].strip("|").split("|")]
    assert last[:3] == ["2", f"{res['points'][2]['weight_sparsity']:.1f}", f"{res['points'][2]['clean_acc']:.2f}"]
    assert last[7] == f"{res['control'][2]['clean_acc']:.2f}"


def test_sweep_bad_args_leave_no_file(linear_run: Path, tmp_path: Path) -> None:
    for kw, bad in (({"rounds": 0}, "0"), ({"rounds": 1, "rho": 1.5}, "1.5"), ({"rounds": 1, "limit": 0}, "0")):
        with pytest.raises(ValueError, match=bad):
            sweep_sparsity(linear_run, out=tmp_path / "bad", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "bad").exists()
    assert main(["sweep-sparsity", str(tmp_path / "nope"), "--rounds", "1"]) == 2


def test_peaks_finds_the_inverted_u() -> None:
    pts = [{"weight_sparsity": s, "fgsm_acc": a} for s, a in ((0, 10.0), (50, 30.0), (90, 5.0))]
    assert peaks(pts)["fgsm_acc"] == {"peak_sparsity": 50, "peak": 30.0, "dense": 10.0, "last": 5.0}


def test_unstructured_cost_counts() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-caffe", num_classes=10, in_channels=1, image_size=28)
    dense = unstructured_cost(model, input_shape=(1, 28, 28))
    # conv1 20·25 weights at 24·24 positions, conv2 50·20·25 at 8·8, fc 800·500 and 500·10
    assert dense["macs_dense"] == 500 * 576 + 25000 * 64 + 400000 + 5000 == dense["macs_sparse"]
    install_weight_masks(model)
    prune_by_magnitude(model, fraction=0.75)
    cost = unstructured_cost(model, input_shape=(1, 28, 28))
    conv1 = cost["layers"][0]
    assert conv1["nnz"] == 125 and conv1["macs_sparse"] == 125 * 576
    assert conv1["csr_bytes"] == 125 * 8 + 21 * 4
    assert cost["csr_vs_dense_bytes"] == pytest.approx(0.5, abs=0.01)  # 8 bytes per non-zero, 1/4 kept
    assert "no speed-up" in cost["note"]
    with pytest.raises(ValueError, match="0"):
        unstructured_cost(model, input_shape=(1, 28, 28), index_bytes=0)


def test_eval_card_reports_unstructured_cost_only_when_sparse(linear_run: Path, tiny_mnist: Path,
                                                               tmp_path: Path) -> None:
    card = evaluate_run(linear_run, attacks=["none"], limit=8, progress=False, out=tmp_path / "d.json")
    assert "unstructured" not in card["sparsity"]
    cfg = TrainConfig(model="linear", dataset="mnist", epochs=1, out=str(tmp_path / "mag"), data_dir=str(tiny_mnist),
                      limit_train=32, batch_size=32, progress=False, method="magnitude",
                      method_args={"rho": 0.5}, init_from=str(linear_run))
    run = fit(replace(cfg))
    card = evaluate_run(run, attacks=["none"], limit=8, progress=False, out=tmp_path / "s.json")
    assert card["sparsity"]["unstructured"]["nnz"] == 392 * 10
