"""Memory and FLOPs in the ANP-VS paper's accounting, from active unit counts.

The formulas are those of the reference code (the ANP-VS repository's
``src/experiments/{memory,flops}/utils.py``), so our numbers sit beside the published table:

- conv memory  k²·C_in·H_out·W_out (im2col buffer) + k²·C_in·C_out (kernel, no bias) [+ 2·C_out BN]
- dense memory in·out + out [+ 2·in BN (sic: the reference counts BN on the input width)]
- conv FLOPs   C_out·H_out·W_out·(2k²C_in − 1) + C_out·H_out·W_out (bias) + C_out·H_out·W_out (activation)
- dense FLOPs  (2·in − 1)·out + out (bias) + out (activation; none for LeNet's last layer)
- max-pool     C·H_out·W_out·4 (2×2, stride 2)

The layer formulas are in :mod:`robustprune.models.accounting`; each architecture's formula is on
its registry entry (``ModelInfo.paper_cost``: LeNet5-Caffe, LeNet-300-100, VGG-16), so a new model
brings its own. A pruned unit shrinks both the layer that produces it and the one that reads it. Memory is
reported as 100·M(active)/M(full) and FLOPs as the speed-up F(full)/F(active).

Choices, documented:
- LeNet5-Caffe's fc1 input is the 800-way mask3's own active count, as in the reference; it is
  *not* reconciled with the conv2 channels that mask2 removed (each covers 16 of those inputs),
  so the number matches the paper rather than a compacted network.
- VGG-16's two dense terms are counted once. ``compat_bug=True`` reproduces the reference,
  which counted them inside the 13-block loop (13×): full CIFAR-10 memory 19,881,538 instead of
  16,655,818. The bug moves both numerator and denominator of memory %.
- If every input of a layer is pruned, ``2·in − 1`` would go negative; it is floored at 0.

Full-size values: LeNet5-Caffe on MNIST F = 4,615,940 and M = 477,410; VGG-16 on CIFAR-10
F = 627,329,546.

>>> paper_cost("lenet5-caffe", model)["memory_pct"], paper_cost("lenet5-caffe", model)["flops_speedup"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from robustprune.metrics.sparsity import active_units, sparsity_summary, total_units
from robustprune.metrics.unstructured import unstructured_cost
from robustprune.models import model_info
from robustprune.models.accounting import PaperCost
from robustprune.models.lenet import lenet5_sizes


def has_paper_cost(model_name: str) -> bool:
    """Whether model ``model_name`` declares the paper's accounting (``ModelInfo.paper_cost``)."""
    try:
        return model_info(model_name).paper_cost is not None
    except ValueError:
        return False


def _paper(model_name: str) -> PaperCost:
    try:
        paper = model_info(model_name).paper_cost
    except ValueError:
        paper = None
    if paper is None:
        from robustprune.registry import MODELS

        known = ", ".join(n for n in MODELS.names() if model_info(n).paper_cost is not None)
        raise ValueError(f"no paper cost formulas for model {model_name!r}; known: {known}")
    return paper


def _count(
    model_name: str,
    units: Sequence[int],
    in_channels: int | None,
    num_classes: int | None,
    image_size: int | None,
    compat_bug: bool,
) -> tuple[int, int]:
    paper = _paper(model_name)
    n_units, (d_in, d_classes, d_size) = paper.units, paper.dims
    units = list(units)
    if len(units) != n_units:
        raise ValueError(
            f"{model_name} needs {n_units} unit counts (one per mask slot), got {len(units)}: {units}"
        )
    for n in units:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"unit counts must be non-negative ints, got {units}")
    dims = {
        "in_channels": d_in if in_channels is None else in_channels,
        "num_classes": d_classes if num_classes is None else num_classes,
        "image_size": d_size if image_size is None else image_size,
    }
    for key, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    return paper.count(units, dims["in_channels"], dims["num_classes"], dims["image_size"], compat_bug)


def paper_memory(
    model_name: str,
    units: Sequence[int],
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    compat_bug: bool = False,
) -> float:
    """Memory count of ``model_name`` with ``units`` active units per mask slot (paper accounting).

    ``units``: LeNet5-Caffe [n1, n2, n3, n4] (conv1, conv2, fc1 inputs, fc1 outputs); VGG-16 15
    counts (13 conv blocks, fc1 inputs, fc2 inputs); LeNet-300-100 [n1, n2]. The data set sizes
    default to MNIST (1, 10, 28) for the LeNets and CIFAR-10 (3, 10, 32) for VGG-16.
    ``compat_bug`` (VGG-16 only) counts the dense layers 13× as the reference code did.
    """
    return float(_count(model_name, units, in_channels, num_classes, image_size, compat_bug)[0])


def paper_flops(
    model_name: str,
    units: Sequence[int],
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
) -> float:
    """FLOPs of ``model_name`` with ``units`` active units per mask slot (paper accounting);
    arguments as for :func:`paper_memory`."""
    return float(_count(model_name, units, in_channels, num_classes, image_size, False)[1])


def _last_linear_out(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def paper_cost(
    model_name: str,
    model: nn.Module,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    compat_bug: bool = False,
) -> dict[str, Any]:
    """Paper-accounting memory % and FLOPs speed-up of ``model`` from its masks' active counts.

    Full widths come from the model's mask slots (``total_units``), active ones from the installed
    masks (``active_units``; an empty slot counts as dense). ``num_classes`` defaults to the last
    linear layer's width. Returns ``memory_pct`` = 100·M(active)/M(full), ``flops_speedup`` =
    F(full)/F(active) and the raw counts.
    """
    active, full = active_units(model), total_units(model)
    if num_classes is None:
        num_classes = _last_linear_out(model)
    kw: dict[str, Any] = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    if model_name == "lenet5-caffe" and len(full) == 4:
        _, _, s2 = lenet5_sizes(image_size or _paper(model_name).dims[2])
        if full[2] != full[1] * (s2 // 2) ** 2:
            raise ValueError(
                f"lenet5-caffe with image_size={image_size} flattens {full[1] * (s2 // 2) ** 2} inputs, "
                f"but the model's fc1 mask has {full[2]} units; pass the model's image_size"
            )
    memory = paper_memory(model_name, active, compat_bug=compat_bug, **kw)
    memory_full = paper_memory(model_name, full, compat_bug=compat_bug, **kw)
    flops, flops_full = paper_flops(model_name, active, **kw), paper_flops(model_name, full, **kw)
    return {
        "memory_pct": 100.0 * memory / memory_full,
        "flops_speedup": flops_full / flops if flops > 0 else float("inf"),
        "memory": memory,
        "memory_full": memory_full,
        "flops": flops,
        "flops_full": flops_full,
        "active_units": active,
        "total_units": full,
        "compat_bug": compat_bug,
    }


def sparsity_record(model_name: str, model: nn.Module, *, in_channels: int, num_classes: int,
                    image_size: int) -> dict[str, Any]:
    """A card's ``sparsity`` block, the one builder of it (``records.Sparsity``): unit and weight
    sparsity with the slots' unit counts (``sparsity_summary``); for unstructured zeros their
    nnz, CSR bytes and theoretical MACs (``unstructured``); for a model that declares the paper's
    accounting, its memory % and FLOPs × (``paper``)."""
    out: dict[str, Any] = sparsity_summary(model)
    # the paper block first: it checks the data sizes against the model and names a wrong one, where
    # the unstructured count's forward pass would fail on a shape
    paper = (paper_cost(model_name, model, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
             if has_paper_cost(model_name) else None)
    if out["weight_sparsity"] > 0:
        out["unstructured"] = unstructured_cost(model, input_shape=(in_channels, image_size, image_size))
    if paper is not None:
        out["paper"] = paper
    return out
