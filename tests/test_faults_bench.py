"""bench/faults.py's options and record: ``--only`` refuses an unknown group naming it, and the
tally written by ``--json`` counts per group (data lost = files unreadable + results differing)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faults() -> ModuleType:
    return load_script("bench/faults.py", "faults_bench")


def test_only_refuses_an_unknown_group_naming_it() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "faults.py"), "--only", "ray,jobs3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "unknown group(s) 'jobs3'; choose from kill, enospc, second-runner, tmpfs, jobs2, ray" in proc.stderr


def test_only_parses_known_groups(faults: ModuleType) -> None:
    assert faults.parse_groups("ray, kill") == ["ray", "kill"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown group\(s\) ','"):
        faults.parse_groups(",")


def test_tally_groups_sum_per_group(faults: ModuleType) -> None:
    tally = faults.Tally()
    common = {"temp": [], "label": "x"}
    tally.add("ray", "Ray kill", "train-step", ended_ok=True, bad_files=[], diffs=[], exit=0, **common)
    tally.add("ray", "Ray kill", "eval-batch", ended_ok=True, bad_files=["a.json"], diffs=["/cards: 1 != 2"],
              **common)
    tally.add("kill", "kill -9", "train-step", ended_ok=False, bad_files=[], diffs=[], **common)
    groups = tally.groups()
    assert set(groups) == {"ray", "kill"}
    ray = groups["ray"]
    assert (ray["injections"], ray["survived"], ray["data_lost"]) == (2, 1, 2)
    assert [r["point"] for r in ray["rows"]] == ["train-step", "eval-batch"]
    assert ray["details"][0]["exit"] == 0 and ray["details"][1]["survived"] is False
    assert (groups["kill"]["injections"], groups["kill"]["survived"], groups["kill"]["data_lost"]) == (1, 0, 0)
