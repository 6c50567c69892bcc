"""Strict readers and writers for the on-disk formats: IDX (MNIST family) and CIFAR python pickles.

Every reader checks what it reads against its header and raises :class:`DataError` naming the
file and the fault: a damaged file never turns into a silently wrong dataset.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from robustprune.data.catalog import DataError

IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS = 0x00000801  # unsigned bytes, 1 dimension


def read_bytes(path: Path) -> bytes:
    """The content of ``path``, gunzipped when its name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: broken gzip data ({type(e).__name__}: {e})") from e


def parse_idx(data: bytes, *, magic: int, source: Path | str) -> np.ndarray:
    """Decode one uint8 IDX file; the size must match its header to the byte."""
    ndim = magic & 0xFF
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"{source}: truncated IDX header ({len(data)} bytes, need {head})")
    (found,) = struct.unpack_from(">I", data, 0)
    if found != magic:
        raise DataError(f"{source}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    if ndim > 1 and min(dims[1:]) == 0:
        raise DataError(f"{source}: IDX dimensions {dims} have a zero extent")
    want = head + math.prod(dims)  # Python ints: a product of 32-bit extents must not wrap
    if len(data) != want:
        what = "truncated" if len(data) < want else "trailing bytes"
        raise DataError(
            f"{source}: {what}: header says dimensions {dims} ({want} bytes), file has {len(data)}"
        )
    try:
        return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)
    except ValueError as e:  # e.g. (0, 2^32-1, 2^32-1): zero bytes, but numpy refuses the shape
        raise DataError(f"{source}: IDX dimensions {dims} cannot be an array ({e})") from e


def read_idx_images(path: Path, *, image_size: int) -> np.ndarray:
    """Images ``[N, 1, H, W]`` uint8 from an IDX file, checked to be ``image_size`` square."""
    arr = parse_idx(read_bytes(path), magic=IDX_IMAGES, source=path)
    if arr.shape[1:] != (image_size, image_size):
        size = f"{arr.shape[1]}x{arr.shape[2]}"
        raise DataError(f"{path}: images are {size}, expected {image_size}x{image_size}")
    return arr[:, None]


def read_idx_labels(path: Path, *, num_classes: int) -> np.ndarray:
    """Labels ``[N]`` uint8 from an IDX file, checked to lie in ``[0, num_classes)``."""
    arr = parse_idx(read_bytes(path), magic=IDX_LABELS, source=path)
    check_labels(arr, num_classes=num_classes, source=path)
    return arr


def check_labels(labels: np.ndarray, *, num_classes: int, source: Path | str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{source}: labels span [{labels.min()}, {labels.max()}], expected [0, {num_classes - 1}]"
        )


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (3-D images or 1-D labels)."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"IDX needs a 1-D or 3-D uint8 array, got {array.dtype} with shape {array.shape}")
    header = struct.pack(f">I{array.ndim}I", 0x800 + array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


# --- restricted unpickling -------------------------------------------------------------------

def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {name} in {modules}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
# (module, name) as written in the pickle -> (where to find it in the installed numpy, name).
_ALLOWED = {
    ("numpy", "ndarray"): (("numpy",), "ndarray"),
    ("numpy", "dtype"): (("numpy",), "dtype"),
    **{(m, "_reconstruct"): (_MULTIARRAY, "_reconstruct") for m in _MULTIARRAY},
    **{(m, "scalar"): (_MULTIARRAY, "scalar") for m in _MULTIARRAY},
    **{(m, "_frombuffer"): (_NUMERIC, "_frombuffer") for m in _NUMERIC},
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, bytes and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 spells bytes under Python 3
            return _latin1_encode
        if (module, name) in _ALLOWED:
            modules, attr = _ALLOWED[(module, name)]
            return _numpy_attr(modules, attr)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``codecs.encode`` as protocol-2 pickles call it for bytes (``latin1`` only, no other codec)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}) (only latin1)")
    return text.encode("latin1")


class Readable(Protocol):
    """A binary file object, as ``pickle.Unpickler`` reads it."""

    def read(self, n: int, /) -> bytes: ...

    def readline(self) -> bytes: ...


def safe_unpickle(fh: Readable, *, source: Path | str) -> Any:
    """Unpickle data made of containers and numpy arrays; anything else raises :class:`DataError`.

    Every exception of the unpickler is a damaged or hostile file: a flipped byte reaches pickle's
    and numpy's reconstruction code with states they reject in many ways (``LookupError``,
    ``OverflowError``, ``MemoryError`` for an absurd declared size, numpy's ``RuntimeError`` and
    ``SystemError``), so all of them become the one named error."""
    try:
        return _NumpyOnlyUnpickler(fh, encoding="latin1").load()
    except Exception as e:
        raise DataError(f"{source}: cannot unpickle ({type(e).__name__}: {e})") from e


def _get(d: dict, key: str, source: Path) -> Any:
    for k in (key, key.encode()):
        if k in d:
            return d[k]
    raise DataError(f"{source}: no {key!r} entry (keys: {sorted(map(str, d))})")


def _array(value: Any, key: str, source: Path) -> np.ndarray:
    """``np.asarray(value)``; a value numpy cannot make an array of (ragged lists) is a :class:`DataError`."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:
        raise DataError(f"{source}: {key!r} is not an array ({type(e).__name__}: {e})") from e


def read_cifar_batch(path: Path, *, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3, 32, 32]`` uint8 and labels ``[N]`` from one CIFAR python batch file.

    Each 3072-byte row holds the red plane, then green, then blue, each row-major 32x32.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from e
    d = safe_unpickle(io.BytesIO(raw), source=path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a dict, found {type(d).__name__}")
    data = _array(_get(d, "data", path), "data", path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]")
    labels = _array(_get(d, label_key, path), label_key, path)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: {label_key!r} holds {labels.dtype} values, expected integers")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {label_key!r} has shape {labels.shape}")
    check_labels(labels, num_classes=num_classes, source=path)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
