"""Properties of robustprune.attacks that a wrong implementation would break (STYLE example 12).

Tiny models on 1x8x8 inputs; one slow cross-check against torchattacks on MNIST LeNet5-Caffe.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from robustprune.attacks import (
    ATTACKS,
    EOTPGD,
    FGSM,
    PGD,
    RFGSM,
    Attack,
    TransferAttack,
    build_attack,
    cross_entropy_loss,
)

CLASSES = 3


# ---- tiny models and data ------------------------------------------------------------------------


class TinyConv(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width * 16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


class ModeNet(nn.Module):
    """BatchNorm and Dropout, so train and eval mode give different outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 64, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.features(x).flatten(1)))


class ViewNet(TinyConv):
    """Calls .view() on conv activations, which fails for channels_last tensors."""

    def forward(self, x: Tensor) -> Tensor:
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(h.view(h.shape[0], -1))


def tiny_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyConv()


def tiny_linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, CLASSES))


def batch(n: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x[0] = 0.0  # pixels on both edges of [0, 1]
    x[1] = 1.0
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def toy_data(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Three classes: bright top half, bright left half, bright centre, on noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.zeros(CLASSES, 1, 8, 8)
    templates[0, :, :4, :] = 1
    templates[1, :, :, :4] = 1
    templates[2, :, 2:6, 2:6] = 1
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 0.3 + 0.1 * torch.randn(n, 1, 8, 8, generator=g) + 0.4 * templates[y]
    return x.clamp(0, 1), y


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, Tensor, Tensor]:
    """A TinyConv trained to high clean accuracy on the toy task, plus a held-out batch."""
    model = tiny_conv(1)
    x, y = toy_data(300, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    x_test, y_test = toy_data(100, seed=2)
    return model.eval(), x_test, y_test


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


#: one configuration of every attack and option, small enough to be fast
CONFIGS: dict[str, Callable[[float], Attack]] = {
    "fgsm": lambda eps: FGSM(eps=eps),
    "fgm-l2": lambda eps: FGSM(eps=eps, norm="l2"),
    "rfgsm": lambda eps: RFGSM(eps=eps),
    "pgd": lambda eps: PGD(eps=eps, steps=3, step_size=eps / 2),
    "pgd-l2": lambda eps: PGD(eps=eps, steps=3, step_size=eps / 2, norm="l2"),
    "pgd-restarts": lambda eps: PGD(eps=eps, steps=2, step_size=eps / 2, restarts=3),
    "eot-pgd": lambda eps: EOTPGD(eps=eps, steps=2, step_size=eps / 2, eot=2),
    "transfer": lambda eps: TransferAttack(source=tiny_linear(3), attack=PGD(eps=eps, steps=2)),
}


# ---- invariants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_eps_zero_returns_x_exactly(name: str) -> None:
    x, y = batch()
    x_adv = CONFIGS[name](0.0)(tiny_conv(), x, y)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_registered_attack_keeps_the_invariants(name: str) -> None:
    x, y = batch()
    model = tiny_conv()
    x_adv = build_attack(name, eps=0.1)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.is_contiguous()
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_result_in_ball_and_box_and_detached(name: str) -> None:
    x, y = batch()
    x = x.requires_grad_(True)
    attack = CONFIGS[name](0.2)
    x_adv = attack(tiny_conv(), x, y)
    delta = (x_adv - x).detach()
    if attack.norm == "linf":
        assert delta.abs().max() <= 0.2 + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= 0.2 + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad and x_adv.grad_fn is None
    assert x.grad is None


@settings(max_examples=20, deadline=None)
@given(
    eps=st.floats(0.0, 0.5),
    steps=st.integers(1, 4),
    step_frac=st.floats(0.05, 2.0),
    norm=st.sampled_from(["linf", "l2"]),
    random_start=st.sampled_from([True, False, "normal"]),
    seed=st.integers(0, 2**16),
)
def test_property_ball_and_box(
    eps: float, steps: int, step_frac: float, norm: str, random_start: bool | str, seed: int
) -> None:
    x, y = batch(seed=seed)
    torch.manual_seed(seed)
    attack = PGD(eps=eps, steps=steps, step_size=max(step_frac * eps, 1e-3), norm=norm, random_start=random_start)
    x_adv = attack(tiny_conv(seed % 3), x, y)
    delta = x_adv - x
    bound = delta.abs().amax(dim=(1, 2, 3)) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert bound.max() <= eps + 1e-5
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype


def test_float64_inputs_keep_their_dtype() -> None:
    x, y = batch()
    model = tiny_conv().double()
    x_adv = PGD(eps=0.1, steps=2)(model, x.double(), y)
    assert x_adv.dtype == torch.float64 and (x_adv - x.double()).abs().max() <= 0.1 + 1e-12


# ---- exact update rules (a linear loss has a known gradient) -------------------------------------

W = torch.linspace(-1, 1, 64)  # gradient of the loss below; no zero entries


def linear_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return (x.flatten(1) * W).sum(1)


def test_fgsm_is_one_signed_step() -> None:
    x, y = batch()
    x_adv = FGSM(eps=0.1, loss=linear_loss)(tiny_conv(), x, y)
    expected = (x + 0.1 * W.sign().view(1, 1, 8, 8)).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)


def test_rfgsm_is_tramer_single_step() -> None:
    x, y = batch()
    eps, alpha = 0.2, 0.05
    model = tiny_conv()
    torch.manual_seed(7)
    x_adv = RFGSM(eps=eps, alpha=alpha, loss=linear_loss)(model, x, y)
    torch.manual_seed(7)
    x_tilde = (x + alpha * torch.randn(x.shape).sign()).clamp(0, 1)
    expected = (x_tilde + (eps - alpha) * W.sign().view(1, 1, 8, 8)).clamp(0, 1)
    expected = torch.min(torch.max(expected, x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected)
    assert RFGSM(eps=0.3).params()["alpha"] == pytest.approx(0.15)


def test_l2_pgd_step_is_normalised_gradient() -> None:
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    x_adv = PGD(eps=10.0, steps=1, step_size=0.3, norm="l2", random_start=False, loss=linear_loss)(
        tiny_conv(), x, y
    )
    step = (x_adv - x).flatten(1)
    torch.testing.assert_close(step.norm(dim=1), torch.full((2,), 0.3))
    torch.testing.assert_close(step[0], 0.3 * W / W.norm())


def test_l2_projection_onto_ball() -> None:
    x = torch.full((2, 1, 8, 8), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    x_adv = PGD(eps=0.4, steps=3, step_size=0.3, norm="l2", loss=linear_loss)(tiny_conv(), x, y)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.4 + 1e-6) and torch.all(norms > 0.39)  # pushed to the boundary


# ---- cost: gradient and forward calls ------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    counts = {"grad": 0}
    real = torch.autograd.grad

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003
        counts["grad"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    return counts


@pytest.mark.parametrize(
    ("attack", "calls"),
    [
        (FGSM(eps=0.1), 1),
        (RFGSM(eps=0.1), 1),
        (PGD(eps=0.1, steps=7, step_size=0.02), 7),
        (PGD(eps=0.5, steps=4, norm="l2"), 4),
        (EOTPGD(eps=0.1, steps=3, step_size=0.02, eot=4), 12),
        (build_attack("eot-pgd", eps=0.1, steps=2), 20),
    ],
    ids=["fgsm", "rfgsm", "pgd-7", "pgd-l2-4", "eot-pgd-3x4", "eot-pgd-default-eot"],
)
def test_gradient_and_forward_calls(attack: Attack, calls: int, counted: dict[str, int]) -> None:
    model = tiny_conv()
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    x, y = batch()
    attack(model, x, y)
    assert counted["grad"] == calls
    assert len(forwards) == calls  # one forward per gradient: no extra passes


# ---- strength ------------------------------------------------------------------------------------


def test_attacks_lower_accuracy_of_trained_model(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    clean = accuracy(model, x, y)
    torch.manual_seed(0)
    pgd = accuracy(model, PGD(eps=0.25, steps=10, step_size=0.05)(model, x, y), y)
    fgsm = accuracy(model, FGSM(eps=0.25)(model, x, y), y)
    assert clean >= 0.95
    assert pgd <= 0.1
    assert pgd <= fgsm < clean


def test_restarts_never_weaker_than_one_run(trained: tuple[nn.Module, Tensor, Tensor]) -> None:
    model, x, y = trained
    kw = {"eps": 0.16, "steps": 5, "step_size": 0.04}
    torch.manual_seed(3)
    single = PGD(**kw)(model, x, y)
    torch.manual_seed(3)
    multi = PGD(restarts=5, **kw)(model, x, y)
    with torch.no_grad():
        s_logits, m_logits = model(single), model(multi)
    s_fooled, m_fooled = s_logits.argmax(1) != y, m_logits.argmax(1) != y
    assert 0 < s_fooled.sum() < len(y), "eps should give a partial success for this test to bite"
    assert torch.all(m_fooled >= s_fooled)  # success set of restarts contains the single run's
    assert m_fooled.sum() > s_fooled.sum()
    assert torch.equal(multi[s_fooled], single[s_fooled])  # first success kept
    s_loss = F.cross_entropy(s_logits, y, reduction="none")
    m_loss = F.cross_entropy(m_logits, y, reduction="none")
    assert torch.all(m_loss[~m_fooled] >= s_loss[~m_fooled] - 1e-6)  # else the highest loss


def test_restarts_keep_a_misclassified_run_whatever_its_loss() -> None:
    """A loss that never rises (zero gradient): only the random starts differ, and any restart that
    misclassifies must be kept although its loss is no higher."""
    model, (x, y) = tiny_linear(), batch(n=32)
    flat = lambda m, x_adv, y: x_adv.flatten(1).sum(1) * 0  # noqa: E731
    kw = {"eps": 0.5, "steps": 1, "step_size": 0.01, "loss": flat}
    torch.manual_seed(0)
    single = PGD(**kw)(model, x, y)
    torch.manual_seed(0)
    multi = PGD(restarts=8, **kw)(model, x, y)
    with torch.no_grad():
        s_fooled, m_fooled = model(single).argmax(1) != y, model(multi).argmax(1) != y
    assert torch.all(m_fooled >= s_fooled) and m_fooled.sum() > s_fooled.sum()


def test_eot_averages_over_a_stochastic_model() -> None:
    """With a model that is random in eval mode, every EOT pass sees a fresh sample."""
    calls = []

    class Noisy(TinyConv):
        def forward(self, x: Tensor) -> Tensor:
            calls.append(torch.rand(1).item())
            return super().forward(x + 0.01 * torch.randn_like(x))

    torch.manual_seed(0)
    model = Noisy()
    x, y = batch()
    x_adv = EOTPGD(eps=0.1, steps=2, eot=3)(model, x, y)
    assert len(calls) == 6 and len(set(calls)) == 6
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


# ---- model state: modes and gradients ------------------------------------------------------------


def module_flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_modes_restored_and_eval_inside(name: str) -> None:
    torch.manual_seed(0)
    model = ModeNet().train()
    model.features[1].eval()  # one submodule in eval mode: restored per module, not from the root
    before = module_flags(model)
    seen: list[list[bool]] = []

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        seen.append(module_flags(m))
        return cross_entropy_loss(m, x, y)

    attack = CONFIGS[name](0.1)
    inner = attack.attack if isinstance(attack, TransferAttack) else attack
    inner.loss_fn = loss  # type: ignore[attr-defined]
    if isinstance(attack, TransferAttack):
        attack.source = model
    running = model.features[1].running_mean.clone()
    x, y = batch()
    attack(model, x, y)
    assert module_flags(model) == before
    assert seen and all(not any(flags) for flags in seen)  # every module in eval during the attack
    assert torch.equal(model.features[1].running_mean, running)


def test_eval_mode_false_attacks_model_as_it_is() -> None:
    model = ModeNet().train()
    seen: list[bool] = []

    def loss(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        seen.append(m.drop.training)
        return cross_entropy_loss(m, x, y)

    x, y = batch()
    PGD(eps=0.1, steps=2, loss=loss, eval_mode=False)(model, x, y)
    assert seen == [True, True] and model.training
    assert PGD(eps=0.1, eval_mode=False).params()["eval_mode"] is False


def test_modes_and_grads_restored_on_exception() -> None:
    model = ModeNet().train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = module_flags(model)

    def exploding(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        cross_entropy_loss(m, x, y).sum().backward()  # a careless loss; must leave no trace
        raise RuntimeError("boom")

    x, y = batch()
    with pytest.raises(RuntimeError, match="boom"):
        PGD(eps=0.1, steps=2, loss=exploding)(model, x, y)
    assert module_flags(model) == before
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight))
    assert model.fc.bias.grad is None and model.features[0].weight.grad is None


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_grads_untouched(name: str) -> None:
    model = tiny_conv()
    preset = torch.randn_like(model.fc.weight)
    model.fc.weight.grad = preset
    x, y = batch()
    CONFIGS[name](0.1)(model, x, y)
    assert model.fc.weight.grad is preset and torch.equal(preset, model.fc.weight.grad)
    assert model.conv.weight.grad is None and model.fc.bias.grad is None


def test_backward_inside_a_loss_leaves_no_gradients() -> None:
    model = tiny_conv()
    preset = torch.randn_like(model.conv.weight)
    model.conv.weight.grad = preset.clone()

    def careless(m: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        loss = cross_entropy_loss(m, x, y)
        loss.sum().backward(retain_graph=True)
        return loss

    x, y = batch()
    PGD(eps=0.1, steps=2, loss=careless)(model, x, y)
    assert torch.equal(model.conv.weight.grad, preset) and model.fc.weight.grad is None


def test_works_under_no_grad() -> None:
    x, y = batch()
    with torch.no_grad():
        x_adv = PGD(eps=0.1, steps=2)(tiny_conv(), x, y)
    assert not torch.equal(x_adv, x)


# ---- layout --------------------------------------------------------------------------------------


def test_memory_formats_give_the_same_result() -> None:
    x, y = batch()
    model = tiny_conv()
    out = {}
    for fmt in ("preserve", "channels_last", "auto"):
        torch.manual_seed(5)
        out[fmt] = PGD(eps=0.1, steps=3, memory_format=fmt, loss=linear_loss)(model, x, y)
    assert torch.equal(out["preserve"], out["channels_last"]) and torch.equal(out["auto"], out["preserve"])
    assert out["channels_last"].is_contiguous()


def test_auto_layout_falls_back_for_models_that_view() -> None:
    x, y = batch()
    torch.manual_seed(0)
    model = ViewNet()
    attack = PGD(eps=0.1, steps=2)
    with pytest.warns(UserWarning, match="channels_last"):
        x_adv = attack(model, x, y)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    attack(model, x, y)  # decided once: no second warning or failure
    with pytest.raises(RuntimeError, match="view"):
        PGD(eps=0.1, steps=2, memory_format="channels_last")(model, x, y)


# ---- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: PGD(eps=-0.1), r"eps.*-0\.1"),
        (lambda: PGD(eps=0.1, steps=0), r"steps.*0"),
        (lambda: PGD(eps=0.1, step_size=0), r"step_size.*0"),
        (lambda: PGD(eps=0.1, step_size=-0.01), r"step_size.*-0\.01"),
        (lambda: PGD(eps=0.1, restarts=0), r"restarts.*0"),
        (lambda: PGD(eps=0.1, eot=0), r"eot.*0"),
        (lambda: EOTPGD(eps=0.1, eot=0), r"eot.*0"),
        (lambda: PGD(eps=0.1, norm="l3"), r"norm.*'l3'"),
        (lambda: PGD(eps=0.1, random_start="gauss"), r"random_start.*'gauss'"),
        (lambda: PGD(eps=0.1, norm="l2", random_start="sign"), r"random_start"),
        (lambda: PGD(eps=0.1, start_radius=0.2), r"start_radius.*0\.2"),
        (lambda: PGD(eps=0.1, memory_format="nhwc"), r"memory_format.*'nhwc'"),
        (lambda: FGSM(eps=-0.1), r"eps.*-0\.1"),
        (lambda: RFGSM(eps=-0.1), r"eps.*-0\.1"),
        (lambda: RFGSM(eps=0.1, alpha=0.1), r"alpha.*0\.1"),
        (lambda: RFGSM(eps=0.1, alpha=-0.01), r"alpha.*-0\.01"),
        (lambda: build_attack("pgd", eps=float("nan")), r"eps.*nan"),
        (lambda: build_attack("pgdd", eps=0.1), r"pgdd"),
        (lambda: TransferAttack(source="model", attack=FGSM(eps=0.1)), r"source.*str"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise(build: Callable[[], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match="stepz"):
        build_attack("pgd", eps=0.1, stepz=3)
    with pytest.raises(TypeError, match="steps"):
        build_attack("fgsm", eps=0.1, steps=3)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        (torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), r"length 4.*\(3,\)"),
        (torch.rand(4, 1, 8, 8), torch.zeros(4), r"int64.*float32"),
        (torch.rand(4, 1, 8, 8), torch.zeros(4, 1, dtype=torch.long), r"\(4, 1\)"),
        (torch.rand(4, 1, 8, 8) * 2, torch.zeros(4, dtype=torch.long), r"\[0, 1\].*1\.\d"),
        (torch.rand(4, 1, 8, 8) - 0.5, torch.zeros(4, dtype=torch.long), r"-0\.\d"),
        (torch.full((4, 1, 8, 8), float("nan")), torch.zeros(4, dtype=torch.long), r"nan"),
        (torch.ones(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), r"floating.*uint8"),
    ],
    ids=["y-length", "y-dtype", "y-2d", "x-above-1", "x-below-0", "x-nan", "x-int"],
)
def test_bad_inputs_raise(x: Tensor, y: Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PGD(eps=0.1, steps=1)(tiny_conv(), x, y)


def test_inputs_within_tolerance_are_accepted() -> None:
    x, y = batch()
    x[2, 0, 0, 0] = 1 + 1e-7
    x_adv = FGSM(eps=0.1)(tiny_conv(), x, y)
    assert x_adv.max() <= 1


def test_loss_must_be_per_example() -> None:
    x, y = batch()
    with pytest.raises(ValueError, match="one value per example"):
        PGD(eps=0.1, steps=1, loss=lambda m, x, y: cross_entropy_loss(m, x, y).mean())(tiny_conv(), x, y)


# ---- registry and params -------------------------------------------------------------------------


def test_registry_and_params() -> None:
    assert {"fgsm", "rfgsm", "pgd", "eot-pgd"} <= set(ATTACKS.names())
    pgd = build_attack("pgd", eps=0.3)
    assert isinstance(pgd, PGD) and pgd.steps == 40 and pgd.step_size == pytest.approx(2.5 * 0.3 / 40)
    assert build_attack("pgd", eps=0.3, steps=10, step_size=0.05).params() == PGD(
        eps=0.3, steps=10, step_size=0.05
    ).params()
    eot = build_attack("eot-pgd", eps=0.3)
    assert eot.params()["eot"] == 10 and eot.params()["name"] == "eot-pgd"
    fgsm = build_attack("fgsm", eps=0.3).params()
    assert fgsm["steps"] == 1 and fgsm["step_size"] == 0.3 and fgsm["random_start"] == "none"
    for name in ATTACKS.names():
        p = build_attack(name, eps=0.1).params()
        assert p["name"] == name and p["eps"] == 0.1
        assert all(isinstance(v, str | int | float | bool) for v in p.values())


# ---- transfer ------------------------------------------------------------------------------------


def test_transfer_returns_the_inner_attack_on_the_source() -> None:
    source, target = tiny_conv(1), tiny_linear(2)
    target_calls: list[int] = []
    target.register_forward_hook(lambda *_: target_calls.append(1))
    target[1].weight.grad = None
    x, y = batch()
    inner = PGD(eps=0.1, steps=3, step_size=0.03)
    torch.manual_seed(11)
    expected = inner(source, x, y)
    torch.manual_seed(11)
    x_adv = TransferAttack(source=source, attack=inner)(target, x, y)
    assert torch.equal(x_adv, expected)
    assert not target_calls and target[1].weight.grad is None
    p = TransferAttack(source=source, attack=inner).params()
    assert p["transfer"] is True and p["steps"] == 3 and p["eps"] == 0.1 and p["inner"] == "pgd"


# ---- slow cross-check against torchattacks on MNIST ----------------------------------------------

def mnist(split: str, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` real MNIST points of ``train`` or ``t10k`` (the test split); skips without them."""
    from conftest import real_mnist

    return real_mnist("test" if split == "t10k" else split, n)


def mnist_lenet5(n: int) -> nn.Module:
    """LeNet5-Caffe trained one epoch (seed 0, Adam 1e-3, batch 64) on the first ``n`` MNIST images, in eval mode."""
    from robustprune.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet5-caffe", num_classes=10, in_channels=1, image_size=28)
    x_train, y_train = mnist("train", n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for i in torch.randperm(n).split(64):
        opt.zero_grad()
        F.cross_entropy(model(x_train[i]), y_train[i]).backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_pgd_agrees_with_torchattacks_on_mnist_lenet5() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model = mnist_lenet5(5000)
    x, y = mnist("t10k", 500)
    clean = accuracy(model, x, y)
    assert clean > 0.9
    report = {"clean": clean}
    for eps in (0.3, 0.1):
        torch.manual_seed(1)
        ours = accuracy(model, PGD(eps=eps, steps=40, step_size=0.01, random_start=True)(model, x, y), y)
        theirs_attack = torchattacks.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True)
        theirs = accuracy(model, theirs_attack(x, y), y)
        report[f"eps={eps}"] = (ours, theirs)
        assert abs(ours - theirs) <= 0.01, report
    print(report)
    assert report["eps=0.1"][1] > 0.05, f"eps=0.1 comparison is not meaningful: {report}"
