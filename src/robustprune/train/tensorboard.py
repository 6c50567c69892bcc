"""Training curves as TensorBoard event files: ``RUN/tensorboard/events.out.tfevents.*``.

:class:`TrainLogger` is what :func:`robustprune.train.fit` writes through (on by default; off with
``--no-tensorboard`` or ``tensorboard: false``). Each run writes under its own directory, so
``tensorboard --logdir DIR`` shows every run below ``DIR`` (a suite's ``DIR/runs/*``) side by side.

Tags (x axis: the optimiser step, counted from the start of training):

- ``train/<key>``: every value the method's loss logs (``loss``, ``acc``, ``adv_acc``, ``kl``...),
  averaged over the last ``every`` steps of this process (rank 0's shard under DDP);
- ``lr/<group>``: the learning rate of each parameter group (``weights``, ``masks``...);
- ``masks/<metric>/<layer>``: what the method monitors about its model (``Method.monitor``: for the
  mask-learning methods each layer's keep-rate, mean expected keep probability and KL), at the same steps;
- ``epoch/<key>`` (x axis: the epoch, 1-based): the run history's row of that epoch, i.e. the
  epoch means averaged over processes, ``time_s`` and the method's ``on_epoch_end`` values.

Only rank 0 writes. A resumed run purges the events written after its last checkpoint (they belong
to the epoch that is trained again). Values are fetched from the device only every ``every``
steps, and the writer sends them to disk from its own thread, so logging costs little
(bench/tensorboard_overhead.py measures it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

#: the subdirectory of a run directory that holds its event files
TB_DIR = "tensorboard"


class TrainLogger:
    """Writes a run's training scalars to ``run_dir/tensorboard``; does nothing when not ``enabled``.

    Args:
        run_dir: the run directory.
        enabled: write at all (``False``: every method is a no-op and nothing is imported or created).
        every: steps between two writes of the step scalars (the mean of those steps is written).
        purge_step: on resume, the first step trained again; events at or after it are dropped.
        monitor: called at each write, returns extra scalars (``Method.monitor`` of the model), logged
            under ``masks/``.

    >>> log = TrainLogger("runs/at", enabled=True, every=50)             # doctest: +SKIP
    >>> log.step(1, {"loss": loss}, {"weights": 1e-3}); log.close()      # doctest: +SKIP
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, every: int = 50,
                 purge_step: int | None = None, monitor: Callable[[], Mapping[str, float]] | None = None) -> None:
        if every < 1:
            raise ValueError(f"tensorboard_every must be >= 1, got {every}")
        self.every = every
        self.monitor = monitor
        self.log_dir = Path(run_dir) / TB_DIR
        self._sums: dict[str, Tensor] = {}
        self._n = 0
        self.writer: Any = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package

            self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def step(self, global_step: int, logs: Mapping[str, Tensor], lrs: Mapping[str, float], *,
             last: bool = False) -> None:
        """Add one optimiser step's ``logs``; every ``every`` steps (and at the ``last`` step of an
        epoch) write their mean since the previous write, the learning rates ``lrs`` and the monitor's values."""
        if self.writer is None:
            return
        for k, v in logs.items():  # device-side sums: no host synchronisation between writes
            self._sums[k] = self._sums[k] + v.detach() if k in self._sums else v.detach().clone()
        self._n += 1
        if global_step % self.every and not last:
            return
        for k, v in self._sums.items():
            self.writer.add_scalar(f"train/{k}", float(v) / self._n, global_step)
        for name, lr in lrs.items():
            self.writer.add_scalar(f"lr/{name}", lr, global_step)
        if self.monitor is not None:
            for k, value in self.monitor().items():
                self.writer.add_scalar(f"masks/{k}", value, global_step)
        self._sums, self._n = {}, 0

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """Write the numeric values of the history ``row`` of ``epoch`` (1-based) as ``epoch/<key>``."""
        if self.writer is None:
            return
        for k, v in row.items():
            if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"epoch/{k}", float(v), epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
