"""ADMM robust pruning (Ye et al. 2019) and HYDRA (Sehwag et al. 2020)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import robustprune.defenses  # noqa: F401  (registers methods)
from robustprune.config import TrainConfig
from robustprune.defenses import MethodContext, build_method
from robustprune.defenses.hydra import scored_layers
from robustprune.models import build_model
from robustprune.sparsity.magnitude import masked_layers, sparsity_mask
from robustprune.train import fit, load_run
from robustprune.train.loop import step

CTX = MethodContext(dataset="mnist", train_size=64, num_classes=10, adv_eps=0.3, adv_steps=2, adv_step_size=0.1)


def lenet5() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5-caffe", num_classes=10, in_channels=1, image_size=28)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)


def in_set(z: torch.Tensor, ratio: float, structure: str) -> bool:
    """Whether z has at most (1 − ratio)·n non-zeros (irregular) or non-zero rows (filter)."""
    if structure == "irregular":
        return int((z != 0).sum()) <= round((1 - ratio) * z.numel())
    rows = z.flatten(1).ne(0).any(1)
    return int(rows.sum()) <= round((1 - ratio) * len(rows))


@pytest.mark.parametrize("structure", ["irregular", "filter"])
def test_sparsity_mask_is_a_projection_support(structure: str) -> None:
    w = torch.randn(20, 3, 5, 5)
    m = sparsity_mask(w, sparsity=0.75, structure=structure)
    assert in_set(w * m, 0.75, structure) and int(m.sum()) > 0
    if structure == "filter":  # whole filters, the ones with the largest norms
        kept = m.flatten(1).all(1)
        norms = w.flatten(1).norm(dim=1)
        assert norms[~kept].max() <= norms[kept].min() and int(kept.sum()) == 5


@pytest.mark.parametrize("structure", ["irregular", "filter"])
def test_admm_z_stays_in_its_sparsity_set(structure: str) -> None:
    model = lenet5()
    method = build_method("admm", ctx=CTX, sparsity={"conv1": 0.8, "conv2": 0.5, "fc1": 0.9}, structure=structure,
                          prune_epoch=3, rho=1e-2)
    method.prepare(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = batch()
    method.on_epoch_start(model, 0)
    for epoch in range(3):
        for _ in range(2):
            losses, logs = method.loss(model, x, y)
            opt.zero_grad()
            losses["weights"].backward()
            opt.step()
        assert logs["admm_penalty"].item() >= 0
        rho = method.rho
        method.on_epoch_end(model, epoch)
        for n, r in method.sparsity.items():
            assert in_set(method.Z[n], r, structure), (n, epoch)
        if epoch + 1 < 3:
            assert method.rho == pytest.approx(1.3 * rho)
    method.on_epoch_start(model, 3)  # hard prune
    assert method.pruned
    for n, r in method.sparsity.items():
        assert in_set(dict(model.named_modules())[n].weight, r, structure)
    assert (model.fc2.weight != 0).all()  # not in the dict: dense


def test_admm_penalty_matches_the_formula() -> None:
    model = lenet5()
    method = build_method("admm", ctx=CTX, sparsity=0.5, prune_epoch=5, rho=0.1)
    method.prepare(model)
    method.on_epoch_start(model, 0)
    x, y = batch()
    _, logs = method.loss(model, x, y)
    expect = sum(((m.weight - m.weight * sparsity_mask(m.weight, sparsity=0.5)) ** 2).sum()
                 for _, m in masked_layers(model))
    assert logs["admm_penalty"].item() == pytest.approx(expect.item(), rel=1e-5)


def test_admm_bad_args_name_the_value() -> None:
    with pytest.raises(ValueError, match="1.2"):
        build_method("admm", ctx=CTX, sparsity=1.2)
    with pytest.raises(ValueError, match="'column'"):
        build_method("admm", ctx=CTX, structure="column")
    method = build_method("admm", ctx=CTX, sparsity={"conv9": 0.5})
    with pytest.raises(ValueError, match="conv9"):
        method.prepare(lenet5())


def test_hydra_uses_k_weights_and_freezes_weights_in_score_phase() -> None:
    model = lenet5()
    method = build_method("hydra", ctx=CTX, sparsity=0.9, score_epochs=1, score_lr=0.05)
    method.prepare(model)
    method.on_epoch_start(model, 0)
    layers = scored_layers(model)
    assert len(layers) == 4
    for _, m in layers:  # scaled init: the first mask is layer-wise magnitude pruning
        w, _ = m.effective()
        assert int((w != 0).sum()) == round(0.1 * m.weight.numel())
        assert torch.equal(w != 0, sparsity_mask(m.weight, sparsity=0.9).bool())
    groups = method.param_groups(model)
    opts = [torch.optim.Adam(g.params, lr=g.lr, weight_decay=1e-2) for g in groups]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x, y = batch()
    for _ in range(3):
        step(method, model, groups, opts, x, y)
    after = model.state_dict()
    for k in before:
        if k.endswith("scores"):
            assert not torch.equal(before[k], after[k]), k
        elif "weight" in k or "bias" in k:
            assert torch.equal(before[k], after[k]), k  # frozen in the score phase
    for _, m in layers:
        w, _ = m.effective()
        assert int((w != 0).sum()) == round(0.1 * m.weight.numel())
        w.sum().backward()  # the straight-through gradient reaches the scores
        assert m.scores.grad is not None and m.scores.grad.abs().sum() > 0
        m.scores.grad = None
    method.on_epoch_start(model, 1)  # fine-tune: mask fixed, pruned weights zero, weights train
    masks = [m.weight_mask.clone() for _, m in layers]
    step(method, model, groups, opts, x, y)
    for (_, m), mask in zip(layers, masks, strict=True):
        assert torch.equal(m.weight_mask, mask) and (m.weight[mask == 0] == 0).all()
        assert int((m.weight != 0).sum()) == round(0.1 * m.weight.numel())
    assert not torch.equal(before["fc1.weight"] * layers[2][1].weight_mask, model.fc1.weight)


def test_hydra_and_admm_runs_load_back(tiny_mnist: Path, tmp_path: Path) -> None:
    base = TrainConfig(model="lenet5-caffe", dataset="mnist", epochs=1, data_dir=str(tiny_mnist), limit_train=32,
                       batch_size=16, adv_steps=1, adv_step_size=0.3, progress=False, out=str(tmp_path / "std"))
    std = fit(base)
    for method, args in (("hydra", {"sparsity": 0.8, "score_epochs": 1}), ("admm", {"sparsity": 0.8})):
        run = fit(replace(base, method=method, epochs=2, init_from=str(std), method_args=args,
                          out=str(tmp_path / method)))
        loaded = load_run(run)
        x = torch.rand(2, 1, 28, 28)
        assert torch.isfinite(loaded.model(x)).all()
        from robustprune.metrics.unstructured import unstructured_cost

        cost = unstructured_cost(loaded.model, input_shape=(1, 28, 28))
        assert cost["weight_sparsity"] == pytest.approx(80.0, abs=0.5), method
    with pytest.raises(ValueError, match="1.5"):
        build_method("hydra", ctx=CTX, sparsity=1.5)
