"""Compaction of a :class:`~robustprune.models.graph.GraphNet`: the same graph, physically smaller.

A graph-masked network is compacted in three steps, on a copy:

1. each mask's eval-mode multiplier ``s`` (``eval_scale()``: 0 for a pruned unit, BBD's E[π]
   for a kept one) is folded into every mask site of its group: a batch norm site becomes
   ``γ·s, β·s`` (``s·BN(x)`` exactly), a conv or linear site ``W·s, b·s``. The masks are removed;
   the network now computes what the masked one computed, and every pruned unit is exactly 0 at
   every producer of its group;
2. Torch-Pruning's dependency graph removes the pruned units: the producers' output channels,
   their batch norms' entries, and the input channels of every layer that reads them (the next
   conv, a residual partner, the classifier after a flatten). Removing a unit that is exactly 0
   everywhere changes nothing, so the logits stay equal (up to float rounding of the fold);
   Groups that are not ``removable`` keep their full width: masks before a batch norm are folded
   in step 1 like the others, and an input-side mask (the ``anp-vs`` placement) stays as a fixed
   multiplier ``in_scale`` on its layer's input, so its latent map is still the masked input;
3. each slot keeps ``kept``, the original indices of its surviving units, so latent maps are
   scattered back to the original widths (a removed unit's masked output was 0); an input-side
   slot's ``kept`` are the input columns its layer still has. A network's own latent maps
   (``own_latents``) would come out at the compacted widths, so the compacted copy reads its
   sites' maps instead.

The result is again a ``GraphNet`` of the same classes (a torchvision ResNet stays a torchvision
ResNet with narrower layers). What it takes to rebuild it from the dense architecture is
:func:`graph_spec`, a JSON-ready list of every resized layer's widths plus each slot's kept
units; :func:`apply_graph_spec` resizes a freshly built dense network to it, after which the saved
weights load. A group whose units are all pruned keeps one unit (its scale is 0, so the output
is still exact and no layer has zero width).

>>> small = compact_graph(model)                 # model: a GraphNet with BBD masks, eval mode
>>> spec = graph_spec(small)                     # -> compact.json
>>> apply_graph_spec(dense_graphnet, spec).load_state_dict(small.state_dict())
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.models.base import model_mode
from robustprune.models.graph import GraphNet, GraphSlot, dependency_graph, trace_input
from robustprune.sparsity.fold import D, kept_units, slot_scale

__all__ = ["apply_graph_spec", "compact_graph", "graph_spec"]

_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm


def _slots(model: GraphNet) -> list[GraphSlot]:
    return [s for s in model.slots if isinstance(s, GraphSlot)]


@torch.no_grad()
def _scale_site(module: nn.Module, scale: Tensor) -> None:
    """Multiply a site's output channels by ``scale`` (float64) inside its parameters."""
    params: list[Tensor | None]
    if isinstance(module, (_BN, _CONV, nn.Linear)):
        params = [module.weight, module.bias]
    else:  # a GraphNet only places sites on these
        raise ValueError(f"cannot fold a mask into {type(module).__name__}")
    for p in params:
        if isinstance(p, Tensor):
            s = scale.to(p.device).view(-1, *([1] * (p.dim() - 1)))
            p.copy_((p.to(D) * s).to(p.dtype))


@torch.no_grad()
def compact_graph(model: GraphNet) -> GraphNet:
    """A physically smaller copy of ``model`` (eval mode, no masks) computing its eval-mode logits.

    ``model`` itself is not changed. A mask that breaks the UnitMask contract raises ``ValueError``
    naming it. Checking the logits is the caller's part
    (:func:`robustprune.sparsity.compact.compact_model` does it).
    """
    small = copy.deepcopy(model).eval()
    modules = dict(small.net.named_modules())
    keeps: list[Tensor] = []
    for i, (slot, group) in enumerate(zip(_slots(small), small.groups, strict=True)):
        scale, active = slot_scale(f"slots.{i}", slot)
        if slot.mask is not None:
            if group.side == "in":  # kept as a multiplier on the input, so the latent map stays the masked input
                slot.in_scale = scale.to(slot.kept.device, torch.float32)
            else:
                for site in group.sites:
                    _scale_site(modules[site], scale)
            slot.mask = None
        keeps.append(kept_units(active & (scale != 0)) if group.removable else torch.arange(slot.units))
    ref = next(iter(small.parameters()), None)
    example = trace_input(small.input_shape, None if ref is None else ref.device)
    dg = dependency_graph(small.net, example)
    # an input-side slot's units are its linear layer's input columns: follow which original columns
    # survive when another group's pruning removes some of them (a flatten after a pruned conv)
    alive = {modules[g.sites[0]]: list(range(s.units)) for s, g in zip(_slots(small), small.groups, strict=True)
             if g.side == "in"}
    for slot, group, keep in zip(_slots(small), small.groups, keeps, strict=True):
        drop = sorted(set(range(slot.units)) - {int(k) for k in keep})
        if drop:
            root = modules[group.producers[0]]
            pruner = dg.get_pruner_of_module(root)
            pg = dg.get_pruning_group(root, pruner.prune_out_channels, idxs=drop)
            for dep, idxs in pg:
                cols = alive.get(dep.target.module)
                if cols is not None and not dg.is_out_channel_pruning_fn(dep.handler):
                    gone = {int(i) for i in idxs}
                    cols[:] = [c for i, c in enumerate(cols) if i not in gone]
            pg.prune()
        slot.kept = keep.to(slot.kept.device)
    for slot, group in zip(_slots(small), small.groups, strict=True):
        if group.side == "in":
            slot.kept = torch.tensor(alive[modules[group.sites[0]]], dtype=torch.long, device=slot.kept.device)
            if slot.in_scale is not None:
                slot.in_scale = slot.in_scale[slot.kept]
    # the network's own latent maps would come out at the compacted widths: read the sites instead,
    # scattered back to the original widths
    small.own_latents = False
    small.latent_count = sum(len(g.sites) for g in small.groups)
    return small


def _widths(module: nn.Module) -> dict[str, Any] | None:
    if isinstance(module, _CONV):
        return {"type": "conv", "in": module.in_channels, "out": module.out_channels, "groups": module.groups}
    if isinstance(module, nn.Linear):
        return {"type": "linear", "in": module.in_features, "out": module.out_features}
    if isinstance(module, _BN):
        return {"type": "bn", "units": module.num_features}
    return None


def graph_spec(model: GraphNet) -> dict[str, Any]:
    """JSON-ready: every conv, linear and batch-norm layer's widths (``layers``, by module name inside
    ``model.net``) and each slot's kept units (``kept``): with the dense architecture, enough to
    rebuild ``model``'s shapes (:func:`apply_graph_spec`)."""
    layers = {n: w for n, m in model.net.named_modules() if n and (w := _widths(m)) is not None}
    return {"layers": layers, "kept": [s.kept.tolist() for s in _slots(model)],
            "groups": model.describe()["groups"]}


def _empty(p: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
    return None if p is None else torch.zeros(shape, dtype=p.dtype, device=p.device)


@torch.no_grad()
def _resize(name: str, module: nn.Module, want: dict[str, Any]) -> None:
    have = _widths(module)
    if have is None or have["type"] != want.get("type"):
        raise ValueError(f"compact description: layer {name!r} is a {type(module).__name__}, "
                         f"the description says {want.get('type')!r}")
    if have == want:
        return
    for key in want:
        if key != "type" and (isinstance(want[key], bool) or not isinstance(want[key], int) or want[key] < 1):
            raise ValueError(f"compact description: layer {name!r} needs a positive int {key!r}, got {want[key]!r}")
    if isinstance(module, _CONV):
        module.in_channels, module.out_channels, module.groups = want["in"], want["out"], want["groups"]
        shape = (want["out"], want["in"] // want["groups"], *module.weight.shape[2:])
        module.weight = nn.Parameter(torch.zeros(shape, dtype=module.weight.dtype, device=module.weight.device))
        if module.bias is not None:
            module.bias = nn.Parameter(torch.zeros(want["out"], dtype=module.bias.dtype, device=module.bias.device))
    elif isinstance(module, nn.Linear):
        module.in_features, module.out_features = want["in"], want["out"]
        module.weight = nn.Parameter(torch.zeros(want["out"], want["in"], dtype=module.weight.dtype,
                                                 device=module.weight.device))
        if module.bias is not None:
            module.bias = nn.Parameter(torch.zeros(want["out"], dtype=module.bias.dtype, device=module.bias.device))
    else:
        assert isinstance(module, _BN)
        n = want["units"]
        module.num_features = n
        for key in ("weight", "bias"):
            p = getattr(module, key)
            if p is not None:
                setattr(module, key, nn.Parameter(torch.zeros(n, dtype=p.dtype, device=p.device)))
        for key in ("running_mean", "running_var"):
            b = getattr(module, key)
            if b is not None:
                setattr(module, key, _empty(b, (n,)))


def apply_graph_spec(model: GraphNet, spec: dict[str, Any]) -> GraphNet:
    """Resize ``model`` (a dense ``GraphNet`` of the same architecture, no masks) in place to the
    widths of :func:`graph_spec`; returns it, ready for ``load_state_dict``. A description that does
    not fit (unknown layer, other layer type, wrong number of slots) raises ``ValueError`` naming
    the mismatch."""
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), dict) or not isinstance(spec.get("kept"), list):
        raise ValueError("compact description: 'graph' must hold 'layers' (a mapping) and 'kept' (a list)")
    modules = dict(model.net.named_modules())
    for name, want in spec["layers"].items():
        if name not in modules:
            raise ValueError(f"compact description names layer {name!r}, which {type(model.net).__name__} lacks")
        if not isinstance(want, dict):
            raise ValueError(f"compact description: layer {name!r} must be a mapping, got {want!r}")
        _resize(name, modules[name], want)
    slots = _slots(model)
    if len(spec["kept"]) != len(slots):
        raise ValueError(f"compact description has {len(spec['kept'])} slots, the model {len(slots)}")
    for i, (slot, kept) in enumerate(zip(slots, spec["kept"], strict=True)):
        if (not isinstance(kept, list) or not kept
                or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < slot.units for k in kept)):
            raise ValueError(f"compact description: slot {i} kept units must be indices below {slot.units}, "
                             f"got {kept!r}")
        slot.kept = torch.tensor(kept, dtype=torch.long, device=slot.kept.device)
        if model.groups[i].side == "in":  # filled by load_state_dict
            slot.in_scale = torch.ones(len(kept), device=slot.kept.device)
    model.own_latents = False  # as compact_graph leaves it
    model.latent_count = sum(len(g.sites) for g in model.groups)
    with model_mode(model):  # resized layers must still fit together
        ref = next(iter(model.parameters()), None)
        try:
            model(torch.zeros(1, *model.input_shape, device=None if ref is None else ref.device))
        except RuntimeError as e:
            raise ValueError(f"compact description does not give a consistent network: {e}") from e
    return model
