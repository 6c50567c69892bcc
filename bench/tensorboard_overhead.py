"""Benchmark: what the TensorBoard training log costs in an adversarial-training epoch.

An AT epoch of LeNet5-Caffe (the MNIST threat model: PGD-20 of 0.01 in ε 0.3, batch 64, Adam
1e-3) on generated MNIST-shaped data (ten random prototypes plus noise, written as IDX files to a
temporary directory), trained with ``robustprune.train.fit`` with and without ``tensorboard``. The
two settings alternate ``--repeats`` times so slow drifts of a shared machine hit both alike.

Two numbers per setting:

1. the epoch's wall seconds (``run.json``'s history ``time_s``), with and without the log;
2. the seconds spent inside the logger during the epoch (``TrainLogger.step`` and ``epoch`` timed
   with ``perf_counter``) as a share of the epoch: the cost that (1) measures through the noise of
   a busy machine. Opening the writer and closing it (outside the epoch, once per run) are
   recorded apart (``open_s``, ``close_s``).

    python bench/tensorboard_overhead.py --examples 10000 --repeats 3 --out bench/tensorboard_overhead.json
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustprune.config import TrainConfig
from robustprune.train import fit
from robustprune.train import tensorboard as tb
from robustprune.utils import provenance


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(str(path) + ".gz", "wb") as f:
        f.write(header + array.tobytes())


def generated_mnist(root: Path, n_train: int, n_test: int = 256) -> Path:
    """MNIST-shaped learnable data in torchvision's layout under ``root``."""
    protos = np.random.default_rng(1234).random((10, 28, 28)) > 0.6
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = protos[labels] * 200 + rng.integers(0, 55, (n, 28, 28))
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels)
    return root


class Timed:
    """Wraps the logger's methods and sums the seconds spent in each (``__init__`` and ``close`` run
    outside the epoch: opening the writer, flushing it at the end)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"__init__": 0.0, "step": 0.0, "epoch": 0.0, "close": 0.0}
        self.originals: dict[str, Callable[..., Any]] = {}

    def __enter__(self) -> Timed:
        for name in ("__init__", "step", "epoch", "close"):
            orig = getattr(tb.TrainLogger, name)
            self.originals[name] = orig

            def timed(*args: Any, _orig: Callable[..., Any] = orig, _name: str = name, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _orig(*args, **kw)
                finally:
                    self.seconds[_name] += time.perf_counter() - t0

            setattr(tb.TrainLogger, name, functools.wraps(orig)(timed))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, orig in self.originals.items():
            setattr(tb.TrainLogger, name, orig)


def one_epoch(data: Path, out: Path, *, logging: bool, every: int, examples: int) -> dict[str, float]:
    cfg = TrainConfig(method="at", model="lenet5-caffe", dataset="mnist", epochs=1, batch_size=64,
                      limit_train=examples, out=str(out), data_dir=str(data), progress=False,
                      tensorboard=logging, tensorboard_every=every)
    with Timed() as timer:
        fit(cfg)
    epoch_s = json.loads((out / "run.json").read_text())["history"][0]["time_s"]
    sec = timer.seconds
    return {"epoch_s": epoch_s, "logger_s": sec["step"] + sec["epoch"], "open_s": sec["__init__"],
            "close_s": sec["close"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=10000, help="generated training examples (one epoch)")
    p.add_argument("--repeats", type=int, default=3, help="epochs per setting, alternating")
    p.add_argument("--every", type=int, default=50, help="tensorboard_every (the default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=str, default="bench/tensorboard_overhead.json")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = generated_mnist(Path(tmp) / "data", a.examples)
        for r in range(a.repeats):
            for setting in ("off", "on"):
                res = one_epoch(data, Path(tmp) / f"{setting}{r}", logging=setting == "on", every=a.every,
                                examples=a.examples)
                rows[setting].append(res)
                print(f"repeat {r} tensorboard {setting}: epoch {res['epoch_s']:.2f} s, "
                      f"in the logger {res['logger_s']:.4f} s (open {res['open_s']:.3f} s, "
                      f"close {res['close_s']:.3f} s)", flush=True)
    off = statistics.median(x["epoch_s"] for x in rows["off"])
    on = statistics.median(x["epoch_s"] for x in rows["on"])
    logger = statistics.median(x["logger_s"] / x["epoch_s"] for x in rows["on"])
    summary = {"median_epoch_s_off": off, "median_epoch_s_on": on, "epoch_ratio_on_off": on / off,
               "median_logger_share_pct": 100 * logger}
    print(json.dumps(summary, indent=2))
    record = {"settings": vars(a), "rows": rows, "summary": summary, "threads": torch.get_num_threads(),
              **provenance("cpu"), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(a.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
