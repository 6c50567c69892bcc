"""The ANP-VS paper's memory and FLOPs accounting per layer, and what a model declares for it.

A model whose paper reported its memory and FLOPs declares a :class:`PaperCost` on its registry
entry (:class:`~robustprune.models.ModelInfo`): how many unit counts its formula takes (one per
mask slot), the data-set sizes it defaults to, and the formula itself, written with the layer
formulas below (those of the ANP-VS reference code, see :mod:`robustprune.metrics.cost`). The
metrics layer only asks the model's entry, so a new model brings its own accounting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: ``(active units per slot, in_channels, num_classes, image_size, compat_bug) -> (memory, flops)``
PaperCounter = Callable[[Sequence[int], int, int, int, bool], tuple[int, int]]


@dataclass(frozen=True)
class PaperCost:
    """A model's paper accounting: ``units`` counts (one per mask slot), the ``dims`` ``(in_channels,
    num_classes, image_size)`` it defaults to, and ``count``, the formula."""

    units: int
    dims: tuple[int, int, int]
    count: PaperCounter


def conv_out(size: int, kernel: int, padding: int) -> int:
    return size - kernel + 2 * padding + 1


def conv_memory(size: int, c_in: int, c_out: int, kernel: int, *, padding: int = 0, bn: bool = False) -> int:
    out = conv_out(size, kernel, padding)
    n = kernel * kernel * c_in
    return n * out * out + n * c_out + (2 * c_out if bn else 0)


def dense_memory(n_in: int, n_out: int, *, bn: bool = False) -> int:
    return n_in * n_out + n_out + (2 * n_in if bn else 0)


def conv_flops(size: int, c_in: int, c_out: int, kernel: int, *, padding: int = 0) -> int:
    positions = conv_out(size, kernel, padding) ** 2
    return c_out * positions * max(2 * kernel * kernel * c_in - 1, 0) + 2 * c_out * positions


def dense_flops(n_in: int, n_out: int, *, activation: bool = True) -> int:
    return max(2 * n_in - 1, 0) * n_out + n_out + (n_out if activation else 0)


def pool_flops(size: int, channels: int) -> int:
    """2×2 max-pool, stride 2, on a size×size map."""
    return channels * (size // 2) ** 2 * 4
