"""Load one of the repository's scripts (``bench/*.py``, ``scripts/*.py``) as a module, for tests of
the functions inside it; they are files, not an importable package."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str, name: str | None = None) -> ModuleType:
    """The module of ``ROOT / relative`` (e.g. ``"bench/mutation.py"``), executed afresh."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
