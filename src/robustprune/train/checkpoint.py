"""Atomic, resumable checkpoints.

Layout of a run directory::

    config.yaml                  the resolved config
    checkpoints/epoch-0003/      one finished epoch: model.safetensors + state.pt
    checkpoints/LATEST           name of the newest complete epoch directory
    model.safetensors            final weights (written when training ends)
    run.json                     status, history, provenance, wall time

An epoch directory is written under a temporary name and renamed when complete; ``LATEST`` is
replaced atomically afterwards, so a process killed at any moment leaves the previous checkpoint
intact. Loading never unpickles arbitrary objects: weights come from safetensors and the
optimiser/RNG state through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from robustprune.utils import UserError, atomic_write, atomic_write_text, fault_point

CKPT_DIR = "checkpoints"


class CheckpointError(UserError, RuntimeError):
    """A missing, incomplete or corrupt checkpoint; the message names the file."""


@dataclass
class Checkpoint:
    epoch: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]


def save_weights(model_or_state: nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors, atomically."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p)))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt weights file {path}: {e}") from e


def save_checkpoint(run_dir: Path, epoch: int, model: nn.Module, state: dict[str, Any], *, keep: int = 1) -> Path:
    """Write epoch ``epoch`` as a complete directory, then point ``LATEST`` at it."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:04d}"
    tmp = root / f".epoch-{epoch:04d}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_weights(model, tmp / "model.safetensors")
        atomic_write(tmp / "state.pt", lambda p: torch.save(state, p))
        fault_point("checkpoint-written")
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("checkpoint-renamed")
    atomic_write_text(root / "LATEST", final.name + "\n")
    for old in sorted(root.glob("epoch-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CKPT_DIR / "LATEST"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Load the newest complete checkpoint of a run."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise CheckpointError(f"no checkpoint in {Path(run_dir) / CKPT_DIR}")
    weights = load_weights(path / "model.safetensors")
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt pickles
        raise CheckpointError(f"corrupt training state {path / 'state.pt'}: {e}") from e
    check_state(state, path / "state.pt")
    return Checkpoint(epoch=state["epoch"], weights=weights, state=state)


#: the entries of a training state (``Trainer.train_epoch`` writes them) and their types
STATE_TYPES: dict[str, type | tuple[type, ...]] = {"epoch": int, "global_step": int, "wall_s": (int, float),
                                                   "history": list, "optimizers": list, "schedulers": list}


def check_state(state: Any, path: Path) -> None:
    """A training state holds every entry of :data:`STATE_TYPES` with its type (``method``, a
    dict, is optional); anything else raises :class:`CheckpointError` naming the file and entry."""
    if not isinstance(state, dict):
        raise CheckpointError(f"training state {path} is a {type(state).__name__}, not a mapping")
    for key, kind in STATE_TYPES.items():
        if key not in state:
            raise CheckpointError(f"training state {path} has no {key!r}")
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"training state {path}: {key!r} is {state[key]!r}, not {kind}")
    if not isinstance(state.get("method", {}), dict):
        raise CheckpointError(f"training state {path}: 'method' is {state['method']!r}, not a mapping")
