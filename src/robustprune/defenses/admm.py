"""ADMM robustness-aware pruning (Ye et al., ICCV 2019)."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from robustprune.defenses.base import Method, MethodContext, PruningTaxonomy, Reference, check_target, cut_rule
from robustprune.defenses.magnitude import robust_or_clean_loss
from robustprune.registry import METHODS
from robustprune.sparsity.magnitude import (
    apply_masks,
    cut_record,
    install_weight_masks,
    layer_quotas,
    mask_keeping,
    mask_of,
    masked_layers,
    prunable_layers,
    set_masks,
    units_of,
    weight_of,
)


@METHODS.register("admm")
class ADMMPruning(Method):
    """Adversarial training with the ADMM split W = Z, then hard pruning and masked retraining.

    Phase 1 (epochs < ``prune_epoch``): loss = AT loss + Σ_l ρ/2·‖W_l − Z_l + U_l‖²; Z starts as
    the projection of the loaded W, U = 0; every ``admm_every`` epochs Z ← Proj_S(W + U),
    U ← U + W − Z and ρ ← ``rho_growth``·ρ (1.3, the reference's multi_rho). Phase 2 (from epoch
    ``prune_epoch``): W ← Proj_S(W), the support becomes a fixed mask (buffer ``weight_mask``,
    gradients masked, re-applied after every step) and training continues under the AT loss.
    S_l keeps at most (1 − s_l)·|W_l| non-zeros (``structure="irregular"``) or that fraction of
    filters/output rows by L2 norm (``"filter"``). ``sparsity`` is one ratio for every prunable
    layer (default 0.8) or a dict {layer name: ratio} (other layers stay dense). AT loss:
    [CE(x) + w·CE(x_adv)]/(1 + w), ``adv_weight`` w = 2 as in the ANP-VS table's AT, so the
    comparison with dense AT uses the same loss and attack budget. Z, U and ρ are method state.
    ``target_sparsity`` S (instead of ``sparsity``): the sets keep all but exactly round(S·N) of the
    N units (weights or filters) of the prunable layers, each layer its largest-remainder share
    (``sparsity.magnitude.layer_quotas``: within one unit of S·n, at least one unit kept).
    Not reproduced: the reference's learning-rate reset at each Z/U update (the run's one schedule
    applies); no Z/U update is made at the end of the last ADMM epoch (the hard prune follows).

    >>> method = ADMMPruning(ctx=ctx, sparsity={"conv1": 0.8, "fc1": 0.95}, prune_epoch=4)
    """

    name: ClassVar[str] = "admm"
    apb_name: ClassVar[str | None] = "RADMM"
    needs_init: ClassVar[bool] = True
    reference: ClassVar[Reference | None] = Reference(
        "Adversarial Robustness vs. Model Compression, or Both?",
        ("Shaokai Ye", "Kaidi Xu", "Sijia Liu", "Hao Cheng", "Jan-Henrik Lambrechts", "Huan Zhang", "Aojun Zhou",
         "Kaisheng Ma", "Yanzhi Wang", "Xue Lin"), "ICCV 2019", 2019, "https://arxiv.org/abs/1903.12561")

    @classmethod
    def taxonomy(cls, method_args: dict[str, Any]) -> PruningTaxonomy | None:
        """After training, one shot, unstructured or filters (``structure``), per layer, ADMM solver."""
        structure = "filters" if method_args.get("structure") == "filter" else "unstructured"
        return PruningTaxonomy(pipeline="after", structure=structure, locality="local",
                               criterion="Solver Based LWM (SOLWM)", finetuning="at", iterative=False)

    def __init__(self, *, ctx: MethodContext, sparsity: float | dict[str, float] | None = None,
                 structure: str = "irregular", rho: float = 1e-3, rho_growth: float = 1.3, admm_every: int = 1,
                 prune_epoch: int = 1, keep_first_last: bool = False, adv_weight: float = 2.0,
                 target_sparsity: float | None = None) -> None:
        super().__init__(ctx=ctx)
        self.target_sparsity = check_target(target_sparsity, sparsity=sparsity)
        sparsity = (0.8 if sparsity is None else sparsity) if self.target_sparsity is None else self.target_sparsity
        ratios = sparsity.values() if isinstance(sparsity, dict) else [sparsity]
        bad = [r for r in ratios if not (isinstance(r, int | float) and 0.0 <= r < 1.0)]
        if bad or (isinstance(sparsity, dict) and not sparsity):
            raise ValueError(f"sparsity must be a ratio in [0, 1) or a non-empty dict of them, got {sparsity!r}")
        if structure not in ("irregular", "filter"):
            raise ValueError(f"structure must be 'irregular' or 'filter', got {structure!r}")
        for name, v, ok in (("rho", rho, rho > 0), ("rho_growth", rho_growth, rho_growth >= 1),
                            ("admm_every", admm_every, admm_every >= 1),
                            ("prune_epoch", prune_epoch, prune_epoch >= 0)):
            if not ok:
                raise ValueError(f"bad {name}: {v!r}")
        self.sparsity, self.structure, self.keep_first_last = sparsity, structure, keep_first_last
        self.rho0, self.rho_growth, self.admm_every, self.prune_epoch = rho, rho_growth, admm_every, prune_epoch
        self.adv_weight = adv_weight
        self.rho = rho
        self.Z: dict[str, Tensor] = {}
        self.U: dict[str, Tensor] = {}
        self.pruned = False
        #: what the hard prune removed (asked vs reached), once it has happened
        self.cut: dict[str, Any] | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        names = install_weight_masks(model, keep_first_last=self.keep_first_last)
        if isinstance(self.sparsity, dict):
            unknown = sorted(set(self.sparsity) - set(names))
            if unknown:
                raise ValueError(f"sparsity names unknown layers {unknown}; prunable: {names}")
        return model

    def targets(self, model: nn.Module) -> dict[str, tuple[nn.Module, float]]:
        """{layer name: (module, sparsity ratio)} of the layers ADMM constrains."""
        layers = dict(model.named_modules())
        if isinstance(self.sparsity, dict):
            return {n: (layers[n], float(r)) for n, r in self.sparsity.items()}
        ratio = float(self.sparsity)
        return {n: (m, ratio) for n, m in prunable_layers(model, keep_first_last=self.keep_first_last)}

    def kept_units(self, targets: dict[str, tuple[nn.Module, float]]) -> dict[str, int]:
        """{layer name: units (weights or filters) its sparsity set keeps}: round((1 − ratio)·n), at
        least 1; with ``target_sparsity``, n minus the layer's share of the exact total."""
        sizes = {n: units_of(weight_of(m), self.structure) for n, (m, _) in targets.items()}
        if self.target_sparsity is None:
            return {n: max(1, round((1.0 - r) * sizes[n])) for n, (_, r) in targets.items()}
        quotas = layer_quotas(list(sizes.values()), self.target_sparsity)
        return {n: size - q for (n, size), q in zip(sizes.items(), quotas, strict=True)}

    def project(self, w: Tensor, keep: int) -> Tensor:
        """Euclidean projection of ``w`` onto the layer's sparsity set (``keep`` units kept)."""
        return w * mask_keeping(w, keep=keep, structure=self.structure)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        loss, logs = robust_or_clean_loss(self, model, x, y, adversarial=True, adv_weight=self.adv_weight)
        if not self.pruned and self.Z:
            penalty = cast(Tensor, sum(((weight_of(m) - self.Z[n] + self.U[n]) ** 2).sum()
                                       for n, (m, _) in self.targets(model).items()))
            loss = loss + 0.5 * self.rho * penalty
            logs["admm_penalty"] = penalty.detach()
        return {"weights": loss}, logs

    @torch.no_grad()
    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        targets = self.targets(model)
        keeps = self.kept_units(targets)
        if not self.Z and not self.pruned:  # a fresh run: Z = Proj_S(W), U = 0
            for n, (m, _) in targets.items():
                self.Z[n] = self.project(weight_of(m).detach().clone(), keeps[n])
                self.U[n] = torch.zeros_like(weight_of(m))
        for n, (m, _) in targets.items():  # resumed state comes back on the CPU
            if n in self.Z:
                w = weight_of(m)
                self.Z[n], self.U[n] = self.Z[n].to(w), self.U[n].to(w)
        if epoch >= self.prune_epoch and not self.pruned:
            masks = [mask_keeping(weight_of(m), keep=keeps[n], structure=self.structure)
                     if n in targets else mask_of(m) for n, m in masked_layers(model)]
            set_masks(model, masks)
            self.pruned = True
            self.cut = self.cut_record({n: mk for (n, _), mk in zip(masked_layers(model), masks, strict=True)
                                        if n in targets})

    def cut_record(self, masks: dict[str, Tensor]) -> dict[str, Any]:
        """The hard prune's sparsity, asked and reached, over the constrained layers: filters (output
        rows) for ``structure="filter"``, weights otherwise; the rule is per layer (each layer's ratio),
        or per layer with an exact total (``target_sparsity``)."""
        asked = dict(self.sparsity) if isinstance(self.sparsity, dict) else float(self.sparsity)
        return cut_record(list(masks.values()), asked=asked, structure=self.structure,
                          rule=cut_rule(self.target_sparsity))

    def card_fields(self) -> dict[str, Any]:
        target = {} if self.target_sparsity is None else {"target_sparsity": self.target_sparsity}
        return {**super().card_fields(), **target, "structure": self.structure, "sparsity_cut": self.cut}

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.pruned:
            apply_masks(model)

    @torch.no_grad()
    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        if self.pruned or (epoch + 1) % self.admm_every or epoch + 1 >= self.prune_epoch:
            return {"admm_phase": "retrain" if self.pruned else "admm", "admm_rho": self.rho}
        gap, total = 0.0, 0.0
        targets = self.targets(model)
        keeps = self.kept_units(targets)
        for n, (m, _) in targets.items():
            w = weight_of(m)
            self.Z[n] = self.project(w + self.U[n], keeps[n])
            self.U[n] += w - self.Z[n]
            gap += float(((w - self.Z[n]) ** 2).sum())
            total += float((w**2).sum())
        self.rho *= self.rho_growth
        return {"admm_phase": "admm", "admm_rho": self.rho, "admm_gap": (gap / max(total, 1e-30)) ** 0.5}

    def state_dict(self) -> dict[str, Any]:
        return {"Z": dict(self.Z), "U": dict(self.U), "rho": self.rho, "pruned": self.pruned, "cut": self.cut}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.Z, self.U = dict(state.get("Z", {})), dict(state.get("U", {}))
        self.rho, self.pruned = float(state.get("rho", self.rho0)), bool(state.get("pruned", False))
        self.cut = state.get("cut")

