"""Compaction: a pruned model becomes a genuinely smaller dense network.

:func:`compact_model` folds a masked model (pruned units removed, soft eval masks and BN folded
into the weights; see :mod:`robustprune.sparsity.fold`) into a plain
:class:`~robustprune.sparsity.compact_net.CompactNet` whose logits equal the masked model's
eval-mode logits; :func:`export_onnx` writes it as ONNX. Compacting a whole run directory is the
job :func:`robustprune.jobs.compact.compact_run`.

Supported: every model whose class declares a ``fold_plan`` (lenet-300-100, lenet5-caffe, vgg16,
resnet18 with masks on the blocks' inner channels), and any network wrapped in
:class:`~robustprune.models.graph.GraphNet` (mask slots found from its traced graph), which
:func:`~robustprune.sparsity.graph_compact.compact_graph` prunes through the same graph into a
smaller ``GraphNet`` of the same classes. A model without masks, or with nothing pruned, compacts
to a network of the same widths.

>>> net = compact_model(masked_model)         # masked_model(x) == net(x) in eval mode
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.models.base import model_mode
from robustprune.models.graph import GraphNet
from robustprune.sparsity.fold import fold_model
from robustprune.sparsity.graph_compact import compact_graph
from robustprune.utils import MissingExtraError

__all__ = ["FOLD_TOL", "compact_model", "compact_summary", "equivalence_error", "export_onnx"]

#: fold check: max |Δlogit| allowed, relative to max(1, max |logit|)
FOLD_TOL = 1e-4


def equivalence_error(model: nn.Module, compact: nn.Module, input_shape: Sequence[int], *, n: int = 8,
                      seed: int = 0) -> tuple[float, float]:
    """(max |logit difference|, max |logit| of ``model``) in eval mode on ``n`` uniform [0, 1] inputs."""
    gen = torch.Generator().manual_seed(seed)
    ref = next(iter(model.parameters()), None)
    x = torch.rand(n, *input_shape, generator=gen).to(None if ref is None else ref.device)
    with model_mode(model, compact), torch.no_grad():
        want = model(x)
        return float((want - compact(x)).abs().max()), float(want.abs().max())


def compact_model(model: nn.Module, *, check: bool = True, input_shape: Sequence[int] | None = None) -> nn.Module:
    """The compact dense equivalent of ``model``'s eval-mode computation (a new module, eval mode):
    a :class:`~robustprune.sparsity.compact_net.CompactNet` for the registered architectures, a
    smaller :class:`~robustprune.models.graph.GraphNet` for a graph-masked network.

    With ``check`` (default) both networks run on random inputs and a difference beyond
    ``FOLD_TOL`` relative to the logits' scale raises ``RuntimeError`` (e.g. a mask that breaks
    the UnitMask contract). ``input_shape`` defaults to the one the architecture implies. An
    unsupported architecture raises ``ValueError`` naming it.

    >>> net = compact_model(install_bbd(build_model("lenet5-caffe")).eval())
    >>> sum(p.numel() for p in net.parameters())   # only the active units' weights remain
    """
    net: nn.Module
    if isinstance(model, GraphNet):
        net, shape = compact_graph(model), model.input_shape
    else:
        net, shape = fold_model(model)
    if check:
        err, scale = equivalence_error(model, net, tuple(input_shape) if input_shape is not None else shape)
        scale = max(1.0, scale)
        if not err <= FOLD_TOL * scale:
            raise RuntimeError(f"compacted {type(model).__name__} differs from the masked model by {err:.3g} "
                               f"(tolerance {FOLD_TOL * scale:.3g}); a mask may break the UnitMask contract")
    return net


def export_onnx(net: nn.Module, path: str | Path, input_shape: Sequence[int], *, seed: int = 0) -> float:
    """Write ``net`` as ONNX (batch dimension dynamic) and return the max |Δ| between torch and
    onnxruntime on a batch of 3; needs the ``export`` extra (onnx, onnxruntime, onnxscript)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter)
    except ImportError as e:
        raise MissingExtraError(f"ONNX export needs the optional 'export' extra: pip install 'robustprune[export]' "
                           f"(missing: {e.name})") from e
    net = net.to("cpu").eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *input_shape, generator=gen)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(net, (x,), str(path), dynamo=True, input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), external_data=False, verbose=False, optimize=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x3 = torch.rand(3, *input_shape, generator=gen)
    with torch.no_grad():
        want = net(x3).numpy()
    got = session.run(None, {"x": x3.numpy()})[0]
    return float(abs(got - want).max())


def compact_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a result card records about a compacted run: compact.json without the rebuild description and
    what the card already holds (its ``sparsity`` is the source's ``source_cost``)."""
    # the card has these; "layers"/"graph" only rebuild the network
    skip = ("layers", "graph", "format", "version", "source_cost", "method", "model", "dataset")
    return {"compacted": True, **{k: v for k, v in info.items() if k not in skip}}
