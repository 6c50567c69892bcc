"""Folding a masked model into a :class:`~robustprune.sparsity.compact_net.CompactNet`.

What the masked model computes in eval mode (deterministic soft masks, BN running statistics) is
rewritten as a smaller dense network:

- a pruned unit (``active()`` false, eval scale 0) is removed from the layer that produces it and
  from every layer that reads it;
- the soft eval scale of a surviving unit is multiplied into the producing layer when the mask
  sits right after it (before a latent map), else into the reading layer's input weights;
- an eval-mode batch norm after a conv is folded into the conv (``s = γ/√(σ²+ε)``,
  ``t = β − μ·s``). A channel that is pruned *before* BN (VGG-16) outputs the constant
  ``relu(t)``; that constant is moved into the next layer: into its bias when it has no padding
  (or is linear), else into a per-position bias map (with zero padding a constant input channel
  is not spatially constant at the borders). Constants that are exactly 0 cost nothing;
- a unit that its own mask keeps but whose only reader drops it (LeNet5-Caffe: conv2 channels
  whose 16 flattened positions are all pruned by the 800-way mask; VGG-16: conv13 channels pruned
  by the fc1 input mask) is removed too;
- a layer whose units are all pruned keeps one unit with scale 0 (exact, and no zero-width layer).

The latent maps are scattered back to their original widths. A removed unit gets its true value
when that value is a constant (pruned at or before the map); a unit removed only because a later
mask drops it (LeNet5-Caffe's fc1 outputs, VGG-16's fc1 outputs) is filled with 0 — its
distortion no longer affects anything, and it no longer counts in the vulnerability.

>>> net = compact_model(install_bbd(build_model("lenet5-caffe")).eval())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.base import MaskSlot, UnitMask, model_quirk
from robustprune.sparsity.compact_net import CompactNet
from robustprune.sparsity.magnitude import weight_of

D = torch.float64  # folding precision; the result takes the model's dtype


@dataclass
class Wire:
    """An activation between two compact layers, described in the original (full) width.

    ``kept``: original indices of the units the compact tensor carries, in order. ``const``: the
    value of every removed unit (spatially constant; 0 for kept units). ``exact``: whether a
    removed unit's ``const`` is its true value (false when it was dropped as unused downstream).
    """

    kept: Tensor
    const: Tensor
    exact: Tensor

    @classmethod
    def dense(cls, units: int) -> Wire:
        return cls(torch.arange(units), torch.zeros(units, dtype=D), torch.ones(units, dtype=torch.bool))


def slot_scale(name: str, slot: MaskSlot) -> tuple[Tensor, Tensor]:
    """(eval scale, active) of a slot in float64; an empty slot keeps every unit with scale 1."""
    if slot.mask is None:
        return torch.ones(slot.units, dtype=D), torch.ones(slot.units, dtype=torch.bool)
    mask = slot.mask
    if not isinstance(mask, UnitMask):
        raise ValueError(f"mask {name!r} ({type(mask).__name__}) does not follow the UnitMask contract")
    scale, active = mask.eval_scale().detach().to("cpu", D), mask.active().detach().to("cpu").bool()
    if scale.shape != (slot.units,) or active.shape != (slot.units,):
        raise ValueError(f"mask {name!r}: eval_scale/active must have shape ({slot.units},)")
    if (scale[~active] != 0).any():
        raise ValueError(f"mask {name!r}: pruned units must have eval scale 0 (UnitMask contract)")
    return scale, active


def kept_units(need: Tensor) -> Tensor:
    """Indices of the needed units; unit 0 when none is needed (a zero-width layer is avoided)."""
    idx = need.nonzero().flatten()
    return idx if idx.numel() else torch.zeros(1, dtype=torch.long)


def bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Eval-mode batch norm as ``x·s + t`` (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} without running statistics cannot be folded")
    mean, var = bn.running_mean.detach().to("cpu", D), bn.running_var.detach().to("cpu", D)
    w = torch.ones_like(mean) if bn.weight is None else bn.weight.detach().to("cpu", D)
    b = torch.zeros_like(mean) if bn.bias is None else bn.bias.detach().to("cpu", D)
    s = w / torch.sqrt(var + bn.eps)
    return s, b - mean * s


def out_wire(full: int, keep: Tensor, pruned_const: Tensor, own_active: Tensor) -> Wire:
    """The wire after a layer that keeps ``keep``: units its own mask pruned take ``pruned_const``
    (exact); active units dropped for a downstream reason take 0 (not exact)."""
    kept = torch.zeros(full, dtype=torch.bool)
    kept[keep] = True
    const = torch.where(~kept & ~own_active, pruned_const, torch.zeros(full, dtype=D))
    return Wire(keep, const, kept | ~own_active)


def flatten_wire(wire: Wire, positions: int) -> Wire:
    """The wire of ``flatten(1)`` over a [C, H, W] map with ``positions = H·W`` (channel-major)."""
    step = torch.arange(positions)
    return Wire((wire.kept[:, None] * positions + step).flatten(), wire.const.repeat_interleave(positions),
                wire.exact.repeat_interleave(positions))



def select_wire(wire: Wire, need: Tensor) -> tuple[Wire, Tensor | None]:
    """Drop the carried units ``need`` does not list: (new wire, positions to keep or ``None``)."""
    pick = need[wire.kept]
    if pick.all():
        return wire, None
    pos = kept_units(pick)
    newly_dropped = torch.zeros(len(need), dtype=torch.bool)
    newly_dropped[wire.kept] = True
    newly_dropped[wire.kept[pos]] = False
    const = torch.where(newly_dropped, torch.zeros_like(wire.const), wire.const)
    return Wire(wire.kept[pos], const, wire.exact & ~newly_dropped), pos


def layer_weight(layer: nn.Module) -> Tensor:
    """The weight in float64, times the layer's ``weight_mask`` buffer when it has one (unstructured
    pruning: magnitude, ADMM, HYDRA keep such a buffer; compaction keeps those zeros as they are)."""
    w = weight_of(layer).detach().to("cpu", D)
    mask = getattr(layer, "weight_mask", None)
    return w if not isinstance(mask, Tensor) else w * mask.detach().to("cpu", D)


def conv_size(conv: nn.Conv2d, size: int) -> int:
    padding = cast("tuple[int, ...]", conv.padding)  # conv_tensors rejects a str padding
    return (size + 2 * padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def conv_tensors(conv: nn.Conv2d, wire: Wire, size: int, *, scale: Tensor | None = None,
                 shift: Tensor | None = None, keep: Tensor | None = None) -> dict[str, Tensor | None]:
    """Weight, bias and (when needed) bias map of ``scale·conv(x) + shift`` reading the kept
    channels of ``wire`` and producing the channels ``keep`` (all when ``None``)."""
    k, p, s = conv.kernel_size, conv.padding, conv.stride
    if (conv.groups != 1 or conv.dilation != (1, 1) or k[0] != k[1] or s[0] != s[1] or not isinstance(p, tuple)
            or p[0] != p[1] or conv.padding_mode != "zeros"):
        raise ValueError(f"cannot fold {conv}: only square, ungrouped, undilated, zero-padded convs are supported")
    w = layer_weight(conv)
    n = w.shape[0]
    scale = torch.ones(n, dtype=D) if scale is None else scale
    shift = torch.zeros(n, dtype=D) if shift is None else shift
    b = torch.zeros(n, dtype=D) if conv.bias is None else conv.bias.detach().to("cpu", D)
    bias_map = None
    if (wire.const != 0).any():  # removed input channels with a nonzero constant value
        img = wire.const.view(1, -1, 1, 1).expand(1, -1, size, size)
        cmap = F.conv2d(img, w, stride=s, padding=p)[0]
        if p[0] == 0:  # without padding the contribution is the same at every position
            b = b + cmap[:, 0, 0]
        else:
            bias_map = cmap * scale[:, None, None]
    w = w[:, wire.kept] * scale[:, None, None, None]
    b = b * scale + shift
    keep = torch.arange(n) if keep is None else keep
    return {"weight": w[keep], "bias": b[keep], "bias_map": None if bias_map is None else bias_map[keep]}


class Builder:
    """Collects layer specs and their float64 tensors; :meth:`build` makes the :class:`CompactNet`."""

    def __init__(self) -> None:
        self.layers: list[dict] = []
        self.tensors: dict[str, Tensor] = {}

    def add(self, spec: dict, **tensors: Tensor | None) -> None:
        i = len(self.layers)
        self.layers.append(spec)
        self.tensors.update({f"layers.{i}.{k}": v for k, v in tensors.items() if v is not None})

    def feature(self, wire: Wire) -> None:
        self.add({"op": "feature", "units": len(wire.const), "kept": len(wire.kept),
                  "inexact": int((~wire.exact).sum())}, index=wire.kept, fill=wire.const)

    def conv(self, conv: nn.Conv2d, wire: Wire, size: int, **fold: Tensor | None) -> int:
        """Add a folded conv (see :func:`conv_tensors`); returns its output size."""
        t = conv_tensors(conv, wire, size, **fold)
        bias_map = t["bias_map"]
        hw = None if bias_map is None else list(bias_map.shape[1:])
        out = cast(Tensor, t["weight"]).shape[0]  # conv_tensors always gives a weight
        self.add({"op": "conv", "in": len(wire.kept), "out": out, "kernel": conv.kernel_size[0],
                  "stride": conv.stride[0], "padding": conv.padding[0], "bias_map": hw}, **t)
        return conv_size(conv, size)

    def linear(self, fc: nn.Linear, wire: Wire, *, in_scale: Tensor | None = None, scale: Tensor | None = None,
               keep: Tensor | None = None) -> None:
        """Add ``scale·fc(x·in_scale)`` reading the kept inputs and producing the units ``keep``."""
        w = layer_weight(fc)
        b = torch.zeros(w.shape[0], dtype=D) if fc.bias is None else fc.bias.detach().to("cpu", D)
        if in_scale is not None:
            w = w * in_scale[None, :]
        b = b + w @ wire.const
        w = w[:, wire.kept]
        if scale is not None:
            w, b = w * scale[:, None], b * scale
        if keep is not None:
            w, b = w[keep], b[keep]
        self.add({"op": "linear", "in": w.shape[1], "out": w.shape[0]}, weight=w, bias=b)

    def build(self, dtype: torch.dtype) -> CompactNet:
        net = CompactNet(self.layers)
        net.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in self.tensors.items()})
        return net.to(dtype).eval()


# --------------------------------------------------------------------------------- fold plans
#: the step kinds a model's ``fold_plan`` (``models.base.QUIRKS``) may use; names are submodule paths
STEPS = ("input", "normalize", "conv", "resblock", "relu", "feature", "maxpool", "avgpool", "flatten", "mask",
         "bn", "linear")


@dataclass
class _State:
    """What the fold carries from one plan step to the next."""

    net: Builder
    wire: Wire
    size: int | None  # spatial side of the current map; None once flat
    in_scale: Tensor | None = None  # the scale of a mask that the next linear reads through


def _module(model: nn.Module, name: str) -> Any:
    return model.get_submodule(name)


def _infer_image(model: nn.Module, steps: Sequence[dict[str, Any]]) -> int:
    """The smallest image side giving the flattened width the plan's first linear (or reading mask)
    expects: the convs and pools before ``flatten`` inverted."""
    at = next(i for i, st in enumerate(steps) if st["op"] == "flatten")
    convs = [st for st in steps[:at] if st["op"] == "conv"]
    reader = next(st for st in steps[at:] if st["op"] in ("mask", "linear"))
    width = (_module(model, reader["mask"]).units if reader["op"] == "mask"
             else _module(model, reader["layer"]).in_features)
    side = int(round((width // _module(model, convs[-1]["layer"]).out_channels) ** 0.5))
    for st in reversed(steps[:at]):
        if st["op"] == "maxpool":
            side *= st["kernel"]
        elif st["op"] == "conv":
            conv = _module(model, st["layer"])
            side = (side - 1) * conv.stride[0] + conv.kernel_size[0] - 2 * conv.padding[0]
    return side


def _conv(model: nn.Module, st: dict[str, Any], state: _State) -> None:
    """``conv`` → optional mask slot → optional BN (folded), a ReLU following; a pruned channel
    outputs relu(BN shift). ``reader``: a mask over the flattened output that also drops channels."""
    conv = _module(model, st["layer"])
    s, t = bn_affine(_module(model, st["bn"])) if "bn" in st else (None, None)
    if "mask" not in st:
        assert state.size is not None
        state.size = state.net.conv(conv, state.wire, state.size, scale=s, shift=t)
        state.wire = Wire.dense(conv.out_channels)
        return
    m, a = slot_scale(st["mask"], _module(model, st["mask"]))
    need = a
    if "reader" in st:
        _, ar = slot_scale(st["reader"], _module(model, st["reader"]))
        need = a & ar.view(conv.out_channels, -1).any(1)
    keep = kept_units(need)
    assert state.size is not None
    state.size = state.net.conv(conv, state.wire, state.size, scale=m if s is None else s * m, shift=t, keep=keep)
    state.wire = out_wire(len(a), keep, torch.zeros_like(m) if t is None else t.clamp_min(0), a)


def _resblock(model: nn.Module, st: dict[str, Any], state: _State) -> None:
    """A residual block ``relu(bn2(conv2(relu(mask(bn1(conv1(x)))))) + shortcut(x))``; the mask
    prunes only the inner channels. ``shortcut``: a (conv, BN) sequence, or absent for identity."""
    conv1, conv2 = _module(model, st["conv1"]), _module(model, st["conv2"])
    m, a = slot_scale(st["mask"], _module(model, st["mask"]))
    keep = kept_units(a)
    s1, t1 = bn_affine(_module(model, st["bn1"]))  # mask after bn1: m·(s1·conv1(x) + t1); pruned channels give 0
    cin = conv1.in_channels
    tensors = {f"conv1.{k}": v for k, v in conv_tensors(conv1, Wire.dense(cin), 1, scale=m * s1,
                                                      shift=m * t1, keep=keep).items()}
    s2, t2 = bn_affine(_module(model, st["bn2"]))
    mid = Wire(keep, torch.zeros(len(a), dtype=D), torch.ones(len(a), dtype=torch.bool))
    tensors.update({f"conv2.{k}": v for k, v in conv_tensors(conv2, mid, 1, scale=s2, shift=t2).items()})
    shortcut = _module(model, st["shortcut"]) if "shortcut" in st else None
    if isinstance(shortcut, nn.Sequential):
        conv, bn = cast(nn.Conv2d, shortcut[0]), cast(nn.BatchNorm2d, shortcut[1])
        ss, ts = bn_affine(bn)
        tensors.update({f"shortcut.{k}": v for k, v in conv_tensors(conv, Wire.dense(cin), 1, scale=ss,
                                                                    shift=ts).items()})
    cout = conv2.out_channels
    state.net.add({"op": "resblock", "in": cin, "mid": len(keep), "out": cout, "stride": conv1.stride[0],
                   "shortcut": isinstance(shortcut, nn.Sequential)}, **tensors)
    state.wire = Wire.dense(cout)


def _linear(model: nn.Module, st: dict[str, Any], state: _State) -> None:
    """``linear`` reading through the pending mask scale. ``mask``: a slot right after it (before
    the latent map); ``drop``: a slot after its nonlinearity, read by the next linear — the units it
    prunes are removed here and filled with 0 (not exact), its scale goes into the next linear."""
    fc = _module(model, st["layer"])
    in_scale, state.in_scale = state.in_scale, None
    if "mask" in st:
        m, a = slot_scale(st["mask"], _module(model, st["mask"]))
        keep = kept_units(a)
        state.net.linear(fc, state.wire, in_scale=in_scale, scale=m, keep=keep)
        state.wire = out_wire(len(a), keep, torch.zeros_like(m), a)
    elif "drop" in st:
        m, a = slot_scale(st["drop"], _module(model, st["drop"]))
        keep = kept_units(a)
        state.net.linear(fc, state.wire, in_scale=in_scale, keep=keep)
        state.wire = out_wire(len(a), keep, torch.zeros_like(m), torch.ones_like(a))
        state.in_scale = m
    else:
        state.net.linear(fc, state.wire, in_scale=in_scale)
        state.wire = Wire.dense(fc.out_features)


def _step(model: nn.Module, st: dict[str, Any], state: _State) -> None:
    op, net = st["op"], state.net
    if op == "conv":
        _conv(model, st, state)
    elif op == "resblock":
        _resblock(model, st, state)
    elif op == "linear":
        _linear(model, st, state)
    elif op == "relu":
        net.add({"op": "relu"})
    elif op == "feature":
        net.feature(state.wire)
    elif op == "maxpool":
        net.add({"op": "maxpool", "kernel": st["kernel"]})
        assert state.size is not None
        state.size //= st["kernel"]
    elif op == "avgpool":
        net.add({"op": "avgpool"})
        state.size = None
    elif op == "flatten":
        net.add({"op": "flatten"})
        if state.size is not None:
            state.wire, state.size = flatten_wire(state.wire, state.size * state.size), None
    elif op == "mask":  # a slot on the flat wire, read by the next linear
        m, a = slot_scale(st["mask"], _module(model, st["mask"]))
        if st.get("select"):  # drop the carried units it prunes (a select layer when any)
            before = len(state.wire.kept)
            state.wire, pos = select_wire(state.wire, a)
            if pos is not None:
                net.add({"op": "select", "in": before, "out": len(pos)}, index=pos)
        state.in_scale = m
    elif op == "bn":  # a 1-d BN on the kept units of the wire
        s, t = bn_affine(_module(model, st["layer"]))
        keep = state.wire.kept
        net.add({"op": "affine", "units": len(keep)}, scale=s[keep], shift=t[keep])
    else:
        raise ValueError(f"unknown fold step {op!r}; known: {', '.join(STEPS)}")


def _start(model: nn.Module, steps: Sequence[dict[str, Any]], net: Builder) -> tuple[_State, tuple[int, ...]]:
    """The state after the plan's first step (``input`` or ``normalize``) and the input shape."""
    first = steps[0]
    if first["op"] == "normalize":
        norm = _module(model, first["layer"])
        mean, std = norm.mean.detach().cpu().flatten(), norm.std.detach().cpu().flatten()
        net.add({"op": "normalize", "channels": len(mean)}, mean=mean.view(1, -1, 1, 1).to(D),
                std=std.view(1, -1, 1, 1).to(D))
        side = first["image"]
        return _State(net, Wire.dense(len(mean)), side), (len(mean), side, side)
    if first["op"] == "input" and "features" in first:  # flat input: the named linear's inputs
        width = _module(model, first["features"]).in_features
        return _State(net, Wire.dense(width), None), (width,)
    if first["op"] == "input":  # an image read by the named conv; its side inferred when not given
        channels = _module(model, first["channels"]).in_channels
        side = first.get("image") or _infer_image(model, steps)
        return _State(net, Wire.dense(channels), side), (channels, side, side)
    raise ValueError(f"a fold plan starts with an 'input' or 'normalize' step, not {first['op']!r}")


def fold_model(model: nn.Module) -> tuple[CompactNet, tuple[int, ...]]:
    """The compact network of ``model`` and the input shape (C, H, W) its architecture implies.

    The model's class declares what folds into what (its ``fold_plan`` quirk, a sequence of
    steps named in :data:`STEPS`); this module only interprets it. Raises ``ValueError`` naming
    the class when it declares no plan.
    """
    steps = model_quirk(model, "fold_plan")
    if steps is None:
        raise ValueError(f"cannot compact a {type(model).__name__}: its class declares no fold_plan "
                         "(see models.base.QUIRKS)")
    net = Builder()
    with torch.no_grad():
        state, shape = _start(model, steps, net)
        for st in steps[1:]:
            _step(model, st, state)
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if ref is None else ref.dtype
    compact = net.build(dtype)
    return compact.to(device=None if ref is None else ref.device), shape


def latent_gates(model: nn.Module) -> list[str | None] | None:
    """Per latent map of ``model``, in order, the mask slot whose units it carries, read from the
    fold plan: the mask of the layer that produces it (``mask``, right after the layer; ``drop``, a
    later mask that drops the layer's outputs; a ``mask`` step on a flat wire), ``None`` for a map
    no mask gates (a residual block's output). ``None`` when the model declares no fold plan."""
    steps = model_quirk(model, "fold_plan")
    if steps is None:
        return None
    out: list[str | None] = []
    gate: str | None = None
    for st in steps:
        op = st["op"]
        if op in ("conv", "linear"):
            gate = st.get("mask") or st.get("drop")
        elif op in ("input", "normalize", "resblock", "avgpool"):
            gate = None
        elif op == "mask":
            gate = st["mask"]
        elif op == "feature":
            out.append(gate)
    return out
