"""Measured cost of a network: parameters, bytes, FLOPs and CPU latency.

Beside the paper's accounting (:mod:`robustprune.metrics.cost`, computed from active unit
counts), these numbers are measured on the networks themselves, typically a dense original and
its physically compacted version (:func:`robustprune.sparsity.compact.compact_model`):

- parameters: ``numel`` of all parameters; bytes: parameters *and* buffers (BN statistics, bias
  maps, index buffers) at their stored dtype;
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on one example (it counts the matmuls
  and convolutions, 2 FLOPs per multiply-add; elementwise ops, pooling and BN are not counted);
- latency: wall-clock milliseconds of one ``inference_mode`` forward pass, median of ``repeats``
  timed calls after ``warmup`` calls, the two networks timed alternately so that load from other
  processes hits both alike; ``torch.get_num_threads()`` is recorded with the result.

>>> cost = measured_cost(masked_model, compact_model, (1, 28, 28))
>>> cost["speedup_b256"], cost["flops_speedup"]
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from robustprune.models.base import mask_slots, model_mode


def count_params(model: nn.Module) -> int:
    """Number of parameter entries."""
    return sum(p.numel() for p in model.parameters())


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers at their stored dtype."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _device(model: nn.Module) -> torch.device:
    ref = next(iter(model.parameters()), None)
    return torch.device("cpu") if ref is None else ref.device


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one eval-mode forward pass on one example, from ``FlopCounterMode``."""
    x = torch.rand(1, *input_shape, device=_device(model))
    with model_mode(model), torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def strip_masks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every unit mask removed (the dense original architecture)."""
    dense = copy.deepcopy(model)
    for _, slot in mask_slots(dense):
        slot.mask = None
    return dense


def _timed(model: nn.Module, x: Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - t0) * 1e3


def paired_latency_ms(models: Sequence[nn.Module], x: Tensor, *, warmup: int = 3,
                      repeats: int = 10) -> list[float]:
    """Median milliseconds per forward pass of each model on ``x``, timed in alternation."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    times: list[list[float]] = [[] for _ in models]
    with model_mode(*models), torch.inference_mode():
        for i in range(warmup + repeats):
            for m, ts in zip(models, times, strict=True):
                t = _timed(m, x)
                if i >= warmup:
                    ts.append(t)
    return [statistics.median(ts) for ts in times]


def measured_cost(
    model: nn.Module,
    compact_model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 3,
    repeats: int = 10,
    strip: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Measured parameters, bytes, FLOPs and latency of ``model`` (the original) and ``compact_model``.

    ``model`` is measured with its unit masks removed when ``strip`` is true (the plain dense
    original; the masks' own multiply would otherwise count against it). ``input_shape`` is one
    example's shape, e.g. ``(1, 28, 28)``. Inputs are uniform [0, 1] from a generator seeded with
    ``seed``; both networks run on ``model``'s device.

    Keys (``*_original`` / ``*_compact`` for the two networks; ratios are original / compact, so
    higher is better):

    - ``params_original``, ``params_compact``, ``params_ratio``: parameter entries
    - ``bytes_original``, ``bytes_compact``: parameters + buffers in bytes
    - ``flops_original``, ``flops_compact``, ``flops_speedup``: FLOPs per example (FlopCounterMode)
    - for each batch size B: ``latency_ms_b{B}_original``, ``latency_ms_b{B}_compact`` (median ms
      per forward pass of a batch of B), ``speedup_b{B}``
    - ``threads`` (``torch.get_num_threads()``), ``device``, ``batch_sizes``, ``warmup``, ``repeats``

    >>> measured_cost(model, compact_model_of_it, (3, 32, 32), batch_sizes=(1,), repeats=5)["speedup_b1"]
    """
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {list(batch_sizes)}")
    original = strip_masks(model) if strip else model
    dev = _device(original)
    compact_model = compact_model.to(dev)
    out: dict[str, Any] = {
        "params_original": count_params(original), "params_compact": count_params(compact_model),
        "bytes_original": model_bytes(original), "bytes_compact": model_bytes(compact_model),
        "flops_original": count_flops(original, input_shape), "flops_compact": count_flops(compact_model, input_shape),
    }
    out["params_ratio"] = out["params_original"] / max(out["params_compact"], 1)
    out["flops_speedup"] = out["flops_original"] / max(out["flops_compact"], 1)
    gen = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        x = torch.rand(b, *input_shape, generator=gen).to(dev)
        t_orig, t_comp = paired_latency_ms([original, compact_model], x, warmup=warmup, repeats=repeats)
        out[f"latency_ms_b{b}_original"], out[f"latency_ms_b{b}_compact"] = t_orig, t_comp
        out[f"speedup_b{b}"] = t_orig / t_comp
    out.update(threads=torch.get_num_threads(), device=str(dev), batch_sizes=list(batch_sizes), warmup=warmup,
               repeats=repeats)
    return out
