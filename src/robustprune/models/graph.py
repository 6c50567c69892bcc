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

Two placements (``placement=``):

- ``"outputs"`` (the default, above): every output unit group, masked after its batch norm, so
  every pruned unit can be removed exactly;
- ``"anp-vs"``: where ANP-VS places its masks on its own networks. A convolution's channels are
  masked on the convolution's output, *before* its batch norm; linear layers are masked on their
  *inputs* (a forward pre-hook; ``side="in"``), every linear layer that reads the output of
  another conv or linear layer (so the network's input pixels are never masked, the
  classifier's inputs are). A linear layer after a flatten thus gets one mask per flattened
  position (LeNet5-Caffe's 800 inputs of fc1). The output groups of linear layers get no mask
  of their own: the next linear layer's input mask covers them. With this placement the
  registered LeNet-300-100, LeNet5-Caffe and VGG-16, their hand-placed slots replaced by
  identities, get the same units in the same order and train to the same parameters as with
  their slots (tests/test_graph_masks.py). Compaction folds every mask exactly but removes the
  units only of groups masked after their batch norm (``removable``): a channel pruned before a
  batch norm still leaves the norm's constant shift, and an input-side mask's units are columns
  of one layer, not units of the graph.

A network that declares its own latent maps (a ``latent_count`` class attribute and
``forward(x, features=True)``, as every registered model does) keeps them: ``features=True``
returns the network's maps, not the mask sites' outputs, so ANP-VS's vulnerability reads the same
maps with either kind of slot.

A group is left without a mask (listed in :attr:`GraphNet.skipped` with the reason) when removing
its units could not be exact: a normalisation layer that is not directly after a producer (it
would turn a zero channel into a constant), a group-wise normalisation (GroupNorm, LayerNorm),
a layer or parameter type Torch-Pruning cannot tell us about, or channels mapped through a
concatenation so that a site sees only part of the group. The logits' layer is never masked.

>>> model = GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=(3, 32, 32))
>>> len(mask_slots(model)), model.latent_count      # 12 groups (5 residual), 20 mask sites
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch_pruning as tp
from torch import Tensor, nn

from robustprune.models.base import MaskSlot, SlotKind, model_mode

PRODUCERS = (nn.modules.conv._ConvNd, nn.Linear)
BATCH_NORMS = (nn.modules.batchnorm._BatchNorm,)
Placement = Literal["outputs", "anp-vs"]
PLACEMENTS: tuple[Placement, ...] = ("outputs", "anp-vs")


@dataclass(frozen=True)
class UnitGroup:
    """One set of coupled prunable units: ``units`` channels produced by every layer in
    ``producers`` (module names inside the wrapped network); ``sites`` are where the mask
    multiplies (each producer, or the batch norm right after it), in forward order.

    ``side="in"`` is an input-side group (the ``anp-vs`` placement): the ``units`` input features of
    the one linear layer named in ``producers`` and ``sites``, masked as they enter it.
    ``removable``: compaction can remove the pruned units exactly (every pruned unit is 0 wherever
    it flows); false for input-side groups and for groups masked before their batch norm, which
    compaction folds but keeps at full width."""

    units: int
    kind: SlotKind
    producers: tuple[str, ...]
    sites: tuple[str, ...]
    side: Literal["out", "in"] = "out"
    removable: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"units": self.units, "kind": self.kind, "producers": list(self.producers), "sites": list(self.sites),
                "side": self.side, "removable": self.removable}


class GraphSlot(MaskSlot):
    """A mask slot that acts at one or more sites of a wrapped network (forward hooks).

    With one site the installed mask multiplies that site's output directly (as a hand-placed
    :class:`MaskSlot` would). With several sites (a residual group) the mask's multiplier is drawn
    once per forward pass, ``mask(ones[B, units])``, and every site is multiplied by it, so all
    producers of a channel see the same sample. After compaction (``mask`` is ``None``) the buffer
    ``kept`` lists the original indices of the units still present, so latent maps can be scattered
    back to the full width (a removed unit's masked output was exactly 0). A compacted input-side
    slot multiplies its layer's input by ``in_scale`` (the mask's eval-mode multiplier on the kept
    columns), so its latent map stays the masked input.
    """

    def __init__(self, units: int, kind: SlotKind, sites: Sequence[str]) -> None:
        super().__init__(units, kind)
        self.sites = tuple(sites)
        self.kept: Tensor
        self.register_buffer("kept", torch.arange(units), persistent=False)
        #: after compaction, an input-side slot's eval-mode multiplier on its kept units (``None`` before)
        self.in_scale: Tensor | None
        self.register_buffer("in_scale", None)
        self._z: Tensor | None = None
        self._feats: list[Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.mask is None:
            return x if self.in_scale is None else x * self.in_scale.to(x.dtype)
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


class _InputSiteHook:
    """A forward pre-hook that applies ``slot`` to a linear layer's input (an input-side site)."""

    def __init__(self, slot: GraphSlot) -> None:
        self.slot = slot

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (self.slot.at_site(args[0]), *args[1:])


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


def _classify(dg: tp.DependencyGraph, group: Any, names: dict[nn.Module, str], *,
              before_norm: bool = False) -> tuple[UnitGroup | None, str]:
    """A Torch-Pruning group as a :class:`UnitGroup`, or ``(None, reason)`` when masking it could not
    be removed exactly. ``before_norm``: sites are the producers themselves even where a batch norm
    follows (the ``anp-vs`` placement; such a group is not ``removable``)."""
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
    removable = True
    if before_norm and norms:
        sites, removable = list(producers), False
    order = {m: i for i, m in enumerate(names)}
    producers.sort(key=order.__getitem__)
    sites.sort(key=order.__getitem__)
    kind: SlotKind = "conv" if isinstance(producers[0], nn.modules.conv._ConvNd) else "fc"
    return UnitGroup(units_of.pop(), kind, tuple(names[p] for p in producers), tuple(names[s] for s in sites),
                     removable=removable), ""


def _reads_a_producer(dg: tp.DependencyGraph, module: nn.Module) -> bool:
    """Whether a conv or linear layer lies upstream of ``module`` in the traced graph (walking back
    through functional ops, norms, pooling and reshapes): false for a layer that reads the input."""
    stack, seen = list(dg.module2node[module].inputs), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, PRODUCERS):
            return True
        stack.extend(node.inputs)
    return False


def _input_groups(dg: tp.DependencyGraph, names: dict[nn.Module, str], input_dims: dict[str, int]) -> list[UnitGroup]:
    """The ``anp-vs`` placement's input-side groups: one per linear layer that reads another
    producer's output as a 2-D ``[batch, features]`` input."""
    found = []
    for module, name in names.items():
        if (isinstance(module, nn.Linear) and module in dg.module2node and input_dims.get(name) == 2
                and _reads_a_producer(dg, module)):
            found.append(UnitGroup(int(module.in_features), "fc", (name,), (name,), side="in", removable=False))
    return found


def find_unit_groups(net: nn.Module, example: Tensor, *, ignore: Sequence[str] = (),
                     placement: Placement = "outputs") -> tuple[list[UnitGroup], list[tuple[tuple[str, ...], str]]]:
    """The prunable unit groups of ``net`` (in forward order of their first site) and the groups left
    unmasked with the reason, as ``(groups, skipped)``; ``skipped`` entries are
    ``(producer names, reason)``.

    ``example`` is one input batch; ``ignore`` names layers whose outputs are never pruned (the layer
    producing the logits is always ignored); ``placement`` is ``"outputs"`` or ``"anp-vs"`` (module
    docstring). An unknown name or placement raises ``ValueError`` naming it.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown mask placement {placement!r}; known: {', '.join(PLACEMENTS)}")
    names = {m: n for n, m in net.named_modules() if n}
    by_name = {n: m for m, n in names.items()}
    for n in ignore:
        if n not in by_name:
            raise ValueError(f"ignore: {type(net).__name__} has no module {n!r}")
    ignored = [*output_layers(net, example), *(by_name[n] for n in ignore)]
    dg = dependency_graph(net, example)
    groups: list[UnitGroup] = []
    skipped: list[tuple[tuple[str, ...], str]] = []
    anp = placement == "anp-vs"
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=PRODUCERS):
        found, reason = _classify(dg, group, names, before_norm=anp)
        if anp and found is not None and found.kind == "fc":
            continue  # masked where the next linear layer reads them
        if found is None:
            prods = tuple(sorted({names[d.target.module] for d, _ in group if d.target.module in names
                                  and isinstance(d.target.module, PRODUCERS)
                                  and dg.is_out_channel_pruning_fn(d.handler)}))
            skipped.append((prods, reason))
        else:
            groups.append(found)
    first_use, input_dims = _call_order(net, example)
    if anp:
        groups += _input_groups(dg, names, input_dims)
    groups.sort(key=lambda g: min(first_use.get(s, 1 << 30) for s in g.sites))
    return groups, skipped


def _call_order(net: nn.Module, example: Tensor) -> tuple[dict[str, int], dict[str, int]]:
    """Module name -> the index of its first call (completion order) in one eval-mode forward pass,
    and module name -> the number of dimensions of its first input."""
    order: dict[str, int] = {}
    dims: dict[str, int] = {}

    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            order.setdefault(name, len(order))
            if args and isinstance(args[0], Tensor):
                dims.setdefault(name, args[0].dim())
        return hook

    hooks = [m.register_forward_hook(hook_for(n)) for n, m in net.named_modules() if n]
    try:
        with model_mode(net), torch.no_grad():
            net(example)
    finally:
        for h in hooks:
            h.remove()
    return order, dims


def declares_latents(net: nn.Module) -> bool:
    """Whether ``net`` follows the model contract's latent maps: a ``latent_count`` class attribute
    and a ``features`` parameter of ``forward``."""
    if not isinstance(getattr(type(net), "latent_count", None), int):
        return False
    try:
        return "features" in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


class GraphNet(nn.Module):
    """Any network in robustprune's model contract, with one :class:`GraphSlot` per unit group.

    ``net`` maps inputs to logits; ``input_shape`` is one example's shape (``(3, 32, 32)``), used
    once to trace the graph. ``ignore`` names layers whose outputs are never pruned; ``placement``
    is ``"outputs"`` or ``"anp-vs"`` (module docstring). Attributes: ``groups`` (the
    :class:`UnitGroup` of each slot, same order as ``slots``), ``skipped`` (groups left unmasked,
    with the reason), ``latent_count`` (one latent map per mask site, or the network's own count
    when it declares its maps: ``own_latents``).

    The wrapped network's weights are under ``net.`` in the state dict; masks under ``slots.``.

    >>> model = GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=(3, 32, 32))
    >>> install_bbd(model)                      # one BBD mask per group
    >>> logits, feats = model(x, features=True)
    """

    #: a subclass that puts a transform in front of the network (``logits_of``) sets this false, so the
    #: network's own ``forward(x, features=True)`` is never called without the transform
    use_own_latents = True

    def __init__(self, net: nn.Module, *, input_shape: Sequence[int], ignore: Sequence[str] = (),
                 placement: Placement = "outputs") -> None:
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
        self.placement = placement
        ref = next(iter(net.parameters()), None)
        example = trace_input(shape, None if ref is None else ref.device)
        groups, skipped = find_unit_groups(net, example, ignore=ignore, placement=placement)
        self.groups = groups
        self.skipped = skipped
        slots = [GraphSlot(g.units, g.kind, g.sites) for g in groups]
        self.slots = nn.ModuleList(slots)
        modules = dict(net.named_modules())
        for slot, group in zip(slots, groups, strict=True):
            for site in slot.sites:
                if group.side == "in":
                    modules[site].register_forward_pre_hook(_InputSiteHook(slot))
                else:
                    modules[site].register_forward_hook(_SiteHook(slot))
        #: the wrapped network declares its own latent maps (``latent_count``, ``forward(x, features)``)
        self.own_latents = self.use_own_latents and declares_latents(net)
        self.latent_count = (int(getattr(type(net), "latent_count", 0)) if self.own_latents
                             else sum(len(g.sites) for g in groups))

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        feats: list[Tensor] = []
        slots = [s for s in self.slots if isinstance(s, GraphSlot)]
        own = features and self.own_latents
        for s in slots:
            s._z, s._feats = None, feats if features and not own else None
        try:
            if own:
                logits, feats = self.net(x, features=True)
            else:
                logits = self.logits_of(x)
        finally:
            for s in slots:
                s._z, s._feats = None, None
        return (logits, feats) if features else logits

    def latent_slots(self) -> list[GraphSlot]:
        """The slot behind each latent map of ``self(x, features=True)``, in order: the order in which
        the mask sites run, seen in one eval-mode forward pass on the traced input (nothing is
        learned or kept). Only for latent maps that are the sites' (``own_latents`` false)."""
        if self.own_latents:
            raise ValueError(f"{type(self.net).__name__} declares its own latent maps; they are not the mask sites'")
        slots = [s for s in self.slots if isinstance(s, GraphSlot)]
        order: list[GraphSlot] = []

        def recorder(slot: GraphSlot) -> Callable[[Tensor], Tensor]:
            method = slot.at_site

            def at_site(out: Tensor) -> Tensor:
                order.append(slot)
                return method(out)
            return at_site

        for s in slots:
            s.at_site = recorder(s)  # type: ignore[method-assign,assignment]  # shadows the method until deleted
        try:
            ref = next(iter(self.parameters()), None)
            with torch.no_grad(), model_mode(self):
                self(trace_input(self.input_shape, None if ref is None else ref.device), features=True)
        finally:
            for s in slots:
                del s.at_site
        return order

    def logits_of(self, x: Tensor) -> Tensor:
        """The wrapped network's logits (a subclass may put a transform in front)."""
        return cast(Tensor, self.net(x))

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the groups and the skipped ones."""
        return {"placement": self.placement, "groups": [g.as_dict() for g in self.groups],
                "skipped": [{"producers": list(p), "reason": r} for p, r in self.skipped]}
