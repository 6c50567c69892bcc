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


def minimal_distances(model: nn.Module, loader: Any, attack: MinNormAttack, *,
                      progress: bool = True) -> dict[str, Any]:
    """Per-example minimal distances of ``model`` under the minimum-norm ``attack`` (eval mode).

    Returns ``attack`` (its parameters), ``norm``, ``n``, ``clean_acc`` (%), ``correct`` (one bool
    per point, in loader order) and ``distances``: per point, the norm of the attack's adversarial
    example; 0 for a point the model already misclassifies; ``None`` where the attack found none
    (counted as robust at every ε by :func:`security_points`, the optimistic reading, like a PGD
    that fails). ``n_failed`` counts those; ``median`` is the median over correctly classified
    points with failures as +∞ (``None`` if that is +∞ or there are none).

    >>> d = minimal_distances(model, loader, FMN(norm="linf"))          # doctest: +SKIP
    >>> security_points(d["distances"], d["correct"], [0, 0.1, 0.2, 0.3])  # doctest: +SKIP
    """
    if not isinstance(attack, MinNormAttack):
        raise ValueError(f"attack must be a MinNormAttack (DeepFool, CarliniWagnerL2, FMN), "
                         f"got {type(attack).__name__}")
    norms: list[Tensor] = []
    correct: list[Tensor] = []
    with model_mode(model):
        for x, y in tqdm(loader, desc=attack.params()["name"], disable=not progress, leave=False, dynamic_ncols=True):
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            res = attack(model, x, y)
            norms.append(torch.where(ok, res.norms, torch.zeros_like(res.norms)).double().cpu())
            correct.append(ok.cpu())
    # an empty loader gives empty results (torch.cat refuses an empty list)
    d = torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64)
    ok = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    n, n_ok = len(d), int(ok.sum())
    kept = d[ok]
    median = float(kept.median()) if n_ok else None
    return {
        "attack": attack.params(), "norm": attack.norm, "n": n,
        "clean_acc": 100.0 * n_ok / n if n else math.nan,
        "n_failed": int(torch.isinf(kept).sum()),
        "median": median if median is not None and math.isfinite(median) else None,
        "correct": ok.tolist(),
        "distances": [None if math.isinf(v) else v for v in d.tolist()],
    }


def security_points(distances: list[float | None], correct: list[bool], eps_list: list[float]) -> list[dict[str, Any]]:
    """The security curve at each ε: ``robust_acc(ε)`` = % of all points that are correctly
    classified and whose minimal distance is > ε (``None``: no adversarial example found, robust).

    At ε = 0 it is the clean accuracy; it never increases with ε. Against a fixed-budget attack at
    the same ε it is the accuracy of an attack that succeeds wherever the minimum-norm attack's
    point lies inside the ball.

    >>> security_points([0.0, 0.2, None, 0.05], [False, True, True, True], [0, 0.1, 0.3])
    [{'eps': 0, 'robust_acc': 75.0}, {'eps': 0.1, 'robust_acc': 50.0}, {'eps': 0.3, 'robust_acc': 25.0}]
    """
    if len(distances) != len(correct):
        raise ValueError(f"distances and correct differ in length: {len(distances)} vs {len(correct)}")
    n = len(distances)
    d = [math.inf if v is None else float(v) for v in distances]
    out = []
    for eps in eps_list:
        kept = sum(1 for ok, v in zip(correct, d, strict=True) if ok and v > eps)
        out.append({"eps": eps, "robust_acc": 100.0 * kept / n if n else math.nan})
    return out
