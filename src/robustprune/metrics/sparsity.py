"""Unit and weight sparsity.

- Unit sparsity (ANP's "Sparsity"): 100·(1 − active units / all units) over the installed unit
  masks, a unit being active when its mask says so (BBD: E[π] > threshold).
- Weight sparsity: % of exactly-zero entries among the weights of conv and linear layers.

>>> unit_sparsity(model), weight_sparsity(model), active_units(model), total_units(model)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustprune.models.base import UnitMask, installed_masks, mask_slots

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _as_unit_mask(name: str, mask: nn.Module) -> UnitMask:
    if not isinstance(mask, UnitMask):
        raise ValueError(f"mask {name!r} ({type(mask).__name__}) does not follow the UnitMask contract")
    return mask


def active_units(model: nn.Module) -> list[int]:
    """Active units per mask slot, in forward order. A slot without a mask counts all its units."""
    out = []
    for name, slot in mask_slots(model):
        out.append(slot.units if slot.mask is None else _as_unit_mask(name, slot.mask).n_active())
    return out


def total_units(model: nn.Module) -> list[int]:
    """Units per mask slot (the full widths), in forward order."""
    return [slot.units for _, slot in mask_slots(model)]


def unit_sparsity(model: nn.Module) -> float:
    """100·(1 − Σ active / Σ units) over the installed masks; 0.0 when none is installed.

    Empty slots are left out (not counted as dense), so the number describes the masks only; for
    the registered models masks fill every slot or none.
    """
    masks = [_as_unit_mask(name, m) for name, m in installed_masks(model)]
    total = sum(m.units for m in masks)
    if total == 0:
        return 0.0
    return 100.0 * (1.0 - sum(m.n_active() for m in masks) / total)


def weight_sparsity(model: nn.Module) -> float:
    """% of exactly-zero weights among the ``weight`` tensors of conv and linear layers.

    Only weights are counted (no biases, BN or mask parameters). It is read from each layer's
    ``weight`` attribute, i.e. the raw parameter, or the effective masked weight when
    ``torch.nn.utils.prune`` (weight_orig * weight_mask) is in use. Unit masks are *not* folded
    in: a BBD-pruned unit's weights count as zero only once they are physically zero (after
    compaction or magnitude pruning). Unit-level pruning is measured by :func:`unit_sparsity`.
    Returns 0.0 for a model with no such layer.
    """
    zeros, total = 0, 0
    with torch.no_grad():
        for module in model.modules():
            w = getattr(module, "weight", None)
            if isinstance(module, WEIGHT_LAYERS) and isinstance(w, torch.Tensor):
                zeros += int((w == 0).sum().item())
                total += w.numel()
    return 0.0 if total == 0 else 100.0 * zeros / total


def sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """JSON-ready sparsity of ``model``: unit and weight sparsity plus per-slot unit counts."""
    return {
        "unit_sparsity": unit_sparsity(model),
        "weight_sparsity": weight_sparsity(model),
        "active_units": active_units(model),
        "total_units": total_units(model),
    }
