"""Rewrite suite files from the old spelling of test-time defenses into the current one (one-off).

Formerly a suite's ``eval`` mapping (the suite's or a run's) could name a test-time defense by
keys of its own: ``sap: PCT`` with ``sap_mode: MODE``, and ``bnn_sample: true``. Now a
defense is named only as data, ``defense: {name: sap, pct: PCT, mode: MODE}`` or
``defense: bnn-sample``, and the old keys are refused. This script rewrites them::

    python scripts/migrate_suite.py configs/suites/my_suite.yaml        # rewrite in place
    python scripts/migrate_suite.py --check configs/suites/*.yaml       # list what needs it (exit 1)

The text is edited in place where the old keys sit in the usual places (a flow mapping on one line,
``eval: {sap: 100, ...}``, or one key per line), so comments and layout stay; the result is parsed
again and compared with the migrated data, and when they differ the file is written from the data
instead (comments then lost, said on stderr). Files are replaced atomically. The cards of rows with
a test-time defense get a new name under the new spelling, so ``robustprune compare`` evaluates
those rows once more.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

OLD_KEYS = ("sap", "sap_mode", "bnn_sample")


def migrate_eval(ev: dict[str, Any], where: str = "eval") -> tuple[dict[str, Any], bool]:
    """``ev`` with the old defense keys turned into ``defense``; (new mapping, whether it changed).
    Naming a defense both ways raises ``ValueError`` naming the mapping."""
    if not any(k in ev for k in OLD_KEYS):
        return ev, False
    if "defense" in ev:
        raise ValueError(f"{where} names a test-time defense twice: defense and {[k for k in OLD_KEYS if k in ev]}")
    out: dict[str, Any] = {}
    for key, value in ev.items():
        if key == "sap":
            if value is not None:
                spec = {"name": "sap", "pct": value}
                if ev.get("sap_mode") is not None:
                    spec["mode"] = ev["sap_mode"]
                out["defense"] = spec
        elif key == "bnn_sample":
            if value:
                out["defense"] = "bnn-sample"
        elif key != "sap_mode":
            out[key] = value
    if "sap" not in ev and ev.get("sap_mode") not in (None, "exact"):
        raise ValueError(f"{where}: sap_mode {ev['sap_mode']!r} without sap names no defense")
    return out, True


def migrate_data(data: Any) -> tuple[Any, list[str]]:
    """The suite mapping with every ``eval`` mapping migrated; (new data, where it changed)."""
    if not isinstance(data, dict):
        raise ValueError(f"a suite is a mapping, got {type(data).__name__}")
    data = dict(data)
    changed = []
    if isinstance(data.get("eval"), dict):
        data["eval"], hit = migrate_eval(data["eval"])
        changed += ["eval"] if hit else []
    runs = []
    for i, run in enumerate(data.get("runs") or []):
        if isinstance(run, dict) and isinstance(run.get("eval"), dict):
            where = f"run {run.get('id', i)!r}"
            new, hit = migrate_eval(run["eval"], f"{where}: eval")
            run = {**run, "eval": new}
            changed += [where] if hit else []
        runs.append(run)
    if "runs" in data:
        data["runs"] = runs
    return data, changed


def _flow(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    return "{" + ", ".join(f"{k}: {v}" for k, v in spec.items()) + "}"


_ITEM = r"(?<![\w-])(?P<key>sap_mode|sap|bnn_sample):[ \t]*(?P<value>[^,}\n#]*?)[ \t]*"


def _edit_flow(match: re.Match[str]) -> str:
    """One flow mapping ``{...}`` holding old keys, rewritten."""
    text = match.group(0)
    items = dict((m.group("key"), m.group("value")) for m in re.finditer(_ITEM + r"(?=[,}])", text))
    spec: dict[str, Any] | str | None = None
    if items.get("sap") not in (None, "", "null", "~"):
        spec = {"name": "sap", "pct": items["sap"]}
        if items.get("sap_mode") not in (None, "", "null", "~"):
            spec["mode"] = items["sap_mode"]
    elif items.get("bnn_sample") in ("true", "True", "yes", "on"):
        spec = "bnn-sample"
    first = True

    def repl(m: re.Match[str]) -> str:
        nonlocal first
        if first and spec is not None:
            first = False
            return f"defense: {_flow(spec)}"
        return "\0"  # removed below with its comma

    out = re.sub(_ITEM + r"(?=[,}])", repl, text)
    out = re.sub(r"\0[ \t]*,[ \t]*|,[ \t]*\0|\0", "", out)
    return out


def _edit_block(text: str) -> str:
    """Old keys one per line (``  sap: 100``) rewritten within each indented mapping."""
    lines = text.split("\n")
    values = {}
    for i, line in enumerate(lines):
        m = re.match(r"^(?P<indent>[ \t]*(?:- )?)" + _ITEM + r"(?P<comment>#.*)?$", line)
        if m:
            values[i] = m
    out = list(lines)
    for i, m in values.items():
        if m.group("key") == "sap_mode":
            out[i] = "\0"
        elif m.group("key") == "sap" and m.group("value") not in ("", "null", "~"):
            mode = next((v.group("value") for j, v in values.items() if v.group("key") == "sap_mode"
                         and abs(j - i) < 20 and len(v.group("indent").replace("- ", "  ")) ==
                         len(m.group("indent").replace("- ", "  "))), None)
            spec = {"name": "sap", "pct": m.group("value"), **({"mode": mode} if mode else {})}
            out[i] = f"{m.group('indent')}defense: {_flow(spec)}"
        elif m.group("key") == "bnn_sample" and m.group("value") in ("true", "True", "yes", "on"):
            out[i] = f"{m.group('indent')}defense: bnn-sample"
        else:
            out[i] = "\0"
    return "\n".join(line for line in out if line != "\0")


def migrate_text(text: str) -> tuple[str, list[str], bool]:
    """(new text, where it changed, whether the layout was kept) of a suite file's text."""
    data = yaml.safe_load(text)
    new_data, changed = migrate_data(data)
    if not changed:
        return text, [], True
    edited = re.sub(r"\{[^{}\n]*\b(?:sap|bnn_sample)\s*:[^{}\n]*\}", _edit_flow, text)
    edited = _edit_block(edited)
    try:
        if yaml.safe_load(edited) == new_data:
            return edited, changed, True
    except yaml.YAMLError:
        pass
    return yaml.safe_dump(new_data, sort_keys=False), changed, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suites", nargs="+", type=Path, help="suite YAML files")
    parser.add_argument("--check", action="store_true", help="only list the files that need migrating (exit 1)")
    args = parser.parse_args(argv)
    from robustprune.utils import atomic_write_text

    pending = 0
    for path in args.suites:
        try:
            new, changed, kept = migrate_text(path.read_text())
        except (OSError, ValueError, yaml.YAMLError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 2
        if not changed:
            continue
        pending += 1
        if args.check:
            print(f"{path}: old test-time defense keys in {', '.join(changed)}")
            continue
        atomic_write_text(path, new)
        note = "" if kept else " (rewritten from the data: comments and layout were lost)"
        print(f"{path}: migrated {', '.join(changed)}{note}", file=sys.stderr)
    return 1 if args.check and pending else 0


if __name__ == "__main__":
    sys.exit(main())
