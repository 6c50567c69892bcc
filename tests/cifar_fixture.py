"""Tiny synthetic CIFAR-10 and CIFAR-100 in the official "python version" layout.

The files are those of ``cifar-10-python.tar.gz`` and ``cifar-100-python.tar.gz`` once unpacked, as
torchvision and robustprune's loader read them::

    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

each a pickled dict with bytes keys: ``data`` uint8 ``[N, 3072]`` (the red plane, then green, then
blue, each row-major 32x32), the labels as a list of ints (``labels``; CIFAR-100 ``fine_labels``
and ``coarse_labels``), ``filenames`` and ``batch_label``. The images are a fixed random pattern per
class at a low amplitude plus uniform noise: a model can learn something in a few steps but is not
robust at ε = 8/255, so attacks finish quickly. Only the published md5s differ from the real
files, and those are checked on downloads only (``robustprune.data.sources``): a user's own files
in the data directory are read as they are.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
#: amplitude of the class pattern and of the noise, in pixel levels (0..255)
SIGNAL, NOISE = 6, 48


def make_images(n: int, *, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of uint8 ``[n, 3072]`` and int labels ``[n]``: a class pattern (fixed per
    ``num_classes``) of +-``SIGNAL`` levels around 128 plus uniform noise of +-``NOISE``."""
    patterns = np.random.default_rng(num_classes).choice([-1, 1], size=(num_classes, 3072))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    noise = rng.integers(-NOISE, NOISE + 1, (n, 3072))
    rows = np.clip(128 + SIGNAL * patterns[labels] + noise, 0, 255).astype(np.uint8)
    return rows, labels


def _dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the official files are protocol-2 pickles


def _batch(rows: np.ndarray, labels: dict[bytes, np.ndarray], name: bytes, first: int) -> dict:
    names = [b"synthetic_%06d.png" % (first + i) for i in range(len(rows))]
    return {b"batch_label": name, b"data": rows, b"filenames": names,
            **{k: [int(v) for v in y] for k, y in labels.items()}}


def write_cifar10(root: Path, *, train: int = 300, test: int = 100, seed: int = 0) -> Path:
    """Write a ``train``/``test``-image CIFAR-10 under ``root``; returns ``root`` (the data directory).

    The training images are spread over the five ``data_batch_*`` files, as in the real set."""
    folder = root / CIFAR10_DIR
    x, y = make_images(train, num_classes=10, seed=seed)
    parts = np.array_split(np.arange(train), 5)
    for i, idx in enumerate(parts, 1):
        _dump(folder / f"data_batch_{i}",
              _batch(x[idx], {b"labels": y[idx]}, b"training batch %d of 5" % i, int(idx[0]) if len(idx) else 0))
    xt, yt = make_images(test, num_classes=10, seed=seed + 1)
    _dump(folder / "test_batch", _batch(xt, {b"labels": yt}, b"testing batch 1 of 1", 0))
    _dump(folder / "batches.meta", {b"num_cases_per_batch": len(parts[0]), b"num_vis": 3072,
                                    b"label_names": [b"class%d" % k for k in range(10)]})
    return root


def write_cifar100(root: Path, *, train: int = 300, test: int = 100, seed: int = 0) -> Path:
    """Write a ``train``/``test``-image CIFAR-100 under ``root``; returns ``root``. Coarse label =
    fine label // 5 (20 superclasses), as in the real set's shape, not its mapping."""
    folder = root / CIFAR100_DIR
    for split, n, s in (("train", train, seed), ("test", test, seed + 1)):
        x, y = make_images(n, num_classes=100, seed=s)
        _dump(folder / split, _batch(x, {b"fine_labels": y, b"coarse_labels": y // 5}, split.encode(), 0))
    _dump(folder / "meta", {b"fine_label_names": [b"fine%d" % k for k in range(100)],
                            b"coarse_label_names": [b"coarse%d" % k for k in range(20)]})
    return root


def expected(num_classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What the loader should return for a split written with ``n`` images and ``seed``: images
    uint8 ``[n, 3, 32, 32]`` and labels ``[n]``."""
    x, y = make_images(n, num_classes=num_classes, seed=seed)
    return x.reshape(n, 3, 32, 32), y
