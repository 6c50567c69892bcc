"""Carry a suite's unfinished runs from one machine (or sitting) to the next through a folder that travels.

A 200-epoch CPU run outlives the machine it starts on when that machine is lent for a few hours at a
time and only a repository survives. ``save`` copies what ``robustprune compare`` needs to resume a
suite (each run's config, record, final weights, its newest checkpoint, logs; the cards) into a folder,
with a manifest of every file's SHA-256 and modification time; ``restore`` copies it back and sets
the times again, because ``compare`` compares weights' and cards' times to decide what is stale (a
plain copy or a ``git clone`` gives every file the time it was written, in no useful order)::

    python scripts/run_state.py save runs/paper_cpu bench/inflight/paper_cpu
    python scripts/run_state.py restore bench/inflight/paper_cpu runs/paper_cpu
    robustprune compare SUITE --out runs/paper_cpu ...        # resumes every run from its checkpoint

The saved records name no path of the machine they came from: the suite directory is written
``SUITE`` and the data directory ``DATA`` (a resumed run takes both from the command that resumes
it). ``save`` leaves out TensorBoard event files, the suite's lock and every checkpoint but the newest
complete one of each run (the one ``compare`` resumes from). A file whose bytes do not match the
manifest is named and nothing is restored; ``restore`` refuses a destination that already holds a
suite unless ``--force``. ``save`` refuses a destination inside a git work tree where git would ignore
any of the files (the state would look saved and not travel). Both write into a temporary folder
first and rename it into place, so an interrupted call leaves no half-written copy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from robustprune.utils import file_sha256

MANIFEST = "manifest.json"
SKIP_DIRS = {"tensorboard", "__pycache__"}
SKIP_FILES = {".compare.lock"}


def wanted(suite_dir: Path) -> list[Path]:
    """The files of ``suite_dir`` that a resume needs, relative to it, sorted."""
    keep: list[Path] = []
    for path in sorted(suite_dir.rglob("*")):
        rel = path.relative_to(suite_dir)
        if not path.is_file() or path.name in SKIP_FILES or SKIP_DIRS & set(rel.parts):
            continue
        parts = rel.parts
        if "checkpoints" in parts:
            i = parts.index("checkpoints")
            ckpt = suite_dir.joinpath(*parts[:i + 1])
            latest = ckpt / "LATEST"
            if len(parts) > i + 2:  # a file inside an epoch directory: keep only the newest complete epoch
                if not latest.is_file() or parts[i + 1] != latest.read_text().strip():
                    continue
        keep.append(rel)
    return keep


def copy_files(src: Path, dst: Path, files: list[Path]) -> None:
    for rel in files:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)


def scrub_paths(suite_dir: Path, state: Path, files: list[Path]) -> None:
    """Replace this machine's paths in the saved records (each run's ``config.yaml`` and ``run.json``)
    by placeholders: the suite directory by ``SUITE``, each run's data directory by ``DATA``. They are
    paths of the invocation, which a resumed run takes from the command that resumes it, not from the
    record. Each file keeps its modification time."""
    suite = str(suite_dir.resolve())
    for rel in files:
        if rel.name not in ("config.yaml", "run.json") or "runs" not in rel.parts:
            continue
        path = state / rel
        text, stat = path.read_text(), path.stat()
        data_dir = (yaml.safe_load((suite_dir / rel).with_name("config.yaml").read_text()) or {}).get("data_dir")
        text = text.replace(suite, "SUITE")
        if data_dir:
            text = text.replace(str(data_dir), "DATA")
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def replace_dir(tmp: Path, dst: Path) -> None:
    """Put the finished ``tmp`` where ``dst`` is, atomically as far as one rename allows."""
    if dst.exists():
        old = dst.with_name(dst.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old)
    else:
        tmp.rename(dst)


def git_ignored(dest: Path, files: list[Path]) -> list[Path]:
    """Those of ``files`` (relative to ``dest``) that git would leave out of a commit when ``dest`` lies in
    a git work tree; none when it does not (or git is absent). A state that is saved but ignored does not
    travel, and a new machine would start every run again."""
    here = dest.parent
    while not here.exists() and here != here.parent:  # a destination not made yet: ask from its nearest ancestor
        here = here.parent
    try:
        top = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, check=False)
    except OSError:
        return []
    if top.returncode != 0:
        return []
    root = Path(top.stdout.strip())
    paths = [str((dest / rel).resolve().relative_to(root.resolve())) for rel in files]
    out = subprocess.run(["git", "-C", str(root), "check-ignore", "--no-index", "--stdin"],
                         input="\n".join(paths), capture_output=True, text=True, check=False)
    ignored = set(out.stdout.split("\n")) - {""}
    return [rel for rel, p in zip(files, paths, strict=True) if p in ignored]


def save(suite_dir: Path, dest: Path) -> int:
    if not (suite_dir / "runs").is_dir():
        raise ValueError(f"{suite_dir} is not a suite directory (no runs/ in it)")
    files = wanted(suite_dir)
    ignored = git_ignored(dest, files + [Path(MANIFEST)])
    if ignored:
        more = f" and {len(ignored) - 3} more" if len(ignored) > 3 else ""
        shown = ", ".join(str(rel) for rel in ignored[:3]) + more
        raise ValueError(f"git ignores {len(ignored)} of the files to save under {dest} ({shown}): they would not "
                         "travel with a commit; save elsewhere or change .gitignore")
    dest.parent.mkdir(parents=True, exist_ok=True)  # only once the destination is accepted
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy_files(suite_dir, tmp, files)
    scrub_paths(suite_dir, tmp, files)
    manifest = {str(rel): {"sha256": file_sha256(tmp / rel), "mtime_ns": (suite_dir / rel).stat().st_mtime_ns,
                           "bytes": (tmp / rel).stat().st_size} for rel in files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    replace_dir(tmp, dest)
    size = sum(m["bytes"] for m in manifest.values())
    print(f"saved {len(files)} files ({size / 2**20:.1f} MiB) of {suite_dir} to {dest}")
    return 0


def restore(state: Path, suite_dir: Path, *, force: bool = False) -> int:
    path = state / MANIFEST
    if not path.is_file():
        raise ValueError(f"{state} holds no {MANIFEST}: not a folder written by 'run_state.py save'")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    for rel, meta in manifest.items():
        f = state / rel
        if not f.is_file():
            raise ValueError(f"{f} is listed in {MANIFEST} but missing")
        if file_sha256(f) != meta["sha256"]:
            raise ValueError(f"{f} does not match its SHA-256 in {MANIFEST} (corrupt or edited)")
    if (suite_dir / "runs").exists() and not force:
        raise ValueError(f"{suite_dir} already holds a suite's runs; pass --force to replace it")
    tmp = suite_dir.with_name(suite_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    files = [Path(rel) for rel in manifest]
    copy_files(state, tmp, files)
    for rel, meta in manifest.items():
        os.utime(tmp / rel, ns=(meta["mtime_ns"], meta["mtime_ns"]))
    suite_dir.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(tmp, suite_dir)
    print(f"restored {len(files)} files of {state} to {suite_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("save", help="copy a suite's resumable state into a folder")
    s.add_argument("suite_dir", type=Path)
    s.add_argument("dest", type=Path)
    r = sub.add_parser("restore", help="copy a saved state back into a suite directory")
    r.add_argument("state", type=Path)
    r.add_argument("suite_dir", type=Path)
    r.add_argument("--force", action="store_true", help="replace a suite directory that exists")
    ns = p.parse_args(argv)
    try:
        if ns.command == "save":
            return save(ns.suite_dir, ns.dest)
        return restore(ns.state, ns.suite_dir, force=ns.force)
    except ValueError as e:
        print(f"run_state.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
