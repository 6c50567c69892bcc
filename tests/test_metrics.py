"""Metrics: vulnerability, sparsity, and the paper's memory / FLOPs accounting."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

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
from robustprune.models import build_model, installed_masks
from robustprune.sparsity import install_bbd

VGG_FULL = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512]


def random_feats(batch: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, 3, 4, 4), (batch, 5, 2, 2), (batch, 7)]
    clean = [torch.randn(s, generator=g) for s in shapes]
    adv = [c + torch.randn(c.shape, generator=g) * (i + 1) for i, c in enumerate(clean)]
    return clean, adv


# --------------------------------------------------------------------------------- vulnerability
def test_vulnerability_zero_for_identical_features() -> None:
    clean, _ = random_feats(4, 0)
    assert vulnerability(clean, [c.clone() for c in clean]).item() == 0.0


def test_vulnerability_hand_computed() -> None:
    clean = [torch.tensor([[1.0, 2.0]]), torch.zeros(1, 1, 1, 2)]
    adv = [torch.tensor([[0.0, 4.0]]), torch.tensor([[[[1.0, -3.0]]]])]
    # layer 1: (|1-0| + |2-4|)/2 = 1.5; layer 2: (1 + 3)/2 = 2.0; V = 1.75 (plain mean over layers)
    assert layer_vulnerability(clean, adv).tolist() == [1.5, 2.0]
    assert vulnerability(clean, adv).item() == 1.75


def test_vulnerability_is_differentiable() -> None:
    clean, adv = random_feats(3, 1)
    clean = [c.requires_grad_() for c in clean]
    vulnerability(clean, adv).backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in clean)


def test_vulnerability_rejects_mismatched_inputs() -> None:
    clean, adv = random_feats(2, 2)
    with pytest.raises(ValueError, match="3 clean.*2 adversarial"):
        vulnerability(clean, adv[:2])
    with pytest.raises(ValueError, match="shape"):
        vulnerability(clean, [adv[0][:1], *adv[1:]])
    with pytest.raises(ValueError):
        vulnerability([], [])


def test_meter_over_uneven_batches_equals_whole_set() -> None:
    batches = [random_feats(b, seed) for seed, b in enumerate([3, 5, 1, 8])]
    meter = VulnerabilityMeter()
    for clean, adv in batches:
        meter.update(clean, adv)
    clean_all = [torch.cat([b[0][i] for b in batches]) for i in range(3)]
    adv_all = [torch.cat([b[1][i] for b in batches]) for i in range(3)]
    want = layer_vulnerability(clean_all, adv_all)
    assert meter.per_layer() == pytest.approx(want.tolist(), rel=1e-6)
    assert meter.mean() == pytest.approx(vulnerability(clean_all, adv_all).item(), rel=1e-6)
    # the batch-weighted mean differs from the mean of per-batch values when batches are uneven
    per_batch = sum(vulnerability(c, a).item() for c, a in batches) / len(batches)
    assert meter.mean() != pytest.approx(per_batch, rel=1e-4)
    for got, c, a in zip(meter.per_unit(), clean_all, adv_all, strict=True):
        dims = [0, *range(2, c.dim())]
        torch.testing.assert_close(got, (c - a).abs().double().mean(dim=dims))
    assert meter.n_examples == 17
    assert meter.summary()["mean"] == meter.mean()


def test_meter_rejects_inconsistent_batches() -> None:
    meter = VulnerabilityMeter()
    with pytest.raises(ValueError, match="no batches"):
        meter.mean()
    clean, adv = random_feats(2, 0)
    meter.update(clean, adv)
    with pytest.raises(ValueError, match="3 layers"):
        meter.update(clean[:2], adv[:2])


# --------------------------------------------------------------------------------- sparsity
def prune_units(model: nn.Module, counts: dict[str, int]) -> nn.Module:
    """Switch off the first ``counts[slot]`` units of the named masks (E[π] ≈ 5e-5 < 1e-3)."""
    masks = dict(installed_masks(model))
    with torch.no_grad():
        for name, k in counts.items():
            masks[name].a_uc[:k] = -10.0
    return model


def test_unit_sparsity_and_counts() -> None:
    model = build_model("lenet-300-100")
    assert unit_sparsity(model) == 0.0
    assert active_units(model) == [300, 100] and total_units(model) == [300, 100]
    prune_units(install_bbd(model), {"mask1": 100, "mask2": 50})
    assert active_units(model) == [200, 50]
    assert total_units(model) == [300, 100]
    assert unit_sparsity(model) == pytest.approx(100 * 150 / 400)
    summary = sparsity_summary(model)
    assert summary["unit_sparsity"] == pytest.approx(37.5) and summary["active_units"] == [200, 50]


def test_weight_sparsity_counts_only_conv_and_linear_weights() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2))  # 12 + 8 weights
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.fill_(1.0)
                m.bias.zero_()  # biases never count
        model[0].weight[0, :3] = 0.0
        model[1].weight[1, 0, 0, :] = 0.0
        model[2].weight.zero_()  # BN is not a weight layer
    assert weight_sparsity(model) == pytest.approx(100 * 5 / 20)
    assert weight_sparsity(nn.Sequential(nn.ReLU())) == 0.0


def test_weight_sparsity_reads_torch_prune_effective_weights() -> None:
    layer = nn.Linear(10, 10)
    prune.l1_unstructured(layer, "weight", amount=30)
    assert weight_sparsity(layer) == pytest.approx(30.0)


# --------------------------------------------------------------------------------- paper cost
def test_paper_cost_full_lenet5_caffe() -> None:
    full = [20, 50, 800, 500]
    assert paper_flops("lenet5-caffe", full) == 4_615_940
    assert paper_memory("lenet5-caffe", full) == 477_410


def test_paper_cost_full_vgg16() -> None:
    assert paper_flops("vgg16", VGG_FULL, num_classes=10) == 627_329_546
    assert paper_memory("vgg16", VGG_FULL, num_classes=10) == 16_655_818
    assert paper_memory("vgg16", VGG_FULL, num_classes=10, compat_bug=True) == 19_881_538


def test_paper_cost_pruned_matches_reference_code() -> None:
    # Values produced by ANP_VS/src/experiments/{flops,memory}/utils.py (@32c5e86) on these counts.
    lenet = [12, 23, 210, 77]
    assert paper_flops("lenet5-caffe", lenet) == 1_279_525
    assert paper_memory("lenet5-caffe", lenet) == 57_827
    vgg = [30, 61, 100, 97, 180, 150, 120, 90, 60, 40, 33, 21, 17, 64, 48]
    assert paper_flops("vgg16", vgg, num_classes=100) == 185_964_516
    assert paper_memory("vgg16", vgg, num_classes=100, compat_bug=True) == 1_981_560


def test_paper_cost_lenet_300_100() -> None:
    assert paper_memory("lenet-300-100", [300, 100]) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert paper_flops("lenet-300-100", [300, 100]) == (
        (2 * 784 - 1) * 300 + 2 * 300 + (2 * 300 - 1) * 100 + 2 * 100 + (2 * 100 - 1) * 10 + 10
    )


def test_paper_cost_of_a_model() -> None:
    model = install_bbd(build_model("lenet5-caffe"))
    dense = paper_cost("lenet5-caffe", model)
    assert dense["memory_pct"] == 100.0 and dense["flops_speedup"] == 1.0
    assert dense["flops_full"] == 4_615_940 and dense["memory_full"] == 477_410
    prune_units(model, {"mask1": 8, "mask2": 27, "mask3": 590, "mask4": 423})
    cost = paper_cost("lenet5-caffe", model)
    assert cost["active_units"] == [12, 23, 210, 77]
    assert cost["memory"] == 57_827 and cost["flops"] == 1_279_525
    assert cost["memory_pct"] == pytest.approx(100 * 57_827 / 477_410)
    assert cost["flops_speedup"] == pytest.approx(4_615_940 / 1_279_525)
    assert cost["memory_pct"] < 100 and cost["flops_speedup"] > 1


def test_paper_cost_infers_classes_and_checks_image_size() -> None:
    model = build_model("lenet5-caffe", num_classes=100)
    assert paper_cost("lenet5-caffe", model)["memory_full"] == 477_410 - 5_010 + 500 * 100 + 100
    with pytest.raises(ValueError, match="image_size=32"):
        paper_cost("lenet5-caffe", model, image_size=32)


def test_paper_cost_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        paper_flops("resnet18", [1])
    with pytest.raises(ValueError, match="4 unit counts"):
        paper_memory("lenet5-caffe", [20, 50, 800])
    with pytest.raises(ValueError, match="-1"):
        paper_memory("lenet5-caffe", [20, 50, 800, -1])
