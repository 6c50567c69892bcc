"""Mutation testing of one package at a time with mutmut: how many small changes to the code the
tests catch. A benchmark of the test suite, not part of the default test run.

    pip install -e ".[dev,mutation]"
    python bench/mutation.py metrics                          # every file, the tests that import it
    python bench/mutation.py sparsity --files bbdropout.py,magnitude.py --tests tests/test_bbdropout.py

It exports the committed tree (``git archive HEAD``: uncommitted changes are not measured) to a
scratch directory, writes mutmut's ``[mutmut]`` settings there (``setup.cfg``: the package's files
to mutate, the test files to run, the fork server that torch needs) and runs ``mutmut run``. mutmut
first runs the selected tests once to learn which tests reach which function, then, for each
mutant, runs only those tests. The test files default to those that import
``robustprune.<package>``: a mutant reached only by other tests counts as not killed here.

Writes ``bench/mutation_<package>.json`` (``--out``): the counts by mutmut's status, the kill rate,
every survivor with its diff, the date, machine, command, commit and wall time. Mutants judged
equivalent (no test can tell them apart: e.g. a changed default that every caller overrides) are
listed with the reason in ``bench/mutation_equivalent.json`` ({mutant: reason}) and left out of
``kill_rate_non_equivalent`` = killed / (mutants - equivalent).

A package too large for one sitting goes on from the record of a stopped run (``--resume-from``;
the record lists every mutant that was not killed, so every other one was): mutants of files whose
source is unchanged since that record's commit keep their result when it was killed, or survived
and judged equivalent; ``mutmut run`` is given the names of all the others (and every mutant of a
changed file), so checked mutants are not run again::

    python bench/mutation.py sparsity --keep DIR --resume-from bench/mutation_sparsity_partial.json \
        --out bench/mutation_sparsity_partial.json                 # stopped again: then, from DIR,
    python bench/mutation.py sparsity --record-only --keep DIR --commit C --resume-from OLD --out NEW

Tests written after a run started are not in its copy of ``tests/``: ``--record-only --retest`` first
reruns the kept directory's survivors with the committed tests (see ``retest``), then writes the record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attacks", "defenses", "metrics", "sparsity", "train")
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.json"


def default_tests(work: Path, package: str) -> list[str]:
    """The test files of the exported tree that import ``robustprune.<package>`` (any of its modules)."""
    needles = (f"robustprune.{package}", f"from robustprune import {package}")
    return sorted(f"tests/{p.name}" for p in (work / "tests").glob("test_*.py")
                  if any(n in p.read_text() for n in needles))


def export_head(dest: Path, *paths: str) -> str:
    """Write the committed tree (or only ``paths`` of it) into ``dest``; returns the commit."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout.strip()
    archive = subprocess.run(["git", "archive", "--format=tar", commit, *paths], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return commit


def write_settings(work: Path, package: str, files: list[str] | None, tests: list[str]) -> list[str]:
    """mutmut's settings in ``work/setup.cfg`` (pyproject.toml holds no [tool.mutmut], so mutmut reads
    it); returns the mutated file patterns."""
    base = f"src/robustprune/{package}"
    patterns = [f"{base}/*"] if not files else [f"{base}/{f}" for f in files]
    for p in patterns:
        if not p.endswith("*") and not (work / p).is_file():
            raise SystemExit(f"mutation: no file {p} in package {package!r}")
    lines = ["[mutmut]", "source_paths = src", "only_mutate =", *(f"    {p}" for p in patterns),
             "pytest_add_cli_args_test_selection =", *(f"    {t}" for t in tests),
             # torch is not fork-safe after the test run mutmut makes first: fork from a clean server
             "process_isolation = forkserver",
             # the suite files and bench scripts some tests read (mutmut copies only src/ and tests/)
             "also_copy =", "    configs", "    bench", ""]
    (work / "setup.cfg").write_text("\n".join(lines))
    return patterns


def read_results(work: Path, package: str) -> dict[str, str]:
    """{mutant name: mutmut status} from the ``.meta`` files mutmut leaves beside each mutated file."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, str] = {}
    for meta in sorted((work / "mutants" / "src" / "robustprune" / package).rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            out[name] = status_by_exit_code[code]
    return out


def carried_results(earlier: dict[str, Any], package: str) -> tuple[dict[str, str], list[str]]:
    """What a stopped run's record ``earlier`` lets a new run keep: ({mutant name: status} of the mutants
    of unchanged files that need no new run, the package's files whose source changed since its commit).

    Kept: ``killed`` (tests are only added, so they still kill it) and ``survived`` with an equivalence
    reason. Every other status ("not checked", "no tests", a survivor not judged equivalent, a timeout) is
    run again. Killed mutants are not listed in a record; the caller marks every mutant of an unchanged
    file that the record does not list as not killed as killed."""
    if earlier.get("kind") != "mutation" or earlier.get("package") != package:
        raise SystemExit(f"mutation: --resume-from is not a mutation record of package {package!r}")
    if not earlier.get("commit") or not isinstance(earlier.get("not_killed"), list):
        raise SystemExit("mutation: --resume-from record has no commit or no not_killed list")
    import mutmut

    if earlier.get("tool") != f"mutmut {mutmut.__version__}":
        raise SystemExit(f"mutation: --resume-from record was made by {earlier.get('tool')!r}, this is "
                         f"mutmut {mutmut.__version__}: mutant names may differ, start again")
    proc = subprocess.run(["git", "diff", "--name-only", earlier["commit"], "HEAD", "--",
                           f"src/robustprune/{package}"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mutation: cannot compare commit {earlier['commit']} with HEAD: {proc.stderr.strip()}")
    changed = sorted(Path(line).stem for line in proc.stdout.split())
    keep = {m["name"]: m["status"] for m in earlier["not_killed"]
            if m["name"].split(".")[2] not in changed and m["status"] == "survived" and m.get("equivalent")}
    return keep, changed


def to_run(earlier: dict[str, Any], package: str, changed: list[str], keep: dict[str, str]) -> list[str]:
    """The names (and patterns, for a changed file) that ``mutmut run`` must check after ``earlier``."""
    names = [m["name"] for m in earlier["not_killed"]
             if m["name"] not in keep and m["name"].split(".")[2] not in changed]
    return names + [f"robustprune.{package}.{stem}.*" for stem in changed]


def merge_carried(statuses: dict[str, str], earlier: dict[str, Any], changed: list[str],
                  keep: dict[str, str]) -> tuple[dict[str, str], int]:
    """The new run's statuses with the earlier record's results put back where this run did not check
    them, and how many of those were killed."""
    listed = {m["name"] for m in earlier["not_killed"]}
    out, carried_killed = {}, 0
    for name, status in statuses.items():
        if status == "not checked" and name.split(".")[2] not in changed:
            if name not in listed:
                status, carried_killed = "killed", carried_killed + 1
            else:
                status = keep.get(name, status)
        out[name] = status
    return out, carried_killed


def retest(work: Path, package: str, equivalent: dict[str, str], *, timeout: float) -> dict[str, Any]:
    """Run again, with the committed tests, every mutant of the kept directory ``work`` that mutmut let
    through (survived, timed out, suspicious; not judged equivalent). The kept copy of ``tests/`` is
    replaced by HEAD's; each mutant is activated the way mutmut does it (``MUTANT_UNDER_TEST``) and the
    tests mutmut's stats tie to its function run with ``-x``, after the tests of the same files that the
    stats do not know (written since the run started): a failing test kills it, and its ``.meta`` entry
    is set to killed at once (an interrupted retest keeps what it did). A new test counts only when it
    sits in one of those files. Returns counts and the tests' commit."""
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import mangled_name_from_mutant_name

    mutants = work / "mutants"
    head = export_head(mutants, "tests")
    stats_file = json.loads((mutants / "mutmut-stats.json").read_text())
    stats, known = stats_file["tests_by_mangled_function_name"], set(stats_file.get("duration_by_test", {}))
    # a mutant that turns a path into str(None) writes a file "None" where the tests run, which a later
    # mutant reading str(None) then finds: files there that the exported tree lacks are removed first
    strays = sorted(p.name for p in mutants.iterdir() if p.is_file() and p.name != "mutmut-stats.json"
                    and not (work / p.name).exists())
    for name in strays:
        (mutants / name).unlink()
    env = {**os.environ, "PYTHONPATH": str(mutants / "src")}
    new_tests: dict[str, list[str]] = {}

    def added_since_the_run(file: str) -> list[str]:
        """The tests of ``file`` that the run's stats do not know: written after it started."""
        if file not in new_tests:
            out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                  file], cwd=mutants, env=env, capture_output=True, text=True).stdout
            # one node id a line (a parametrised id may hold spaces)
            new_tests[file] = [t for t in out.splitlines() if "::" in t and t not in known]
        return new_tests[file]

    killed, left, undecided = 0, 0, {}
    for meta in sorted((mutants / "src" / "robustprune" / package).rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in list(data["exit_code_by_key"].items()):
            if status_by_exit_code[code] not in ("survived", "timeout", "suspicious") or name in equivalent:
                continue
            tied = sorted(stats.get(mangled_name_from_mutant_name(name), ()))
            # the new tests of the files its tests are in first, then the tests tied to its function
            tests = [t for f in sorted({t.split("::")[0] for t in tied}) for t in added_since_the_run(f)] + tied
            try:
                rc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                                    cwd=mutants, env={**env, "MUTANT_UNDER_TEST": name}, timeout=timeout,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode if tests else None
            except subprocess.TimeoutExpired:
                rc = None
            if rc != 1:  # 0: every test passed; anything else (no tests, an error, a timeout) decides nothing
                left += 1
                if rc != 0:
                    undecided[name] = rc
                continue
            killed += 1
            data["exit_code_by_key"][name] = 1
            tmp = meta.with_name(meta.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=4))
            os.replace(tmp, meta)
    return {"tests_commit": head, "retested": killed + left, "killed": killed, "stray_files_removed": strays,
            # {mutant: pytest's exit code (None: no tests or timed out)} of runs that neither passed nor failed
            "undecided": undecided}


def diff_of(work: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True)
    return proc.stdout.strip()


def summarise(statuses: dict[str, str], equivalent: dict[str, str]) -> dict[str, Any]:
    counts = Counter(statuses.values())
    equiv = {k: v for k, v in equivalent.items() if k in statuses and statuses[k] != "killed"}
    killed = counts.get("killed", 0)
    checked = len(statuses) - counts.get("not checked", 0) - len(equiv)
    return {
        "mutants": len(statuses),
        "counts": dict(sorted(counts.items())),
        "killed": killed,
        "survived": counts.get("survived", 0),
        "timeouts": counts.get("timeout", 0),
        "no_tests": counts.get("no tests", 0),
        "not_checked": counts.get("not checked", 0),
        "equivalent": len(equiv),
        "kill_rate": round(killed / len(statuses), 4) if statuses else None,
        "kill_rate_non_equivalent": round(killed / (len(statuses) - len(equiv)), 4) if statuses else None,
        # over the mutants mutmut reached (differs from the above only in a stopped run)
        "kill_rate_checked_non_equivalent": round(killed / checked, 4) if checked else None,
    }


def shown_command(argv: list[str]) -> str:
    """The command as a record shows it: the scratch directory after ``--keep`` is this machine's, so
    it is written ``DIR``."""
    shown = ["DIR" if i > 0 and argv[i - 1] == "--keep" else a for i, a in enumerate(argv)]
    return "python bench/mutation.py " + " ".join(shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", choices=PACKAGES)
    parser.add_argument("--files", default=None, help="comma-separated file names inside the package (default: all)")
    parser.add_argument("--tests", nargs="+", default=None, help="test files (default: those importing the package)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=None, help="record (default bench/mutation_<package>.json)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this directory and keep it (mutants/)")
    parser.add_argument("--record-only", action="store_true",
                        help="write the record from the --keep directory of an earlier (possibly stopped) run "
                             "without running mutmut; mutants it had not reached count as 'not checked'. With "
                             "--out an earlier record of that run, its commit, command and time are kept and this "
                             "call is added as 'retested' (after `mutmut run NAMES` there with newer tests)")
    parser.add_argument("--retest", action="store_true",
                        help="with --record-only: first run every survivor of the kept directory again with the "
                             "committed tests (those written since the run, then those tied to its function, -x); "
                             "see retest()")
    parser.add_argument("--retest-timeout", type=float, default=900.0, help="seconds per retested mutant")
    parser.add_argument("--note", default=None, help="what was retested and why (kept in the record's 'retested')")
    parser.add_argument("--resume-from", type=Path, default=None,
                        help="the record of a stopped run of this package: keep its results for unchanged "
                             "files and run only the mutants it had not killed or judged equivalent")
    parser.add_argument("--commit", default=None,
                        help="with --record-only, no earlier record: the commit the --keep directory came from")
    args = parser.parse_args(argv)
    if args.max_children < 1:
        parser.error(f"--max-children must be >= 1, got {args.max_children}")
    try:
        import mutmut
    except ImportError:
        parser.error('mutmut is not installed: pip install -e ".[mutation]"')
    files = None if args.files is None else [f.strip() for f in args.files.split(",") if f.strip()]
    out = args.out or ROOT / "bench" / f"mutation_{args.package}.json"
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}

    resumed = json.loads(args.resume_from.read_text()) if args.resume_from else None
    keep, changed = carried_results(resumed, args.package) if resumed else ({}, [])
    names = to_run(resumed, args.package, changed, keep) if resumed else []
    if resumed and not names:
        parser.error(f"{args.resume_from} leaves nothing to run: every mutant is killed or equivalent")

    scratch = None if args.keep else tempfile.TemporaryDirectory(prefix="mutation-")
    work = args.keep or Path(scratch.name)  # type: ignore[union-attr]
    if args.record_only:
        if args.keep is None or not (work / "mutants").is_dir():
            parser.error("--record-only needs the --keep directory of an earlier run")
        commit = args.commit or "unknown (--record-only)"
        tests = args.tests or default_tests(work, args.package)
        patterns = write_settings(work, args.package, files, tests)
        wall = float("nan")
        retested_now = retest(work, args.package, equivalent, timeout=args.retest_timeout) if args.retest else None
        statuses = read_results(work, args.package)
    else:
        if args.retest:
            parser.error("--retest goes with --record-only (retest a kept directory's survivors)")
        retested_now = None
        work.mkdir(parents=True, exist_ok=True)
        commit = export_head(work)
        tests = args.tests or default_tests(work, args.package)
        patterns = write_settings(work, args.package, files, tests)
        start = time.perf_counter()
        # tests that start a Python subprocess get the exported (unmutated) tree, not an installed copy
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "src"), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *names],
                              cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        statuses = read_results(work, args.package)
        if proc.returncode != 0 or not statuses:
            print(proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"mutation: mutmut run failed (exit {proc.returncode}, {len(statuses)} results)")
    carried_killed = 0
    if resumed:
        statuses, carried_killed = merge_carried(statuses, resumed, changed, keep)
    # the diff of each mutant that tests ran and let through; names only for those no test reached
    survivors = [{"name": n, "status": s, "equivalent": equivalent.get(n),
                  "diff": diff_of(work, n) if s not in ("no tests", "not checked") else None}
                 for n, s in sorted(statuses.items()) if s != "killed"]
    earlier = json.loads(out.read_text()) if args.record_only and not resumed and out.is_file() else {}
    if earlier.get("kind") == "mutation" and earlier.get("package") == args.package:
        # the run this directory holds: its commit, command and time; this call adds the retests since
        commit, wall, command = earlier["commit"], earlier["wall_s"], earlier["command"]
        retested = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "note": args.note,
                    "command": shown_command(argv if argv is not None else sys.argv[1:]), **(retested_now or {})}
    else:
        command = shown_command(argv if argv is not None else sys.argv[1:])
        # a first record of a kept directory keeps what its --note says (retested since the run, ...)
        retested = None if args.note is None and retested_now is None else {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "note": args.note, "command": command,
            **(retested_now or {})}
    record = {
        "kind": "mutation", "tool": f"mutmut {mutmut.__version__}", "package": args.package,
        "mutated": patterns, "tests": tests, **summarise(statuses, equivalent),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
        "command": command, "commit": commit, "wall_s": None if wall is None or wall != wall else round(wall, 1),
        "retested": retested,
        "resumed_from": None if not resumed else {
            "commit": resumed["commit"], "date": resumed["date"], "command": resumed["command"],
            "changed_files": changed, "mutants_run": len(names),
            "carried_killed": carried_killed,
            "carried_equivalent": len(keep)},
        "not_killed": survivors,
    }
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: record[k] for k in ("package", "mutants", "counts", "kill_rate",
                                             "kill_rate_non_equivalent", "wall_s")}))
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
