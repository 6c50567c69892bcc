"""The one iterative gradient attack; FGSM, R+FGSM, PGD (L∞ / L2) and EOT-PGD configure it.

The loop (:meth:`PGD._run`) is: start (none, uniform in the ball, or a random signed step), then
``steps`` times: input gradient of the summed per-example loss (averaged over ``eot`` stochastic
passes), a normalised step (sign for L∞, unit-L2 direction for L2), projection onto the ε-ball and
[0, 1]. Restarts rerun the loop on the examples not yet misclassified and keep each example's
worst case. Each norm adds three small pieces (start, step, projection), as in foolbox.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks.base import Attack, LossFn, check_count, cross_entropy_loss
from robustprune.data.catalog import check_eps
from robustprune.registry import ATTACKS

STARTS = ("none", "uniform", "sign", "normal")
MEMORY_FORMATS = ("auto", "channels_last", "preserve")


def _per_example(v: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[B]`` vector to broadcast over the example dimensions of ``like``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def _l2_norms(t: Tensor) -> Tensor:
    return _per_example(t.flatten(1).norm(dim=1), t)


def _conv_layout(model: nn.Module) -> str | None:
    """``"nhwc"`` or ``"nchw"``: the layout of the model's first 4-D (conv) weight; ``None`` if it
    has none."""
    for p in model.parameters():
        if p.dim() == 4:
            nhwc = p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
            return "nhwc" if nhwc else "nchw"
    return None


def _channels_last(x: Tensor) -> Tensor:
    """NHWC copy of ``x``; ``empty_like`` + ``copy_`` also gives 1-channel inputs true NHWC strides
    (``x.contiguous(memory_format=...)`` leaves them NCHW, and the conv kernels then stay NCHW)."""
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)


def _is_view_error(err: RuntimeError) -> bool:
    return "view size is not compatible" in str(err)


@ATTACKS.register("pgd")
class PGD(Attack):
    """Projected gradient descent on the input (Madry et al., ICLR 2018), L∞ or L2.

    Start ``x₀ = x + U(-ε, ε)`` (L∞; clipped to [0, 1]) or uniform in the L2 ball (random normal
    direction, radius ``ε·u^(1/d)``); then ``steps`` times ``x ← Π(x + step_size·sign(g))`` (L∞) or
    ``x ← Π(x + step_size·g/‖g‖₂)`` (L2), where ``g`` is the input gradient of the summed
    per-example ``loss`` and ``Π`` projects onto the ε-ball and [0, 1]. Returns the last iterate.

    Args:
        eps: radius in pixel units. steps: iterations (default 40).
        step_size: default ``2.5·eps/steps`` (Madry et al.'s heuristic).
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: ``True``/``"uniform"`` (default), ``False``/``"none"``, or ``"sign"``:
            ``x + start_radius·sign(N(0, I))`` (R+FGSM's start; L∞ only), or ``"normal"``:
            ``x + start_radius·N(0, I)`` (TRADES' small Gaussian start, ``start_radius`` = std).
        start_radius: radius of the random start (default ``eps``; at most ``eps``).
        restarts: runs; each example keeps its first misclassified result, else its highest-loss
            one (judged by one eval forward pass on the final iterates). Restarts after the first
            run only on examples not yet misclassified, so they are never weaker than one run.
        eot: expectation over transformation (Athalye et al. 2018): the gradient at each step is
            averaged over ``eot`` forward/backward passes of a stochastic model (default 1).
        loss: ``(model, x_adv, y) -> per-example loss [B]`` to maximise (default cross-entropy).
        eval_mode: attack the eval-mode model (default ``True``).
        memory_format: ``"auto"`` (default) runs 4-D inputs channels_last (NHWC) on CPU and
            wherever the model's conv weights are NHWC (falls back, with a warning, for models that
            ``.view()`` NHWC activations); ``"channels_last"`` always; ``"preserve"`` never.
            Only speed changes: the start noise is drawn in logical order in every layout.
        generator: the ``torch.Generator`` of the random start (every restart draws from it in
            turn); ``None`` (default) draws from the global RNG. The draws happen on the
            generator's device and move to the input's. EOT's samples are the model's own draws.

    >>> attack = PGD(eps=0.3, steps=40, step_size=0.01)          # ANP-VS MNIST evaluation
    >>> x_adv = attack(model, x, y)                                # doctest: +SKIP
    """

    name = "pgd"

    def __init__(
        self,
        *,
        eps: float,
        steps: int = 40,
        step_size: float | None = None,
        norm: str = "linf",
        random_start: bool | str = True,
        start_radius: float | None = None,
        restarts: int = 1,
        eot: int = 1,
        loss: LossFn | None = None,
        eval_mode: bool = True,
        memory_format: str = "auto",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(eps=eps, norm=norm, eval_mode=eval_mode, generator=generator)
        self.steps = check_count("steps", steps)
        self.restarts = check_count("restarts", restarts)
        self.eot = check_count("eot", eot)
        if step_size is None:
            step_size = 2.5 * self.eps / self.steps
        zero_ok = self.eps == 0 and step_size == 0  # FGSM / R+FGSM at eps = 0
        if not isinstance(step_size, int | float) or not (step_size > 0 or zero_ok):
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        self.step_size = float(step_size)
        self.random_start = self._check_start(random_start)
        radius = self.eps if start_radius is None else start_radius
        if not isinstance(radius, int | float) or not 0 <= radius <= self.eps:
            raise ValueError(f"start_radius must be in [0, eps={self.eps}], got {start_radius!r}")
        self.start_radius = 0.0 if self.random_start == "none" else float(radius)
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}")
        self.memory_format = memory_format
        self._auto_failed = False  # "auto" met a model that rejects channels_last inputs
        self.loss_fn: LossFn = cross_entropy_loss if loss is None else loss

    def _check_start(self, random_start: bool | str) -> str:
        starts: dict[bool | str, str] = {True: "uniform", False: "none"}
        start = starts.get(random_start, cast(str, random_start))  # a bool maps to its name, a name stays
        if start not in STARTS:
            raise ValueError(f"random_start must be a bool or one of {STARTS}, got {random_start!r}")
        if start == "sign" and self.norm != "linf":
            raise ValueError(f"random_start='sign' needs norm='linf', got norm={self.norm!r}")
        return start

    def params(self) -> dict[str, Any]:
        loss = getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__)
        return super().params() | {
            "steps": self.steps, "step_size": self.step_size, "random_start": self.random_start,
            "start_radius": self.start_radius, "restarts": self.restarts, "eot": self.eot, "loss": loss,
        }

    # ---- the loop -------------------------------------------------------------------------------

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self._use_channels_last(model, x):
            try:
                return self._attack(model, x, y, nhwc=True)
            except RuntimeError as err:  # a model that calls .view() on NHWC activations
                if self.memory_format != "auto" or not _is_view_error(err):
                    raise
                self._auto_failed = True
                warnings.warn(f"{self!r}: model does not accept channels_last inputs ({err}); "
                              "attacking in the input's own layout from now on", stacklevel=3)
        return self._attack(model, x, y, nhwc=False)

    def _use_channels_last(self, model: nn.Module, x: Tensor) -> bool:
        """``"auto"``: NHWC for conv nets on CPU (measured 1.3-1.5x faster PGD on LeNet5, neutral on
        VGG16 and ResNet18) and wherever the model's conv weights are NHWC already."""
        if x.dim() != 4 or self.memory_format == "preserve":
            return False
        if self.memory_format == "channels_last":
            return True
        layout = _conv_layout(model)
        return not self._auto_failed and layout is not None and (x.device.type == "cpu" or layout == "nhwc")

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor, *, nhwc: bool) -> Tensor:
        x_adv = self._run(model, x, y, nhwc=nhwc)
        return x_adv if self.restarts == 1 else self._restart(model, x, y, x_adv, nhwc=nhwc)

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, *, nhwc: bool) -> Tensor:
        """One run from a fresh start: ``steps`` gradient steps, each projected."""
        if nhwc:
            x = _channels_last(x)
        lo = hi = None
        if self.norm == "linf":  # bounds of the L∞ ball ∩ [0, 1], computed once
            lo, hi = (x - self.eps).clamp_(min=0), (x + self.eps).clamp_(max=1)
        x_adv = self._start(x).requires_grad_(True)
        for _ in range(self.steps):
            g = self._grad(model, x_adv, y)
            with torch.no_grad():
                self._step(x_adv, g, x, lo, hi)
        return x_adv.detach()

    def _start(self, x: Tensor) -> Tensor:
        r = self.start_radius
        if self.random_start == "none" or r == 0:
            return x.clone()
        gen = self.generator
        dev = x.device if gen is None else gen.device  # drawn on the generator's device, then moved to x's
        if self.random_start == "sign":
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=dev).sign_().mul_(r).to(x.device)
        elif self.random_start == "normal":
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=dev).mul_(r).to(x.device)
        elif self.norm == "linf":
            noise = torch.empty(x.shape, dtype=x.dtype, device=dev).uniform_(-r, r, generator=gen).to(x.device)
        else:  # uniform in the L2 ball: normal direction, radius r * u^(1/d)
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=dev).to(x.device)
            u = torch.rand(x.shape[0], generator=gen, dtype=x.dtype, device=dev).to(x.device) ** (1.0 / x[0].numel())
            noise.mul_(_per_example(u * r, x) / _l2_norms(noise).clamp_(min=1e-12))
        return torch.add(x, noise, out=torch.empty_like(x)).clamp_(0, 1)  # keeps x's strides

    def _grad(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
        """Input gradient of the summed loss; with EOT the sum over ``eot`` passes (same direction
        as the mean, which is all the normalised steps use)."""
        g = None
        for _ in range(self.eot):
            loss = self.loss_fn(model, x_adv, y)
            if loss.shape != y.shape:
                raise ValueError(f"loss must return one value per example, shape {tuple(y.shape)}, "
                                 f"got shape {tuple(loss.shape)}")
            gi = torch.autograd.grad(loss.sum(), x_adv)[0]
            g = gi if g is None else g + gi  # not in place: autograd may return expanded tensors
        assert g is not None
        return g

    def _step(self, x_adv: Tensor, g: Tensor, x: Tensor, lo: Tensor | None, hi: Tensor | None) -> None:
        """In place: one normalised ascent step, then projection onto the ball and [0, 1]."""
        if self.norm == "linf":
            x_adv.add_(g.sign(), alpha=self.step_size).clamp_(lo, hi)
            return
        x_adv.add_(g / _l2_norms(g).clamp_(min=1e-12), alpha=self.step_size)
        delta = (x_adv - x).renorm_(p=2, dim=0, maxnorm=self.eps)
        torch.add(x, delta, out=x_adv).clamp_(0, 1)

    # ---- restarts -------------------------------------------------------------------------------

    @torch.no_grad()
    def _judge(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(misclassified, loss) per example, from one forward pass on the final iterate."""
        logits = model(x_adv)
        if self.loss_fn is cross_entropy_loss:
            loss = F.cross_entropy(logits, y, reduction="none")
        else:
            loss = self.loss_fn(model, x_adv, y)
        return logits.argmax(1) != y, loss

    def _restart(self, model: nn.Module, x: Tensor, y: Tensor, x_best: Tensor, *, nhwc: bool) -> Tensor:
        """Runs 2..R on the examples not yet misclassified; keep first success, else max loss."""
        fooled, best_loss = self._judge(model, x_best, y)
        for _ in range(self.restarts - 1):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand = self._run(model, x[idx], y[idx], nhwc=nhwc)
            c_fooled, c_loss = self._judge(model, cand, y[idx])
            better = c_fooled | (c_loss > best_loss[idx])
            take = idx[better]
            x_best[take] = cand[better]
            best_loss[take] = c_loss[better]
            fooled[idx] = c_fooled
        return x_best


@ATTACKS.register("fgsm")
class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al., ICLR 2015): ``x + eps·sign(∇ₓ loss)``.

    One step of size ``eps`` of the PGD loop from ``x`` (no random start), clipped to [0, 1]. With
    ``norm="l2"`` it is the fast gradient method ``x + eps·g/‖g‖₂``. Exactly one gradient call.

    >>> attack = FGSM(eps=0.3)
    """

    name = "fgsm"

    def __init__(
        self, *, eps: float, norm: str = "linf", loss: LossFn | None = None, eval_mode: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(eps=eps, steps=1, step_size=eps, norm=norm, random_start=False, loss=loss,
                         eval_mode=eval_mode, generator=generator)


@ATTACKS.register("rfgsm")
class RFGSM(PGD):
    """R+FGSM (Tramèr et al., ICLR 2018), single step: not torchattacks' iterative ``RFGSM``.

    ``x̃ = clip(x + α·sign(N(0, I)))``, then one signed gradient step of ``eps − α`` from ``x̃``,
    projected onto the ε-ball around ``x`` and [0, 1]. Default ``α = eps/2``; needs ``0 ≤ α < eps``.
    The PGD loop with ``random_start="sign"``, ``start_radius=α``, one step: one gradient call.

    >>> attack = RFGSM(eps=0.3)        # alpha = 0.15
    """

    name = "rfgsm"

    def __init__(
        self, *, eps: float, alpha: float | None = None, loss: LossFn | None = None, eval_mode: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        eps_f = check_eps(eps)
        a = eps_f / 2 if alpha is None else alpha
        if not isinstance(a, int | float) or not (0 <= a < eps_f or a == eps_f == 0):
            raise ValueError(f"alpha must be in [0, eps={eps}), got {alpha!r}")
        super().__init__(eps=eps, steps=1, step_size=eps_f - a, random_start="sign", start_radius=a,
                         loss=loss, eval_mode=eval_mode, generator=generator)
        self.alpha = float(a)

    def params(self) -> dict[str, Any]:
        return super().params() | {"alpha": self.alpha}


@ATTACKS.register("eot-pgd")
class EOTPGD(PGD):
    """EOT-PGD (Athalye et al., ICML 2018): PGD whose gradient is averaged over ``eot`` passes.

    For models that stay random in eval mode (SAP, sampled BNNs); default ``eot=10``. Every other
    argument is :class:`PGD`'s; a step costs ``eot`` forward/backward passes.

    >>> attack = EOTPGD(eps=0.3, steps=40, step_size=0.01, eot=10)
    """

    name = "eot-pgd"

    def __init__(self, *, eps: float, eot: int = 10, **kwargs: Any) -> None:
        super().__init__(eps=eps, eot=eot, **kwargs)
