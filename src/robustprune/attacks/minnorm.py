"""The contract of minimum-norm attacks (STYLE example 3): per-example norms plus a success mask.

Fixed-budget attacks (:class:`~robustprune.attacks.base.Attack`) answer "is the model still right
inside the ε-ball?"; minimum-norm attacks (DeepFool, C&W-L2) answer "how far is the nearest
adversarial example?". They are a different type: ``attack(model, x, y) -> MinNormResult``.

:meth:`MinNormAttack.__call__` wraps the subclass's :meth:`MinNormAttack.perturb` and guarantees:

- inputs are validated as for every attack (floating ``x`` in [0, 1], int64 labels);
- the model runs in eval mode (by default) and every module's flag is restored, also on errors;
  parameters' ``.grad`` are left untouched;
- ``success`` is *checked*, not claimed: one eval forward pass on the candidate decides whether it
  is misclassified. Where it is not, ``x_adv`` is ``x`` itself and ``norms`` is ``inf`` (no
  adversarial example found), so a failure can never pass for a small perturbation;
- a point that is already misclassified is its own adversarial example: ``x_adv = x``, norm 0;
- ``norms`` are measured by the base in the attack's ``norm`` (``"l2"`` for DeepFool and C&W,
  ``"linf"``/``"l2"``/``"l1"`` for FMN), never taken from the subclass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from robustprune.attacks.base import check_inputs, grads_untouched, model_mode


@dataclass(frozen=True)
class MinNormResult:
    """What a minimum-norm attack returns for a batch.

    Attributes:
        x_adv: adversarial examples ``[B, ...]``; ``x`` itself where the attack failed.
        norms: ``[B]`` norm of ``x_adv - x`` in the attack's ``norm`` (L2 for DeepFool and C&W);
            ``inf`` where the attack failed, 0 for points the model already misclassifies.
        success: ``[B]`` bool, the model misclassifies ``x_adv`` (checked by an eval forward pass).
    """

    x_adv: Tensor
    norms: Tensor
    success: Tensor

    def __len__(self) -> int:
        return int(self.success.shape[0])


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """``ValueError`` naming ``value`` unless it is a finite number > 0 (or >= 0)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


#: the norms a minimum-norm attack may minimise
MIN_NORMS = ("linf", "l2", "l1")


def check_norm(norm: str, allowed: tuple[str, ...] = MIN_NORMS) -> str:
    """``ValueError`` naming ``norm`` unless it is one of ``allowed``."""
    if norm not in allowed:
        raise ValueError(f"norm must be one of {allowed}, got {norm!r}")
    return norm


def l2_norms(delta: Tensor) -> Tensor:
    """Per-example L2 norm ``[B]`` of a batch of perturbations."""
    return delta.flatten(1).norm(dim=1)


def lp_norms(delta: Tensor, norm: str) -> Tensor:
    """Per-example ``norm`` (``"linf"``, ``"l2"`` or ``"l1"``) ``[B]`` of a batch of perturbations.

    >>> lp_norms(torch.tensor([[3.0, -4.0]]), "linf"), lp_norms(torch.tensor([[3.0, -4.0]]), "l1")
    (tensor([4.]), tensor([7.]))
    """
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l1":
        return flat.abs().sum(1)
    raise ValueError(f"norm must be one of {MIN_NORMS}, got {norm!r}")


class MinNormAttack:
    """Base class of the minimum-norm attacks: ``attack(model, x, y) -> MinNormResult``.

    Subclasses implement :meth:`perturb` (return a candidate ``x_adv`` per example; failures may
    return anything) and extend :meth:`params`. ``norm`` is the norm the attack minimises and
    the base measures: L2 by default (Guo et al.'s r₂); FMN sets it per instance.

    Args:
        eval_mode: attack the eval-mode model (default ``True``).

    >>> class Stay(MinNormAttack):
    ...     def perturb(self, model, x, y):
    ...         return x
    >>> Stay().params()
    {'name': 'stay', 'norm': 'l2', 'eval_mode': True}
    """

    name: str = ""
    #: the version of the attack's code: bump it in the change that alters the examples it finds, and
    #: ``compare`` makes every card that ran it again (``eval.card.attack_version``, ``robustprune.records``)
    code_version: ClassVar[int] = 1
    norm: str = "l2"

    def __init__(self, *, eval_mode: bool = True) -> None:
        self.eval_mode = bool(eval_mode)

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Candidate adversarial examples for ``x``; ``__call__`` checks and measures them."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> MinNormResult:
        check_inputs(x, y)
        x = x.detach()
        with model_mode(model, eval_mode=self.eval_mode), grads_untouched(model):
            with torch.enable_grad():
                cand = self.perturb(model, x, y)
            cand = cand.detach().to(x.dtype).clamp(0, 1)
            with torch.no_grad():
                success = model(cand).argmax(1) != y
        keep = success.view(-1, *([1] * (x.dim() - 1)))
        x_adv = torch.where(keep, cand, x)
        failed = torch.full_like(success, math.inf, dtype=x.dtype)
        norms = torch.where(success, lp_norms(x_adv - x, self.norm), failed)
        return MinNormResult(x_adv=x_adv, norms=norms, success=success)

    def params(self) -> dict[str, Any]:
        """JSON-able description of the attack for result cards."""
        name = self.name or type(self).__name__.lower()
        return {"name": name, "norm": self.norm, "eval_mode": self.eval_mode}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({inner})"
