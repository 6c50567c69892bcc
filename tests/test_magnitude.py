"""Progressive magnitude pruning (Guo et al. 2018), its mask mechanics, activation sparsity, the
linear model and two-class datasets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import robustprune.defenses  # noqa: F401  (registers methods)
from robustprune.config import TrainConfig
from robustprune.data import dataset_info, load_split
from robustprune.defenses import MethodContext, build_method
from robustprune.metrics.unstructured import unstructured_cost
from robustprune.models import build_model
from robustprune.sparsity.magnitude import (
    apply_masks,
    expected_sparsity,
    install_weight_masks,
    layer_sparsities,
    masked_layers,
    prune_by_magnitude,
    sparsity_mask,
)
from robustprune.train import fit, load_run

CTX = MethodContext(dataset="mnist", train_size=64, num_classes=10, adv_eps=0.3, adv_steps=2, adv_step_size=0.1)


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet-300-100", num_classes=10, in_channels=1, image_size=28)


def tiny_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(method="standard", model="lenet-300-100", dataset="mnist", epochs=1, out=str(out),
                       data_dir=str(data), limit_train=64, batch_size=32, adv_steps=2, adv_step_size=0.1,
                       progress=False)
    return replace(base, **kw)


def test_rounds_give_expected_layer_sparsity() -> None:
    model = lenet()
    install_weight_masks(model)
    for t in range(1, 6):
        sp = prune_by_magnitude(model, fraction=1 / 3)
        for s, (_, m) in zip(sp, masked_layers(model), strict=True):
            assert s == pytest.approx(expected_sparsity(1 / 3, t), abs=2 * t / m.weight.numel() + 1e-9)
            assert int((m.weight == 0).sum()) >= int((m.weight_mask == 0).sum())  # pruned weights are zero
    assert expected_sparsity(1 / 3, 4) == pytest.approx(0.802, abs=1e-3)


def test_magnitude_removes_the_smallest_weights() -> None:
    model = lenet()
    install_weight_masks(model)
    before = model.fc2.weight.detach().abs().clone()
    prune_by_magnitude(model, fraction=0.5)
    kept = model.fc2.weight_mask.bool()
    assert before[~kept].max() <= before[kept].min()


def test_global_scope_differs_from_layerwise_but_hits_the_total() -> None:
    model = lenet()
    with torch.no_grad():
        model.fc3.weight.add_(1.0)  # the last layer's weights are all large: global keeps them
    install_weight_masks(model)
    prune_by_magnitude(model, fraction=0.5, scope="global")
    sp = layer_sparsities(model)
    n = [m.weight.numel() for _, m in masked_layers(model)]
    assert sum(s * k for s, k in zip(sp, n, strict=True)) / sum(n) == pytest.approx(0.5, abs=1e-4)
    assert sp[-1] == 0.0 and sp[0] > 0.5


def test_keep_first_last_leaves_them_dense() -> None:
    model = lenet()
    assert install_weight_masks(model, keep_first_last=True) == ["fc2"]
    prune_by_magnitude(model, fraction=0.5)
    assert (model.fc1.weight != 0).all() and (model.fc3.weight != 0).all()


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masked_weights_stay_zero_through_momentum_and_decay(opt: str) -> None:
    model = lenet()
    install_weight_masks(model)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    optim = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2) if opt == "sgd"
             else torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-2))
    for i in range(6):  # build up momentum / Adam moments on the dense weights first
        if i == 3:
            prune_by_magnitude(model, fraction=0.5)
        optim.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if i >= 3:
            assert (model.fc1.weight.grad[model.fc1.weight_mask == 0] == 0).all()  # gradients masked
        optim.step()
        apply_masks(model)
        if i >= 3:
            for _, m in masked_layers(model):
                assert (m.weight[m.weight_mask == 0] == 0).all()
                assert (m.weight[m.weight_mask == 1] != 0).all()


def test_bad_arguments_name_the_value() -> None:
    model = lenet()
    with pytest.raises(ValueError, match="weight masks"):
        prune_by_magnitude(model, fraction=0.3)
    install_weight_masks(model)
    with pytest.raises(ValueError, match="1.5"):
        prune_by_magnitude(model, fraction=1.5)
    with pytest.raises(ValueError, match="'row'"):
        prune_by_magnitude(model, fraction=0.3, scope="row")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'row'"):
        sparsity_mask(torch.ones(3, 3), sparsity=0.5, structure="row")
    for kw, bad in (({"rho": 1.0}, "1.0"), ({"epochs_per_round": 0}, "0"), ({"scope": "x"}, "'x'")):
        with pytest.raises(ValueError, match=bad):
            build_method("magnitude", ctx=CTX, **kw)
    with pytest.raises(ValueError, match="-1"):
        build_method("l1-activation", ctx=CTX, lam=-1)


def test_magnitude_run_prunes_each_round_and_resumes(tiny_mnist: Path, tmp_path: Path) -> None:
    std = fit(tiny_cfg(tiny_mnist, tmp_path / "std"))
    cfg = tiny_cfg(tiny_mnist, tmp_path / "mag", method="magnitude", epochs=2, init_from=str(std),
                   method_args={"rho": 0.5, "adversarial": True}, schedule="constant")
    fit(replace(cfg, epochs=1))
    fit(replace(cfg, resume=True))  # epoch 2 after a resume: round 2
    run = load_run(tmp_path / "mag")
    for _, m in masked_layers(run.model):
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.75, abs=0.01)
    cost = unstructured_cost(run.model, input_shape=(1, 28, 28))
    assert cost["weight_sparsity"] == pytest.approx(75.0, abs=1.0)
    assert cost["macs_sparse"] == pytest.approx(0.25 * cost["macs_dense"], rel=0.02)


def test_l1_activation_trains_and_reports_zero_fraction(tiny_mnist: Path, tmp_path: Path) -> None:
    method = build_method("l1-activation", ctx=CTX, lam=1.0)
    model = lenet()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses, logs = method.loss(model, x, y)
    _, feats = model(x, features=True)
    ce = nn.functional.cross_entropy(model(x), y)
    assert losses["weights"].item() == pytest.approx(ce.item() + sum(f.abs().mean().item() for f in feats), rel=1e-5)
    assert logs["act_zero"].item() == pytest.approx((feats[-1] == 0).float().mean().item())
    with pytest.raises(ValueError, match="no hidden"):
        method.loss(build_model("linear"), x, y)


def test_linear_model_and_digit_pair(tiny_mnist: Path, tmp_path: Path) -> None:
    info = dataset_info("mnist-1v7")
    assert (info.num_classes, info.pair, info.name) == (2, (1, 7), "mnist")
    images, labels = load_split("mnist-1v7", "train", data_dir=tiny_mnist)
    _, full = load_split("mnist", "train", data_dir=tiny_mnist)
    assert len(labels) == int(((full == 1) | (full == 7)).sum()) and set(labels.tolist()) <= {0, 1}
    assert int(labels.sum()) == int((full == 7).sum())
    with pytest.raises(ValueError, match="mnist-3v3"):
        dataset_info("mnist-3v3")
    run = fit(tiny_cfg(tiny_mnist, tmp_path / "lin", model="linear", dataset="mnist-1v7", limit_train=None))
    model = load_run(run).model
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 2)
    assert model(torch.rand(2, 1, 28, 28), features=True)[1] == []


def test_fresh_state_keys_are_the_masks_and_scores_a_method_adds() -> None:
    """What ``--init-from`` may start fresh: magnitude's weight masks, HYDRA's scores; nothing of the bare net."""
    from robustprune.sparsity.magnitude import fresh_state_keys
    from robustprune.train.run import method_context

    def prepared(method: str) -> nn.Module:
        ctx = method_context(TrainConfig(method=method), train_size=64)
        return build_method(method, ctx=ctx).prepare(build_model("lenet5-caffe"))

    bare = set(build_model("lenet5-caffe").state_dict())
    for method, suffix in (("magnitude", ".weight_mask"), ("hydra", ".scores")):
        model = prepared(method)
        added = set(model.state_dict()) - bare
        fresh = fresh_state_keys(model)
        assert fresh and fresh <= added and any(k.endswith(suffix) for k in fresh), (method, fresh)
        assert {k for k in added if k.endswith((".weight_mask", ".scores"))} == fresh, (method, added - fresh)
    assert fresh_state_keys(build_model("lenet5-caffe")) == set()
