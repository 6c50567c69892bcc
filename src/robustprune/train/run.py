"""Building a run's model and method from its config, and loading finished runs."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.config import AMP_MODES, TrainConfig, load_train_config
from robustprune.data import dataset_info
from robustprune.defenses import Method, MethodContext, build_method
from robustprune.models import build_model
from robustprune.models.graph import GraphNet
from robustprune.registry import METHODS
from robustprune.sparsity.compact_net import COMPACT_FILE, read_compact, read_compact_info
from robustprune.sparsity.graph_compact import apply_graph_spec
from robustprune.train.checkpoint import CheckpointError, load_checkpoint, load_weights
from robustprune.train.warmstart import InitReport, warm_start

#: the version of the training loop (``fit``, schedules, checkpoints): bump it in the change that
#: alters what every method trains; a method's own changes bump its ``Method.code_version``
TRAIN_VERSION = 1


def train_code_parts(cfg: TrainConfig) -> dict[str, int]:
    """The versions of the code a run trained with ``cfg`` depends on: ``train`` (:data:`TRAIN_VERSION`)
    and ``method:<name>`` (the method's ``version``). A finished run whose record names older parts
    is stale (``compare`` trains it again)."""
    return {"train": TRAIN_VERSION, f"method:{cfg.method}": int(getattr(METHODS.get(cfg.method), "code_version", 1))}


def train_attack(cfg: TrainConfig) -> tuple[float, int, float]:
    """The run's training PGD (ε, steps, step size): the config's values, the dataset's threat model
    (:meth:`~robustprune.data.DatasetInfo.train_attack`) where they are ``None``."""
    return dataset_info(cfg.dataset).train_attack(eps=cfg.adv_eps, steps=cfg.adv_steps, step_size=cfg.adv_step_size)


def method_context(cfg: TrainConfig, *, train_size: int, total_steps: int = 1) -> MethodContext:
    info = dataset_info(cfg.dataset)
    eps, steps, step_size = train_attack(cfg)
    return MethodContext(
        dataset=info.name,
        train_size=train_size,
        num_classes=info.num_classes,
        adv_eps=eps,
        adv_steps=steps,
        adv_step_size=step_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        total_steps=total_steps,
        dataset_size=info.train_size,
    )


def build_model_for(cfg: TrainConfig) -> nn.Module:
    info = dataset_info(cfg.dataset)
    return build_model(
        cfg.model,
        model_args=cfg.model_args,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        image_size=info.image_size,
        mean=info.mean,
        std=info.std,
    )


def use_channels_last(model: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """Put conv weights in channels_last on CPU, where it measured faster (bench/RESULTS.md), and
    on CUDA, where cuDNN's NHWC kernels are generally the faster ones for bf16 (not measured
    here: ``bench/throughput.py`` on a GPU is the check). The training attack follows the
    weights' layout (``PGD(memory_format="auto")``)."""
    if enabled and device.type in ("cpu", "cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def amp_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the training loss runs in: ``torch.autocast(bfloat16)`` on ``device``'s type for
    ``amp="bf16"`` (CUDA, or CPU autocast on a CPU), else nothing. Attacks called inside it still
    compute in float32 (``Attack.full_precision``). bf16 keeps float32's exponent range, so no
    loss scaling is needed; the caller takes gradients outside the context, as autocast advises."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def init_from(model: nn.Module, source: str | Path, *, base_keys: set[str] | None = None,
              prefix: str | None = None, method: str | None = None) -> InitReport:
    """Copy saved weights and buffers (BN statistics included) into ``model``: another run, or a
    plain state dict file (``.safetensors``, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``), with the key fitting and ``--init-prefix`` rules of
    :mod:`robustprune.train.warmstart`.

    Keys the method added (``model``'s keys outside ``base_keys``, the bare architecture's; without
    them: masks and HYDRA scores) stay freshly initialised and a warning names them; anything else
    missing, extra or of another shape is an ``InitFromError`` (a ``ValueError``) naming the keys.
    """
    return warm_start(model, source, base_keys=base_keys, prefix=prefix, method=method)


@dataclass
class LoadedRun:
    model: nn.Module
    cfg: TrainConfig
    method: Method
    path: Path
    complete: bool
    #: compact.json of a compacted run (``robustprune compact``), else None
    compact: dict[str, Any] | None = None


def load_run(run_dir: str | Path, *, device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a run's model (masks included) in eval mode from its directory.

    Uses ``model.safetensors`` when training finished, otherwise the newest checkpoint (with a
    warning). Missing directories and corrupt files raise errors naming the path. A compacted
    run (one holding ``compact.json``, see ``robustprune compact``) rebuilds its ``CompactNet``.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run_dir} is not a robustprune run (no config.yaml)")
    cfg = load_train_config(cfg_path)
    info = dataset_info(cfg.dataset)
    method = build_method(cfg.method, ctx=method_context(cfg, train_size=info.train_size), **cfg.method_args)
    model: nn.Module
    compact = None
    if (run_dir / COMPACT_FILE).is_file():  # a compacted run rebuilds its own (smaller) architecture
        compact = read_compact_info(run_dir)
        if compact.get("kind") == "graph":  # the run's own network, resized (sparsity.graph_compact)
            dense = build_model_for(cfg)
            if not isinstance(dense, GraphNet):
                raise ValueError(f"{run_dir / COMPACT_FILE} describes a graph compaction, but model "
                                 f"{cfg.model!r} builds a {type(dense).__name__}, not a GraphNet")
            try:
                model = apply_graph_spec(dense, compact.get("graph"))  # type: ignore[arg-type]
            except ValueError as e:
                raise ValueError(f"{run_dir / COMPACT_FILE}: {e}") from e
        else:
            model, compact = read_compact(run_dir)
    else:
        model = method.prepare(build_model_for(cfg))
    final = run_dir / "model.safetensors"
    if final.is_file():
        weights, complete = load_weights(final), True
    else:
        ckpt = load_checkpoint(run_dir)
        warnings.warn(f"{run_dir} has not finished training; using the checkpoint of epoch {ckpt.epoch}", stacklevel=2)
        weights, complete = ckpt.weights, False
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {run_dir} do not match model {cfg.model!r}: {e}") from e
    model.to(device).eval()
    return LoadedRun(model=model, cfg=cfg, method=method, path=run_dir, complete=complete, compact=compact)
