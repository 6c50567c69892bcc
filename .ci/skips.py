"""Reads the skip report that tests/conftest.py writes (``ROBUSTPRUNE_SKIP_REPORT=FILE pytest``).

    python .ci/skips.py required FILE   fail (exit 1) when a test skipped because a module that is
                                        not optional (tests/optional_deps.py) is missing: the
                                        README's set-up should have installed it
    python .ci/skips.py optional FILE   print the node ids that skipped because an optional package
                                        is missing, one a line (to run them once the extras are in)
    python .ci/skips.py none FILE       fail when any test skipped because a module is missing
    python .ci/skips.py extras          print the extras that hold the optional packages (a,b,c)

Every mode prints what skipped and why first. Standard library only (runs before and after the
extras are installed)."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: pytest.importorskip's message: "could not import 'scipy.integrate': No module named 'scipy'"
MISSING = re.compile(r"No module named '([^']+)'")
NOT_IMPORTED = re.compile(r"could not import '([^']+)'")


def optional_table() -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec((ROOT / "tests" / "optional_deps.py").read_text(), namespace)  # a plain table, no imports
    return namespace


def optional_modules() -> dict[str, tuple[str, str]]:
    return optional_table()["OPTIONAL_MODULES"]  # type: ignore[return-value]


def missing_module(reason: str) -> str | None:
    """The top-level module a skip reason says could not be imported, or None (another reason)."""
    m = MISSING.search(reason) or NOT_IMPORTED.search(reason)
    return None if m is None else m.group(1).split(".")[0]


def main(argv: list[str]) -> int:
    if argv == ["extras"]:
        print(",".join(optional_table()["OPTIONAL_EXTRAS"]))  # type: ignore[arg-type]
        return 0
    if len(argv) != 2 or argv[0] not in ("required", "optional", "none"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, path = argv
    skipped = json.loads(Path(path).read_text())["skipped"]
    optional = optional_modules()
    found = [(s["nodeid"], s["reason"], missing_module(s["reason"])) for s in skipped]
    if mode == "optional":
        for nodeid, _, module in found:
            if module in optional:
                print(nodeid)
        return 0
    for reason, n in sorted(Counter(r for _, r, _ in found).items()):
        print(f"CI: {n} skipped: {reason}", file=sys.stderr)
    bad = [(nodeid, module) for nodeid, _, module in found
           if module is not None and (mode == "none" or module not in optional)]
    for nodeid, module in bad:
        what = "optional package, not provided by the extras" if module in optional else "required package"
        print(f"CI: {nodeid} skipped: module {module!r} is missing ({what})", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
