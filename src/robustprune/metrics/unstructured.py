"""Memory and MACs of unstructured (weight-level) sparsity, reported honestly.

Per conv/linear layer, from the effective weight (``weight``, times ``weight_mask`` when the layer
carries one, as HYDRA's scored layers do):

- ``nnz``: non-zero weights; ``dense_bytes`` = 4·numel (fp32);
- ``csr_bytes``: the weight as a CSR matrix [out, in·k·k]: nnz·(value + index bytes) + (rows + 1)
  row pointers of ``index_bytes`` (default 4 + 4);
- ``macs_dense`` = numel·H_out·W_out and ``macs_sparse`` = nnz·H_out·W_out (1 position for linear):
  *theoretical* multiply-accumulates. Dense kernels multiply the zeros too, so no wall-clock
  speed-up follows from these numbers without sparse kernels (:mod:`robustprune.metrics.measured`
  measures compacted networks).

>>> unstructured_cost(model, input_shape=(1, 28, 28))["csr_bytes"]   # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.models.base import model_mode
from robustprune.sparsity.magnitude import MASK_BUFFER, WEIGHT_LAYERS, weight_of

NOTE = ("theoretical: MACs count only non-zero weights and CSR bytes assume a sparse format; dense kernels "
        "compute the zeros, so no speed-up is claimed")


def effective_weight(m: nn.Module) -> Tensor:
    mask = getattr(m, MASK_BUFFER, None)
    return weight_of(m).detach() if mask is None else weight_of(m).detach() * mask


def _positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions (H_out·W_out, or 1 for a linear layer on vectors) of every weight layer."""
    out: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_LAYERS):
            def hook(mod: nn.Module, inp: Any, res: Tensor, name: str = name) -> None:
                out[name] = math.prod(res.shape[2:]) if res.dim() > 2 else 1

            hooks.append(m.register_forward_hook(hook))
    ref = next(model.parameters())
    try:
        with model_mode(model), torch.no_grad():
            model(torch.zeros(1, *input_shape, device=ref.device, dtype=ref.dtype))
    finally:
        for h in hooks:
            h.remove()
    return out


def unstructured_cost(model: nn.Module, *, input_shape: tuple[int, ...], value_bytes: int = 4,
                      index_bytes: int = 4) -> dict[str, Any]:
    """JSON-ready per-layer and total nnz, bytes and MACs of ``model`` on one input of ``input_shape``."""
    if value_bytes < 1 or index_bytes < 1:
        raise ValueError(f"value_bytes and index_bytes must be >= 1, got {value_bytes}, {index_bytes}")
    positions = _positions(model, tuple(input_shape))
    layers = []
    for name, m in model.named_modules():
        if not isinstance(m, WEIGHT_LAYERS) or name not in positions:
            continue
        w = effective_weight(m)
        nnz, rows = int((w != 0).sum()), w.shape[0]
        layers.append({
            "layer": name, "numel": w.numel(), "nnz": nnz, "dense_bytes": value_bytes * w.numel(),
            "csr_bytes": nnz * (value_bytes + index_bytes) + (rows + 1) * index_bytes,
            "macs_dense": w.numel() * positions[name], "macs_sparse": nnz * positions[name],
        })
    total = {k: sum(layer[k] for layer in layers) for k in ("numel", "nnz", "dense_bytes", "csr_bytes", "macs_dense",
                                                            "macs_sparse")}
    return {
        **total,
        "weight_sparsity": 100.0 * (1 - total["nnz"] / max(total["numel"], 1)),
        "csr_vs_dense_bytes": total["csr_bytes"] / max(total["dense_bytes"], 1),
        "macs_ratio": total["macs_sparse"] / max(total["macs_dense"], 1),
        "layers": layers,
        "note": NOTE,
    }


@torch.no_grad()
def activation_zero_fraction(model: nn.Module, x: Tensor) -> float | None:
    """Fraction of exactly-zero activations in the last latent map (the input of the last layer)
    on ``x`` in eval mode; ``None`` for a model without latent maps (the linear model)."""
    with model_mode(model):
        _, feats = model(x, features=True)
    return float((feats[-1] == 0).float().mean()) if feats else None
