"""Two gloo processes under torchrun train the same weights as one process with the same global
batch, and resume works in distributed mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustprune
from robustprune.config import TrainConfig
from robustprune.train import fit
from robustprune.train.checkpoint import load_checkpoint, load_weights

ARGS = ["--method", "standard", "--model", "lenet5-caffe", "--dataset", "mnist", "--batch-size", "32",
        "--limit-train", "128", "--no-progress", "--device", "cpu", "--schedule", "constant"]


def torchrun(tmp: Path, data: Path, out: Path, *extra: str) -> None:
    src = str(Path(robustprune.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "robustprune", "train", *ARGS, "--data-dir", str(data), "--out", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)


def test_two_ranks_match_one_process_and_resume(tiny_mnist: Path, tmp_path: Path) -> None:
    single = fit(TrainConfig(method="standard", model="lenet5-caffe", dataset="mnist", batch_size=32,
                             limit_train=128, epochs=2, out=str(tmp_path / "one"), data_dir=str(tiny_mnist),
                             progress=False, device="cpu", schedule="constant"))
    torchrun(tmp_path, tiny_mnist, tmp_path / "two", "--epochs", "2")
    w1, w2 = load_weights(single / "model.safetensors"), load_weights(tmp_path / "two" / "model.safetensors")
    assert close(w1, w2)
    # distributed resume: one epoch, then continue to two (a constant schedule does not depend on the epoch count)
    torchrun(tmp_path, tiny_mnist, tmp_path / "res", "--epochs", "1")
    assert load_checkpoint(tmp_path / "res").epoch == 1
    torchrun(tmp_path, tiny_mnist, tmp_path / "res", "--epochs", "2", "--resume")
    assert close(w2, load_weights(tmp_path / "res" / "model.safetensors"))


def test_global_batch_must_split_evenly(tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.train.distributed import DistInfo, shard_batch_size

    assert shard_batch_size(64, DistInfo(0, 2, 0)) == 32
    with pytest.raises(ValueError, match="batch_size=33"):
        shard_batch_size(33, DistInfo(0, 2, 0))
