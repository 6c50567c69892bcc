"""Training: the one loop (``fit``), checkpoints, and loading finished runs."""

from robustprune.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from robustprune.train.loop import fit
from robustprune.train.run import LoadedRun, load_run

__all__ = ["CheckpointError", "LoadedRun", "fit", "load_checkpoint", "load_run", "save_checkpoint"]
