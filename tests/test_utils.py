"""Atomic writes: all or nothing, and ordinary file permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from robustprune.utils import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_and_leaves_no_temp_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "card.json"
    atomic_write_json(path, {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == '{\n  "a": 1\n}\n'  # the old file, untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["card.json"]  # no temp file left


def test_atomic_write_uses_the_umask_not_mkstemps_private_mode(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
