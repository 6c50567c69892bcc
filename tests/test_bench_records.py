"""The committed benchmark records (bench/**/*.json) name no path of the machine that wrote them:
their commands say DATA for the data directory and DIR for a scratch directory, as RESULTS does; and
bench/mutation.py's resume from a stopped run's record keeps and reruns the right mutants."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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


def _earlier(commit: str, tool: str) -> dict[str, object]:
    """A stopped run's record over two files: ``same`` (unchanged since) and ``edited``."""
    def entry(name: str, status: str, equivalent: str | None = None) -> dict[str, object]:
        return {"name": f"robustprune.sparsity.{name}", "status": status, "equivalent": equivalent}
    return {"kind": "mutation", "package": "sparsity", "tool": tool, "commit": commit, "date": "d", "command": "c",
            "not_killed": [entry("same.x_f__mutmut_2", "survived", "a default every caller overrides"),
                           entry("same.x_f__mutmut_3", "survived"), entry("same.x_f__mutmut_4", "not checked"),
                           entry("same.x_f__mutmut_5", "no tests"), entry("edited.x_g__mutmut_1", "not checked")]}


def test_a_resumed_mutation_run_runs_only_what_the_stopped_one_left() -> None:
    module = load_script("bench/mutation.py", "mutation_bench")
    earlier = _earlier("c0", "mutmut x")
    keep = {"robustprune.sparsity.same.x_f__mutmut_2": "survived"}
    names = module.to_run(earlier, "sparsity", ["edited"], keep)
    # the equivalent survivor and the killed mutants (not listed) are not run; every mutant of a changed file is
    assert names == ["robustprune.sparsity.same.x_f__mutmut_3", "robustprune.sparsity.same.x_f__mutmut_4",
                     "robustprune.sparsity.same.x_f__mutmut_5", "robustprune.sparsity.edited.*"]
    new = {f"robustprune.sparsity.same.x_f__mutmut_{i}": "not checked" for i in (1, 2, 3, 4, 5)}
    new |= {"robustprune.sparsity.same.x_f__mutmut_3": "killed", "robustprune.sparsity.same.x_f__mutmut_5": "killed",
            "robustprune.sparsity.edited.x_g__mutmut_1": "not checked",
            "robustprune.sparsity.edited.x_g__mutmut_2": "survived",
            "robustprune.sparsity.edited.x_g__mutmut_3": "not checked"}
    merged, carried = module.merge_carried(new, earlier, ["edited"], keep)
    assert merged == {
        "robustprune.sparsity.same.x_f__mutmut_1": "killed",        # killed before (not listed), not run now
        "robustprune.sparsity.same.x_f__mutmut_2": "survived",      # equivalent before, kept
        "robustprune.sparsity.same.x_f__mutmut_3": "killed",        # survived before, killed by the new run
        "robustprune.sparsity.same.x_f__mutmut_4": "not checked",   # not reached by either run
        "robustprune.sparsity.same.x_f__mutmut_5": "killed",
        "robustprune.sparsity.edited.x_g__mutmut_1": "not checked",  # a changed file takes only the new run's word
        "robustprune.sparsity.edited.x_g__mutmut_2": "survived",
        "robustprune.sparsity.edited.x_g__mutmut_3": "not checked"}  # not listed, yet not taken as killed
    assert carried == 1


def test_a_resumed_mutation_run_checks_its_record() -> None:
    mutmut = pytest.importorskip("mutmut")
    module = load_script("bench/mutation.py", "mutation_bench")
    tool = f"mutmut {mutmut.__version__}"
    with pytest.raises(SystemExit, match="package 'metrics'"):
        module.carried_results(_earlier("HEAD", tool), "metrics")
    with pytest.raises(SystemExit, match="mutant names may differ"):
        module.carried_results(_earlier("HEAD", "mutmut 0.0"), "sparsity")
    with pytest.raises(SystemExit, match="cannot compare commit nosuchcommit"):
        module.carried_results(_earlier("nosuchcommit", tool), "sparsity")
    keep, changed = module.carried_results(_earlier("HEAD", tool), "sparsity")
    assert changed == [] and keep == {"robustprune.sparsity.same.x_f__mutmut_2": "survived"}


def test_a_first_record_of_a_kept_directory_keeps_its_note(tmp_path: Path) -> None:
    pytest.importorskip("mutmut")
    module = load_script("bench/mutation.py", "mutation_bench")
    meta = tmp_path / "keep" / "mutants" / "src" / "robustprune" / "metrics" / "m.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text('{"exit_code_by_key": {"robustprune.metrics.m.x_f__mutmut_1": 1, '
                    '"robustprune.metrics.m.x_f__mutmut_2": null}}')
    out = tmp_path / "record.json"
    assert module.main(["metrics", "--record-only", "--keep", str(tmp_path / "keep"), "--commit", "abc",
                        "--tests", "tests/test_metrics.py", "--out", str(out), "--note", "retested by hand"]) == 0
    record = json.loads(out.read_text())
    assert record["retested"]["note"] == "retested by hand" and record["commit"] == "abc"
    assert record["counts"] == {"killed": 1, "not checked": 1} and record["command"].count("DIR") == 1


def test_a_retest_reruns_the_survivors_with_the_tests_their_function_is_tied_to(tmp_path: Path) -> None:
    pytest.importorskip("mutmut")
    module = load_script("bench/mutation.py", "mutation_bench")
    mutants = tmp_path / "mutants"
    meta = mutants / "src" / "robustprune" / "metrics" / "m.py.meta"
    meta.parent.mkdir(parents=True)
    name = "robustprune.metrics.m.x_f__mutmut_{}".format
    meta.write_text(json.dumps({"exit_code_by_key": {name(1): 0, name(2): 0, name(3): 1, name(4): 0, name(5): None,
                                                     name(6): 0}}))
    probe = "tests/test_retest_probe.py"
    (mutants / "mutmut-stats.json").write_text(json.dumps({
        "tests_by_mangled_function_name": {"robustprune.metrics.m.x_f": [f"{probe}::test_tied"]},
        "duration_by_test": {f"{probe}::test_tied": 0.1, f"{probe}::test_old_elsewhere": 0.1}}))
    (mutants / "tests").mkdir()
    # test_tied (known to the run, tied to the function) fails under mutant 1, test_new (written after
    # the run) under mutant 2, test_old_elsewhere (known, tied to another function) under mutant 6
    (mutants / probe).write_text(
        "import os\n\nM = os.environ.get('MUTANT_UNDER_TEST', '')\n\n"
        "def test_tied():\n    assert not M.endswith('_1')\n\n"
        "import pytest\n\n@pytest.mark.parametrize('v', ['a parametrised id with spaces'])\n"
        "def test_new(v):\n    assert not M.endswith('_2')\n\n"
        "def test_old_elsewhere():\n    assert not M.endswith('_6')\n")
    (mutants / "None").write_text("left by a mutant that wrote to str(None)")
    (tmp_path / "pyproject.toml").write_text("")
    (mutants / "pyproject.toml").write_text("")
    got = module.retest(tmp_path, "metrics", {name(4): "judged equivalent"}, timeout=300)
    assert got["retested"] == 3 and got["killed"] == 2 and len(got["tests_commit"]) == 40 and got["undecided"] == {}
    assert got["stray_files_removed"] == ["None"] and (mutants / "pyproject.toml").is_file()
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    assert codes == {name(1): 1, name(2): 1, name(3): 1, name(4): 0, name(5): None, name(6): 0}
    assert (mutants / "tests" / "conftest.py").is_file()  # the committed tests were put in the kept copy
