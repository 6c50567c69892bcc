"""Carlini & Wagner's L2 attack (IEEE S&P 2017), untargeted, with a binary search over c."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.attacks.base import check_count
from robustprune.attacks.minnorm import MinNormAttack, check_positive
from robustprune.registry import MINNORM

#: atanh of exactly ±1 is infinite: images are shrunk by this factor before the change of variables
TANH_SHRINK = 1 - 1e-6
#: the binary search treats an upper bound at or above this as "no success yet"
C_UNBOUNDED = 1e9


@MINNORM.register("cw")
class CarliniWagnerL2(MinNormAttack):
    """C&W-L2: ``min ‖δ‖₂² + c·max(z_y − max_{j≠y} z_j, −κ)`` over ``x + δ = (tanh(w) + 1)/2``.

    For each example, Adam (``lr``) optimises ``w`` for ``steps`` iterations from ``w = atanh(2x − 1)``
    (``δ = 0``), keeping the smallest-norm iterate that is misclassified (with margin κ); with
    ``abort_early``, a run stops when the loss has not decreased by 0.01 % over a tenth of the
    steps. ``c`` starts at ``initial_const`` and is tuned per example by ``binary_search_steps``
    rounds: after a success ``c`` is bisected downwards, after a failure bisected upwards or, while
    no success has been seen, multiplied by 10 (nn_robust_attacks' ``l2_attack.py``). Points the
    model already misclassifies are returned as they are (norm 0); points never fooled are
    failures (flagged by :class:`MinNormResult`'s ``success`` mask, never dropped).

    Args:
        steps: Adam iterations per binary-search round (default 1000; the reference used 10000,
            1000 is the usual compromise; fewer for speed).
        lr: Adam learning rate (default 1e-2).
        binary_search_steps: rounds of the search over ``c`` (default 9).
        initial_const: starting ``c`` (default 1e-3).
        kappa: confidence margin κ (default 0).
        abort_early: stop a round when the loss stalls (default ``True``).
        eval_mode: attack the eval-mode model (default ``True``).

    >>> result = CarliniWagnerL2(steps=100, binary_search_steps=5)(model, x, y)   # doctest: +SKIP
    """

    name = "cw-l2"

    def __init__(
        self,
        *,
        steps: int = 1000,
        lr: float = 1e-2,
        binary_search_steps: int = 9,
        initial_const: float = 1e-3,
        kappa: float = 0.0,
        abort_early: bool = True,
        eval_mode: bool = True,
    ) -> None:
        super().__init__(eval_mode=eval_mode)
        self.steps = check_count("steps", steps)
        self.lr = check_positive("lr", lr)
        self.binary_search_steps = check_count("binary_search_steps", binary_search_steps)
        self.initial_const = check_positive("initial_const", initial_const)
        self.kappa = check_positive("kappa", kappa, allow_zero=True)
        self.abort_early = bool(abort_early)

    def params(self) -> dict[str, Any]:
        return super().params() | {
            "steps": self.steps, "lr": self.lr, "binary_search_steps": self.binary_search_steps,
            "initial_const": self.initial_const, "kappa": self.kappa, "abort_early": self.abort_early,
        }

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            todo = (model(x).argmax(1) == y).nonzero().squeeze(1)
        best = x.clone()
        if todo.numel() == 0:
            return best
        xs, ys = x[todo], y[todo]
        best_l2 = torch.full((len(todo),), math.inf, dtype=x.dtype, device=x.device)
        best_x = xs.clone()
        lower = torch.zeros(len(todo), dtype=x.dtype, device=x.device)
        upper = torch.full_like(lower, 1e10)
        const = torch.full_like(lower, self.initial_const)
        w0 = torch.atanh((2 * xs - 1) * TANH_SHRINK)
        for _ in range(self.binary_search_steps):
            found = self._optimise(model, xs, ys, w0, const, best_x, best_l2)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            bounded = upper < C_UNBOUNDED
            const = torch.where(bounded, (lower + upper) / 2, const * 10)
        best[todo] = best_x
        return best

    def _optimise(self, model: nn.Module, x: Tensor, y: Tensor, w0: Tensor, const: Tensor,
                  best_x: Tensor, best_l2: Tensor) -> Tensor:
        """One binary-search round from δ = 0; updates ``best_x``/``best_l2`` in place and returns
        which examples were fooled in this round."""
        modifier = torch.zeros_like(w0, requires_grad=True)
        opt = torch.optim.Adam([modifier], lr=self.lr)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        check_every = max(self.steps // 10, 1)
        prev = math.inf
        for i in range(self.steps):
            x_adv = (torch.tanh(w0 + modifier) + 1) / 2
            logits = model(x_adv)
            l2 = (x_adv - x).flatten(1).pow(2).sum(1)
            real = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
            loss = (l2 + const * (real - other + self.kappa).clamp(min=0)).sum()
            modifier.grad = torch.autograd.grad(loss, modifier)[0]
            opt.step()
            with torch.no_grad():
                fooled = (real + self.kappa) < other
                better = fooled & (l2 < best_l2.pow(2))
                best_l2[better] = l2[better].sqrt()
                best_x[better] = x_adv[better].detach()
                found |= fooled
            if self.abort_early and i % check_every == 0:
                if loss.item() > prev * 0.9999:
                    break
                prev = loss.item()
        return found
