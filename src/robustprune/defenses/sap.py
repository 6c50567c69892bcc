"""Stochastic Activation Pruning (SAP; Dhillon et al., ICLR 2018) as a wrapper for any trained model.

After every hidden ReLU output ``h`` (per example, per layer, ``a`` units), SAP draws ``r`` samples
with replacement from ``p_j = |h_j| / Σ_k |h_k|``, zeroes the units never drawn and rescales the
survivors by ``1 / q_j`` with ``q_j = 1 − (1 − p_j)^r`` (the chance that ``j`` is drawn at least
once), so that ``E[SAP(h)] = h``. "SAP-k%" sets ``r = round(k/100 · a)``.

Mechanism: :class:`SAPModel` runs the wrapped model's forward under a ``TorchFunctionMode`` that
intercepts every ``relu`` call (``F.relu``, ``torch.relu``, ``Tensor.relu``, ``nn.ReLU``) and applies
SAP to its output — the models call ReLU functionally, so there is no module to hook, and the
input image and the logits (never ReLU'd) are left alone, as the paper asks. The wrapper holds no
parameters of its own; its ``state_dict`` is the wrapped model's under ``model.``.

SAP is active in eval mode (that is the defense: the model is random at test time), so evaluate it
with EOT attacks and averaged passes (``evaluate()`` detects this). The mask and the ``1/q``
scale are sampled without gradient (stop-gradient through ``q``, Athalye et al.'s numerical fix);
the gradient of the kept units flows through ``h``.

Registered as the test-time defense ``sap`` (options ``pct``, ``mode``): ``robustprune eval RUN
--defense sap:pct=100,mode=fast``, or ``eval: {defense: {name: sap, pct: 100}}`` in a suite.

Modes: ``"exact"`` (multinomial draws, the paper) and ``"fast"`` (independent Bernoulli(``q_j``)
keeps with the exact marginal ``q_j`` — same expectation, no per-draw sampling).

>>> sap_model = SAPModel(model, pct=100.0, mode="fast")        # SAP-100
>>> logits = sap_model.eval()(x)                                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from robustprune.defenses.base import Method
from robustprune.defenses.testtime import TestTimeDefense
from robustprune.registry import TEST_TIME

SAP_MODES = ("exact", "fast")
_RELUS = (F.relu, torch.relu, torch.relu_, F.relu_, Tensor.relu, Tensor.relu_)


def check_sap(pct: float, mode: str) -> None:
    """Validate SAP's arguments; raises ``ValueError`` naming the bad value."""
    if not isinstance(pct, int | float) or isinstance(pct, bool) or not pct > 0 or pct != pct:
        raise ValueError(f"SAP percentage must be a number > 0, got {pct!r}")
    if mode not in SAP_MODES:
        raise ValueError(f"SAP mode must be one of {SAP_MODES}, got {mode!r}")


def keep_probability(p: Tensor, r: int) -> Tensor:
    """``q = 1 − (1 − p)^r`` computed as ``−expm1(r·log1p(−p))`` (exact near p = 0 and p = 1)."""
    return -torch.expm1(r * torch.log1p(-p.clamp(0.0, 1.0)))


def sap_multiplier(h: Tensor, *, pct: float, mode: str = "exact") -> Tensor:
    """The random multiplier ``m_j / q_j`` (0 for pruned units) of one SAP draw on ``h`` [B, ...].

    Computed without gradient. Units with ``p_j = 0`` are never kept; the rescale uses the exact
    marginal ``q_j`` in both modes.
    """
    check_sap(pct, mode)
    with torch.no_grad():
        flat = h.detach().abs().flatten(1).float()
        a = flat.shape[1]
        r = max(1, round(pct / 100.0 * a))
        total = flat.sum(1, keepdim=True)
        p = flat / total.clamp_min(torch.finfo(flat.dtype).tiny)
        q = keep_probability(p, r)
        if mode == "exact":
            kept = torch.zeros_like(p, dtype=torch.bool)
            live = total.squeeze(1) > 0  # all-zero maps stay zero
            if live.any():
                draws = torch.multinomial(p[live], r, replacement=True)
                kept[live] = torch.zeros_like(p[live], dtype=torch.bool).scatter_(1, draws, True)
        else:
            kept = torch.rand_like(p) < q
        scale = torch.where(kept & (q > 0), 1.0 / q.clamp_min(1e-30), torch.zeros_like(q))
    return scale.to(h.dtype).view(h.shape)


class _SAPMode(TorchFunctionMode):
    """Applies SAP to the output of every ReLU call made while the mode is active."""

    def __init__(self, pct: float, mode: str) -> None:
        super().__init__()
        self.pct, self.mode = pct, mode
        self.layers = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _RELUS and isinstance(out, Tensor) and out.dim() >= 2:
            self.layers += 1
            mult = sap_multiplier(out, pct=self.pct, mode=self.mode)
            if func in (torch.relu_, F.relu_, Tensor.relu_) or (kwargs or {}).get("inplace"):
                return out.mul_(mult)
            return out * mult
        return out


class SAPModel(nn.Module):
    """Wrap ``model`` so every hidden ReLU output is pruned stochastically (SAP-``pct``), in train
    and eval mode alike.

    Args:
        model: any network whose hidden activations are ReLU calls (every registered model).
        pct: ``k`` of SAP-k%: draws per layer ``r = round(k/100 · units)`` (default 100).
        mode: ``"exact"`` (multinomial, default) or ``"fast"`` (Bernoulli with the exact marginal).

    ``forward(x, features=...)`` passes through, so latent maps (post-SAP) and ``latent_count``
    still work. ``last_layers`` says how many activation maps the last forward pruned.

    >>> sap = SAPModel(model, pct=100.0, mode="exact")            # doctest: +SKIP
    """

    stochastic: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, pct: float = 100.0, mode: str = "exact") -> None:
        super().__init__()
        check_sap(pct, mode)
        self.model = model
        self.pct, self.mode = float(pct), mode
        self.last_layers = 0
        if hasattr(model, "latent_count"):
            self.latent_count = model.latent_count

    def forward(self, x: Tensor, features: bool = False) -> Any:
        with _SAPMode(self.pct, self.mode) as m:
            out = self.model(x, features=True) if features else self.model(x)
        self.last_layers = m.layers
        return out

    def extra_repr(self) -> str:
        return f"pct={self.pct:g}, mode={self.mode}"

    def describe(self) -> dict[str, Any]:
        """What a result card records about the wrapper."""
        return SAPDefense(pct=self.pct, mode=self.mode).card_fields()["defense"]


@TEST_TIME.register("sap")
class SAPDefense(TestTimeDefense):
    """SAP-``pct`` around any trained model (no fine-tuning); random at test time.

    >>> SAPDefense(pct=100, mode="fast").row_label("at")
    'at + SAP-100 (fast)'
    """

    name: ClassVar[str] = "sap"

    def __init__(self, *, pct: float = 100.0, mode: str = "exact") -> None:
        check_sap(pct, mode)
        super().__init__(pct=pct, mode=mode)
        self.pct, self.mode = pct, mode

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        return SAPModel(model, pct=self.pct, mode=self.mode)

    def label(self) -> str:
        return f"SAP-{self.pct:g}"

    def row_label(self, method: str) -> str:
        return f"{method} + {self.label()}" + ("" if self.mode == "exact" else f" ({self.mode})")

    def tag(self) -> str:
        return f"-sap{self.pct:g}-{self.mode}"

    def card_fields(self) -> dict[str, Any]:
        describe = {"defense": "sap", "pct": float(self.pct), "mode": self.mode,
                    "paper": "Dhillon et al. 2018, Stochastic Activation Pruning"}
        test_time = {**super().card_fields()["test_time"], "label": f"{self.label()} ({self.mode})"}
        return {"defense": describe, "test_time": test_time}

    def settings(self) -> dict[str, Any]:
        """Canonical: ``pct`` as a float and ``mode`` always given (``sap:pct=100`` and
        ``sap:pct=100.0,mode=exact`` are one card)."""
        return {"defense": {"name": self.name, "pct": float(self.pct), "mode": self.mode}}
