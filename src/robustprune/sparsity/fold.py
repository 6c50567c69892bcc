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

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.base import MaskSlot, UnitMask
from robustprune.models.lenet import LeNet5Caffe, LeNet300100
from robustprune.models.resnet import BasicBlock, ResNet18
from robustprune.models.vgg import VGG16, VGGBlock
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


# --------------------------------------------------------------------------------- architectures
def _lenet300(model: LeNet300100, net: Builder) -> tuple[int, ...]:
    net.add({"op": "flatten"})
    wire = Wire.dense(model.fc1.in_features)
    for name, fc in (("mask1", model.fc1), ("mask2", model.fc2)):
        m, a = slot_scale(name, getattr(model, name))
        keep = kept_units(a)
        net.linear(fc, wire, scale=m, keep=keep)  # mask right after fc, before the latent map
        net.add({"op": "relu"})
        wire = out_wire(len(a), keep, torch.zeros_like(m), a)
        net.feature(wire)
    net.linear(model.fc3, wire)
    return (model.fc1.in_features,)


def _lenet5(model: LeNet5Caffe, net: Builder) -> tuple[int, ...]:
    (m1, a1), (m2, a2) = slot_scale("mask1", model.mask1), slot_scale("mask2", model.mask2)
    (m3, a3), (m4, a4) = slot_scale("mask3", model.mask3), slot_scale("mask4", model.mask4)
    c2 = model.conv2.out_channels
    positions = model.mask3.units // c2
    image = (int(round(positions**0.5)) * 2 + 4) * 2 + 4  # the smallest image giving this flattened width
    keep1 = kept_units(a1)
    size = net.conv(model.conv1, Wire.dense(model.conv1.in_channels), image, scale=m1, keep=keep1)
    net.add({"op": "relu"})
    wire = out_wire(len(a1), keep1, torch.zeros_like(m1), a1)
    net.feature(wire)
    net.add({"op": "maxpool", "kernel": 2})
    keep2 = kept_units(a2 & a3.view(c2, positions).any(1))  # pruned: all 16 fc1 inputs of a channel
    net.conv(model.conv2, wire, size // 2, scale=m2, keep=keep2)
    net.add({"op": "relu"})
    wire = out_wire(c2, keep2, torch.zeros_like(m2), a2)
    net.feature(wire)
    net.add({"op": "maxpool", "kernel": 2})
    net.add({"op": "flatten"})
    wire, pos = select_wire(flatten_wire(wire, positions), a3)
    if pos is not None:
        net.add({"op": "select", "in": len(keep2) * positions, "out": len(pos)}, index=pos)
    keep4 = kept_units(a4)
    net.linear(model.fc1, wire, in_scale=m3, keep=keep4)
    net.add({"op": "relu"})
    wire = out_wire(len(a4), keep4, torch.zeros_like(m4), torch.ones_like(a4))  # dropped by mask4: filled with 0
    net.feature(wire)
    net.linear(model.fc2, wire, in_scale=m4)
    return (model.conv1.in_channels, image, image)


def _vgg16(model: VGG16, net: Builder) -> tuple[int, ...]:
    mean, std = model.normalize.mean.detach().cpu().flatten(), model.normalize.std.detach().cpu().flatten()
    net.add({"op": "normalize", "channels": len(mean)}, mean=mean.view(1, -1, 1, 1).to(D),
            std=std.view(1, -1, 1, 1).to(D))
    mf1, af1 = slot_scale("mask_fc1", model.mask_fc1)
    mf2, af2 = slot_scale("mask_fc2", model.mask_fc2)
    wire, size = Wire.dense(len(mean)), 32
    for i, block in enumerate(cast("Iterable[VGGBlock]", model.blocks)):
        m, a = slot_scale(f"blocks.{i}.mask", block.mask)
        s, t = bn_affine(block.bn)
        last = i == len(model.blocks) - 1
        keep = kept_units(a & af1 if last else a)  # conv13 channels also feed fc1 through mask_fc1
        # mask before BN: bn(m·conv(x)) = (s·m)·conv(x) + t; a pruned channel outputs relu(t)
        net.conv(block.conv, wire, size, scale=s * m, shift=t, keep=keep)
        net.add({"op": "relu"})
        wire = out_wire(len(a), keep, t.clamp_min(0), a)
        net.feature(wire)
        if block.pool:
            net.add({"op": "maxpool", "kernel": 2})
            size //= 2
    net.add({"op": "flatten"})
    wire = flatten_wire(wire, size * size)
    keep = kept_units(af2)
    net.linear(model.fc1, wire, in_scale=mf1, keep=keep)
    wire = out_wire(len(af2), keep, torch.zeros_like(mf2), torch.ones_like(af2))  # dropped by mask_fc2
    net.feature(wire)  # fc1's pre-BN output
    s, t = bn_affine(model.bn_fc1)
    net.add({"op": "affine", "units": len(keep)}, scale=s[keep], shift=t[keep])
    net.add({"op": "relu"})
    net.feature(wire)
    net.linear(model.fc2, wire, in_scale=mf2)
    return (len(mean), 32, 32)


def _resnet18(model: ResNet18, net: Builder) -> tuple[int, ...]:
    mean, std = model.normalize.mean.detach().cpu(), model.normalize.std.detach().cpu()
    net.add({"op": "normalize", "channels": mean.numel()}, mean=mean.to(D), std=std.to(D))
    s, t = bn_affine(model.bn1)
    net.conv(model.conv1, Wire.dense(mean.numel()), 32, scale=s, shift=t)
    net.add({"op": "relu"})
    for i, block in enumerate(cast("Iterable[BasicBlock]", model.blocks)):
        m, a = slot_scale(f"blocks.{i}.mask", block.mask)
        keep = kept_units(a)
        s1, t1 = bn_affine(block.bn1)  # mask after bn1: m·(s1·conv1(x) + t1); pruned channels give 0
        cin = block.conv1.in_channels
        tensors = {f"conv1.{k}": v for k, v in conv_tensors(block.conv1, Wire.dense(cin), 1, scale=m * s1,
                                                          shift=m * t1, keep=keep).items()}
        s2, t2 = bn_affine(block.bn2)
        mid = Wire(keep, torch.zeros(len(a), dtype=D), torch.ones(len(a), dtype=torch.bool))
        tensors.update({f"conv2.{k}": v for k, v in conv_tensors(block.conv2, mid, 1, scale=s2, shift=t2).items()})
        if isinstance(block.shortcut, nn.Sequential):
            conv, bn = cast(nn.Conv2d, block.shortcut[0]), cast(nn.BatchNorm2d, block.shortcut[1])
            ss, ts = bn_affine(bn)
            tensors.update({f"shortcut.{k}": v for k, v in conv_tensors(conv, Wire.dense(cin), 1, scale=ss,
                                                                        shift=ts).items()})
        cout = block.conv2.out_channels
        net.add({"op": "resblock", "in": cin, "mid": len(keep), "out": cout, "stride": block.conv1.stride[0],
                 "shortcut": isinstance(block.shortcut, nn.Sequential)}, **tensors)
        net.feature(Wire.dense(cout))
    net.add({"op": "avgpool"})
    net.linear(model.fc, Wire.dense(model.fc.in_features))
    return (mean.numel(), 32, 32)


#: each function takes an instance of its key
COMPACTORS: dict[type, Callable[[Any, Builder], tuple[int, ...]]] = {
    LeNet300100: _lenet300, LeNet5Caffe: _lenet5, VGG16: _vgg16, ResNet18: _resnet18,
}


def fold_model(model: nn.Module) -> tuple[CompactNet, tuple[int, ...]]:
    """The compact network of ``model`` and the input shape (C, H, W) its architecture implies.

    Raises ``ValueError`` naming the class when the architecture is not supported.
    """
    fn = COMPACTORS.get(type(model))
    if fn is None:
        known = ", ".join(sorted(c.__name__ for c in COMPACTORS))
        raise ValueError(f"cannot compact a {type(model).__name__}: supported architectures are {known}")
    net = Builder()
    with torch.no_grad():
        shape = fn(model, net)
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if ref is None else ref.dtype
    compact = net.build(dtype)
    return compact.to(device=None if ref is None else ref.device), shape
