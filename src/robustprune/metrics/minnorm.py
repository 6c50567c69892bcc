"""Minimal-perturbation robustness r₂ (Guo et al., NeurIPS 2018).

``r₂(A)`` = mean over correctly classified test points of ``‖A(x) − x‖₂`` for a minimum-norm
attack ``A`` (DeepFool, C&W-L2), also in the normalised form ``‖δ‖₂ / ‖x‖₂`` (DeepFool's
convention). Points where the attack failed are *counted*, never dropped: the summary reports the
success rate, and the means are over the successful points only — with failures the true mean is
larger, so read ``r2`` together with ``success_rate``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustprune.attacks.minnorm import MinNormAttack, MinNormResult, l2_norms
from robustprune.models.base import model_mode


class MinNormMeter:
    """Accumulates minimum-norm results over batches.

    >>> meter = MinNormMeter()
    >>> for x, y in loader:                                      # doctest: +SKIP
    ...     meter.update(attack(model, x, y), x, clean_correct=model(x).argmax(1) == y)
    >>> meter.summary()["r2"]                                    # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._norms: list[Tensor] = []
        self._x_norms: list[Tensor] = []
        self._success: list[Tensor] = []
        self._correct: list[Tensor] = []

    def update(self, result: MinNormResult, x: Tensor, *, clean_correct: Tensor) -> None:
        """Add one batch: the attack's result on ``x`` and which points were classified correctly."""
        if clean_correct.shape != result.success.shape or len(x) != len(result):
            raise ValueError(f"batch sizes differ: x {len(x)}, result {len(result)}, "
                             f"clean_correct {tuple(clean_correct.shape)}")
        self._norms.append(result.norms.detach().double().cpu())
        self._x_norms.append(l2_norms(x.detach()).double().cpu())
        self._success.append(result.success.detach().cpu())
        self._correct.append(clean_correct.detach().bool().cpu())

    def summary(self) -> dict[str, Any]:
        """``n``, ``n_correct``, ``n_success``/``n_failed`` (over correct points), ``success_rate`` (%),
        ``r2``, ``r2_median`` and ``r2_normalised`` (means over the successful correct points;
        ``None`` when there are none)."""
        if not self._norms:
            return {"n": 0, "n_correct": 0, "n_success": 0, "n_failed": 0, "success_rate": None,
                    "r2": None, "r2_median": None, "r2_normalised": None}
        norms, x_norms = torch.cat(self._norms), torch.cat(self._x_norms)
        success, correct = torch.cat(self._success), torch.cat(self._correct)
        ok = success & correct
        n_correct, n_ok = int(correct.sum()), int(ok.sum())
        d, rel = norms[ok], norms[ok] / x_norms[ok].clamp(min=1e-12)
        return {
            "n": len(norms),
            "n_correct": n_correct,
            "n_success": n_ok,
            "n_failed": n_correct - n_ok,
            "success_rate": 100.0 * n_ok / n_correct if n_correct else None,
            "r2": _mean(d),
            "r2_median": float(d.median()) if n_ok else None,
            "r2_normalised": _mean(rel),
        }


def _mean(t: Tensor) -> float | None:
    return float(t.mean()) if t.numel() else None


def minnorm_robustness(model: nn.Module, loader: Any, attack: MinNormAttack, *,
                       progress: bool = True) -> dict[str, Any]:
    """r₂ of ``model`` under ``attack`` over every batch of ``loader`` (eval mode).

    Returns :meth:`MinNormMeter.summary` plus the attack's parameters and the clean accuracy.

    >>> minnorm_robustness(model, loader, DeepFool())["r2"]     # doctest: +SKIP
    """
    if not isinstance(attack, MinNormAttack):
        raise ValueError(f"attack must be a MinNormAttack (DeepFool, CarliniWagnerL2), got {type(attack).__name__}")
    meter = MinNormMeter()
    with model_mode(model):
        for x, y in tqdm(loader, desc=attack.params()["name"], disable=not progress, leave=False, dynamic_ncols=True):
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            meter.update(attack(model, x, y), x, clean_correct=correct)
    out = meter.summary()
    clean = 100.0 * out["n_correct"] / out["n"] if out["n"] else math.nan
    return {"attack": attack.params(), "clean_acc": clean, **out}


#: the norms a per-example distance can be measured in (``MinNormAttack.norm``)
DISTANCE_NORMS = {"l2": 2.0, "linf": math.inf}


def minimal_distances(model: nn.Module, loader: Any, attack: MinNormAttack, *,
                      progress: bool = True) -> list[float]:
    """Per test point, in ``loader``'s order: the distance from ``x`` to the adversarial example
    ``attack`` found, in the attack's own norm (``attack.norm``, ``"l2"`` or ``"linf"``).

    0 for a point the model already misclassifies; ``inf`` where the attack found none (the
    point counts as robust at every radius). The robust accuracy at radius ε is the share of
    distances above ε (the security curve of Piras et al.'s benchmark).

    >>> d = minimal_distances(model, loader, fmn_linf)                # doctest: +SKIP
    >>> sum(v > 8 / 255 for v in d) / len(d)                          # doctest: +SKIP
    """
    if not isinstance(attack, MinNormAttack):
        raise ValueError(f"attack must be a MinNormAttack, got {type(attack).__name__}")
    norm = getattr(attack, "norm", "l2")
    if norm not in DISTANCE_NORMS:
        raise ValueError(f"attack {attack.params()['name']!r} has norm {norm!r}; known: {', '.join(DISTANCE_NORMS)}")
    p = DISTANCE_NORMS[norm]
    out: list[float] = []
    with model_mode(model):
        for x, y in tqdm(loader, desc=attack.params()["name"], disable=not progress, leave=False, dynamic_ncols=True):
            with torch.no_grad():
                wrong = model(x).argmax(1) != y
            res = attack(model, x, y)
            d = (res.x_adv - x).flatten(1).norm(p=p, dim=1).double()
            d = torch.where(res.success, d, torch.full_like(d, math.inf))
            d = torch.where(wrong, torch.zeros_like(d), d)  # already misclassified: distance 0, whatever the attack did
            out += d.cpu().tolist()
    return out
