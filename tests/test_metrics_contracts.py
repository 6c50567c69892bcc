"""Metrics at their edges, added where mutation testing (bench/mutation.py) found changes to the
code that no test noticed: errors name the value at fault, JSON-ready summaries keep their keys."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
    record = sparsity_record("lenet5-caffe", model, in_channels=3, num_classes=7, image_size=28)
    assert record["paper"] == paper_cost("lenet5-caffe", model, in_channels=3, num_classes=7, image_size=28)
    assert record["paper"]["memory_full"] == paper_memory("lenet5-caffe", LENET5_FULL, in_channels=3, num_classes=7)
    assert record["paper"]["flops_full"] == paper_flops("lenet5-caffe", LENET5_FULL, in_channels=3, num_classes=7)
    assert record["paper"]["memory_full"] != paper_memory("lenet5-caffe", LENET5_FULL, in_channels=3)
    assert record["paper"]["memory_full"] != paper_memory("lenet5-caffe", LENET5_FULL, num_classes=7)
    with pytest.raises(ValueError, match="image_size=32"):  # the image size reaches the LeNet5 check too
        sparsity_record("lenet5-caffe", model, in_channels=3, num_classes=7, image_size=32)
