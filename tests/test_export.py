"""`robustprune export`: RobustBench and Adversarial Pruning Benchmark entries, checked field by field
against the formats as the benchmarks define them (tests/fixtures/benchmark_formats.json), and the
refusals (wrong data set or architecture, no AutoAttack result, no distances, wrong ε or norm)."""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustprune.attacks.minnorm import MinNormAttack
from robustprune.cli import main
from robustprune.config import TrainConfig, save_yaml, to_dict
from robustprune.jobs.export import (
    ExportError,
    MinimalDistances,
    export_run,
    measure_distances,
    read_distances,
    write_distances,
)
from robustprune.metrics.minnorm import minimal_distances

FORMATS = json.loads((Path(__file__).parent / "fixtures" / "benchmark_formats.json").read_text())
JSON_TYPES = {"string": str, "boolean": bool, "integer": int, "number": (int, float), "null": type(None),
              "object": dict, "array": list}


def of_type(value: Any, names: list[str]) -> bool:
    if isinstance(value, bool) and "boolean" not in names:
        return False
    return any(isinstance(value, JSON_TYPES[n]) for n in names)


def fake_run(root: Path, *, method: str = "hydra", model: str = "resnet18", dataset: str = "cifar10",
             n: int = 10000, eps: float = 8 / 255, weight_sparsity: float = 90.02, unit_sparsity: float = 0.0,
             version: str = "standard", method_args: dict[str, Any] | None = None, aa: bool = True) -> Path:
    """A run directory with its config and an AutoAttack evaluation card (no weights: exports read cards)."""
    run = root / f"{method}-{model}-{dataset}"
    run.mkdir(parents=True)
    save_yaml(to_dict(TrainConfig(method=method, model=model, dataset=dataset, out=str(run),
                                  method_args=method_args or {})), run / "config.yaml")
    attacks = [{"name": "pgd", "params": {"name": "pgd", "eps": eps}, "robust_acc": 50.0, "n": n}]
    if aa:
        attacks.append({"name": "autoattack", "params": {"name": "autoattack", "eps": eps, "version": "auto"},
                        "robust_acc": 43.337, "n": n,
                        "breakdown": {"versions": [version], "n": n, "clean_acc": 80.123, "stages": [], "flags": []}})
    card = {"kind": "eval", "run": str(run), "method": method, "model": model, "dataset": dataset, "n": n,
            "clean_acc": 80.123, "stochastic": False, "passes": 1, "attacks": attacks, "warnings": [],
            "sparsity": {"weight_sparsity": weight_sparsity, "unit_sparsity": unit_sparsity}}
    (run / "eval").mkdir()
    (run / "eval" / "autoattack.json").write_text(json.dumps(card))
    return run


def distances_file(run: Path, values: list[float], *, norm: str = "linf", dataset: str = "cifar10") -> Path:
    md = MinimalDistances(attack={"name": "fmn", "norm": norm, "steps": 100}, norm=norm, distances=values,
                          dataset=dataset)
    return write_distances(run / "eval" / "distances-fmn.json", md)


DIST = [0.0, 0.01, 0.02, 0.04, 0.05, math.inf, 0.1, 0.03]  # > 8/255 (0.0314): 0.04, 0.05, inf, 0.1 -> 50 %


# ------------------------------------------------------------------------------------------ RobustBench


def test_robustbench_entry_matches_the_model_info_format(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    res = export_run(run, fmt="robustbench", meta={"venue": "NeurIPS 2020 (robustprune re-run)", "reported": "43.3"})
    fmt = FORMATS["robustbench"]
    entry = res["entry"]
    assert set(entry) == set(fmt["fields"])
    for k, types in fmt["fields"].items():
        assert of_type(entry[k], types), f"{k}: {entry[k]!r} is not {types}"
    assert re.match(fmt["percent_pattern"], entry["clean_acc"]) and re.match(fmt["percent_pattern"],
                                                                             entry["autoattack_acc"])
    assert entry["clean_acc"] == "80.12" and entry["autoattack_acc"] == "43.34"
    assert entry["eps"] == fmt["eps_linf"]["cifar10"] and re.match(fmt["eps_pattern"], entry["eps"])
    assert entry["dataset"] == "cifar10" and entry["dataset"] in fmt["datasets"]
    assert entry["architecture"] == "ResNet-18"
    assert entry["additional_data"] is False and entry["number_forward_passes"] == 1
    assert entry["link"] == "https://arxiv.org/abs/2002.10509" and entry["authors"].startswith("Vikash Sehwag")
    assert entry["venue"] == "NeurIPS 2020 (robustprune re-run)" and entry["reported"] == "43.3"
    assert "90.0 % of weights zero" in entry["footnote"]
    path = Path(res["paths"][0])
    assert path.parts[-4:-1] == ("model_info", "cifar10", "Linf") and path.name.startswith("Sehwag2020Hydra")
    assert json.loads(path.read_text()) == entry
    assert res["to_fill"] == []


def test_robustbench_lists_the_fields_to_fill(tmp_path: Path) -> None:
    res = export_run(fake_run(tmp_path, method="standard"), fmt="robustbench", meta={"model_name": "Mine2026"})
    assert {"link", "name", "authors", "venue", "reported"} <= set(res["to_fill"])
    assert Path(res["paths"][0]).name == "Mine2026.json"


def test_robustbench_refuses_data_it_has_no_leaderboard_for(tmp_path: Path) -> None:
    run = fake_run(tmp_path, model="lenet5-caffe", dataset="mnist", eps=0.3)
    with pytest.raises(ExportError, match="RobustBench's leaderboards are CIFAR-10, CIFAR-100 and ImageNet.*'mnist'"):
        export_run(run, fmt="robustbench")
    assert not (run / "export").exists()


def test_missing_autoattack_result_is_refused(tmp_path: Path) -> None:
    run = fake_run(tmp_path, aa=False)
    for fmt in ("robustbench", "apb"):
        with pytest.raises(ExportError, match="no AutoAttack result.*robustprune eval .* --attack autoattack"):
            export_run(run, fmt=fmt)
    assert not (run / "export").exists()


def test_wrong_eps_and_partial_evaluations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"ε = 8/255.*eps 0\.0627"):
        export_run(fake_run(tmp_path / "a", eps=16 / 255), fmt="robustbench")
    run = fake_run(tmp_path / "b", n=1000)
    with pytest.raises(ExportError, match="full test set .*has 1,000"):
        export_run(run, fmt="robustbench")
    res = export_run(run, fmt="robustbench", allow_partial=True)
    assert "first 1,000 test points" in res["entry"]["footnote"]


def test_unknown_format_and_meta_fields_are_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    with pytest.raises(ExportError, match="unknown export format 'leaderboard'"):
        export_run(run, fmt="leaderboard")
    with pytest.raises(ExportError, match=r"unknown meta fields \['venu'\]"):
        export_run(run, fmt="robustbench", meta={"venu": "x"})


# ------------------------------------------------------------------------------------------ APB


def test_apb_entry_matches_the_benchmark_format(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    distances_file(run, DIST)
    res = export_run(run, fmt="apb", meta={"model_gdrive": ["abc123", ".safetensors"]})
    fmt = FORMATS["apb"]
    entry = res["entry"]
    for k, types in fmt["issue_fields"].items():
        assert of_type(entry[k], types), f"{k}: {entry[k]!r} is not {types}"
    assert entry["model_key"] == "HYDRA_Sehwag2020Hydra_R18_CIFAR10_US_90"
    assert re.match(fmt["model_key_pattern"], entry["model_key"])
    tax = entry["json_entry"]
    pipeline = tax["Type of Pipeline:"]
    assert set(tax) == set(fmt["taxonomy_common"]) | set(fmt["taxonomy_pipeline"][pipeline])
    assert pipeline == "A-Methods Pruning After Training"
    assert tax["Pruning structure"] == "Unstructured (US)" and tax["Pruning locality"] == "Local Pruning (L)"
    assert tax["A: Finetuning"] == "Adversarial Training (AT) PGD" and tax["A: OneShot (1S) vs Iterative (IT)"] == "1S"
    assert entry["clean_accuracy"] == 80.12 and entry["robust_accuracy_aa"] == 43.34
    assert entry["robust_accuracy_hofmn"] == 50.0
    assert entry["minnorm_attack"]["name"] == "fmn"
    assert entry["distances"] == [None if math.isinf(d) else d for d in DIST]
    assert entry["model_gdrive"] == ["abc123", ".safetensors"] and entry["distances_gdrive"][1] == ".pickle"
    assert res["to_fill"] == ["distances_gdrive"]
    json_path, pkl_path, issue_path = map(Path, res["paths"])
    issue = issue_path.read_text()
    for line in ('_Model GDrive:_ "HYDRA_Sehwag2020Hydra_R18_CIFAR10_US_90" : ["abc123", ".safetensors"]',
                 '_Distances GDrive:_ "HYDRA_Sehwag2020Hydra_R18_CIFAR10_US_90" : ["your_gdrive_link_id", ".pickle"]',
                 "_Clean Accuracy:_ 80.12", "_Robust Accuracy (AA):_ 43.34", "_Robust Accuracy (HO-FMN):_ 50.00",
                 '"ap_key": "HYDRA_Sehwag2020Hydra"', "## Architecture details and normalization"):
        assert line in issue, line
    assert pkl_path.name == fmt["minnorm"]["distances_file"].format(model_key=entry["model_key"])
    assert pickle.loads(pkl_path.read_bytes()) == DIST
    assert json.loads(json_path.read_text())["model_key"] == entry["model_key"]


def test_apb_structured_run_uses_unit_sparsity_and_s_levels(tmp_path: Path) -> None:
    run = fake_run(tmp_path, method="anp-vs", model="vgg16", weight_sparsity=0.0, unit_sparsity=74.6)
    distances_file(run, DIST)
    entry = export_run(run, fmt="apb")["entry"]
    assert entry["model_key"] == "ANPVS_Madaan2020Adversarial_V16_CIFAR10_S_75"
    assert entry["json_entry"]["Type of Pipeline:"] == "D-Methods Pruning During Training"
    assert entry["json_entry"]["Pruning structure"] == "Structured (S) channels"


def test_apb_refuses_mnist_runs(tmp_path: Path) -> None:
    run = fake_run(tmp_path, model="lenet5-caffe", dataset="mnist", eps=0.3)
    with pytest.raises(ExportError, match="takes CIFAR-10 and SVHN networks only.*'mnist'"):
        export_run(run, fmt="apb")
    assert not (run / "export").exists()


@pytest.mark.parametrize(("kw", "message"), [
    ({"model": "lenet5-caffe"}, "ResNet-18 and VGG-16 only.*'lenet5-caffe'"),
    ({"method": "at"}, "method 'at' does not prune"),
    ({"weight_sparsity": 73.2}, r"US sparsities 90, 95, 99 %; this run has 73.20 % weights zero"),
    ({"version": "rand"}, "standard version.*'rand'"),
])
def test_apb_refusals_name_the_cause(tmp_path: Path, kw: dict[str, Any], message: str) -> None:
    run = fake_run(tmp_path, **kw)
    distances_file(run, DIST)
    with pytest.raises(ExportError, match=message):
        export_run(run, fmt="apb")
    assert not (run / "export").exists()


def test_apb_needs_linf_distances(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    with pytest.raises(ExportError, match="needs per-example minimal L∞ distances.*FMN.*--distances"):
        export_run(run, fmt="apb")
    distances_file(run, DIST, norm="l2")
    with pytest.raises(ExportError, match="L∞; the distances file holds 'l2' distances"):
        export_run(run, fmt="apb")
    bad = run / "eval" / "bad.json"
    bad.write_text(json.dumps({"kind": "eval"}))
    with pytest.raises(ExportError, match="not a minimal-distances file"):
        export_run(run, fmt="apb", distances=bad)


def test_apb_sparsity_rate_names_the_level(tmp_path: Path) -> None:
    run = fake_run(tmp_path, weight_sparsity=93.0)
    distances_file(run, DIST)
    assert export_run(run, fmt="apb", sparsity_rate=95)["entry"]["model_key"].endswith("_US_95")
    with pytest.raises(ExportError, match="sparsity_rate 80 is not one the APB takes"):
        export_run(run, fmt="apb", sparsity_rate=80)


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path / "ok")
    distances_file(run, DIST)
    out = tmp_path / "apb-out"
    assert main(["export", str(run), "--format", "apb", "--out", str(out)]) == 0
    assert (out / "HYDRA_Sehwag2020Hydra_R18_CIFAR10_US_90.json").is_file()
    assert "to fill in by hand: model_gdrive, distances_gdrive" in capsys.readouterr().err
    mnist = fake_run(tmp_path / "mnist", model="lenet5-caffe", dataset="mnist", eps=0.3)
    assert main(["export", str(mnist), "--format", "apb"]) == 2
    assert "CIFAR-10 and SVHN networks only" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ distances


class LinfGrid(MinNormAttack):
    """A small L∞ minimum-norm attack for the tests: the smallest FGSM radius of a grid that flips."""

    name = "linf-grid"
    norm = "linf"

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x = x.clone().requires_grad_(True)
        g = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), x)[0].sign()
        best = x.detach().clone()
        found = torch.zeros(len(x), dtype=torch.bool)
        for eps in (0.05, 0.1, 0.2, 0.4, 0.8):
            cand = (x.detach() + eps * g).clamp(0, 1)
            with torch.no_grad():
                flip = (model(cand).argmax(1) != y) & ~found
            best[flip] = cand[flip]
            found |= flip
        return best


def test_minimal_distances_in_the_attacks_norm(plain: nn.Module) -> None:
    from robust_toys import levels

    x, y = levels(64, seed=7)
    attack = LinfGrid()
    found = minimal_distances(plain, [(x, y)], attack, progress=False)["distances"]
    d = torch.tensor([math.inf if v is None else v for v in found], dtype=torch.float64)
    res = attack(plain, x, y)
    linf = (res.x_adv - x).flatten(1).abs().amax(1).double()
    with torch.no_grad():
        wrong = plain(x).argmax(1) != y
    assert wrong.any() and (d[wrong] == 0).all()  # already misclassified: 0, though the attack moved them
    flipped = res.success & ~wrong
    assert torch.allclose(d[flipped], linf[flipped])
    assert torch.isinf(d[~res.success]).all()
    assert ((d > 0) & torch.isfinite(d)).sum() >= 8  # most points are flipped at a positive radius
    assert (d[torch.isfinite(d)] <= 0.8 + 1e-6).all()


def test_measure_distances_writes_a_file_the_export_reads(at_run: Path) -> None:
    path = measure_distances(at_run, LinfGrid(), limit=16, progress=False)
    assert path == at_run / "eval" / "distances-linf-grid.json"
    md = read_distances(path)
    assert md.norm == "linf" and md.attack["name"] == "linf-grid" and len(md.distances) == 16
    assert md.dataset == "mnist" and all(d >= 0 for d in md.distances)
    assert 0.0 <= md.robust_acc(0.3) <= 100.0


def test_reads_the_autoattack_card_that_eval_writes(at_run: Path) -> None:
    """The fields the exports read are those a real `eval --attack autoattack` card has."""
    from robustprune.eval import evaluate_run
    from robustprune.jobs.export import _check_autoattack, load_cards

    evaluate_run(at_run, attacks=["autoattack"], limit=4, progress=False, measure=False)
    rc = load_cards(at_run)
    assert rc.card_path == at_run / "eval" / "autoattack.json"
    clean, robust, version = _check_autoattack(rc, eps=0.3, allow_partial=True, what="test")
    assert version == "standard" and 0 <= robust <= clean <= 100
    with pytest.raises(ExportError, match="full test set"):
        _check_autoattack(rc, eps=0.3, allow_partial=False, what="test")
    assert rc.card.sparsity is not None and rc.card.sparsity.weight_sparsity is not None


def test_cli_measure_fmn_writes_linf_distances(at_run: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`--measure-fmn N` measures FMN-L∞ on N points before exporting (here the export then refuses
    the run, which has no AutoAttack card, after the distances are written); N < 1 is refused by name."""
    import robustprune.jobs.curve as curve
    from robustprune.attacks import FMN

    monkeypatch.setattr(curve, "fmn_attack", lambda norm: FMN(norm=norm, steps=10))  # fewer steps: test speed
    assert main(["export", str(at_run), "--format", "apb", "--measure-fmn", "8"]) == 2
    err = capsys.readouterr().err
    assert "distances-fmn.json" in err and "autoattack" in err
    md = read_distances(at_run / "eval" / "distances-fmn.json")
    assert md.norm == "linf" and md.attack["name"] == "fmn" and len(md.distances) == 8
    assert all(d >= 0 for d in md.distances)
    assert main(["export", str(at_run), "--format", "apb", "--measure-fmn", "0"]) == 2
    assert "--measure-fmn" in capsys.readouterr().err
