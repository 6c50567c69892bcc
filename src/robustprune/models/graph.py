"""Mask slots for any ``nn.Module``, found from its traced graph (Torch-Pruning's dependency graph).

The registered models place their :class:`~robustprune.models.base.MaskSlot` modules by hand. A
network that robustprune did not write (a torchvision ResNet, a WideResNet from elsewhere) gets
its slots here instead:

1. the network is traced once on an example input and Torch-Pruning's ``DependencyGraph`` groups
   the output units (conv output channels, linear outputs) that must be removed together: the
   layers added by a residual connection, the batch norm after a conv, a depthwise conv that
   follows its input channels. One group is one set of prunable units, so one mask;
2. in each group, every layer that *produces* those units (a conv or linear layer whose outputs are
   in the group) is a mask *site*: the mask multiplies the producer's output, or the output of the
   batch norm that directly follows it. With every producer masked, a pruned unit is exactly 0
   everywhere the group's channels flow (a residual sum of zeros is zero), so removing it is
   exact (see :mod:`robustprune.sparsity.graph_compact`);
3. :class:`GraphNet` wraps the network in robustprune's model contract: ``model(x)`` gives the
   logits, ``model(x, features=True)`` also the masked outputs at every site (the latent maps of
   ANP-VS's vulnerability), and ``mask_slots(model)`` lists one :class:`GraphSlot` per group, in
   forward order, so every method and metric that fills or reads mask slots works unchanged.

A group is left without a mask (listed in :attr:`GraphNet.skipped` with the reason) when removing
its units could not be exact: a normalisation layer that is not directly after a producer (it
would turn a zero channel into a constant), a group-wise normalisation (GroupNorm, LayerNorm),
a layer or parameter type Torch-Pruning cannot tell us about, or channels mapped through a
concatenation so that a site sees only part of the group. The logits' layer is never masked.

>>> model = GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=(3, 32, 32))
>>> len(mask_slots(model)), model.latent_count      # 12 groups (5 residual), 20 mask sites
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch_pruning as tp
from torch import Tensor, nn

from robustprune.models.base import MaskSlot, SlotKind, model_mode

PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)
BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class UnitGroup:
    """One set of coupled prunable units: ``units`` channels produced by every layer in
    ``producers`` (module names inside the wrapped network); ``sites`` are where the mask
    multiplies (each producer, or the batch norm right after it), in forward order."""

    units: int
    kind: SlotKind
    producers: tuple[str, ...]
    sites: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"units": self.units, "kind": self.kind, "producers": list(self.producers), "sites": list(self.sites)}


class GraphSlot(MaskSlot):
    """A mask slot that acts at one or more sites of a wrapped network (forward hooks).

    With one site the installed mask multiplies that site's output directly (as a hand-placed
    :class:`MaskSlot` would). With several sites (a residual group) the mask's multiplier is drawn
    once per forward pass, ``mask(ones[B, units])``, and every site is multiplied by it, so all
    producers of a channel see the same sample. After compaction (``mask`` is ``None``) the buffer
    ``kept`` lists the original indices of the units still present, so latent maps can be scattered
    back to the full width (a removed unit's masked output was exactly 0).
    """

    def __init__(self, units: int, kind: SlotKind, sites: Sequence[str]) -> None:
        super().__init__(units, kind)
        self.sites = tuple(sites)
        self.kept: Tensor
        self.register_buffer("kept", torch.arange(units), persistent=False)
        self._z: Tensor | None = None
        self._feats: list[Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.mask is None:
            return x
        if len(self.sites) == 1:
            return self.mask(x)
        if self._z is None or self._z.shape[0] != x.shape[0]:
            self._z = self.mask(x.new_ones(x.shape[0], self.units))
        z = self._z
        return x * z.reshape(*z.shape, *([1] * (x.dim() - 2))).to(x.dtype)

    def at_site(self, out: Tensor) -> Tensor:
        """What a site's forward hook returns: the masked output (also recorded as a latent map)."""
        out = self(out)
        if self._feats is not None:
            self._feats.append(self.full_width(out))
        return out

    def full_width(self, x: Tensor) -> Tensor:
        """A copy of ``x`` with its unit axis scattered back to ``units`` entries (zeros where removed).
        Always a copy: a later in-place op of the network (torchvision's ``ReLU(inplace=True)``)
        must not change a recorded latent map."""
        if x.shape[1] == self.units:
            return x.clone()
        full = x.new_zeros(x.shape[0], self.units, *x.shape[2:])
        return full.index_copy(1, self.kept.to(x.device), x)

    def extra_repr(self) -> str:
        return f"units={self.units}, kind={self.kind}, sites={list(self.sites)}"


class _SiteHook:
    """A forward hook that applies ``slot`` at one site (a callable object rather than a closure, so
    ``copy.deepcopy`` of the model points the copy's hooks at the copy's slots)."""

    def __init__(self, slot: GraphSlot) -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: Any, out: Tensor) -> Tensor:
        return self.slot.at_site(out)


def output_layers(net: nn.Module, example: Tensor) -> list[nn.Module]:
    """The conv/linear layers whose output *is* the network's output (the logits' layer), found by
    running ``net`` once and comparing storage."""
    outs: dict[int, Tensor] = {}

    def record(mod: nn.Module, args: Any, out: Any) -> None:
        outs[id(mod)] = out

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, PRODUCERS)]
    try:
        with model_mode(net), torch.no_grad():
            y = net(example)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(y, Tensor):
        raise ValueError(f"{type(net).__name__} returns {type(y).__name__}, not a tensor of logits; "
                         "wrap it so that forward returns the logits")
    found = [m for m in net.modules() if id(m) in outs and isinstance(outs[id(m)], Tensor)
             and outs[id(m)].data_ptr() == y.data_ptr() and outs[id(m)].numel() == y.numel()]
    return found


def trace_input(shape: Sequence[int], device: torch.device | None = None) -> Tensor:
    """The input a network is traced on: one uniform [0, 1] example from a fixed seed (the global
    RNG is left alone, so building a model draws nothing from it)."""
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(0))
    return x if device is None else x.to(device)


def dependency_graph(net: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``net`` traced on ``example`` in eval mode. (Layers to
    leave alone are passed when asking for groups, not here: ignoring the logits' layer while
    tracing made Torch-Pruning 1.6 merge its 10 outputs into the last residual group.)"""
    with model_mode(net), torch.enable_grad():  # Torch-Pruning traces through autograd
        return tp.DependencyGraph().build_dependency(net, example_inputs=example, verbose=False)


def _out_units(module: nn.Module) -> int:
    """Output channels of a conv, output features of a linear layer."""
    n = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
    return int(cast(int, n))


def _is_full(idxs: Any, n: int) -> bool:
    return [int(i) for i in idxs] == list(range(n))


def _classify(dg: tp.DependencyGraph, group: Any, names: dict[nn.Module, str]) -> tuple[UnitGroup | None, str]:
    """A Torch-Pruning group as a :class:`UnitGroup`, or ``(None, reason)`` when masking it could not
    be removed exactly."""
    producers: list[nn.Module] = []
    norms: list[nn.Module] = []
    for dep, idxs in group:
        module = dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # a functional op (add, ReLU, flatten, concat): carries zeros through
        out_side = dg.is_out_channel_pruning_fn(dep.handler)
        if isinstance(module, PRODUCERS):
            if out_side:
                if not _is_full(idxs, _out_units(module)):
                    return None, f"{names[module]} contributes only part of the group (concatenation)"
                if module not in producers:
                    producers.append(module)
            continue
        if isinstance(module, BATCH_NORMS):
            if not module.affine or not _is_full(idxs, module.num_features):
                return None, f"batch norm {names[module]} is not affine or sees part of the group"
            if module not in norms:
                norms.append(module)
            continue
        return None, f"{names[module]} ({type(module).__name__}) couples the group's channels"
    if not producers:
        return None, "no conv or linear layer produces these units"
    units_of = {_out_units(p) for p in producers}
    if len(units_of) != 1:
        return None, f"producers of different widths {sorted(units_of)}"
    sites: list[nn.Module] = []
    for p in producers:
        node = dg.module2node[p]
        after = [o.module for o in node.outputs]
        bn = after[0] if len(after) == 1 and after[0] in norms else None
        sites.append(bn if bn is not None else p)
    for bn in norms:
        if bn not in sites:
            return None, f"batch norm {names[bn]} does not directly follow a producer of the group"
    order = {m: i for i, m in enumerate(names)}
    producers.sort(key=order.__getitem__)
    sites.sort(key=order.__getitem__)
    kind: SlotKind = "conv" if isinstance(producers[0], nn.modules.conv._ConvNd) else "fc"
    return UnitGroup(units_of.pop(), kind, tuple(names[p] for p in producers), tuple(names[s] for s in sites)), ""


def find_unit_groups(net: nn.Module, example: Tensor, *, ignore: Sequence[str] = ()) -> tuple[
        list[UnitGroup], list[tuple[tuple[str, ...], str]]]:
    """The prunable unit groups of ``net`` (in forward order of their first site) and the groups left
    unmasked with the reason, as ``(groups, skipped)``; ``skipped`` entries are
    ``(producer names, reason)``.

    ``example`` is one input batch; ``ignore`` names layers whose outputs are never pruned (the layer
    producing the logits is always ignored). An unknown name raises ``ValueError`` naming it.
    """
    names = {m: n for n, m in net.named_modules() if n}
    by_name = {n: m for m, n in names.items()}
    for n in ignore:
        if n not in by_name:
            raise ValueError(f"ignore: {type(net).__name__} has no module {n!r}")
    ignored = [*output_layers(net, example), *(by_name[n] for n in ignore)]
    dg = dependency_graph(net, example)
    groups: list[UnitGroup] = []
    skipped: list[tuple[tuple[str, ...], str]] = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCERS):
        found, reason = _classify(dg, group, names)
        if found is None:
            prods = tuple(sorted({names[d.target.module] for d, _ in group if d.target.module in names
                                  and isinstance(d.target.module, PRODUCERS)
                                  and dg.is_out_channel_pruning_fn(d.handler)}))
            skipped.append((prods, reason))
        else:
            groups.append(found)
    first_use = _call_order(net, example)
    groups.sort(key=lambda g: min(first_use.get(s, 1 << 30) for s in g.sites))
    return groups, skipped


def _call_order(net: nn.Module, example: Tensor) -> dict[str, int]:
    """Module name -> the index of its first call in one eval-mode forward pass."""
    order: dict[str, int] = {}

    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            order.setdefault(name, len(order))
        return hook

    hooks = [m.register_forward_hook(hook_for(n)) for n, m in net.named_modules() if n]
    try:
        with model_mode(net), torch.no_grad():
            net(example)
    finally:
        for h in hooks:
            h.remove()
    return order


class GraphNet(nn.Module):
    """Any network in robustprune's model contract, with one :class:`GraphSlot` per unit group.

    ``net`` maps inputs to logits; ``input_shape`` is one example's shape (``(3, 32, 32)``), used
    once to trace the graph. ``ignore`` names layers whose outputs are never pruned. Attributes:
    ``groups`` (the :class:`UnitGroup` of each slot, same order as ``slots``), ``skipped`` (groups
    left unmasked, with the reason), ``latent_count`` (one latent map per mask site).

    The wrapped network's weights are under ``net.`` in the state dict; masks under ``slots.``.

    >>> model = GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=(3, 32, 32))
    >>> install_bbd(model)                      # one BBD mask per group
    >>> logits, feats = model(x, features=True)
    """

    def __init__(self, net: nn.Module, *, input_shape: Sequence[int], ignore: Sequence[str] = ()) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"input_shape must be positive sizes of one example, got {list(input_shape)}")
        placed = [n for n, m in net.named_modules() if isinstance(m, MaskSlot)]
        if placed:
            raise ValueError(f"{type(net).__name__} already places mask slots by hand ({', '.join(placed[:3])}); "
                             "use it as it is, or replace its slots with nn.Identity() to let the graph place them")
        self.net = net
        self.input_shape = shape
        ref = next(iter(net.parameters()), None)
        example = trace_input(shape, None if ref is None else ref.device)
        groups, skipped = find_unit_groups(net, example, ignore=ignore)
        self.groups = groups
        self.skipped = skipped
        slots = [GraphSlot(g.units, g.kind, g.sites) for g in groups]
        self.slots = nn.ModuleList(slots)
        modules = dict(net.named_modules())
        for slot in slots:
            for site in slot.sites:
                modules[site].register_forward_hook(_SiteHook(slot))
        self.latent_count = sum(len(g.sites) for g in groups)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        feats: list[Tensor] = []
        slots = [s for s in self.slots if isinstance(s, GraphSlot)]
        for s in slots:
            s._z, s._feats = None, feats if features else None
        try:
            logits = self.logits_of(x)
        finally:
            for s in slots:
                s._z, s._feats = None, None
        return (logits, feats) if features else logits

    def logits_of(self, x: Tensor) -> Tensor:
        """The wrapped network's logits (a subclass may put a transform in front)."""
        return cast(Tensor, self.net(x))

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the groups and the skipped ones."""
        return {"groups": [g.as_dict() for g in self.groups],
                "skipped": [{"producers": list(p), "reason": r} for p, r in self.skipped]}
