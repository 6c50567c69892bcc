"""ANP-VS and its baselines: which parameters each loss moves, the VS term, the recipe's constants."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from robustprune.defenses import MethodContext, build_method
from robustprune.models import base_parameters, build_model, mask_parameters
from robustprune.sparsity.bbdropout import BBDropout, bbd_layers
from robustprune.train.loop import step

CTX = MethodContext(dataset="mnist", train_size=1000, num_classes=10, adv_eps=0.3, adv_steps=2,
                    adv_step_size=0.1, lr=1e-3, weight_decay=1e-4, total_steps=10)


def setup(method: str, **kw: object) -> tuple[torch.nn.Module, object, list, list]:
    torch.manual_seed(0)
    m = build_method(method, ctx=kw.pop("ctx", CTX), **kw)  # type: ignore[arg-type]
    model = m.prepare(build_model("lenet5-caffe"))
    groups = m.param_groups(model)
    opts = [torch.optim.Adam(g.params, lr=g.lr, weight_decay=g.weight_decay) for g in groups]
    return model, m, groups, opts


def snapshot(params: object) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]  # type: ignore[attr-defined]


def moved(before: list[torch.Tensor], params: object) -> bool:
    return any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))  # type: ignore[call-overload]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)


@pytest.mark.parametrize("method", ["bp", "anp", "anp-vs"])
def test_masked_methods_move_masks_and_weights(method: str) -> None:
    model, m, groups, opts = setup(method)
    assert [g.name for g in groups] == ["masks", "weights"]
    assert groups[0].lr == 1e-2 and groups[1].lr == 1e-3
    assert groups[0].weight_decay == 0 and groups[1].weight_decay == 1e-4
    masks, weights = snapshot(mask_parameters(model)), snapshot(base_parameters(model))
    step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
    assert moved(masks, mask_parameters(model))
    assert moved(weights, base_parameters(model))
    assert sum(layer.units for layer in bbd_layers(model)) == 1370


@pytest.mark.parametrize("method", ["standard", "at", "trades", "fast-at", "pretrained-at"])
def test_dense_methods_have_no_masks(method: str) -> None:
    model, m, groups, opts = setup(method)
    assert list(mask_parameters(model)) == []
    weights = snapshot(base_parameters(model))
    step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
    assert moved(weights, base_parameters(model))


def mask_grads(method: str, **kw: object) -> list[torch.Tensor]:
    model, m, groups, _ = setup(method, **kw)
    torch.manual_seed(5)
    losses, _ = m.loss(model, *batch())  # type: ignore[attr-defined]
    return list(torch.autograd.grad(losses["masks"], groups[0].params))


def test_vs_and_clean_loss_never_reach_the_masks() -> None:
    """DESIGN §3: masks see only CE(x_adv) + β·KL/N, so λ (and the clean CE weight) do not change them."""
    a = mask_grads("anp-vs", lam=0.0)
    b = mask_grads("anp-vs", lam=100.0, adv_weight=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_vs_gradient_comes_from_every_latent_layer() -> None:
    """The reference code silently dropped layer 1's VS gradient; ours must not."""
    from robustprune.metrics import vulnerability

    torch.manual_seed(0)
    clean = [torch.randn(4, 3, 5, 5, requires_grad=True), torch.randn(4, 7, requires_grad=True)]
    adv = [c.detach() + 0.1 for c in clean]
    grads = torch.autograd.grad(vulnerability(clean, adv), clean)
    assert all(g.abs().sum() > 0 for g in grads)


def test_vs_changes_the_weight_gradient() -> None:
    model, m, groups, _ = setup("anp-vs", lam=1.0)
    x, y = batch()
    torch.manual_seed(5)
    losses, logs = m.loss(model, x, y)  # type: ignore[attr-defined]
    assert logs["vs"] > 0
    # conv1 only feeds the first latent map's difference through its own output: it must get VS gradient
    g_with = torch.autograd.grad(losses["weights"], [model.conv1.weight])[0]
    model2, m2, _, _ = setup("anp-vs", lam=0.0)
    torch.manual_seed(5)
    losses2, _ = m2.loss(model2, x, y)  # type: ignore[attr-defined]
    g_without = torch.autograd.grad(losses2["weights"], [model2.conv1.weight])[0]
    assert not torch.allclose(g_with, g_without)


def test_vs_is_zero_when_the_attack_does_nothing() -> None:
    ctx = replace(CTX, adv_eps=0.0, adv_step_size=0.0)
    model, m, _, _ = setup("anp-vs", ctx=ctx)
    model.train()
    _, logs = m.loss(model, *batch())  # type: ignore[attr-defined]
    assert logs["vs"].item() == 0.0


def test_paper_constants_per_dataset() -> None:
    m = build_method("anp-vs", ctx=CTX)
    assert (m.beta, m.lam) == (4.0, 1e-3)  # type: ignore[attr-defined]
    m = build_method("anp-vs", ctx=replace(CTX, dataset="cifar10"))
    assert (m.beta, m.lam) == (2.0, 1e-4)  # type: ignore[attr-defined]
    assert build_method("anp", ctx=CTX).lam == 0.0  # type: ignore[attr-defined]
    assert m.kl_weight() == pytest.approx(2.0 / 1000)  # type: ignore[attr-defined]


def test_kl_warmup_ramps_from_zero() -> None:
    m = build_method("anp-vs", ctx=CTX, kl_warmup=0.5)
    assert m.kl_weight() == 0.0  # type: ignore[attr-defined]
    m.after_step(torch.nn.Identity(), 5)
    assert m.kl_weight() == pytest.approx(4.0 / 1000)  # type: ignore[attr-defined]


def test_initial_keep_rates_follow_the_design() -> None:
    model, _, _, _ = setup("anp-vs")
    for layer in bbd_layers(model):
        assert isinstance(layer, BBDropout)
        assert layer.expected_keep().mean().item() == pytest.approx(0.239, abs=2e-3)


@pytest.mark.parametrize(("key", "value"), [("beta", -1.0), ("lam", -0.1), ("mask_lr", 0.0), ("kl_warmup", 1.5)])
def test_bad_hyperparameters_name_the_value(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=str(value)):
        build_method("anp-vs", ctx=CTX, **{key: value})


def test_trades_attack_maximises_kl_from_a_small_gaussian_start() -> None:
    model, m, _, _ = setup("trades")
    p = torch.full((8, 10), 0.1)
    atk = m.attack_for(p)  # type: ignore[attr-defined]
    assert atk.random_start == "normal" and atk.start_radius == pytest.approx(0.001)
    assert m.beta == 6.0  # type: ignore[attr-defined]


def test_fast_variant_defaults_and_mask_warmup_freezes_masks() -> None:
    m = build_method("anp-vs-fast", ctx=CTX)
    assert (m.beta, m.lam) == (36.0, 1.0)  # type: ignore[attr-defined]  # chosen on validation data
    assert m.mask_lr == 5e-2 and m.mask_warmup == 0.3  # type: ignore[attr-defined]
    cifar = build_method("anp-vs-fast", ctx=replace(CTX, dataset="cifar10"))
    assert (cifar.beta, cifar.lam) == (18.0, 1e-4)  # type: ignore[attr-defined]  # no selection: 9x paper's beta
    model, m, groups, _ = setup("anp-vs-fast")
    for layer in bbd_layers(model):
        assert layer.expected_keep().mean().item() == pytest.approx(0.75, abs=0.01)
    assert m.frozen_groups() == {"masks"}  # type: ignore[attr-defined]
    m.after_step(model, 5)  # past 30 % of 10 steps: the masks learn
    assert m.frozen_groups() == frozenset()  # type: ignore[attr-defined]


def test_frozen_masks_neither_move_nor_advance_their_optimiser() -> None:
    model, m, groups, opts = setup("anp-vs", mask_warmup=0.5)
    masks_before, weights_before = snapshot(groups[0].params), snapshot(groups[1].params)
    for i in range(3):
        step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
        m.after_step(model, i + 1)  # type: ignore[attr-defined]
    assert not moved(masks_before, groups[0].params) and opts[0].state_dict()["state"] == {}
    assert moved(weights_before, groups[1].params)


def test_first_step_after_warmup_equals_a_fresh_optimisers_first_step() -> None:
    """A warm-up that only zeroed the mask loss let Adam count the frozen steps (its bias
    correction then made the first real steps 2-4x the learning rate): compare with an optimiser
    built fresh at the end of the warm-up."""
    model, m, groups, opts = setup("anp-vs", mask_warmup=0.5)
    for i in range(5):
        step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
        m.after_step(model, i + 1)  # type: ignore[attr-defined]
    assert m.frozen_groups() == frozenset()  # type: ignore[attr-defined]
    twin = copy.deepcopy(model)
    twin_m = copy.deepcopy(m)
    twin_groups = twin_m.param_groups(twin)  # type: ignore[attr-defined]
    twin_opts = [torch.optim.Adam(g.params, lr=g.lr, weight_decay=g.weight_decay) for g in twin_groups]
    twin_opts[1].load_state_dict(opts[1].state_dict())  # same weights optimiser; a fresh one for the masks
    torch.manual_seed(7)
    step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
    torch.manual_seed(7)
    step(twin_m, twin, twin_groups, twin_opts, *batch())  # type: ignore[arg-type]
    for a, b in zip(groups[0].params, twin_groups[0].params, strict=True):
        assert torch.equal(a, b)


def test_first_real_mask_step_is_one_learning_rate() -> None:
    model, m, groups, opts = setup("anp-vs", mask_warmup=0.5)
    for i in range(5):
        step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
        m.after_step(model, i + 1)  # type: ignore[attr-defined]
    before = snapshot(groups[0].params)
    step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
    largest = max((p - b).abs().max().item() for p, b in zip(groups[0].params, before, strict=True))
    assert largest == pytest.approx(groups[0].lr, rel=1e-3)  # Adam's first step: lr·g/|g|


def test_mask_hold_releases_the_masks_once_adversarial_accuracy_rises() -> None:
    m = build_method("anp-vs", ctx=CTX, mask_hold=0.3)
    assert m.frozen_groups() == {"masks"}  # type: ignore[attr-defined]
    for _ in range(50):
        m.observe({"adv_acc": torch.tensor(0.1)})  # type: ignore[attr-defined]
    assert m.frozen_groups() == {"masks"}  # type: ignore[attr-defined]
    m.after_step(torch.nn.Identity(), 60)  # type: ignore[attr-defined]
    for _ in range(200):
        m.observe({"adv_acc": torch.tensor(0.6)})  # type: ignore[attr-defined]
    assert m.frozen_groups() == frozenset()  # type: ignore[attr-defined]
    assert m.card_fields()["mask_hold_released_at_step"] == 60  # type: ignore[attr-defined]
    again = build_method("anp-vs", ctx=CTX, mask_hold=0.3)
    again.load_state_dict(m.state_dict())  # type: ignore[attr-defined]
    assert again.frozen_groups() == frozenset()  # resumes released
    for _ in range(50):
        m.observe({"adv_acc": torch.tensor(0.0)})  # type: ignore[attr-defined]
    assert m.frozen_groups() == frozenset()  # released for good


def test_mask_until_fixes_the_masks_and_fine_tunes_the_pruned_network() -> None:
    """After ``mask_until`` the masks stop stepping and the training forward is the eval forward
    (no sampling), so the weights train on exactly the network that is evaluated."""
    model, m, groups, opts = setup("anp-vs", mask_until=0.3)
    x, y = batch()
    for i in range(3):
        assert not m.fine_tuning()  # type: ignore[attr-defined]
        step(m, model, groups, opts, x, y)  # type: ignore[arg-type]
        m.after_step(model, i + 1)  # type: ignore[attr-defined]
    assert m.fine_tuning() and m.frozen_groups() == {"masks"}  # type: ignore[attr-defined]
    masks_before, weights_before = snapshot(groups[0].params), snapshot(groups[1].params)
    step(m, model, groups, opts, x, y)  # type: ignore[arg-type]
    assert not moved(masks_before, groups[0].params)
    assert moved(weights_before, groups[1].params)
    assert all(layer.fixed for layer in bbd_layers(model))
    model.train()
    train_out = model(x)
    assert torch.equal(train_out, model(x))  # deterministic in training mode
    model.eval()
    assert torch.allclose(train_out, model(x))
    resumed = build_method("anp-vs", ctx=CTX, mask_until=0.3)
    resumed.load_state_dict(m.state_dict())  # type: ignore[attr-defined]
    assert resumed.fine_tuning()  # type: ignore[attr-defined]
    assert m.card_fields()["mask_until"] == 0.3  # type: ignore[attr-defined]


def test_masks_sample_in_training_before_mask_until() -> None:
    model, m, groups, opts = setup("anp-vs", mask_until=0.5)
    step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
    assert not any(layer.fixed for layer in bbd_layers(model))
    model.train()
    x, _ = batch()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("kw", [{"mask_until": 0.0}, {"mask_until": 1.2}, {"mask_until": 0.2, "mask_warmup": 0.3}])
def test_mask_until_must_follow_the_warmup(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="mask_until"):
        build_method("anp-vs", ctx=CTX, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_mask_hold_must_be_an_accuracy(value: float) -> None:
    with pytest.raises(ValueError, match=str(value)):
        build_method("anp-vs", ctx=CTX, mask_hold=value)


def test_kl_weight_is_per_example_of_the_whole_training_split_by_default() -> None:
    subset = replace(CTX, train_size=20_000, dataset_size=60_000)
    m = build_method("anp-vs", ctx=subset)
    assert m.kl_weight() == pytest.approx(4.0 / 60_000)  # type: ignore[attr-defined]
    assert m.card_fields()["kl_weight"] == pytest.approx(4.0 / 60_000)  # type: ignore[attr-defined]
    assert m.card_fields()["kl_size"] == 60_000 and m.card_fields()["train_size"] == 20_000  # type: ignore[attr-defined]
    elbo = build_method("anp-vs", ctx=subset, kl_n="train")
    assert elbo.kl_weight() == pytest.approx(4.0 / 20_000)  # type: ignore[attr-defined]
    bp = build_method("bp", ctx=subset, beta=1.0)
    assert bp.card_fields()["kl_weight"] == pytest.approx(1.0 / 60_000)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="'subset'"):
        build_method("anp-vs", ctx=subset, kl_n="subset")


def test_a_frozen_group_the_method_does_not_have_is_an_error() -> None:
    model, m, groups, opts = setup("anp-vs")
    m.frozen_groups = lambda: frozenset({"scores"})  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="scores"):
        step(m, model, groups, opts, *batch())  # type: ignore[arg-type]
