"""Minimum-norm attacks (DeepFool, C&W-L2) and the r₂ metric: properties a wrong version breaks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn

from robust_toys import Quantised, levels, linear_model, one_thread, trained_mlp
from robustprune.attacks.cw import CarliniWagnerL2
from robustprune.attacks.deepfool import DeepFool
from robustprune.attacks.fmn import FMN
from robustprune.attacks.minnorm import MinNormAttack, MinNormResult
from robustprune.metrics.minnorm import MinNormMeter, minnorm_robustness


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


def near_boundary(model: nn.Module, n: int, seed: int = 0, spread: float = 0.05) -> tuple[Tensor, Tensor]:
    """Points in ``0.5 ± spread/2`` (away from the [0, 1] box walls), labelled by the model itself."""
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + spread * (torch.rand(n, 1, 4, 4, generator=g) - 0.5)).double()
    with torch.no_grad():
        return x, model(x).argmax(1)


def linear_distance(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Exact L2 distance to the nearest decision boundary of a linear classifier."""
    z = x.flatten(1) @ w.T + b
    dists = []
    for i in range(len(x)):
        others = [k for k in range(w.shape[0]) if k != y[i]]
        d = [(z[i, y[i]] - z[i, k]) / (w[y[i]] - w[k]).norm() for k in others]
        dists.append(torch.stack(d).min())
    return torch.stack(dists)


def test_deepfool_on_a_linear_binary_classifier_is_exact() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 16, generator=g, dtype=torch.float64)
    normal = w[1] - w[0]
    b = torch.stack([torch.zeros((), dtype=torch.float64), -normal @ torch.full((16,), 0.5, dtype=torch.float64)])
    model = linear_model(w, b)  # the boundary passes through the grey image: every point is close to it
    x, y = near_boundary(model, 12)
    res = DeepFool(overshoot=0.02)(model, x, y)
    expected = 1.02 * (linear_distance(w, b, x, y) + 1e-4)
    assert res.success.all() and (y == 0).any() and (y == 1).any()
    torch.testing.assert_close(res.norms, expected, rtol=1e-9, atol=1e-12)
    delta = (res.x_adv - x).flatten(1)
    cosine = (delta @ normal).abs() / (delta.norm(dim=1) * normal.norm())
    torch.testing.assert_close(cosine, torch.ones(12, dtype=torch.float64))  # straight to the boundary


def test_deepfool_on_a_linear_multiclass_classifier_steps_to_the_nearest_boundary() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, 16, generator=g, dtype=torch.float64)
    b = -(w @ torch.full((16,), 0.5, dtype=torch.float64)) + 0.01 * torch.randn(5, generator=g, dtype=torch.float64)
    model = linear_model(w, b)
    x, y = near_boundary(model, 16, seed=2)
    res = DeepFool(overshoot=0.02)(model, x, y)
    assert res.success.all()
    torch.testing.assert_close(res.norms, 1.02 * (linear_distance(w, b, x, y) + 1e-4), rtol=1e-9, atol=1e-12)


def test_overshoot_zero_still_crosses_and_scales_the_norm() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 16, generator=g, dtype=torch.float64)
    b = -(w @ torch.full((16,), 0.5, dtype=torch.float64))
    model = linear_model(w, b)
    x, y = near_boundary(model, 8, seed=4)
    plain, over = DeepFool(overshoot=0.0)(model, x, y), DeepFool(overshoot=0.5)(model, x, y)
    assert plain.success.all() and over.success.all()
    torch.testing.assert_close(over.norms, 1.5 * plain.norms)


def test_cw_finds_close_to_the_exact_distance_and_never_below_it() -> None:
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 16, generator=g, dtype=torch.float64)
    b = -(w @ torch.full((16,), 0.5, dtype=torch.float64))
    model = linear_model(w, b)
    x, y = near_boundary(model, 64, seed=6, spread=0.5)
    exact = linear_distance(w, b, x, y)
    keep = ((exact > 0.04) & (exact < 0.15)).nonzero().squeeze(1)[:8]  # Adam's lr 1e-2 resolves ~0.01 in L2
    x, y, exact = x[keep], y[keep], exact[keep]
    res = CarliniWagnerL2(steps=100)(model, x, y)
    assert res.success.all() and len(x) == 8
    assert (res.norms >= exact - 1e-9).all(), "an adversarial example closer than the boundary is impossible"
    assert (res.norms <= 1.03 * exact).all(), (res.norms / exact)


@pytest.mark.parametrize("attack", [DeepFool(), CarliniWagnerL2(steps=20, binary_search_steps=2)],
                         ids=["deepfool", "cw"])
def test_misclassified_points_have_norm_zero(attack: MinNormAttack) -> None:
    model = trained_mlp(epochs=2)
    x, y = levels(16, seed=7)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(16) < 4, (pred + 1) % 4, pred)  # the first four are misclassified
    res = attack(model, x, y)
    assert isinstance(res, MinNormResult) and len(res) == 16
    assert res.success[:4].all()
    assert torch.equal(res.norms[:4], torch.zeros(4)) and torch.equal(res.x_adv[:4], x[:4])


def test_failures_are_flagged_not_dropped() -> None:
    model = trained_mlp(epochs=2)
    x, y = levels(16, seed=8)
    with torch.no_grad():
        y = model(x).argmax(1)
    # C&W with a tiny constant and one short round cannot fool anything
    res = CarliniWagnerL2(steps=5, binary_search_steps=1, initial_const=1e-3)(model, x, y)
    assert not res.success.any()
    assert torch.isinf(res.norms).all() and torch.equal(res.x_adv, x)
    # DeepFool on a model without gradients cannot move
    res = DeepFool(steps=3)(Quantised(model), x, y)
    assert not res.success.any() and torch.isinf(res.norms).all()


def test_success_is_checked_by_the_base_not_claimed_by_the_attack() -> None:
    class Liar(MinNormAttack):
        def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return (x + 0.001).clamp(0, 1)  # far too small to fool anyone

    model = trained_mlp(epochs=2)
    x, y = levels(8, seed=9)
    with torch.no_grad():
        y = model(x).argmax(1)
    res = Liar()(model, x, y)
    assert not res.success.any() and torch.isinf(res.norms).all()


def test_mode_and_gradients_restored() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(16, 4))
    model.train()
    model[1].weight.grad = torch.ones_like(model[1].weight)
    grad = model[1].weight.grad
    x, y = levels(8, seed=10)
    seen: list[bool] = []
    model.register_forward_hook(lambda m, *_: seen.append(m.training))
    for attack in (DeepFool(steps=3), CarliniWagnerL2(steps=3, binary_search_steps=1), FMN(steps=3, targets=2)):
        attack(model, x, y)
    assert seen and not any(seen), "attacks must run the model in eval mode"
    assert model.training and all(m.training for m in model.modules())
    assert model[1].weight.grad is grad and torch.equal(grad, torch.ones_like(grad))


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: DeepFool(steps=0), "steps"), (lambda: DeepFool(overshoot=-0.1), "-0.1"),
        (lambda: DeepFool(candidates=1), "candidates"), (lambda: CarliniWagnerL2(lr=0), "lr"),
        (lambda: CarliniWagnerL2(binary_search_steps=0), "binary_search_steps"),
        (lambda: CarliniWagnerL2(initial_const=-1.0), "-1.0"), (lambda: CarliniWagnerL2(kappa=float("nan")), "nan"),
        (lambda: CarliniWagnerL2(steps=2.5), "2.5"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_raise(build: Callable[[], object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        build()


def test_bad_inputs_raise() -> None:
    model = trained_mlp(epochs=1)
    x, y = levels(4, seed=11)
    with pytest.raises(ValueError, match="pixel space"):
        DeepFool()(model, x * 3, y)
    with pytest.raises(ValueError, match="int64"):
        CarliniWagnerL2()(model, x, y.int())


def test_meter_counts_failures_and_uses_correct_points_only() -> None:
    x = torch.full((5, 1, 2, 2), 0.5)  # ||x||_2 = 1
    inf = math.inf
    res = MinNormResult(x_adv=x, norms=torch.tensor([0.0, 0.2, 0.4, inf, 9.0]),
                        success=torch.tensor([True, True, True, False, True]))
    meter = MinNormMeter()
    meter.update(res, x, clean_correct=torch.tensor([False, True, True, True, False]))
    s = meter.summary()
    assert (s["n"], s["n_correct"], s["n_success"], s["n_failed"]) == (5, 3, 2, 1)
    assert s["success_rate"] == pytest.approx(200 / 3)
    assert s["r2"] == pytest.approx(0.3) and s["r2_normalised"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="batch sizes"):
        meter.update(res, x, clean_correct=torch.ones(4, dtype=torch.bool))


def test_minnorm_robustness_over_a_loader() -> None:
    from robustprune.data import TensorLoader

    model = trained_mlp(epochs=3)
    x, y = levels(40, seed=12)
    out = minnorm_robustness(model, TensorLoader(x, y, batch_size=16), DeepFool(), progress=False)
    with torch.no_grad():
        clean = 100.0 * float((model(x).argmax(1) == y).float().mean())
    assert out["n"] == 40 and out["clean_acc"] == pytest.approx(clean)
    assert out["success_rate"] == 100.0 and 0 < out["r2_normalised"] < out["r2"]  # ||x||_2 > 1 here
    assert out["attack"]["name"] == "deepfool"
    with pytest.raises(ValueError, match="MinNormAttack"):
        minnorm_robustness(model, [(x, y)], object())  # type: ignore[arg-type]


# ---- slow cross-check against torchattacks on MNIST LeNet5 ------------------------------------


@pytest.mark.slow
def test_deepfool_and_cw_agree_with_torchattacks_on_mnist_lenet5() -> None:
    torchattacks = pytest.importorskip("torchattacks")
    from test_attacks import mnist, mnist_lenet5

    model = mnist_lenet5(3000)
    x, y = mnist("t10k", 40)
    ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]

    def norms(x_adv: Tensor) -> tuple[Tensor, Tensor]:
        fooled = model(x_adv).argmax(1) != y
        return (x_adv - x).flatten(1).norm(dim=1), fooled

    ours = DeepFool()(model, x, y)
    t_norm, t_ok = norms(torchattacks.DeepFool(model, steps=50, overshoot=0.02)(x, y))
    both = ours.success & t_ok
    ratio = float(ours.norms[both].mean() / t_norm[both].mean())
    assert ours.success.float().mean() >= 0.95 and 0.8 <= ratio <= 1.25, ratio

    # Equal budgets of 100 Adam steps (ours: 5 rounds from c = 0.1; theirs: fixed c = 10). Neither
    # fools every point: MNIST's 0/1 pixels sit where tanh saturates and need ~1000 steps to move.
    cw = CarliniWagnerL2(steps=100, binary_search_steps=5, initial_const=0.1)(model, x, y)
    t_norm, t_ok = norms(torchattacks.CW(model, c=10, kappa=0, steps=100, lr=0.01)(x, y))
    both = cw.success & t_ok
    assert cw.success.float().mean() >= t_ok.float().mean() - 0.05
    assert both.sum() >= 5, (cw.success.sum(), t_ok.sum())
    assert cw.norms[both].mean() <= 1.1 * t_norm[both].mean(), (cw.norms[both].mean(), t_norm[both].mean())
    print({"deepfool_ratio": ratio, "cw_ours": float(cw.norms[both].mean()), "cw_theirs": float(t_norm[both].mean())})
