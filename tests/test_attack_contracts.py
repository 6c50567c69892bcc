"""The attack base classes at their edges, written where mutation testing (bench/mutation.py) found
changes to attacks/ that no test noticed: errors name the argument at fault, cards name every
setting under its own key, and a minimum-norm attack's candidates are clipped to pixel space and
judged in the mode the caller asked for."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn

from robust_toys import Threshold
from robustprune.attacks import EOTPGD, FGSM, PGD, RFGSM
from robustprune.attacks.base import Attack, cross_entropy_loss
from robustprune.attacks.minnorm import MinNormAttack, check_positive, lp_norms


@pytest.mark.parametrize("arg", ["steps", "restarts", "eot"])
def test_pgd_counts_are_named_in_their_errors(arg: str) -> None:
    with pytest.raises(ValueError, match=rf"^{arg} must be an integer >= 1, got 0$"):
        PGD(eps=0.1, **{arg: 0})


def _margin_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return -model(x).gather(1, y[:, None]).squeeze(1)


class _CallableLoss:
    """A loss given as an object: it has no ``__name__``, so the card names its class."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return cross_entropy_loss(model, x, y)


def test_pgd_card_names_every_setting_and_the_loss() -> None:
    attack = PGD(eps=0.3, steps=7, step_size=0.05, random_start="normal", start_radius=0.1, restarts=2, eot=3,
                 loss=_margin_loss, eval_mode=False)
    assert attack.params() == {"name": "pgd", "eps": 0.3, "norm": "linf", "eval_mode": False, "steps": 7,
                               "step_size": 0.05, "random_start": "normal", "start_radius": 0.1, "restarts": 2,
                               "eot": 3, "loss": "_margin_loss"}
    assert PGD(eps=0.3).params()["loss"] == "cross_entropy_loss"
    assert PGD(eps=0.3, loss=_CallableLoss()).params()["loss"] == "_CallableLoss"


def test_single_step_attacks_keep_the_mode_and_loss_they_are_given() -> None:
    for attack in (FGSM(eps=0.1, eval_mode=False, loss=_margin_loss),
                   RFGSM(eps=0.1, eval_mode=False, loss=_margin_loss)):
        assert attack.eval_mode is False and attack.params()["eval_mode"] is False
        assert attack.params()["loss"] == "_margin_loss" and attack.steps == 1
    assert FGSM(eps=0.1).eval_mode is True and EOTPGD(eps=0.1).params()["eot"] == 10


def test_an_unnamed_attack_is_named_after_its_class_in_lower_case() -> None:
    class MyBoxAttack(Attack):
        def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            return x

    assert MyBoxAttack(eps=0.1).params() == {"name": "myboxattack", "eps": 0.1, "norm": "linf", "eval_mode": True}


# ------------------------------------------------------------------------------ minimum-norm base
def test_check_positive_says_which_bound_was_broken() -> None:
    with pytest.raises(ValueError, match=r"^steps must be a finite number > 0, got 0$"):
        check_positive("steps", 0)
    with pytest.raises(ValueError, match=r"^gamma must be a finite number >= 0, got -1$"):
        check_positive("gamma", -1, allow_zero=True)
    assert check_positive("gamma", 0, allow_zero=True) == 0.0


def test_lp_norms_name_an_unknown_norm() -> None:
    with pytest.raises(ValueError, match=r"norm must be one of \('linf', 'l2', 'l1'\), got 'l3'"):
        lp_norms(torch.zeros(2, 3), "l3")


class _Propose(MinNormAttack):
    """Proposes fixed candidates, out of [0, 1] on purpose; records the model's mode in perturb."""

    def __init__(self, cand: Tensor, **kwargs: bool) -> None:
        super().__init__(**kwargs)
        self.cand = cand
        self.seen_training: bool | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self.seen_training = model.training
        return self.cand


def test_minimum_norm_candidates_are_clipped_to_pixel_space_before_they_are_judged_and_measured() -> None:
    x = torch.tensor([[0.9], [0.2]])
    y = torch.tensor([0, 1])
    res = _Propose(torch.tensor([[-1.0], [3.0]]))(Threshold(), x, y)
    assert res.success.tolist() == [True, True]
    assert torch.equal(res.x_adv, torch.tensor([[0.0], [1.0]]))
    assert res.norms.tolist() == pytest.approx([0.9, 0.8])  # from the clipped points, not 1.9 and 2.8


def test_minimum_norm_attacks_run_in_eval_mode_unless_told_otherwise() -> None:
    x, y, cand = torch.tensor([[0.9]]), torch.tensor([0]), torch.tensor([[0.1]])
    model = Threshold().train()
    attack = _Propose(cand)
    assert attack.eval_mode is True and attack.params()["eval_mode"] is True
    attack(model, x, y)
    assert attack.seen_training is False and model.modes == [False] and model.training
    model.modes.clear()
    as_is = _Propose(cand, eval_mode=False)
    as_is(model, x, y)
    assert as_is.seen_training is True and model.modes == [True] and model.training


def test_a_failed_minimum_norm_attack_returns_the_input_at_infinite_distance() -> None:
    x, y = torch.tensor([[0.9]]), torch.tensor([0])
    res = _Propose(torch.tensor([[0.8]]))(Threshold(), x, y)  # still class 0
    assert res.success.tolist() == [False] and torch.equal(res.x_adv, x) and math.isinf(float(res.norms[0]))


# ------------------------------------------------------------------------------------ PGD's loop
def test_conv_layout_reads_the_first_conv_weight() -> None:
    from robustprune.attacks.pgd import _conv_layout

    conv = nn.Sequential(nn.Linear(2, 2), nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    assert _conv_layout(conv) == "nchw"
    assert _conv_layout(conv.to(memory_format=torch.channels_last)) == "nhwc"
    assert _conv_layout(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) is None


def test_no_random_start_means_a_zero_start_radius_on_the_card() -> None:
    for attack in (PGD(eps=0.3, random_start=False), PGD(eps=0.3, random_start="none"), FGSM(eps=0.3)):
        assert attack.start_radius == 0.0 and attack.params()["start_radius"] == 0.0
    assert PGD(eps=0.3).start_radius == 0.3 and PGD(eps=0.3, start_radius=0.1).params()["start_radius"] == 0.1


class _Recorder:
    """A cross-entropy loss that keeps every iterate the attack evaluates it at."""

    def __init__(self) -> None:
        self.iterates: list[Tensor] = []

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self.iterates.append(x.detach().clone())
        return cross_entropy_loss(model, x, y)


def _linear(scale: float) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        net[1].weight.mul_(scale)
    return net


def test_every_l2_iterate_stays_in_the_ball_and_in_pixel_space() -> None:
    """Each step is projected before the next gradient: the loss never sees a point outside the
    ε-ball or outside [0, 1], also where the steps push pixels past the walls."""
    x = torch.tensor([0.98, 0.02, 0.5, 0.5] * 4).view(1, 1, 4, 4)
    rec = _Recorder()
    PGD(eps=0.5, steps=4, step_size=0.4, norm="l2", random_start=False, loss=rec)(_linear(5.0), x, torch.tensor([0]))
    assert len(rec.iterates) == 4
    dist = [float((it - x).flatten().norm()) for it in rec.iterates[1:]]
    assert all(d <= 0.5 + 1e-5 for d in dist) and max(dist) > 0.45  # the ball is reached
    assert all(float(it.min()) >= 0.0 and float(it.max()) <= 1.0 for it in rec.iterates)


def test_an_l2_step_has_the_step_size_even_when_the_gradient_is_small() -> None:
    x = torch.full((1, 1, 4, 4), 0.5)
    rec = _Recorder()
    PGD(eps=1.0, steps=2, step_size=0.1, norm="l2", random_start=False, loss=rec)(_linear(1e-3), x, torch.tensor([0]))
    assert float((rec.iterates[1] - x).flatten().norm()) == pytest.approx(0.1, rel=1e-4)


def test_an_l2_step_past_the_ball_is_projected_onto_its_l2_sphere() -> None:
    """A step of 2 from the centre of a ball of 0.5 lands on the sphere: L2 distance exactly 0.5."""
    x = torch.full((1, 1, 4, 4), 0.5)
    rec = _Recorder()
    PGD(eps=0.5, steps=2, step_size=2.0, norm="l2", random_start=False, loss=rec)(_linear(3.0), x, torch.tensor([0]))
    assert float((rec.iterates[1] - x).flatten().norm()) == pytest.approx(0.5, rel=1e-5)


# ------------------------------------------------------------------------------ PGD's memory layout
class _ViewConv(nn.Module):
    """A conv net that calls .view() on its conv activations: NHWC inputs make that fail."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x))
        return self.fc(h.view(h.shape[0], -1))


def test_which_inputs_pgd_runs_channels_last() -> None:
    conv, linear = _ViewConv(), nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    img, flat = torch.zeros(2, 1, 4, 4), torch.zeros(2, 16)
    auto, always, never = (PGD(eps=0.1, memory_format=f) for f in ("auto", "channels_last", "preserve"))
    assert auto._use_channels_last(conv, img) and always._use_channels_last(conv, img)
    assert always._use_channels_last(linear, img)  # asked for: even without a conv weight
    assert not never._use_channels_last(conv, img)
    assert not auto._use_channels_last(linear, img)  # no conv weight: nothing to gain
    for attack in (auto, always, never):
        assert not attack._use_channels_last(conv, flat)  # not an image batch
    auto._auto_failed = True
    assert not auto._use_channels_last(conv, img)


def test_auto_layout_warns_once_and_then_keeps_the_inputs_layout() -> None:
    import warnings

    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    attack = PGD(eps=0.1, steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = attack(_ViewConv(), x, y)
    (w,) = caught
    assert str(w.message).endswith("); attacking in the input's own layout from now on")
    assert attack._auto_failed is True
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        attack(_ViewConv(), x, y)
    assert again == [] and (first - x).abs().max() <= 0.1 + 1e-6


def test_every_linf_iterate_stays_in_the_ball_and_in_pixel_space() -> None:
    x = torch.tensor([0.98, 0.02, 0.5, 0.5] * 4).view(1, 1, 4, 4)
    rec = _Recorder()
    PGD(eps=0.3, steps=4, step_size=0.2, random_start=False, loss=rec)(_linear(5.0), x, torch.tensor([0]))
    assert len(rec.iterates) == 4
    assert all(float((it - x).abs().max()) <= 0.3 + 1e-6 for it in rec.iterates)
    assert all(float(it.min()) >= 0.0 and float(it.max()) <= 1.0 for it in rec.iterates)
    assert float(rec.iterates[-1].max()) == 1.0 and float(rec.iterates[-1].min()) == 0.0  # the walls are reached


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_zero_radius_start_draws_nothing_from_the_generator(norm: str) -> None:
    """A random start of radius 0 is no start: the attack's random stream is left where it was."""
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    x = torch.full((2, 1, 4, 4), 0.5)
    PGD(eps=0.3, steps=1, norm=norm, start_radius=0.0, generator=gen)(_linear(1.0), x, torch.tensor([0, 1]))
    assert torch.equal(gen.get_state(), before)
    PGD(eps=0.3, steps=1, norm=norm, generator=gen)(_linear(1.0), x, torch.tensor([0, 1]))
    assert not torch.equal(gen.get_state(), before)  # a real start does draw


@pytest.mark.parametrize(("start", "norm"), [("sign", "linf"), ("normal", "linf"), ("uniform", "linf"),
                                             ("uniform", "l2")])
def test_random_starts_are_drawn_in_the_inputs_dtype_as_documented(start: str, norm: str) -> None:
    """The first iterate of a float64 attack is x plus the documented noise, drawn in float64 from
    the attack's generator: sign(N(0, I))·r, N(0, I)·r, U(-r, r), or uniform in the L2 ball."""
    x = torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)
    r = 0.1
    rec = _Recorder()
    PGD(eps=0.3, steps=1, norm=norm, random_start=start, start_radius=r, loss=rec,
        generator=torch.Generator().manual_seed(7))(_linear(1.0).double(), x, torch.tensor([0, 1, 2]))
    gen = torch.Generator().manual_seed(7)
    if start == "sign":
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64).sign() * r
    elif start == "normal":
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) * r
    elif norm == "linf":
        noise = torch.empty(x.shape, dtype=torch.float64).uniform_(-r, r, generator=gen)
    else:
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        u = torch.rand(3, generator=gen, dtype=torch.float64) ** (1.0 / 16)
        noise = noise * (u * r / noise.flatten(1).norm(dim=1)).view(3, 1, 1, 1)
    assert rec.iterates[0].dtype == torch.float64
    assert torch.allclose(rec.iterates[0], (x + noise).clamp(0, 1), rtol=0, atol=1e-12)


class _Flipping(nn.Module):
    """A linear score scaled by a script, one entry per forward pass: the simplest random model,
    with input gradients along -w, 3w, -w, then again."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 16))
        self.script = itertools.cycle([-1.0, 3.0, -1.0])

    def forward(self, x: Tensor) -> Tensor:
        s = (x.flatten(1) * self.w).sum(1, keepdim=True) * next(self.script)
        return torch.cat([s, -s], dim=1)


def test_eot_steps_along_the_sum_of_its_passes_gradients() -> None:
    """Three passes with gradients -g, 3g, -g: their sum points along g; the last pass alone, or a
    running difference, point against it."""
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([1])
    model = _Flipping()
    x_adv = EOTPGD(eps=0.1, eot=3, steps=1, step_size=0.1, random_start=False)(model, x, y)
    w = model.w.detach().view(1, 1, 4, 4)
    # maximising the loss of class 1 pushes the class-0 score s up: along +w (sum +w)
    assert torch.equal(torch.sign(x_adv - x), torch.sign(w))


def test_a_generator_of_the_wrong_type_is_named() -> None:
    with pytest.raises(ValueError, match=r"^generator must be a torch.Generator or None, got int$"):
        PGD(eps=0.1, generator=5)  # type: ignore[arg-type]


def test_the_layout_fallback_warning_points_at_the_callers_line() -> None:
    """stacklevel 3: the line that called the attack, not PGD's own code. (Under mutmut this test
    cannot pass: its trampolines add a frame; a mutation run leaves it out.)"""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PGD(eps=0.1, steps=1)(_ViewConv(), torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    (w,) = caught
    assert w.filename == __file__


# ------------------------------------------------------------------- the base's final projection
class _Wild(Attack):
    """Returns whatever it was given: the base must still deliver a point of the threat model."""

    def __init__(self, out: Tensor, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.out = out

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.out


def test_the_base_projects_a_wild_linf_result_onto_the_ball_and_pixel_space() -> None:
    x = torch.tensor([[0.05, 0.5, 0.95, 0.5]])
    wild = torch.tensor([[-3.0, 0.9, 3.0, 0.45]])
    got = _Wild(wild, eps=0.2)(nn.Identity(), x, torch.tensor([0]))
    assert torch.allclose(got, torch.tensor([[0.0, 0.7, 1.0, 0.45]]))


def test_the_base_projects_a_wild_l2_result_onto_the_ball_then_pixel_space() -> None:
    x = torch.tensor([[0.5, 0.5, 0.5, 0.98]])
    wild = x + torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # L2 distance 5: scaled to 0.5, i.e. (0.3, 0.4)
    got = _Wild(wild, eps=0.5, norm="l2")(nn.Identity(), x, torch.tensor([0]))
    assert torch.allclose(got, torch.tensor([[0.8, 0.9, 0.5, 0.98]]))
    inside = x + torch.tensor([[0.1, 0.0, 0.0, 0.1]])  # inside the ball, past the wall: only clipped
    got = _Wild(inside, eps=0.5, norm="l2")(nn.Identity(), x, torch.tensor([0]))
    assert torch.allclose(got, torch.tensor([[0.6, 0.5, 0.5, 1.0]]))
    low = torch.tensor([[0.1, 0.5, 0.5, 0.5]])
    got = _Wild(low - torch.tensor([[0.3, 0.0, 0.0, 0.0]]), eps=0.5, norm="l2")(nn.Identity(), low, torch.tensor([0]))
    assert torch.allclose(got, torch.tensor([[0.0, 0.5, 0.5, 0.5]]))  # below the lower wall: clipped to 0


class _DtypeSpy(Attack):
    """Records the dtype of the model's output inside the attack."""

    seen: torch.dtype | None = None

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        self.seen = model(x).dtype
        return x


def test_full_precision_decides_whether_an_autocast_region_reaches_the_attack() -> None:
    model, x, y = nn.Linear(4, 2), torch.rand(2, 4), torch.tensor([0, 1])
    exact, low = _DtypeSpy(eps=0.1), _DtypeSpy(eps=0.1)
    low.full_precision = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact(model, x, y)
        low(model, x, y)
    assert exact.seen == torch.float32 and low.seen == torch.bfloat16
    exact(model, x, y)  # outside a region: float32 either way
    assert exact.seen == torch.float32


# ------------------------------------------------------------------------------ input validation
def test_input_errors_name_the_type_dtype_or_shape_at_fault() -> None:
    from robustprune.attacks.base import check_inputs

    y = torch.tensor([0])
    with pytest.raises(ValueError, match=r"^x must be a floating-point tensor, got <class 'list'>$"):
        check_inputs([0.5], y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^x must be a floating-point tensor, got torch.int64$"):
        check_inputs(torch.tensor([1]), y)
    with pytest.raises(ValueError, match=r"^x must be a non-empty batch, got shape \(\)$"):
        check_inputs(torch.tensor(0.5), y)
    with pytest.raises(ValueError, match=r"^x must be a non-empty batch, got shape \(0,\)$"):
        check_inputs(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got dtype <class 'list'> and shape \(\)$"):
        check_inputs(torch.zeros(1, 2), [0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^y must be an int64 vector of length 1 \(the batch size of x\), got "
                                         r"dtype torch.int32 and shape \(1,\)$"):
        check_inputs(torch.zeros(1, 2), torch.tensor([0], dtype=torch.int32))


def test_a_batch_of_scalars_is_a_valid_batch() -> None:
    from robustprune.attacks.base import check_inputs

    check_inputs(torch.full((3,), 0.5), torch.tensor([0, 1, 0]))  # x of shape [B]: one value per example


def test_the_pixel_range_tolerance_is_inclusive_at_both_ends() -> None:
    from robustprune.attacks.base import RANGE_TOL, check_inputs

    y = torch.tensor([0, 0])
    check_inputs(torch.tensor([-RANGE_TOL, 1 + RANGE_TOL], dtype=torch.float64).view(2, 1), y)
    for bad in (-2 * RANGE_TOL, 1 + 2 * RANGE_TOL, math.nan):
        with pytest.raises(ValueError, match=r"x must lie in pixel space \[0, 1\]"):
            check_inputs(torch.tensor([0.5, bad], dtype=torch.float64).view(2, 1), y)


def test_the_result_has_the_inputs_dtype_and_layout_whatever_the_subclass_returns() -> None:
    x = torch.full((2, 3, 2, 2), 0.5)
    y = torch.tensor([0, 1])
    wild64 = (x + 0.05).double()
    got = _Wild(wild64, eps=0.1)(nn.Identity(), x, y)
    assert got.dtype == torch.float32 and torch.allclose(got, x + 0.05)
    odd = torch.empty_like(x, memory_format=torch.channels_last).copy_(x + 0.05)
    got = _Wild(odd, eps=0.1)(nn.Identity(), x, y)
    assert got.is_contiguous()  # a contiguous input gives a contiguous result
    x_cl = torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
    got = _Wild(odd, eps=0.1)(nn.Identity(), x_cl, y)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()


def test_an_l2_start_on_one_value_inputs_is_uniform_in_the_ball_too() -> None:
    """With one value per example the normal draw is often shorter than 1: the direction is still
    that draw divided by its own length."""
    x = torch.full((4, 1), 0.5, dtype=torch.float64)
    rec = _Recorder()
    model = nn.Linear(1, 2).double()
    PGD(eps=0.3, steps=1, norm="l2", start_radius=0.2, loss=rec,
        generator=torch.Generator().manual_seed(11))(model, x, torch.tensor([0, 1, 0, 1]))
    gen = torch.Generator().manual_seed(11)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    u = torch.rand(4, generator=gen, dtype=torch.float64)
    assert float(noise.abs().min()) < 1.0  # the case this test is for
    assert torch.allclose(rec.iterates[0], x + noise / noise.abs() * (u * 0.2).view(4, 1), rtol=0, atol=1e-12)


def test_minimum_norm_results_keep_the_inputs_dtype_and_reprs_list_params() -> None:
    x, y = torch.tensor([[0.9]]), torch.tensor([0])
    attack = _Propose(torch.tensor([[0.1]], dtype=torch.float64))
    res = attack(Threshold(), x, y)
    assert res.x_adv.dtype == torch.float32 and res.success.tolist() == [True]
    assert repr(attack) == "_Propose(norm='l2', eval_mode=True)"
