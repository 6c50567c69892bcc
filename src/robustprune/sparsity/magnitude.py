"""Weight masks for unstructured pruning: magnitude rounds (Guo et al. 2018), ADMM, HYDRA.

A prunable layer (conv or linear) carries a binary buffer ``weight_mask`` of its weight's shape,
so the mask is saved with the weights and ``load_run`` rebuilds it. Pruned weights are kept at
exactly zero by two things together:

- the weight's gradient is multiplied by the mask (a tensor hook), so neither the loss nor the
  optimiser's coupled weight decay moves a pruned weight;
- :func:`apply_masks` re-zeroes pruned weights after every optimiser step, which also cancels
  momentum (SGD) or Adam's running averages accumulated before the weight was pruned.

>>> layers = install_weight_masks(model, keep_first_last=True)
>>> prune_by_magnitude(model, fraction=1 / 3)          # one round: 1/3 of the remaining weights
>>> apply_masks(model)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

MASK_BUFFER = "weight_mask"
Scope = Literal["layer", "global"]
WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
WeightLayer = nn.modules.conv._ConvNd | nn.Linear


def prunable_layers(model: nn.Module, *, keep_first_last: bool = False) -> list[tuple[str, WeightLayer]]:
    """Conv and linear layers in registration (forward) order; without the first and last one
    when ``keep_first_last`` (Guo et al. keep them dense on CIFAR-10).

    Raises ``ValueError`` when nothing is left to prune.
    """
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    if keep_first_last:
        layers = layers[1:-1]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no prunable layer (keep_first_last={keep_first_last})")
    return layers


def masked_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers that carry a ``weight_mask`` buffer, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, MASK_BUFFER, None), Tensor)]


def weight_of(module: nn.Module) -> Tensor:
    """``module.weight`` (torch types a module attribute as ``Tensor | Module``)."""
    return cast(Tensor, module.weight)


def mask_of(module: nn.Module) -> Tensor:
    """The ``weight_mask`` buffer of a masked layer."""
    return cast(Tensor, getattr(module, MASK_BUFFER))


def _mask_grad(module: nn.Module) -> None:
    def hook(grad: Tensor) -> Tensor:
        return grad * getattr(module, MASK_BUFFER)

    weight_of(module).register_hook(hook)


def install_weight_masks(model: nn.Module, *, keep_first_last: bool = False) -> list[str]:
    """Give every prunable layer an all-ones ``weight_mask`` buffer and a gradient-masking hook.

    Idempotent per layer. Returns the names of the masked layers.
    """
    names = []
    for name, module in prunable_layers(model, keep_first_last=keep_first_last):
        if not isinstance(getattr(module, MASK_BUFFER, None), Tensor):
            module.register_buffer(MASK_BUFFER, torch.ones_like(module.weight, dtype=torch.float32))
            _mask_grad(module)
        names.append(name)
    return names


def fresh_state_keys(model: nn.Module) -> set[str]:
    """State-dict keys of masks (and HYDRA scores) that a method adds to a model: ``init_from`` may
    start them fresh when the source run has none."""
    keys = {f"{n}.{MASK_BUFFER}" for n, _ in masked_layers(model)}
    keys |= {n for n, _ in model.named_parameters() if n.endswith(".scores")}
    return keys


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Set every pruned weight to exactly 0 (call after each optimiser step)."""
    for _, m in masked_layers(model):
        weight_of(m).mul_(getattr(m, MASK_BUFFER).to(weight_of(m).dtype))


def _keep_top(values: Tensor, alive: Tensor, keep: int) -> Tensor:
    """Mask keeping the ``keep`` largest ``values`` among ``alive`` entries (ties: lowest index)."""
    mask = torch.zeros_like(alive, dtype=torch.float32).flatten()
    if keep > 0:
        v = torch.where(alive.flatten(), values.flatten().float(), torch.tensor(-math.inf, device=values.device))
        mask[torch.topk(v, keep, sorted=False).indices] = 1.0
    return mask.view_as(alive)


@torch.no_grad()
def prune_by_magnitude(model: nn.Module, *, fraction: float, scope: Scope = "layer") -> list[float]:
    """Remove ``fraction`` of the *remaining* weights with the smallest |w| in every masked layer
    (``scope="layer"``) or over all masked layers at once (``"global"``); updates the masks and
    zeroes the pruned weights. Returns each layer's sparsity afterwards (fractions).

    The number removed from a layer with n alive weights is round(fraction·n), so after t rounds
    a layer keeps ≈ (1 − fraction)^t of its weights.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    layers = [m for _, m in masked_layers(model)]
    if not layers:
        raise ValueError("model has no weight masks; call install_weight_masks first")
    if scope == "layer":
        for m in layers:
            alive = mask_of(m).bool()
            n = int(alive.sum())
            mask_of(m).copy_(_keep_top(weight_of(m).abs(), alive, n - round(fraction * n)))
    else:
        alive = torch.cat([mask_of(m).bool().flatten() for m in layers])
        values = torch.cat([weight_of(m).abs().flatten() for m in layers])
        n = int(alive.sum())
        flat = _keep_top(values, alive, n - round(fraction * n))
        for m, part in zip(layers, torch.split(flat, [weight_of(m).numel() for m in layers]), strict=True):
            mask_of(m).copy_(part.view_as(weight_of(m)))
    apply_masks(model)
    return layer_sparsities(model)


def layer_sparsities(model: nn.Module) -> list[float]:
    """Fraction of masked-out weights per masked layer, in order."""
    return [1.0 - int(mask_of(m).sum()) / mask_of(m).numel() for _, m in masked_layers(model)]


def expected_sparsity(fraction: float, rounds: int) -> float:
    """Layer sparsity after ``rounds`` layer-wise rounds: 1 − (1 − fraction)^rounds."""
    return 1.0 - (1.0 - fraction) ** rounds


@torch.no_grad()
def set_masks(model: nn.Module, masks: Iterable[Tensor]) -> None:
    """Overwrite the masks of the masked layers (in order) and zero the pruned weights."""
    layers = masked_layers(model)
    masks = list(masks)
    if len(masks) != len(layers):
        raise ValueError(f"got {len(masks)} masks for {len(layers)} masked layers")
    for (name, m), mask in zip(layers, masks, strict=True):
        if mask.shape != weight_of(m).shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, weight {tuple(weight_of(m).shape)}")
        mask_of(m).copy_((mask != 0).float())
    apply_masks(model)


def sparsity_mask(values: Tensor, *, sparsity: float, structure: str = "irregular") -> Tensor:
    """The support of the projection onto {at most (1 − sparsity)·n non-zeros}: a 0/1 mask keeping
    the round((1 − sparsity)·n) largest |values| (``"irregular"``), or the largest-L2 filters
    (output rows, dim 0) for ``"filter"`` — the sets of ADMM (Ye et al. 2019) and HYDRA's top-k."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return mask_keeping(values, keep=max(1, round((1.0 - sparsity) * units_of(values, structure))),
                        structure=structure)


def units_of(values: Tensor, structure: str) -> int:
    """How many units a layer's weight ``values`` has: weights (``"irregular"``) or filters / output
    rows (``"filter"``)."""
    if structure == "irregular":
        return values.numel()
    if structure == "filter":
        return values.shape[0]
    raise ValueError(f"structure must be 'irregular' or 'filter', got {structure!r}")


def mask_keeping(values: Tensor, *, keep: int, structure: str = "irregular") -> Tensor:
    """A 0/1 mask of ``values``' shape keeping its ``keep`` largest |values| (``"irregular"``) or
    its ``keep`` largest-L2 filters (output rows, dim 0; ``"filter"``)."""
    if structure == "irregular":
        return _keep_top(values.abs(), torch.ones_like(values, dtype=torch.bool), keep)
    if structure != "filter":
        raise ValueError(f"structure must be 'irregular' or 'filter', got {structure!r}")
    norms = values.detach().flatten(1).norm(dim=1)
    rows = _keep_top(norms, torch.ones_like(norms, dtype=torch.bool), keep)
    return rows.view(-1, *([1] * (values.dim() - 1))).expand_as(values).clone()


def layer_quotas(sizes: list[int], sparsity: float) -> list[int]:
    """How many of each layer's units to prune so that the total is exactly round(sparsity · N)
    (N = sum of ``sizes``), each layer within one unit of sparsity · n and keeping at least one
    unit: the largest-remainder rule (every layer gets ⌊sparsity · n⌋, the layers with the largest
    remainders one more, ties to the earlier layer). Plain per-layer rounding can miss the total
    (four layers of 10 at 0.75: 4 × round(7.5) = 32, not 30).

    >>> layer_quotas([10, 10, 10, 10], 0.75)
    [8, 8, 7, 7]
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"target sparsity must be a fraction in [0, 1), got {sparsity!r}")
    if not sizes or any(n < 1 for n in sizes):
        raise ValueError(f"layer sizes must be >= 1, got {sizes}")
    total = round(sparsity * sum(sizes))
    ideal = [sparsity * n for n in sizes]
    quota = [min(math.floor(x), n - 1) for x, n in zip(ideal, sizes, strict=True)]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(ideal[i] - quota[i]), i))
    for i in by_remainder:  # one more unit to the largest remainders, while the total is short
        if sum(quota) >= total:
            break
        if quota[i] < sizes[i] - 1:
            quota[i] += 1
    for i in reversed(by_remainder):  # float rounding may overshoot: one less to the smallest remainders
        if sum(quota) <= total:
            break
        if quota[i] > 0:
            quota[i] -= 1
    if sum(quota) != total:
        raise ValueError(f"target sparsity {sparsity!r} prunes {total} of {sum(sizes)} units, more than the "
                         f"{len(sizes)} layers can lose while keeping one unit each")
    return quota


def exact_masks(weights: list[Tensor], sparsity: float, *, structure: str) -> list[Tensor]:
    """Masks of ``weights`` (one per layer) pruning exactly round(sparsity · N) of their N units in
    all, each layer its :func:`layer_quotas` share by magnitude (|w|, or filters' L2 norms)."""
    sizes = [units_of(w, structure) for w in weights]
    quotas = layer_quotas(sizes, sparsity)
    return [mask_keeping(w, keep=n - q, structure=structure) for w, n, q in zip(weights, sizes, quotas, strict=True)]


def cut_record(masks: list[Tensor], *, asked: Any, structure: str, rule: str) -> dict[str, Any]:
    """A card's ``sparsity_cut`` of weight masks: asked, reached, units and pruned, counted over
    filters (a filter is pruned when its whole row is 0) or weights."""
    if structure == "filter":
        alive = [mk.flatten(1).any(dim=1) for mk in masks]
        units, pruned = sum(len(a) for a in alive), sum(int((~a).sum()) for a in alive)
    else:
        units, pruned = sum(mk.numel() for mk in masks), sum(int((mk == 0).sum()) for mk in masks)
    return {"asked": asked, "reached": pruned / max(units, 1), "units": units, "pruned": pruned,
            "counted": "filters" if structure == "filter" else "weights", "rule": rule}
