"""The compact network: a plain dense ``nn.Module`` rebuilt from a small JSON layer list.

:func:`robustprune.sparsity.compact.compact_model` turns a masked model into a
:class:`CompactNet`; a compacted run directory stores the layer list in ``compact.json`` and the
weights in ``model.safetensors``, so the network can be rebuilt without the original class.

Layer ops (each a JSON object with ``"op"`` and its widths):

- ``normalize`` ``{channels}``: ``(x - mean) / std`` (buffers ``mean``, ``std``)
- ``conv`` ``{in, out, kernel, stride, padding, bias_map}``: a biased ``Conv2d``; when
  ``bias_map`` is ``[H, W]`` a per-position bias buffer ``[out, H, W]`` is added. That buffer is
  how a removed input channel with a nonzero constant value stays exact under zero padding (at
  the borders only part of the kernel sees the constant).
- ``linear`` ``{in, out}``; ``affine`` ``{units}``: ``x·scale + shift`` per unit (dim 1)
- ``relu``, ``maxpool`` ``{kernel}``, ``avgpool`` (global), ``flatten``
- ``select`` ``{in, out}``: keep the input units listed in buffer ``index`` (dim 1)
- ``resblock`` ``{in, mid, out, stride, shortcut}``: relu(conv2(relu(conv1 x)) + shortcut x)
- ``feature`` ``{units, kept}``: not a computation; marks a latent map. With ``features=True``
  the current tensor is scattered back to the original ``units`` width (buffer ``index`` says
  where the kept units go, buffer ``fill`` holds the value of every removed unit), so latent
  vulnerability is measured over the same units as for the masked model.

>>> net = CompactNet([{"op": "flatten"}, {"op": "linear", "in": 784, "out": 10}])
>>> net(torch.rand(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.base import Normalize

FORMAT = "robustprune-compact"
VERSION = 1


def _unit_view(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-unit vector to broadcast over dim 1 of ``x``."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class BiasMapConv2d(nn.Conv2d):
    """``Conv2d`` (always biased) plus an optional per-position bias map ``[out, H, W]``."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0,
                 map_hw: Sequence[int] | None = None) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, bias=True)
        self.bias_map: Tensor | None
        if map_hw is None:
            self.register_buffer("bias_map", None)
        else:
            self.register_buffer("bias_map", torch.zeros(cout, *map_hw))

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y if self.bias_map is None else y + self.bias_map


class Affine(nn.Module):
    """Per-unit ``x·scale + shift`` (an eval-mode batch norm kept apart from its linear layer)."""

    def __init__(self, units: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(units))
        self.shift = nn.Parameter(torch.zeros(units))

    def forward(self, x: Tensor) -> Tensor:
        return x * _unit_view(self.scale, x) + _unit_view(self.shift, x)


class Select(nn.Module):
    """Keep the units ``index`` of dim 1."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.n_in = n_in
        self.index: Tensor
        self.register_buffer("index", torch.arange(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)


class Feature(nn.Module):
    """Scatter a compact latent map back to the original width (removed units take ``fill``)."""

    def __init__(self, units: int, kept: int) -> None:
        super().__init__()
        self.index: Tensor
        self.fill: Tensor
        self.register_buffer("index", torch.arange(kept))
        self.register_buffer("fill", torch.zeros(units))

    def forward(self, x: Tensor) -> Tensor:
        full = _unit_view(self.fill.to(x.dtype), x).expand(x.shape[0], -1, *x.shape[2:])
        return full.index_copy(1, self.index, x)


class GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class ResBlock(nn.Module):
    """A residual block with BN folded into its convs: relu(conv2(relu(conv1 x)) + shortcut x)."""

    def __init__(self, cin: int, mid: int, cout: int, *, stride: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = BiasMapConv2d(cin, mid, 3, stride=stride, padding=1)
        self.conv2 = BiasMapConv2d(mid, cout, 3, padding=1)
        self.shortcut = BiasMapConv2d(cin, cout, 1, stride=stride) if shortcut else None

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(F.relu(self.conv1(x))) + skip)


def _int(spec: dict[str, Any], key: str) -> int:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"compact layer {spec.get('op')!r} needs a non-negative int {key!r}, got {value!r}")
    return value


def build_layer(spec: dict[str, Any]) -> nn.Module:
    """One module from its JSON description; an unknown op raises ``ValueError`` naming it."""
    if not isinstance(spec, dict):
        raise ValueError(f"compact layer must be a JSON object, got {spec!r}")
    op = spec.get("op")
    simple = {"relu": nn.ReLU, "flatten": nn.Flatten, "avgpool": GlobalAvgPool}
    if op in simple:
        return simple[op]()
    if op == "normalize":
        c = _int(spec, "channels")
        return Normalize([0.0] * c, [1.0] * c)
    if op == "conv":
        hw = spec.get("bias_map")
        return BiasMapConv2d(_int(spec, "in"), _int(spec, "out"), _int(spec, "kernel"), stride=_int(spec, "stride"),
                             padding=_int(spec, "padding"), map_hw=None if hw is None else [int(v) for v in hw])
    if op == "linear":
        return nn.Linear(_int(spec, "in"), _int(spec, "out"))
    if op == "affine":
        return Affine(_int(spec, "units"))
    if op == "maxpool":
        return nn.MaxPool2d(_int(spec, "kernel"))
    if op == "select":
        return Select(_int(spec, "in"), _int(spec, "out"))
    if op == "feature":
        return Feature(_int(spec, "units"), _int(spec, "kept"))
    if op == "resblock":
        return ResBlock(_int(spec, "in"), _int(spec, "mid"), _int(spec, "out"), stride=_int(spec, "stride"),
                        shortcut=bool(spec.get("shortcut")))
    raise ValueError(
        f"unknown compact layer op {op!r}; known: affine, avgpool, conv, feature, flatten, linear, maxpool, "
        "normalize, relu, resblock, select"
    )


class CompactNet(nn.Module):
    """A dense network built from a layer list (see the module docstring).

    Follows the model contract: ``net(x)`` gives logits, ``net(x, features=True)`` gives
    ``(logits, latent maps)``; ``latent_count`` counts the ``feature`` marks. ``layers_spec`` is
    the JSON-ready description that rebuilds the same architecture (``CompactNet(spec)``).

    >>> net = CompactNet(spec)                   # zero-initialised architecture
    >>> net.load_state_dict(load_file("model.safetensors"))
    """

    def __init__(self, layers: list[dict[str, Any]]) -> None:
        super().__init__()
        if not isinstance(layers, list) or not layers:
            raise ValueError(f"a compact network needs a non-empty list of layers, got {layers!r}")
        self.layers_spec = [dict(d) for d in layers]
        self.layers = nn.ModuleList(build_layer(d) for d in layers)
        self.latent_count = sum(isinstance(m, Feature) for m in self.layers)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        feats: list[Tensor] = []
        for layer in self.layers:
            if isinstance(layer, Feature):
                if features:
                    feats.append(layer(x))
                continue
            x = layer(x)
        return (x, feats) if features else x


COMPACT_FILE = "compact.json"


def read_compact_info(run_dir: str | Path) -> dict[str, Any]:
    """The checked contents of ``RUN/compact.json``. ``kind`` says how to rebuild the network:
    ``"layers"`` (or absent): a :class:`CompactNet` from ``layers`` (:func:`read_compact`);
    ``"graph"``: the run's own architecture resized to ``graph``
    (:func:`robustprune.sparsity.graph_compact.apply_graph_spec`). A corrupt or foreign file raises
    ``ValueError`` naming it."""
    path = Path(run_dir) / COMPACT_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read compact description {path}: {e}") from e
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{path} is not a robustprune compact description (format must be {FORMAT!r})")
    if info.get("version") != VERSION:
        raise ValueError(f"{path} has compact format version {info.get('version')!r}; this robustprune reads {VERSION}")
    if info.get("kind", "layers") not in ("layers", "graph"):
        raise ValueError(f"{path}: unknown compaction kind {info.get('kind')!r}; known: layers, graph")
    return info


def read_compact(run_dir: str | Path) -> tuple[CompactNet, dict[str, Any]]:
    """The (zero-initialised) network described by ``RUN/compact.json`` and that description.

    A corrupt or foreign file raises ``ValueError`` naming it; load the weights afterwards
    (``model.safetensors``).
    """
    path = Path(run_dir) / COMPACT_FILE
    info = read_compact_info(run_dir)
    if info.get("kind", "layers") != "layers":
        raise ValueError(f"{path} describes a {info.get('kind')!r} compaction, not a layer list")
    try:
        return CompactNet(cast("list[dict[str, Any]]", info.get("layers"))), info  # CompactNet checks it
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
