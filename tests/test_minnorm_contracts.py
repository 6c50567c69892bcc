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
