"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016), L2, batched."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from robustprune.attacks.base import check_count
from robustprune.attacks.minnorm import MinNormAttack, check_positive
from robustprune.registry import MINNORM


def _flat_norm(t: Tensor) -> Tensor:
    """L2 norm over all but the first two dimensions: ``[B, K, ...] -> [B, K]``."""
    return t.flatten(2).norm(dim=2)


@MINNORM.register("deepfool")
class DeepFool(MinNormAttack):
    """DeepFool, L2: step to the nearest boundary of the linearised classifier until fooled.

    At each iteration, for the true class ``y`` and each candidate class ``k`` (the
    ``candidates - 1`` classes with the highest clean logits, as in the reference code),
    ``w_k = ∇f_k − ∇f_y`` and ``f'_k = f_k − f_y``; the closest linearised boundary is
    ``l = argmin_k |f'_k| / ‖w_k‖₂`` and the step ``r = (|f'_l|/‖w_l‖₂ + 1e-4)·w_l/‖w_l‖₂`` is
    added to the total ``r_tot``. The iterate is ``clip(x + (1 + overshoot)·r_tot, 0, 1)``; an
    example stops as soon as it is misclassified. All examples run together (batched), one
    backward pass per candidate class per iteration. On a linear classifier the first step lands
    on the boundary exactly, so the returned norm is ``(1 + overshoot)·(dist + 1e-4)``.

    Args:
        steps: maximum iterations (default 50).
        overshoot: final scaling of the total perturbation minus one (default 0.02).
        candidates: classes considered, the true one included (default 10; at most the number
            of classes).
        eval_mode: attack the eval-mode model (default ``True``).

    >>> result = DeepFool(steps=50, overshoot=0.02)(model, x, y)     # doctest: +SKIP
    >>> result.norms[result.success].mean()                          # doctest: +SKIP
    """

    name = "deepfool"

    def __init__(self, *, steps: int = 50, overshoot: float = 0.02, candidates: int = 10,
                 eval_mode: bool = True) -> None:
        super().__init__(eval_mode=eval_mode)
        self.steps = check_count("steps", steps)
        self.overshoot = check_positive("overshoot", overshoot, allow_zero=True)
        self.candidates = check_count("candidates", candidates)
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2 (the true class and one other), got {candidates!r}")

    def params(self) -> dict[str, Any]:
        return super().params() | {"steps": self.steps, "overshoot": self.overshoot, "candidates": self.candidates}

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            logits0 = model(x)
        others = self._other_classes(logits0, y)
        r_tot = torch.zeros_like(x)
        x_i = x.clone()
        active = logits0.argmax(1) == y
        for _ in range(self.steps):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            r, still = self._step(model, x_i[idx], y[idx], others[idx])
            move = idx[still]
            r_tot[move] += r[still]
            x_i[move] = (x[move] + (1 + self.overshoot) * r_tot[move]).clamp_(0, 1)
            active[idx[~still]] = False
        return x_i

    def _other_classes(self, logits: Tensor, y: Tensor) -> Tensor:
        """``[B, K-1]``: the highest-scoring classes other than ``y``."""
        k = min(self.candidates, logits.shape[1]) - 1
        if k < 1:
            raise ValueError(f"DeepFool needs a model with >= 2 classes, got {logits.shape[1]}")
        masked = logits.scatter(1, y[:, None], float("-inf"))
        return masked.topk(k, dim=1).indices

    def _step(self, model: nn.Module, x: Tensor, y: Tensor, others: Tensor) -> tuple[Tensor, Tensor]:
        """One linearisation at ``x``: the step ``r`` per example and whether it is still classified
        as ``y`` (examples already fooled get no step)."""
        xa = x.clone().requires_grad_(True)
        logits = model(xa)
        still = logits.argmax(1) == y
        classes = torch.cat([y[:, None], others], dim=1)  # [B, K]
        grads = []
        for j in range(classes.shape[1]):
            out = logits.gather(1, classes[:, j : j + 1]).sum()
            grads.append(torch.autograd.grad(out, xa, retain_graph=j + 1 < classes.shape[1])[0])
        with torch.no_grad():
            g = torch.stack(grads, dim=1)  # [B, K, ...]
            w = g[:, 1:] - g[:, :1]
            f = logits.gather(1, classes[:, 1:]) - logits.gather(1, classes[:, :1])  # [B, K-1]
            w_norm = _flat_norm(w).clamp_(min=1e-12)
            dist = f.abs() / w_norm
            best = dist.argmin(dim=1)
            rows = torch.arange(len(x), device=x.device)
            w_l = w[rows, best]
            scale = (dist[rows, best] + 1e-4) / w_norm[rows, best]
            r = w_l * scale.view(-1, *([1] * (x.dim() - 1)))
        return r, still
