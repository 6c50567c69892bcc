"""Beta-Bernoulli dropout (BBD): the unit-mask layer of ANP-VS.

One mask unit per conv output channel or fc neuron. Unit k keeps its input with probability
π_k; the posterior of π_k is Kumaraswamy(a_k, b_k) with a_k = softplus(a'_k), b_k = softplus(b'_k)
(free values clamped to [-10, 50]); the prior is Beta(α, 1), α = 1e-4 (Lee et al. 2018, "Adaptive
network sparsification with dependent variational beta-Bernoulli dropout"; Madaan et al. 2020).

- Training: π is drawn once per forward pass (shared by the batch) by inverse CDF, then a relaxed
  Bernoulli z = sigmoid((logit u + logit π)/τ) per example and unit; output x·z.
- Eval: z_k = E[π_k] where E[π_k] > threshold, else exactly 0 (a soft, deterministic scale).
- Function-preserving initialisation (``preserve=True``, for pruning a trained network): the layer
  also holds a fixed per-unit gain g_k = 1/E[π_k] taken at construction (inverted dropout), and
  multiplies its mask by it. At initialisation the eval-mode output is then the input itself (to
  float rounding) and the training-mode output equals it in expectation (up to the Concrete
  relaxation's bias, small at τ = 0.1); learning moves E[π] and so the unit's scale E[π]/E[π₀].
  The paper's layers have no gain (g = 1): ``preserve=False``, the default.
- ANP-VS compares clean and adversarial latent features under *the same* mask sample: run both
  forward passes inside :func:`shared_noise`.

>>> model = install_bbd(build_model("lenet5-caffe"))      # 1370 mask units
>>> with shared_noise(model):                              # same masks for both passes
...     _, f_clean = model(x, features=True)
...     _, f_adv = model(x_adv, features=True)
>>> loss = ce + beta * model_kl(model) / n_train
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.base import MaskSlot, install_masks, installed_masks, model_quirk

EULER_GAMMA = 0.5772156649015329
FREE_MIN, FREE_MAX = -10.0, 50.0


def _finite(name: str, value: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    if isinstance(value, bool) or not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def _uniform(shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """U(eps, 1 - eps) from the global RNG, eps = the dtype's machine epsilon (never exactly 0 or 1)."""
    eps = torch.finfo(dtype).eps
    return torch.rand(shape, device=device, dtype=dtype).clamp_(eps, 1.0 - eps)


class BBDropout(nn.Module):
    """Beta-Bernoulli dropout mask over ``units`` channels ("conv") or neurons ("fc").

    Follows the :class:`~robustprune.models.base.UnitMask` contract (``units``, ``active()``,
    ``eval_scale()``, ``n_active()``). Defaults are the ANP-VS ones: a' = -1 (E[π] ≈ 0.239;
    use a' = 2, E[π] ≈ 0.680, for VGG conv masks), b' = 0.5413 (b ≈ 1), α = 1e-4, τ = 0.1,
    threshold 1e-3. The input's unit axis is dim 1; the mask broadcasts over any trailing
    (spatial) dims. ``preserve=True`` adds the fixed gain 1/E[π₀] of the module docstring (a
    buffer ``gain``, saved with the weights), so the fresh layer passes its input through
    unchanged in eval mode.

    >>> mask = BBDropout(20, kind="conv")
    >>> y = mask(torch.rand(8, 20, 24, 24))   # train: sampled mask; eval: thresholded E[π]
    >>> mask.kl(), mask.n_active()
    """

    def __init__(
        self,
        units: int,
        *,
        kind: Literal["conv", "fc"] = "conv",
        a_init: float = -1.0,
        b_init: float = 0.5413,
        alpha: float = 1e-4,
        tau: float = 0.1,
        threshold: float = 1e-3,
        preserve: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"units must be a positive int, got {units!r}")
        if kind not in ("conv", "fc"):
            raise ValueError(f"kind must be 'conv' or 'fc', got {kind!r}")
        a_init, b_init = _finite("a_init", a_init), _finite("b_init", b_init)
        if not 0.0 < _finite("alpha", alpha):
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        if not 0.0 < _finite("tau", tau):
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if not 0.0 <= _finite("threshold", threshold) < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.units = units
        self.kind = kind
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.threshold = float(threshold)
        self.a_uc = nn.Parameter(torch.full((units,), a_init))
        self.b_uc = nn.Parameter(torch.full((units,), b_init))
        if not isinstance(preserve, bool):
            raise ValueError(f"preserve must be True or False, got {preserve!r}")
        self.gain: Tensor | None
        if preserve:
            with torch.no_grad():
                keep0 = self.expected_keep()
            if not bool((keep0 > threshold).all()):
                raise ValueError(f"preserve=True needs an initial keep rate above the threshold {threshold:g}; "
                                 f"a_init={a_init:g}, b_init={b_init:g} give E[pi] = {float(keep0[0]):.3g}")
            self.register_buffer("gain", 1.0 / keep0)
        else:
            self.gain = None
        #: when True the training-mode forward uses the eval mask too (see :func:`fix_masks`)
        self.fixed = False
        # shared-noise state (see shared_noise): raw uniforms (v [units], u [B, units]) or None
        self._sharing = False
        self._noise: tuple[Tensor, Tensor] | None = None

    # ----------------------------------------------------------------------------- distribution
    def a(self) -> Tensor:
        """Kumaraswamy a = softplus(clamp(a', -10, 50)), shape [units]."""
        return F.softplus(self.a_uc.clamp(FREE_MIN, FREE_MAX))

    def b(self) -> Tensor:
        """Kumaraswamy b = softplus(clamp(b', -10, 50)), shape [units]."""
        return F.softplus(self.b_uc.clamp(FREE_MIN, FREE_MAX))

    def kl_per_unit(self) -> Tensor:
        """KL(Kumaraswamy(a, b) ‖ Beta(α, 1)) of every unit, shape [units]."""
        a, b = self.a(), self.b()
        return (
            (1.0 - self.alpha / a) * (-EULER_GAMMA - torch.digamma(b) - 1.0 / b)
            + torch.log(a) + torch.log(b) - math.log(self.alpha)
            - (b - 1.0) / b
        )

    def kl(self) -> Tensor:
        """KL of the layer: the per-unit KL summed over units (a differentiable scalar)."""
        return self.kl_per_unit().sum()

    def expected_keep(self) -> Tensor:
        """E[π] = b·Γ(1+1/a)·Γ(b)/Γ(1+1/a+b), shape [units] (differentiable).

        Evaluated as exp of the lgamma form in float64: for small a, 1/a is large and the lgamma
        terms cancel to many digits, which float32 would get wrong by about a percent.
        """
        a, b = self.a().double(), self.b().double()
        inv_a = 1.0 / a
        log_e = torch.log(b) + torch.lgamma(1.0 + inv_a) + torch.lgamma(b) - torch.lgamma(1.0 + inv_a + b)
        return torch.exp(log_e).to(self.a_uc.dtype)

    def _eval_mask(self) -> Tensor:
        """The eval-mode multiplier before the gain: thresholded E[π]."""
        keep = self.expected_keep()
        return torch.where(keep > self.threshold, keep, torch.zeros_like(keep))

    def _scaled(self, z: Tensor) -> Tensor:
        """``z`` times the fixed gain (``preserve=True``), broadcast over the unit axis (last)."""
        return z if self.gain is None else z * self.gain.to(z.dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A source that holds this mask's a', b' but no gain (a run of the paper's masks, loaded
        # into a function-preserving layer with --init-from) defined its function with gain 1:
        # keep that, rather than this layer's fresh 1/E[π₀] next to the source's a', b'.
        if self.gain is not None and prefix + "a_uc" in state_dict and prefix + "gain" not in state_dict:
            with torch.no_grad():
                self.gain.fill_(1.0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------------------- UnitMask contract
    def active(self) -> Tensor:
        """Bool [units]: E[π] > threshold."""
        with torch.no_grad():
            return self.expected_keep() > self.threshold

    def eval_scale(self) -> Tensor:
        """Float [units]: the eval-mode multiplier, E[π] (times the gain, ``preserve=True``) where
        active else 0 (detached)."""
        with torch.no_grad():
            return self._scaled(self._eval_mask())

    def n_active(self) -> int:
        return int(self.active().sum().item())

    # ----------------------------------------------------------------------------- sampling
    def _logit_pi(self, v: Tensor) -> Tensor:
        """logit π for π = (1 - v^{1/b})^{1/a}, computed in log space (finite for every v in (0, 1))."""
        a, b = self.a().to(v.dtype), self.b().to(v.dtype)
        one_minus = -torch.expm1(torch.log(v) / b)  # 1 - v^{1/b}, accurate when v^{1/b} ≈ 1
        tiny = torch.finfo(v.dtype).tiny
        log_pi = (torch.log(one_minus.clamp_min(tiny)) / a).clamp_max(-torch.finfo(v.dtype).eps)
        return log_pi - torch.log(-torch.expm1(log_pi))  # log π - log(1 - π)

    def _mask_from_noise(self, v: Tensor, u: Tensor) -> Tensor:
        logit_u = torch.log(u) - torch.log1p(-u)
        return torch.sigmoid((logit_u + self._logit_pi(v)) / self.tau)

    def _draw(self, batch: int, *, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if self._sharing and self._noise is not None:
            v, u = self._noise
            if u.shape[0] != batch:
                raise ValueError(
                    f"shared_noise: this mask drew its noise for batch size {u.shape[0]}, "
                    f"but got batch size {batch}; the shared passes must use equal batches"
                )
            return v.to(device=device, dtype=dtype), u.to(device=device, dtype=dtype)
        v = _uniform((self.units,), device=device, dtype=dtype)
        u = _uniform((batch, self.units), device=device, dtype=dtype)
        if self._sharing:
            self._noise = (v, u)
        return v, u

    def sample_pi(self) -> Tensor:
        """One draw of the keep rates π ~ Kumaraswamy(a, b), shape [units] (reparameterised)."""
        dtype = self.a_uc.dtype
        v = _uniform((self.units,), device=self.a_uc.device, dtype=dtype)
        return torch.sigmoid(self._logit_pi(v))

    def sample_mask(self, batch: int) -> Tensor:
        """The training-mode mask z, shape [batch, units]: one π for the batch, Concrete per example
        (times the gain, ``preserve=True``).

        Inside :func:`shared_noise` the first call's noise is reused.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        v, u = self._draw(batch, device=self.a_uc.device, dtype=self.a_uc.dtype)
        return self._scaled(self._mask_from_noise(v, u))

    # ----------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.units:
            raise ValueError(
                f"BBDropout with {self.units} units got input of shape {tuple(x.shape)} "
                f"(unit dim 1 has {x.shape[1] if x.dim() >= 2 else 'no'} entries, expected {self.units})"
            )
        if self.training and not self.fixed:
            dtype = torch.promote_types(x.dtype, self.a_uc.dtype)
            v, u = self._draw(x.shape[0], device=x.device, dtype=dtype)
            z = self._scaled(self._mask_from_noise(v, u))
        else:
            z = self._scaled(self._eval_mask()).unsqueeze(0)
        z = z.reshape(*z.shape, *([1] * (x.dim() - 2)))
        return x * z.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"units={self.units}, kind={self.kind}, alpha={self.alpha:g}, tau={self.tau:g}, "
            f"threshold={self.threshold:g}" + (", fixed" if self.fixed else "")
            + (", preserve" if self.gain is not None else "")
        )


# --------------------------------------------------------------------------------- model helpers
def bbd_layers(model: nn.Module) -> list[BBDropout]:
    """Every BBDropout inside ``model`` (``model`` itself included), in registration order."""
    return [m for m in model.modules() if isinstance(m, BBDropout)]


@contextmanager
def shared_noise(model: nn.Module) -> Iterator[None]:
    """Within the block, every BBDropout of ``model`` reuses the noise of its first call.

    ANP-VS's vulnerability term compares clean and adversarial features under one mask sample:

    >>> with shared_noise(model):
    ...     _, f_clean = model(x, features=True)
    ...     _, f_adv = model(x_adv, features=True)

    Only the raw uniforms are stored; π and z are recomputed from the current a, b, so the
    passes backpropagate independently. The passes must use the same batch size (ValueError
    otherwise). Eval mode is deterministic anyway. Nested blocks draw a fresh shared sample and
    restore the outer one on exit. Outside the block every call draws fresh noise.
    """
    layers = bbd_layers(model)
    saved = [(m._sharing, m._noise) for m in layers]
    for m in layers:
        m._sharing, m._noise = True, None
    try:
        yield
    finally:
        for m, (sharing, noise) in zip(layers, saved, strict=True):
            m._sharing, m._noise = sharing, noise


def fix_masks(model: nn.Module, fixed: bool = True) -> None:
    """Make every BBDropout of ``model`` use its deterministic eval mask (thresholded E[π]) in
    training mode too (``fixed=False`` restores sampling). Fine-tuning the weights of a pruned
    network this way trains exactly the network that is evaluated and compacted."""
    for m in bbd_layers(model):
        m.fixed = fixed


def default_a_init_conv(model: nn.Module) -> float:
    """The ANP-VS initialisation of conv masks: the model's ``bbd_conv_init`` quirk (VGG-16's a' = 2,
    E[π] ≈ 0.68; a graph-masked wrapper inherits its network's), else a' = -1 (E[π] ≈ 0.24)."""
    value = model_quirk(model, "bbd_conv_init")
    return -1.0 if value is None else float(value)


#: the initialisations of :func:`install_bbd` (``mask_init``)
MASK_INITS = ("paper", "function-preserving")
#: a' of every mask under ``mask_init="function-preserving"``: E[π₀] = a/(a+1) = 0.98 with b = 1. Chosen
#: over 0.9 (a' = 9, the first default) on validation images held out of the training set: from it the
#: warm-started adversarial mask methods lost less clean accuracy against AT fine-tuning, and a
#: ``target_sparsity`` cut learned from it kept more (bench/warm_start_select/, bench/RESULTS.md). The
#: sampled masks' noise (about 10 % of units dropped per example at 0.9, 2 % at 0.98) is the likely
#: cause, not isolated.
PRESERVE_A_INIT = 49.0


def install_bbd(
    model: nn.Module, *, a_init_conv: float | None = None, a_init_fc: float | None = None,
    mask_init: str = "paper", **bbd_kwargs: float
) -> nn.Module:
    """Put a fresh :class:`BBDropout` into every mask slot of ``model``; returns the model.

    ``mask_init="paper"`` (the ANP-VS recipe): ``a_init_conv`` defaults to
    :func:`default_a_init_conv`, ``a_init_fc`` to a' = -1 (E[π] ≈ 0.24), no gain.
    ``mask_init="function-preserving"`` (pruning a trained network): both default to
    :data:`PRESERVE_A_INIT` (E[π₀] = 0.98) and every mask gets the gain 1/E[π₀]
    (``BBDropout(preserve=True)``), so the masked model's eval-mode output equals the bare
    model's at initialisation, and its training-mode output does in expectation.
    ``bbd_kwargs`` (``b_init``, ``alpha``, ``tau``, ``threshold``) go to every mask. The masks
    take the device and floating dtype of the model's parameters.

    >>> model = install_bbd(build_model("vgg16"))   # 5248 units, conv a' = 2, fc a' = -1
    >>> model = install_bbd(trained, mask_init="function-preserving")   # computes what trained did
    """
    if mask_init not in MASK_INITS:
        raise ValueError(f"mask_init must be one of {', '.join(MASK_INITS)}, got {mask_init!r}")
    preserve = mask_init == "function-preserving"
    for key in ("a_init", "kind", "units", "preserve"):
        if key in bbd_kwargs:
            raise ValueError(f"install_bbd sets {key!r} itself; got {key}={bbd_kwargs[key]!r}")
    if a_init_conv is None:
        a_init_conv = PRESERVE_A_INIT if preserve else default_a_init_conv(model)
    if a_init_fc is None:
        a_init_fc = PRESERVE_A_INIT if preserve else -1.0
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)

    def factory(slot: MaskSlot) -> nn.Module:
        a_init = a_init_conv if slot.kind == "conv" else a_init_fc
        mask = BBDropout(slot.units, kind=slot.kind, a_init=a_init, preserve=preserve, **bbd_kwargs)
        return mask if ref is None else mask.to(dtype=ref.dtype)

    return install_masks(model, factory)


def keep_by_kind(model: nn.Module) -> dict[str, float]:
    """The mean E[π] of ``model``'s BBDropout masks per slot kind (``{"conv": .., "fc": ..}``, kinds
    present only), rounded to 4 digits: read after :func:`install_bbd`, the keep rates a run started at."""
    keeps: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for _, m in installed_masks(model):
            if isinstance(m, BBDropout):
                keeps.setdefault(m.kind, []).append(m.expected_keep())
    return {kind: round(float(torch.cat(v).mean()), 4) for kind, v in sorted(keeps.items())}


def model_kl(model: nn.Module) -> Tensor:
    """Σ of ``kl()`` over the BBDropout masks installed in ``model`` (a 0-d zero if there are none)."""
    kls = [m.kl() for _, m in installed_masks(model) if isinstance(m, BBDropout)]
    if not kls:
        ref = next(iter(model.parameters()), None)
        return torch.zeros((), device=None if ref is None else ref.device)
    return torch.stack(kls).sum()


@dataclass(frozen=True)
class SparsityCut:
    """What :func:`cut_to_sparsity` did: ``units`` mask units in all, ``pruned`` of them pruned
    after the cut (``round(asked · units)``), ``revived`` units the masks had pruned that the cut
    kept (given their layer's median keep rate), ``rule`` the ranking (``"global"``)."""

    asked: float
    units: int
    pruned: int
    revived: int
    rule: str = "global"

    @property
    def reached(self) -> float:
        """The fraction of units pruned after the cut."""
        return self.pruned / self.units

    def as_dict(self) -> dict[str, Any]:
        return {"asked": self.asked, "reached": self.reached, "units": self.units, "pruned": self.pruned,
                "revived": self.revived, "rule": self.rule}


def _set_keep(mask: BBDropout, idx: Tensor, keep: float) -> None:
    """Set units ``idx`` of ``mask`` to E[π] = ``keep`` (b = 1, so a = keep / (1 - keep))."""
    a = keep / (1.0 - keep)
    mask.a_uc[idx] = math.log(math.expm1(a)) if a < 20 else a  # softplus⁻¹
    mask.b_uc[idx] = math.log(math.expm1(1.0))


@torch.no_grad()
def cut_to_sparsity(model: nn.Module, sparsity: float) -> SparsityCut:
    """Prune exactly ``round(sparsity · N)`` of the N units of ``model``'s BBD masks, by keep rate.

    The units are ranked by E[π] over all layers at once (the cut is *global*: it follows the
    keep rates the masks learned, and a fraction of all units is what the structured levels of
    pruning benchmarks count), with one guard: every layer keeps its best unit, so the network
    stays connected. Units below the cut are pruned for good (a' = -10, b' = 50: E[π] ≈ 0);
    units above it keep their E[π], except units the masks had already pruned (E[π] at or below
    the threshold) that the cut keeps because the masks pruned more than asked: those get the
    median E[π] of their layer's other kept units (0.5 where there are none), so that fine-tuning
    can use them. Freeze the masks afterwards (:func:`fix_masks` and a frozen mask group).

    >>> cut = cut_to_sparsity(model, 0.75)     # 75 % of all units pruned, to the unit
    >>> cut.pruned, cut.units, unit_sparsity(model)
    """
    masks = [m for _, m in installed_masks(model) if isinstance(m, BBDropout)]
    if not masks:
        raise ValueError("cut_to_sparsity: the model has no BBDropout masks")
    sparsity = _finite("sparsity", sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target sparsity must be a fraction in [0, 1), got {sparsity!r}")
    keeps = [m.expected_keep().double() for m in masks]
    total = sum(m.units for m in masks)
    n_prune = round(sparsity * total)
    n_keep = total - n_prune
    if n_keep < len(masks):
        raise ValueError(f"target sparsity {sparsity!r} leaves {n_keep} of {total} units, fewer than the "
                         f"{len(masks)} layers that must keep one each")
    flat = torch.cat(keeps)
    starts = torch.tensor([0, *[m.units for m in masks]]).cumsum(0)
    kept = torch.zeros(total, dtype=torch.bool)
    for i, k in enumerate(keeps):  # the guard: every layer's best unit
        kept[int(starts[i]) + int(torch.argmax(k))] = True
    order = torch.sort(-flat, stable=True).indices  # highest keep rate first, ties by position
    extra = order[~kept[order]][: n_keep - int(kept.sum())]
    kept[extra] = True
    revived = 0
    for i, (m, k) in enumerate(zip(masks, keeps, strict=True)):
        own = kept[int(starts[i]):int(starts[i + 1])]
        live = own & (k > m.threshold)
        dead_kept = own & ~live
        if bool(dead_kept.any()):
            fill = float(k[live].median()) if bool(live.any()) else 0.5
            _set_keep(m, dead_kept.nonzero().flatten(), min(max(fill, 10 * m.threshold), 0.99))
            revived += int(dead_kept.sum())
        cut = (~own).nonzero().flatten()
        m.a_uc[cut], m.b_uc[cut] = FREE_MIN, FREE_MAX
    return SparsityCut(asked=sparsity, units=total, pruned=n_prune, revived=revived)
