"""Shared fixtures: tiny generated datasets in torchvision's MNIST layout, tiny configs; the skip
report that CI reads (``ROBUSTPRUNE_SKIP_REPORT``)."""

from __future__ import annotations

import gzip
import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


def real_mnist(split: str, n: int | None = None, *, download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Real MNIST (``train`` or ``test``; the first ``n`` points) as [0, 1] floats, from the package's
    own data location ($ROBUSTPRUNE_DATA, else the cache; fetched there when ``download`` and a
    source is reachable). Skips the calling test, naming why, when it cannot be had."""
    from robustprune.data import DataError, load_split

    try:
        x, y = load_split("mnist", split, download=download)
    except DataError as e:
        pytest.skip(f"real MNIST not available (set ROBUSTPRUNE_DATA to a directory holding it): {e}")
    return x[:n].float().div_(255), y[:n]


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> None:
    """Write a uint8 IDX file (magic 0x0803 for 3-D images, 0x0801 for 1-D labels)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten fixed random 28×28 prototypes plus noise: learnable in a few steps."""
    protos = np.random.default_rng(1234).random((10, 28, 28)) > 0.6
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = protos[labels] * 200 + rng.integers(0, 55, (n, 28, 28))
    return images.astype(np.uint8), labels


def write_tiny_mnist(root: Path) -> Path:
    """Write a 256/64 synthetic 'MNIST' in torchvision's layout under ``root``; returns ``root``."""
    raw = root / "MNIST" / "raw"
    for split, n, seed in (("train", 256, 0), ("t10k", 64, 1)):
        images, labels = make_digits(n, seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    """A data directory holding a 256/64 synthetic 'MNIST' in torchvision's layout."""
    return write_tiny_mnist(tmp_path / "data")


#: training flags of the tiny CLI runs (64 images, batch 32, PGD-2 of 0.1)
TINY = ["--limit-train", "64", "--batch-size", "32", "--adv-steps", "2", "--adv-step-size", "0.1", "--no-progress"]


@pytest.fixture
def at_run(tiny_mnist: Path, tmp_path: Path) -> Path:
    """A tiny AT run of LeNet5-Caffe on ``tiny_mnist``, trained through the CLI."""
    from robustprune.cli import main

    out = tmp_path / "at"
    assert main(["train", "--method", "at", "--model", "lenet5-caffe", "--dataset", "mnist", "--epochs", "1",
                 "--out", str(out), "--data-dir", str(tiny_mnist), *TINY]) == 0
    return out


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread avoids OpenMP hand-offs that made such ops up to ~50x slower on a
    loaded 2-core machine (used by the audit tests through ``pytestmark``)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def plain() -> nn.Module:
    """The plain trained MLP of tests/robust_toys.py (trained once per module, one thread)."""
    from robust_toys import trained_mlp

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trained_mlp()
    finally:
        torch.set_num_threads(prev)


# ------------------------------------------------------------------ skip report (read by .ci/skips.py)
#: every skipped test or module of this session: its node id and the reason pytest gave
_SKIPPED: list[dict[str, str]] = []


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when in ("setup", "call"):
        _SKIPPED.append({"nodeid": report.nodeid, "reason": _skip_reason(report)})


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a module that skips as a whole (a module-level pytest.importorskip)
        _SKIPPED.append({"nodeid": report.nodeid, "reason": _skip_reason(report)})


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With ``ROBUSTPRUNE_SKIP_REPORT=FILE`` set, write this session's skips to FILE as JSON, so
    that CI can tell a test skipped for a missing optional package from one skipped for a missing
    required one (and run the former again once the extras are installed)."""
    path = os.environ.get("ROBUSTPRUNE_SKIP_REPORT")
    if path:
        tmp = Path(path).with_name(Path(path).name + ".tmp")
        tmp.write_text(json.dumps({"skipped": _SKIPPED}, indent=1) + "\n")
        os.replace(tmp, path)
