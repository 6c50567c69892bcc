"""TRADES' loss against values worked out by hand: CE(f(x), y) + β·KL(p(x) ‖ p(x̃)), the KL taken from
the clean prediction to the adversarial one (Zhang et al. 2019, eq. 5), in the outer loss and in the
inner maximisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from robustprune.defenses import MethodContext, build_method

CTX = MethodContext(dataset="mnist", train_size=64, num_classes=2, adv_eps=0.3, adv_steps=1, adv_step_size=0.3)

#: a two-input, two-class linear model, logits = 2·x: x = (0.5, 0) gives logits (1, 0), x̃ = (0, 1) gives (0, 2)
X = torch.tensor([[0.5, 0.0]])
X_ADV = torch.tensor([[0.0, 1.0]])
Y = torch.tensor([0])


def doubling() -> nn.Module:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(2 * torch.eye(2))
        model.bias.zero_()
    return model


def softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


P_CLEAN, P_ADV = softmax([1.0, 0.0]), softmax([0.0, 2.0])
#: KL(p(x) ‖ p(x̃)) = 1.00684; the reverse direction is 0.82872, so a swapped KL cannot pass
KL_CLEAN_ADV = kl(P_CLEAN, P_ADV)


def test_the_example_tells_the_two_directions_apart() -> None:
    assert KL_CLEAN_ADV == pytest.approx(1.00684, abs=1e-5)
    assert kl(P_ADV, P_CLEAN) == pytest.approx(0.82872, abs=1e-5)


def test_outer_loss_is_ce_plus_beta_times_kl_from_clean_to_adversarial(monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method("trades", ctx=CTX, beta=6.0)
    # the adversarial point is fixed here so that the loss can be checked by hand
    monkeypatch.setattr(method, "attack_for", lambda p_clean: lambda model, x, y: X_ADV)
    model = doubling()
    losses, logs = method.loss(model, X, Y)
    assert logs["kl"].item() == pytest.approx(KL_CLEAN_ADV, rel=1e-5)
    ce = -math.log(P_CLEAN[0])
    assert losses["weights"].item() == pytest.approx(ce + 6.0 * KL_CLEAN_ADV, rel=1e-5)
    losses["weights"].backward()  # the gradient flows through both predictions, as in the reference
    assert model.weight.grad is not None and bool(model.weight.grad.abs().sum() > 0)


def test_inner_maximisation_climbs_the_same_kl(monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method("trades", ctx=CTX)
    p_clean = torch.tensor([P_CLEAN])
    attack = method.attack_for(p_clean)  # type: ignore[attr-defined]
    per_example: Tensor = attack.loss_fn(doubling(), X_ADV, Y)
    assert per_example.shape == (1,)
    assert per_example.item() == pytest.approx(KL_CLEAN_ADV, rel=1e-5)
