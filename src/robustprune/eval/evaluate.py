"""``evaluate()``: clean and robust accuracy over a test set, with latent vulnerability and
sanity checks, and the JSON result card of ``robustprune eval``."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable
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
    #: per batch, what it added (per-example results, vulnerability sums): kept when ``evaluate(record=True)``
    #: for a shard's partial record (:mod:`robustprune.eval.shards`)
    batches: list[dict[str, Any]] | None = None

    @property
    def clean_acc(self) -> float:
        return 100.0 * self.clean_correct / max(self.total, 1)

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.total, "clean_acc": self.clean_acc, "stochastic": self.stochastic, "passes": self.passes,
            "attacks": [a.summary() for a in self.attacks], "warnings": self.warnings, "wall_s": self.wall_s,
        }


def batch_seed(seed: int, index: int) -> int:
    """The seed of the attacks' random stream for the batch whose first example is test point
    ``index`` (an evaluation with ``seed``): a function of the two only, so an example is attacked
    with the same random draws whichever shard holds it (shards are whole batches)."""
    digest = hashlib.sha256(f"robustprune-eval:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


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
    reseed: Callable[[int], None] | None = None,
    start: int = 0,
    record: bool = False,
) -> EvalResult:
    """Clean and robust accuracy of ``model`` (eval mode) over every batch of ``loader``.

    A point counts as robust only if it is classified correctly both clean and attacked. For a
    model that is random in eval mode, accuracies are averaged over ``passes`` forward passes and a
    warning is recorded for every attack that does not use EOT. Latent vulnerability (the mean
    distance between the latent features of clean and attacked inputs) is accumulated over the
    whole set when the model exposes latent maps (``latent_count`` > 0).

    ``reseed(index)``, when given, is called before each batch with the test-set index of its first
    example (the loader's points being test points ``start``, ``start + 1``, ...): the evaluation
    seeds its attacks' random stream there (:func:`batch_seed`), so a batch's draws do not depend on
    the batches before it. ``record`` keeps each batch's contribution in ``EvalResult.batches``.
    Counts are summed in float64, exact in any order (a stochastic model's per-example averages are
    multiples of ``1/passes`` in float32).
    """
    res = EvalResult(attacks=[AttackResult(name, atk.params()) for name, atk in attacks],
                     batches=[] if record else None)
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
            if reseed is not None:
                reseed(start + res.total)
            entry: dict[str, Any] | None = None if res.batches is None else {"start": start + res.total, "attacks": []}
            clean_ok = correct_count(model, x, y, res.passes)
            res.clean_correct += clean_ok.double().sum().item()
            res.total += len(y)
            feats = None
            if has_feats and not res.stochastic:
                with torch.no_grad():
                    feats = model(x, features=True)[1]
            for (_, atk), r in zip(attacks, res.attacks, strict=True):
                ta = time.perf_counter()
                x_adv = atk(model, x, y)
                adv_ok = correct_count(model, x_adv, y, res.passes)
                robust = torch.minimum(clean_ok, adv_ok)
                r.correct += robust.double().sum().item()
                r.total += len(y)
                vul = None
                if feats is not None:
                    with torch.no_grad():
                        adv_feats = model(x_adv, features=True)[1]
                    r.vulnerability = r.vulnerability or VulnerabilityMeter()
                    vul = r.vulnerability.update(feats, adv_feats, record=res.batches is not None)
                r.wall_s += time.perf_counter() - ta
                if entry is not None:  # per-example lists only for a shard's record, not every batch
                    entry["attacks"].append({"robust": robust.tolist(), "vulnerability": vul})
            if entry is not None and res.batches is not None:
                res.batches.append({**entry, "clean": clean_ok.tolist()})
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
