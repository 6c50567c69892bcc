"""``robustprune compact``: compact a pruned run directory into a new, smaller run directory.

:func:`compact_run` writes a run directory that ``load_run`` / ``robustprune eval`` accept like any
run: ``config.yaml`` (copied, so cards still name the method, model and data set),
``model.safetensors`` (the compact weights from :func:`robustprune.sparsity.compact.compact_model`),
``compact.json`` (how to rebuild the network — the layer list of a ``CompactNet``, or for a
graph-masked network (:class:`~robustprune.models.graph.GraphNet`) the resized widths of its own
layers — plus widths, source sparsity, equivalence check, measured cost) and,
with ``onnx=True``, ``model.onnx`` checked against onnxruntime.

>>> compact_run("runs/anpvs", out="runs/anpvs-compact", onnx=True)      # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from torch import nn

from robustprune.data import dataset_info
from robustprune.metrics.cost import sparsity_record
from robustprune.metrics.measured import count_params, measured_cost
from robustprune.models.base import UnitMask, mask_slots
from robustprune.models.graph import GraphNet
from robustprune.sparsity.compact import FOLD_TOL, compact_model, equivalence_error, export_onnx
from robustprune.sparsity.compact_net import COMPACT_FILE, FORMAT, VERSION, CompactNet, read_compact_info
from robustprune.sparsity.graph_compact import graph_spec
from robustprune.train.checkpoint import save_weights
from robustprune.train.run import load_run
from robustprune.utils import atomic_write_json, provenance

__all__ = ["compact_run", "format_compact"]


def _widths(model: nn.Module) -> dict[str, dict[str, int]]:
    out = {}
    for name, slot in mask_slots(model):
        n = slot.units if slot.mask is None else int(cast(UnitMask, slot.mask).n_active())
        out[name] = {"units": slot.units, "active": n}
    return out


def _source_cost(model_name: str, model: nn.Module, info: Any) -> dict[str, Any]:
    """The masked model's sparsity block for the compacted run's cards (the same builder as every
    card's: ``metrics.cost.sparsity_record``)."""
    return sparsity_record(model_name, model, in_channels=info.in_channels, num_classes=info.num_classes,
                           image_size=info.image_size)


def _write(tmp: Path, run: Any, net: nn.Module, record: dict[str, Any], onnx: bool) -> None:
    shutil.copy2(run.path / "config.yaml", tmp / "config.yaml")
    save_weights(net, tmp / "model.safetensors")
    if onnx:
        err = export_onnx(net, tmp / "model.onnx", record["input_shape"])
        scale = max(1.0, record["logit_scale"])
        if not err <= FOLD_TOL * scale:
            raise RuntimeError(f"ONNX model differs from the compact model by {err:.3g} under onnxruntime")
        record["onnx"] = {"path": "model.onnx", "max_abs_diff_onnxruntime": err}
    atomic_write_json(tmp / COMPACT_FILE, record)


def compact_run(
    run_dir: str | Path,
    *,
    out: str | Path,
    onnx: bool = False,
    measure: bool = True,
    repeats: int = 10,
    batch_sizes: Sequence[int] = (1, 256),
) -> Path:
    """Compact run ``run_dir`` into the new run directory ``out`` and return its path.

    ``out`` must not exist; it is written under a temporary name and renamed when complete, so a
    failure leaves nothing behind. ``measure`` records :func:`measured_cost` (dense original vs
    compact, CPU latency at ``batch_sizes`` with ``repeats`` timed calls) in ``compact.json``;
    ``onnx`` also writes ``model.onnx`` and checks it with onnxruntime. A missing run raises
    ``CheckpointError``; an unsupported architecture or a stochastic method ``ValueError``.

    >>> compact_run("runs/anpvs", out="runs/anpvs-compact")
    >>> load_run("runs/anpvs-compact").model      # a CompactNet
    """
    out = Path(out)
    if out.exists():
        raise ValueError(f"output directory {out} already exists; choose another --out or remove it")
    run = load_run(run_dir, device="cpu")
    if run.compact is not None:
        raise ValueError(f"{run_dir} is already compacted")
    if run.method.stochastic:
        raise ValueError(f"method {run.cfg.method!r} is random in eval mode; its model cannot be compacted")
    info = dataset_info(run.cfg.dataset)
    shape = (info.in_channels, info.image_size, info.image_size)
    t0 = time.perf_counter()
    net = compact_model(run.model, input_shape=shape)
    graph = isinstance(net, GraphNet)
    graph_latent_inexact: list[int] = []  # a graph compaction's removed units were exactly 0
    err, logit_scale = equivalence_error(run.model, net, shape)
    record: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "source_run": str(Path(run_dir).resolve()),
        "source_complete": run.complete, "method": run.cfg.method, "model": run.cfg.model,
        "dataset": run.cfg.dataset, "input_shape": list(shape), "dtype": str(next(net.parameters()).dtype),
        "widths": _widths(run.model), "params": count_params(net),
        "max_abs_diff": err, "logit_scale": logit_scale,
        "latent_inexact_units": graph_latent_inexact if graph else [
            d["inexact"] for d in cast(CompactNet, net).layers_spec if d["op"] == "feature"],
        "source_cost": _source_cost(run.cfg.model, run.model, info),
        "measured": measured_cost(run.model, net, shape, batch_sizes=batch_sizes, repeats=repeats) if measure else None,
        "onnx": None, **provenance("cpu"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if graph:  # rebuilt from the run's own architecture, resized (sparsity.graph_compact)
        record.update(kind="graph", graph=graph_spec(cast(GraphNet, net)))
    else:
        record.update(kind="layers", layers=cast(CompactNet, net).layers_spec)
    record["wall_s"] = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write(tmp, run, net, record, onnx)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def format_compact(run_dir: str | Path) -> str:
    """A short text summary of a compacted run directory (what ``robustprune compact`` prints)."""
    info = read_compact_info(run_dir)
    widths = ", ".join(f"{k} {w['active']}/{w['units']}" for k, w in info["widths"].items()) or "no mask slots"
    lines = [f"compacted {info['method']} / {info['model']} / {info['dataset']} -> {run_dir}",
             f"active units: {widths}",
             f"parameters: {info['params']:,}; max |Δlogit| vs masked model: {info['max_abs_diff']:.2g}"]
    m = info.get("measured")
    if m:
        lines.append(f"measured: params {m['params_original']:,} -> {m['params_compact']:,} "
                     f"({m['params_ratio']:.2f}x), FLOPs {m['flops_original']:,} -> {m['flops_compact']:,} "
                     f"({m['flops_speedup']:.2f}x), threads {m['threads']}")
        for b in m["batch_sizes"]:
            lines.append(f"latency batch {b}: {m[f'latency_ms_b{b}_original']:.3f} ms -> "
                         f"{m[f'latency_ms_b{b}_compact']:.3f} ms ({m[f'speedup_b{b}']:.2f}x)")
    if info.get("onnx"):
        onnx = info["onnx"]
        lines.append(f"onnx: {onnx['path']} (max |Δ| under onnxruntime {onnx['max_abs_diff_onnxruntime']:.2g})")
    return "\n".join(lines)
