"""Minimum-norm attacks' settings, messages and edge cases: the published defaults (a card that says
"C&W" must mean the attack as its authors ran it), errors that name the bad argument, a batch of
one, images at the box walls. Written for the mutants of attacks/ that the behavioural tests of
test_minnorm.py let through."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from robust_toys import linear_model, one_thread
from robustprune.attacks.cw import CarliniWagnerL2
from robustprune.attacks.deepfool import DeepFool


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    yield from one_thread()


def test_defaults_are_the_published_settings() -> None:
    # C&W-L2 (Carlini & Wagner 2017): 9 binary-search rounds from c = 1e-3, Adam at 1e-2, 1,000
    # iterations, confidence 0, early abort; DeepFool (Moosavi-Dezfooli et al. 2016): 50 steps,
    # overshoot 0.02, the 10 highest-scoring classes as candidates.
    assert CarliniWagnerL2().params() == {
        "name": "cw-l2", "norm": "l2", "eval_mode": True, "steps": 1000, "lr": 1e-2, "binary_search_steps": 9,
        "initial_const": 1e-3, "kappa": 0.0, "abort_early": True,
    }
    assert DeepFool().params() == {"name": "deepfool", "norm": "l2", "eval_mode": True, "steps": 50,
                                   "overshoot": 0.02, "candidates": 10}
    # the signature says the same (help() and the docs read it)
    sig = inspect.signature(CarliniWagnerL2)
    assert {k: sig.parameters[k].default for k in ("steps", "binary_search_steps", "initial_const", "abort_early")} \
        == {"steps": 1000, "binary_search_steps": 9, "initial_const": 1e-3, "abort_early": True}
    assert CarliniWagnerL2(abort_early=0).abort_early is False  # type: ignore[arg-type]
    assert CarliniWagnerL2(abort_early=1).abort_early is True  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps must be"),
        ({"lr": 0.0}, "lr must be"),
        ({"binary_search_steps": 0}, "binary_search_steps must be"),
        ({"initial_const": -1.0}, "initial_const must be"),
        ({"kappa": -1.0}, "kappa must be"),
    ],
)
def test_cw_errors_name_the_argument(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        CarliniWagnerL2(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"steps": 0}, "steps must be"), ({"overshoot": -0.5}, "overshoot must be"),
     ({"candidates": 0}, "candidates must be"),
     ({"candidates": 1}, r"candidates must be >= 2 \(the true class and one other\), got 1")],
)
def test_deepfool_errors_name_the_argument(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}"):
        DeepFool(**kwargs)  # type: ignore[arg-type]


def test_deepfool_takes_two_candidates_and_refuses_a_one_class_model() -> None:
    assert DeepFool(candidates=2).candidates == 2  # a binary problem needs exactly two
    x = torch.full((2, 1, 2, 2), 0.5)
    one_class = nn.Sequential(nn.Flatten(), nn.Linear(4, 1)).eval()
    with pytest.raises(ValueError, match=r"DeepFool needs a model with >= 2 classes, got 1"):
        DeepFool()(one_class, x, torch.zeros(2, dtype=torch.long))


def test_a_batch_of_one_point_is_attacked() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 0.2 + 0.4
    with torch.no_grad():
        y = model(x).argmax(1)
    for attack in (DeepFool(), CarliniWagnerL2(steps=60, binary_search_steps=4, initial_const=1.0)):
        res = attack(model, x, y)
        assert res.success.all() and 0 < float(res.norms[0]) < float("inf"), type(attack).__name__


def test_images_at_the_box_walls_stay_in_the_box_and_finite() -> None:
    """Pixels at exactly 0 and 1: C&W's change of variables must shrink them inside (−1, 1) before
    atanh (else NaN everywhere), and DeepFool's steps are clipped to [0, 1]."""
    x = (torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4) % 2).repeat(4, 1, 1, 1)  # 0s and 1s
    x[2:] = 1 - x[2:]
    x[..., 2:, :] = 0.5  # half the pixels inside: C&W moves those (at a wall tanh's slope is ~0)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(2, 16, generator=g, dtype=torch.float64)
    normal = w[1] - w[0]
    # the boundary 0.05 (L2) from the first pattern, on its side of class 0
    shift = -(normal @ x[0].flatten()) - 0.05 * normal.norm() * torch.sign(normal @ (0.5 - x[0].flatten()))
    model = linear_model(w, torch.stack([torch.zeros((), dtype=torch.float64), shift]))
    with torch.no_grad():
        y = model(x).argmax(1)
    cw = CarliniWagnerL2(steps=50, binary_search_steps=3, initial_const=10.0)(model, x, y)
    assert torch.isfinite(cw.x_adv).all() and cw.x_adv.min() >= 0 and cw.x_adv.max() <= 1
    assert cw.success.any() and torch.isfinite(cw.norms[cw.success]).all()
    df = DeepFool(overshoot=0.5)(model, x, y)
    assert df.x_adv.min() >= 0 and df.x_adv.max() <= 1


def test_cw_binary_search_of_the_constant() -> None:
    """The constant's schedule, with the optimisation replaced by a rule (an example is fooled
    exactly when the constant reaches its threshold): ×10 until the first success, then bisection
    between the largest failing and the smallest succeeding constant."""
    thresholds = torch.tensor([0.05, 1e30], dtype=torch.float64)  # the second is never fooled
    seen: list[list[float]] = []

    def rule(self: CarliniWagnerL2, model: nn.Module, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor,
             const: torch.Tensor, best_x: torch.Tensor, best_l2: torch.Tensor) -> torch.Tensor:
        seen.append(const.tolist())
        return const >= thresholds

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).double().eval()
    x = torch.full((2, 1, 2, 2), 0.5, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    attack = CarliniWagnerL2(binary_search_steps=6, initial_const=1e-3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(CarliniWagnerL2, "_optimise", rule)
        attack(model, x, y)
    first = [c[0] for c in seen]
    expected = [1e-3, 1e-2, 1e-1, (1e-2 + 1e-1) / 2, (0.01 + 0.055) / 2, (0.0325 + 0.055) / 2]
    assert first == pytest.approx(expected, rel=1e-12)
    assert [c[1] for c in seen] == pytest.approx([1e-3 * 10**k for k in range(6)], rel=1e-12)


class Constant(nn.Module):
    """Logits that do not depend on the input: C&W's loss is flat, so early abort must stop it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([[2.0, 0.0]], dtype=x.dtype).expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize(("steps", "calls"), [(100, 1 + 11), (15, 1 + 2)])
def test_cw_aborts_early_when_the_loss_stops_falling(steps: int, calls: int) -> None:
    """The loss is checked every max(steps // 10, 1) iterations from the first; the round stops at
    the first check where it has not fallen by 0.01 %. One more call: the base's clean check."""
    model = Constant()
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    attack = CarliniWagnerL2(steps=steps, binary_search_steps=1)
    model.calls = 0
    attack.perturb(model, x, torch.zeros(1, dtype=torch.long))
    assert model.calls == calls
    model.calls = 0
    CarliniWagnerL2(steps=steps, binary_search_steps=1, abort_early=False).perturb(model, x,
                                                                                   torch.zeros(1, dtype=torch.long))
    assert model.calls == 1 + steps


def test_cw_confidence_kappa_is_a_margin_the_example_must_clear() -> None:
    g = torch.Generator().manual_seed(7)
    w = torch.randn(2, 16, generator=g, dtype=torch.float64)
    b = -(w @ torch.full((16,), 0.5, dtype=torch.float64))
    model = linear_model(w, b)
    x = (0.5 + 0.05 * (torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) - 0.5))
    with torch.no_grad():
        y = model(x).argmax(1)
    kappa = 0.5
    res = CarliniWagnerL2(steps=200, lr=5e-2, binary_search_steps=5, initial_const=1.0, kappa=kappa)(model, x, y)
    assert res.success.all()
    with torch.no_grad():
        logits = model(res.x_adv)
    margin = logits.scatter(1, y[:, None], float("-inf")).amax(1) - logits.gather(1, y[:, None]).squeeze(1)
    assert (margin > kappa).all(), margin  # past the boundary by at least kappa, not just across it
    plain = CarliniWagnerL2(steps=200, lr=5e-2, binary_search_steps=5, initial_const=1.0)(model, x, y)
    assert (plain.norms < res.norms).all()  # the margin costs distance


class FooledOnce(nn.Module):
    """Class 0 wins on every call but the ``at``-th, where class 1 does (the input is ignored)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        row = [0.0, 1.0] if self.calls == self.at else [1.0, 0.0]
        return torch.tensor([row], dtype=x.dtype).expand(len(x), 2) + 0 * x.flatten(1)[:, :1]


def test_a_cw_round_succeeds_when_any_of_its_steps_fooled_the_model() -> None:
    """Success of a round (which moves the constant down) is any step's, not only the last step's;
    and the example of that step is the one kept."""
    x = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.long)
    attack = CarliniWagnerL2(steps=5, binary_search_steps=1, abort_early=False)
    w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))
    best_x, best_l2 = x.clone(), torch.full((1,), float("inf"), dtype=torch.float64)
    found = attack._optimise(FooledOnce(at=3), x, y, w0, torch.ones(1, dtype=torch.float64), best_x, best_l2)
    assert found.tolist() == [True]
    assert torch.isfinite(best_l2).all()
    none = attack._optimise(FooledOnce(at=99), x, y, w0, torch.ones(1, dtype=torch.float64), x.clone(),
                            torch.full((1,), float("inf"), dtype=torch.float64))
    assert none.tolist() == [False]


def test_rfgsm_alpha_zero_is_plain_fgsm_and_the_mode_is_kept() -> None:
    from robustprune.attacks import RFGSM

    attack = RFGSM(eps=0.1, alpha=0.0, eval_mode=False)
    assert attack.alpha == 0.0 and attack.eval_mode is False and attack.params()["alpha"] == 0.0
    with pytest.raises(ValueError, match=r"alpha must be in \[0, eps=0.1\), got 0.1"):
        RFGSM(eps=0.1, alpha=0.1)
