"""Metrics at their edges, added where mutation testing (bench/mutation.py) found changes to the
code that no test noticed: errors name the value at fault, JSON-ready summaries keep their keys."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robust_toys import Threshold
from robustprune.metrics import (
    VulnerabilityMeter,
    active_units,
    layer_vulnerability,
    paper_cost,
    paper_flops,
    paper_memory,
    sparsity_summary,
    total_units,
    unit_sparsity,
    vulnerability,
    weight_sparsity,
)
from robustprune.metrics.cost import _last_linear_out, has_paper_cost, sparsity_record
from robustprune.metrics.unstructured import unstructured_cost
from robustprune.models import build_model
from robustprune.models.base import mask_slots
from robustprune.sparsity import install_bbd


def test_a_mask_outside_the_unit_mask_contract_is_named_with_its_slot_and_type() -> None:
    model = install_bbd(build_model("lenet5-caffe"))
    name, slot = mask_slots(model)[1]
    slot.mask = nn.Identity()  # no units / active() / n_active(): not a UnitMask
    for measure in (active_units, unit_sparsity):
        with pytest.raises(ValueError, match=rf"mask '{name}' \(Identity\) does not follow the UnitMask contract"):
            measure(model)


def test_sparsity_summary_is_the_four_measures_under_their_names() -> None:
    model = install_bbd(build_model("lenet5-caffe"))
    summary = sparsity_summary(model)
    assert summary == {"unit_sparsity": unit_sparsity(model), "weight_sparsity": weight_sparsity(model),
                       "active_units": active_units(model), "total_units": total_units(model)}


# ------------------------------------------------------------------------------ the paper's cost
LENET5_FULL = [20, 50, 800, 500]
VGG_FULL = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def test_which_models_have_the_paper_accounting() -> None:
    assert has_paper_cost("lenet5-caffe") and has_paper_cost("lenet-300-100") and has_paper_cost("vgg16")
    assert not has_paper_cost("resnet18") and not has_paper_cost("no-such-model")
    with pytest.raises(ValueError, match=r"no paper cost formulas for model 'no-such-model'; known: (.*)") as err:
        paper_memory("no-such-model", [1])
    known = str(err.value).split("known: ")[1].split(", ")
    assert sorted(known) == ["lenet-300-100", "lenet5-caffe", "vgg16"]


def test_unit_counts_may_be_zero_but_not_negative_bool_or_float() -> None:
    assert paper_memory("lenet5-caffe", [20, 50, 800, 0]) < paper_memory("lenet5-caffe", LENET5_FULL)
    for bad in (-1, True, 2.0):
        with pytest.raises(ValueError, match=r"unit counts must be non-negative ints"):
            paper_memory("lenet5-caffe", [20, 50, 800, bad])  # type: ignore[list-item]


@pytest.mark.parametrize(("key", "value"), [("in_channels", 0), ("image_size", True), ("num_classes", -3)])
def test_data_sizes_must_be_positive_ints_named_in_the_error(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{key} must be a positive int, got {value!r}$"):
        paper_flops("lenet5-caffe", LENET5_FULL, **{key: value})  # type: ignore[arg-type]


def test_in_channels_and_image_size_enter_the_conv_formulas() -> None:
    """conv1 of LeNet5-Caffe (20 kernels 5x5, 24x24 outputs on 28x28): memory k²·C_in·(H·W + C_out),
    FLOPs C_out·H·W·2k²·C_in grow by exactly that much per extra input channel."""
    for fn, extra in ((paper_memory, 25 * 2 * (24 * 24 + 20)), (paper_flops, 20 * 24 * 24 * 2 * 25 * 2)):
        assert fn("lenet5-caffe", LENET5_FULL, in_channels=3) - fn("lenet5-caffe", LENET5_FULL) == extra
        assert fn("lenet5-caffe", LENET5_FULL, image_size=32) > fn("lenet5-caffe", LENET5_FULL)


def test_paper_cost_passes_the_data_sizes_to_both_counts() -> None:
    model = build_model("lenet5-caffe", in_channels=3)
    cost = paper_cost("lenet5-caffe", model, in_channels=3)
    assert cost["memory"] == cost["memory_full"] == paper_memory("lenet5-caffe", LENET5_FULL, in_channels=3)
    assert cost["flops"] == cost["flops_full"] == paper_flops("lenet5-caffe", LENET5_FULL, in_channels=3)
    assert cost["memory_pct"] == 100.0 and cost["flops_speedup"] == 1.0


def test_paper_cost_record_has_every_field() -> None:
    model = build_model("lenet5-caffe")
    assert set(paper_cost("lenet5-caffe", model)) == {
        "memory_pct", "flops_speedup", "memory", "memory_full", "flops", "flops_full", "active_units",
        "total_units", "compat_bug"}
    cost = paper_cost("lenet5-caffe", model)
    assert cost["total_units"] == LENET5_FULL and cost["compat_bug"] is False


def test_paper_cost_of_vgg16_counts_the_dense_layers_once_unless_asked() -> None:
    model = build_model("vgg16", num_classes=10, in_channels=3, image_size=32)
    assert paper_cost("vgg16", model)["memory_full"] == 16_655_818 == paper_cost("vgg16", model)["memory"]
    bug = paper_cost("vgg16", model, compat_bug=True)
    assert bug["memory_full"] == bug["memory"] == 19_881_538 and bug["compat_bug"] is True


def test_lenet5_odd_feature_maps_round_down_like_the_pooling() -> None:
    """image_size 30: conv2's map is 9x9, pooled to 4x4, so fc1 reads 50·16 = 800 inputs."""
    model = build_model("lenet5-caffe", image_size=30)
    assert paper_cost("lenet5-caffe", model, image_size=30)["total_units"] == LENET5_FULL


def test_lenet5_with_another_image_size_is_refused_with_both_counts() -> None:
    model = build_model("lenet5-caffe", image_size=32)  # fc1 reads 50·5·5 = 1250 inputs
    with pytest.raises(ValueError, match=r"^lenet5-caffe with image_size=None flattens 800 inputs, but the model's "
                                         r"fc1 mask has 1250 units; pass the model's image_size$"):
        paper_cost("lenet5-caffe", model)


def test_a_model_with_other_slots_under_the_lenet5_name_is_refused() -> None:
    with pytest.raises(ValueError, match="lenet5-caffe needs 4 unit counts"):
        paper_cost("lenet5-caffe", build_model("lenet-300-100"))


def test_the_class_count_comes_from_the_last_linear_layer() -> None:
    assert _last_linear_out(nn.Sequential(nn.Linear(3, 7), nn.Linear(7, 5), nn.Linear(5, 4))) == 4
    assert _last_linear_out(nn.Sequential(nn.Conv2d(1, 2, 3))) is None


def test_sparsity_record_adds_unstructured_zeros_and_paper_cost_where_they_apply() -> None:
    sizes = {"in_channels": 1, "num_classes": 10, "image_size": 28}
    model = install_bbd(build_model("lenet5-caffe"))
    dense = sparsity_record("lenet5-caffe", model, **sizes)
    assert "unstructured" not in dense  # no exact zero among the weights
    assert dense["paper"] == paper_cost("lenet5-caffe", model, **sizes)
    assert {k: dense[k] for k in ("unit_sparsity", "weight_sparsity", "active_units", "total_units")} == \
        sparsity_summary(model)
    with torch.no_grad():
        model.fc1.weight.view(-1)[:10].zero_()  # 10 of 430,500 weights: below 1 %
    sparse = sparsity_record("lenet5-caffe", model, **sizes)
    assert 0 < sparse["weight_sparsity"] < 1
    assert sparse["unstructured"] == unstructured_cost(model, input_shape=(1, 28, 28))
    other = sparsity_record("resnet18", build_model("resnet18", num_classes=10, in_channels=3, image_size=32),
                             in_channels=3, num_classes=10, image_size=32)
    assert "paper" not in other


# --------------------------------------------------------------------------------- vulnerability
def test_vulnerability_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^vulnerability needs at least one latent feature map, got none$"):
        vulnerability([], [])
    flat = [torch.zeros(4, 3), torch.zeros(5)]
    with pytest.raises(ValueError, match=r"^feature map 1 must be \[batch, units, \.\.\.\], got shape \(5,\)$"):
        layer_vulnerability(flat, [f.clone() for f in flat])
    meter = VulnerabilityMeter()
    with pytest.raises(ValueError, match=r"^VulnerabilityMeter has no batches yet; call update\(\) first$"):
        meter.mean()
    meter.update([torch.zeros(2, 3)], [torch.ones(2, 3)])
    with pytest.raises(ValueError, match=r"^feature map 0 has 4 units, earlier batches had 3$"):
        meter.update([torch.zeros(2, 4)], [torch.ones(2, 4)])


def test_meter_with_one_layer_counts_examples_and_summarises_under_its_keys() -> None:
    meter = VulnerabilityMeter()
    meter.update([torch.zeros(3, 2)], [torch.full((3, 2), 0.5)])
    meter.update([torch.zeros(1, 2)], [torch.full((1, 2), 0.5)])
    assert meter.n_examples == 4
    assert meter.summary() == {"mean": 0.5, "per_layer": [0.5], "n": 4}


def test_sparsity_record_counts_the_paper_cost_at_the_runs_data_sizes() -> None:
    """A 3-channel, 7-class LeNet5-Caffe on 28x28 inputs: the record's paper block is counted at those
    sizes (in_channels, num_classes and image_size passed through), not at MNIST's defaults."""
    model = install_bbd(build_model("lenet5-caffe", in_channels=3, num_classes=7))
    with torch.no_grad():  # an exact zero from the random init would add the unstructured block too
        model.conv1.weight[0, 0, 0, 0] = 0.0
    record = sparsity_record("lenet5-caffe", model, in_channels=3, num_classes=7, image_size=28)
    assert "unstructured" in record
    assert record["paper"] == paper_cost("lenet5-caffe", model, in_channels=3, num_classes=7, image_size=28)
    assert record["paper"]["memory_full"] == paper_memory("lenet5-caffe", LENET5_FULL, in_channels=3, num_classes=7)
    assert record["paper"]["flops_full"] == paper_flops("lenet5-caffe", LENET5_FULL, in_channels=3, num_classes=7)
    assert record["paper"]["memory_full"] != paper_memory("lenet5-caffe", LENET5_FULL, in_channels=3)
    assert record["paper"]["memory_full"] != paper_memory("lenet5-caffe", LENET5_FULL, num_classes=7)
    with pytest.raises(ValueError, match="image_size=32"):  # the image size reaches the LeNet5 check too
        sparsity_record("lenet5-caffe", model, in_channels=3, num_classes=7, image_size=32)


def test_unstructured_cost_by_hand_on_a_conv_and_a_linear_layer() -> None:
    """conv 1→2 (3×3, no padding) on 1×4×4 → 2×2 positions; linear 8→3 on its flattened output.
    One conv weight of 18 and 20 of the 24 linear weights are zero (the linear through its mask)."""
    from robustprune.sparsity.magnitude import MASK_BUFFER

    conv, lin = nn.Conv2d(1, 2, 3, bias=False), nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[0, 0, 0, 0] = 0.0
        lin.weight.fill_(2.0)
    mask = torch.zeros(3, 8)
    mask[0, :4] = 1.0
    lin.register_buffer(MASK_BUFFER, mask)
    model = nn.Sequential(conv, nn.Flatten(), lin)
    cost = unstructured_cost(model, input_shape=(1, 4, 4), value_bytes=2, index_bytes=3)
    conv_row, lin_row = cost["layers"]
    assert conv_row == {"layer": "0", "numel": 18, "nnz": 17, "dense_bytes": 36,
                        "csr_bytes": 17 * 5 + (2 + 1) * 3, "macs_dense": 18 * 4, "macs_sparse": 17 * 4}
    assert lin_row == {"layer": "2", "numel": 24, "nnz": 4, "dense_bytes": 48,
                       "csr_bytes": 4 * 5 + (3 + 1) * 3, "macs_dense": 24, "macs_sparse": 4}
    assert {k: cost[k] for k in ("numel", "nnz", "dense_bytes", "csr_bytes", "macs_dense", "macs_sparse")} == {
        "numel": 42, "nnz": 21, "dense_bytes": 84, "csr_bytes": 94 + 32, "macs_dense": 96, "macs_sparse": 72}
    assert cost["weight_sparsity"] == pytest.approx(50.0)
    assert cost["csr_vs_dense_bytes"] == pytest.approx(126 / 84) and cost["macs_ratio"] == pytest.approx(72 / 96)
    assert cost["note"].startswith("theoretical") and set(cost) == {
        "numel", "nnz", "dense_bytes", "csr_bytes", "macs_dense", "macs_sparse", "weight_sparsity",
        "csr_vs_dense_bytes", "macs_ratio", "layers", "note"}
    assert unstructured_cost(model, input_shape=(1, 4, 4))["dense_bytes"] == 4 * 42  # 4-byte values by default
    assert unstructured_cost(model, input_shape=(1, 4, 4))["csr_bytes"] == 21 * 8 + 3 * 4 + 4 * 4
    for bad in ({"value_bytes": 0}, {"index_bytes": 0}):
        with pytest.raises(ValueError, match=r"value_bytes and index_bytes must be >= 1, got"):
            unstructured_cost(model, input_shape=(1, 4, 4), **bad)
    assert unstructured_cost(model, input_shape=(1, 4, 4), value_bytes=1, index_bytes=1)["dense_bytes"] == 42


def test_minnorm_meter_summary_by_hand() -> None:
    from robustprune.attacks.minnorm import MinNormResult
    from robustprune.metrics.minnorm import MinNormMeter

    empty = MinNormMeter().summary()
    assert empty == {"n": 0, "n_correct": 0, "n_success": 0, "n_failed": 0, "success_rate": None,
                     "r2": None, "r2_median": None, "r2_normalised": None}
    meter = MinNormMeter()
    x = torch.full((4, 1, 2, 2), 0.25)  # L2 norm of each image: 0.5
    norms = torch.tensor([0.2, 0.4, math.inf, 0.0])
    meter.update(MinNormResult(x_adv=x, norms=norms, success=torch.tensor([True, True, False, True])), x,
                 clean_correct=torch.tensor([True, True, True, False]))
    s = meter.summary()
    assert {k: s[k] for k in ("n", "n_correct", "n_success", "n_failed")} == {"n": 4, "n_correct": 3, "n_success": 2,
                                                                            "n_failed": 1}
    assert s["success_rate"] == pytest.approx(200 / 3) and s["r2"] == pytest.approx(0.3)
    assert s["r2_median"] == pytest.approx(0.2) and s["r2_normalised"] == pytest.approx(0.6)
    none = MinNormMeter()  # correct points, none fooled: no distance to average
    none.update(MinNormResult(x_adv=x[:1], norms=torch.tensor([math.inf]), success=torch.tensor([False])), x[:1],
                clean_correct=torch.tensor([True]))
    assert none.summary()["r2"] is None and none.summary()["r2_median"] is None and none.summary()["success_rate"] == 0


# ------------------------------------------------------------- minimum-norm summaries over a loader
def _scripted_attack(x_adv: torch.Tensor):  # type: ignore[no-untyped-def]
    from robustprune.attacks.minnorm import MinNormAttack

    class Scripted(MinNormAttack):
        """Proposes the given points; the base measures norms and checks success."""

        def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x_adv[: len(x)]

    return Scripted()


def _four_points() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # correct, fooled at 0.5; correct, fooled at 0.35; already wrong (distance 0); correct, attack fails
    x = torch.tensor([[0.9], [0.8], [0.2], [0.7]])
    x_adv = torch.tensor([[0.4], [0.45], [0.2], [0.9]])
    return x, torch.zeros(4, dtype=torch.long), x_adv


def test_minimal_distances_by_hand_with_a_scripted_attack() -> None:
    from robustprune.metrics.minnorm import minimal_distances

    x, y, x_adv = _four_points()
    d = minimal_distances(Threshold(), [(x, y)], _scripted_attack(x_adv), progress=False)
    assert d["n"] == 4 and d["norm"] == "l2" and d["clean_acc"] == pytest.approx(75.0)
    assert d["correct"] == [True, True, False, True] and d["n_failed"] == 1
    assert d["distances"][0] == pytest.approx(0.5) and d["distances"][1] == pytest.approx(0.35)
    assert d["distances"][2:] == [0.0, None]  # misclassified: 0; the failure is None, not inf
    assert d["median"] == pytest.approx(0.5)  # over the correct points, the failure as +inf: (0.35, 0.5, inf)


def test_minimal_distances_median_is_none_when_most_attacks_fail_or_nothing_is_correct() -> None:
    from robustprune.metrics.minnorm import minimal_distances

    x, y, _ = _four_points()
    fails = minimal_distances(Threshold(), [(x, y)], _scripted_attack(x.clone()), progress=False)
    assert fails["n_failed"] == 3 and fails["median"] is None and fails["distances"] == [None, None, 0.0, None]
    wrong = minimal_distances(Threshold(), [(x, torch.tensor([1, 1, 0, 1]))], _scripted_attack(x.clone()),
                              progress=False)
    assert wrong["clean_acc"] == 0.0 and wrong["median"] is None and wrong["distances"] == [0.0, 0.0, 0.0, 0.0]


def test_minnorm_summaries_of_an_empty_loader_are_empty_not_a_crash() -> None:
    from robustprune.metrics.minnorm import minimal_distances, minnorm_robustness, security_points

    x, _, x_adv = _four_points()
    d = minimal_distances(Threshold(), [], _scripted_attack(x_adv), progress=False)
    assert d["n"] == 0 and math.isnan(d["clean_acc"]) and d["median"] is None and d["n_failed"] == 0
    assert d["correct"] == [] and d["distances"] == []
    r = minnorm_robustness(Threshold(), [], _scripted_attack(x_adv), progress=False)
    assert r["n"] == 0 and math.isnan(r["clean_acc"]) and r["r2"] is None
    (point,) = security_points([], [], [0.1])
    assert point["eps"] == 0.1 and math.isnan(point["robust_acc"])


def test_security_points_are_dicts_of_eps_and_robust_accuracy() -> None:
    from robustprune.metrics.minnorm import security_points

    assert security_points([0.5, None, 0.0], [True, True, False], [0.0, 0.6]) == [
        {"eps": 0.0, "robust_acc": pytest.approx(200 / 3)}, {"eps": 0.6, "robust_acc": pytest.approx(100 / 3)}]


def test_minnorm_success_rate_is_none_when_no_point_is_correct() -> None:
    from robustprune.attacks.minnorm import MinNormResult
    from robustprune.metrics.minnorm import MinNormMeter

    meter = MinNormMeter()
    x = torch.zeros(2, 1)
    meter.update(MinNormResult(x_adv=x, norms=torch.zeros(2), success=torch.ones(2, dtype=torch.bool)), x,
                 clean_correct=torch.zeros(2, dtype=torch.bool))
    s = meter.summary()
    assert s["n"] == 2 and s["n_correct"] == 0 and s["success_rate"] is None and s["r2"] is None


@pytest.mark.parametrize("which", ["minnorm_robustness", "minimal_distances"])
def test_minnorm_loops_show_a_bar_named_after_the_attack_and_name_a_wrong_attack(
        which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The progress bar: on by default, off with progress=False, labelled with the attack's name,
    removed when done and as wide as the terminal; a fixed-budget attack is refused by its type."""
    from robustprune.attacks import PGD
    from robustprune.metrics import minnorm

    seen: list[dict[str, object]] = []

    def recording_tqdm(iterable, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        return iterable

    monkeypatch.setattr(minnorm, "tqdm", recording_tqdm)
    fn = getattr(minnorm, which)
    x, y, x_adv = _four_points()
    fn(Threshold(), [(x, y)], _scripted_attack(x_adv))
    fn(Threshold(), [(x, y)], _scripted_attack(x_adv), progress=False)
    assert seen == [{"desc": "scripted", "disable": False, "leave": False, "dynamic_ncols": True},
                    {"desc": "scripted", "disable": True, "leave": False, "dynamic_ncols": True}]
    with pytest.raises(ValueError, match=r"got PGD$"):
        fn(Threshold(), [(x, y)], PGD(eps=0.1))  # type: ignore[arg-type]
