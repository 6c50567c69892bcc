"""``evaluate()``: clean and robust accuracy over a test set, with latent vulnerability and
sanity checks, and the JSON result card of ``robustprune eval``."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustprune.attacks import Attack, is_stochastic
from robustprune.data import TensorLoader
from robustprune.metrics import VulnerabilityMeter
from robustprune.metrics.vulnerability import latent_active_units
from robustprune.models import model_mode
from robustprune.utils import fault_point


@dataclass
class AttackResult:
    name: str
    params: dict[str, Any]
    correct: float = 0
    total: int = 0
    wall_s: float = 0.0
    vulnerability: VulnerabilityMeter | None = None
    #: per latent map, the units active in eval mode (``metrics.latent_active_units``); None: unknown
    active: list[Tensor | None] | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "params": self.params, "robust_acc": 100.0 * self.correct / max(self.total, 1),
            "n": self.total, "wall_s": self.wall_s,
        }
        if self.vulnerability is not None and self.total:
            v = self.vulnerability
            out["vulnerability"] = {"mean": v.mean(), "per_layer": v.per_layer(),
                                    "per_unit": [u.tolist() for u in v.per_unit()]}
            if self.active is not None:  # the mean over active units only, beside the paper's
                out["vulnerability"].update(v.active_summary(self.active))
        return out


@dataclass
class EvalResult:
    clean_correct: float = 0.0
    total: int = 0
    stochastic: bool = False
    passes: int = 1
    attacks: list[AttackResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def clean_acc(self) -> float:
        return 100.0 * self.clean_correct / max(self.total, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.total, "clean_acc": self.clean_acc, "stochastic": self.stochastic, "passes": self.passes,
            "attacks": [a.summary() for a in self.attacks], "warnings": self.warnings, "wall_s": self.wall_s,
        }


def correct_count(model: nn.Module, x: Tensor, y: Tensor, passes: int) -> Tensor:
    """Per-example correctness, averaged over ``passes`` forward passes (1 for deterministic models)."""
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).float() for _ in range(passes))
    return hits / passes


def evaluate(
    model: nn.Module,
    loader: TensorLoader,
    attacks: list[tuple[str, Attack]],
    *,
    vulnerability: bool = True,
    passes: int = 10,
    progress: bool = True,
) -> EvalResult:
    """Clean and robust accuracy of ``model`` (eval mode) over every batch of ``loader``.

    A point counts as robust only if it is classified correctly both clean and attacked. For a
    model that is random in eval mode, accuracies are averaged over ``passes`` forward passes and a
    warning is recorded for every attack that does not use EOT. Latent vulnerability (the mean
    distance between the latent features of clean and attacked inputs) is accumulated over the
    whole set when the model exposes latent maps (``latent_count`` > 0).
    """
    res = EvalResult(attacks=[AttackResult(name, atk.params()) for name, atk in attacks])
    has_feats = vulnerability and getattr(model, "latent_count", 0) > 0
    t0 = time.perf_counter()
    with model_mode(model):
        active = latent_active_units(model) if has_feats else None
        for r in res.attacks:
            r.active = active
        for i, (x, y) in enumerate(tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True)):
            if i == 0:
                res.stochastic = is_stochastic(model, x)
                res.passes = passes if res.stochastic else 1
            clean_ok = correct_count(model, x, y, res.passes)
            res.clean_correct += clean_ok.sum().item()
            res.total += len(y)
            feats = None
            if has_feats and not res.stochastic:
                with torch.no_grad():
                    feats = model(x, features=True)[1]
            for (_, atk), r in zip(attacks, res.attacks, strict=True):
                ta = time.perf_counter()
                x_adv = atk(model, x, y)
                adv_ok = correct_count(model, x_adv, y, res.passes)
                r.correct += torch.minimum(clean_ok, adv_ok).sum().item()
                r.total += len(y)
                if feats is not None:
                    with torch.no_grad():
                        adv_feats = model(x_adv, features=True)[1]
                    r.vulnerability = r.vulnerability or VulnerabilityMeter()
                    r.vulnerability.update(feats, adv_feats)
                r.wall_s += time.perf_counter() - ta
            fault_point("eval-batch")
    res.wall_s = time.perf_counter() - t0
    res.warnings += sanity_warnings(res)
    for w in res.warnings:
        warnings.warn(w, stacklevel=2)
    return res


def sanity_warnings(res: EvalResult) -> list[str]:
    """STYLE example 9: flag evaluations that cannot be trusted as they stand."""
    out = []
    for r in res.attacks:
        if res.stochastic and r.params.get("eot", 1) < 10 and not r.params.get("transfer"):
            out.append(
                f"model is stochastic in eval mode but attack {r.name!r} uses eot={r.params.get('eot', 1)}; "
                "its robust accuracy is not trustworthy (use eot-pgd with --eot >= 10)"
            )
    white = [r.summary()["robust_acc"] for r in res.attacks if not r.params.get("transfer")]
    black = [r.summary()["robust_acc"] for r in res.attacks if r.params.get("transfer")]
    if white and black and min(black) < min(white):
        out.append(
            f"black-box (transfer) accuracy {min(black):.2f} is below white-box {min(white):.2f}: "
            "the white-box attack is too weak or gradients are masked"
        )
    return out
