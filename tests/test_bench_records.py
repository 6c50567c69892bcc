"""The committed benchmark records (bench/**/*.json) name no path of the machine that wrote them:
their commands say DATA for the data directory and DIR for a scratch directory, as RESULTS does."""

from __future__ import annotations

import re
from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|var/tmp)/")


def test_no_committed_record_names_a_machine_path() -> None:
    records = sorted((ROOT / "bench").rglob("*.json"))
    assert records, "no records found under bench/"
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in records
                 for m in [MACHINE_PATH.search(p.read_text(errors="replace"))] if m]
    assert not offenders, offenders


def test_the_mutation_record_writes_its_scratch_directory_as_dir() -> None:
    module = load_script("bench/mutation.py", "mutation_bench")
    assert module.shown_command(["attacks", "--keep", "/scratch/x", "--max-children", "2"]) == \
        "python bench/mutation.py attacks --keep DIR --max-children 2"
    assert module.shown_command(["metrics"]) == "python bench/mutation.py metrics"
    assert MACHINE_PATH.search('"command": "x --out /tmp/a"') and not MACHINE_PATH.search("bench/tmp/x")
