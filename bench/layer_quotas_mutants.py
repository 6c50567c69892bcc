"""Check that the mutants of ``sparsity.magnitude.layer_quotas`` judged equivalent in
bench/mutation_equivalent.json give the original's answer: each mutant (the same one-line textual
change mutmut made) and the original run on the same random (sizes, sparsity) inputs, and any input
where they differ is reported. Evidence, not proof: a difference no input reaches stays unseen.

    python bench/layer_quotas_mutants.py --cases 200000 --out bench/layer_quotas_mutants.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robustprune.sparsity import magnitude
from robustprune.utils import atomic_write

#: mutmut's name suffix -> (original text, mutated text) inside layer_quotas
MUTANTS = {
    "28": ("min(math.floor(x), n - 1)", "min(math.floor(x), n + 1)"),
    "29": ("min(math.floor(x), n - 1)", "min(math.floor(x), n - 2)"),
    "59": ("if quota[i] > 0:", "if quota[i] >= 0:"),
    "60": ("if quota[i] > 0:", "if quota[i] > 1:"),
    "61": ("quota[i] -= 1", "quota[i] = 1"),
    "62": ("quota[i] -= 1", "quota[i] += 1"),
    "63": ("quota[i] -= 1", "quota[i] -= 2"),
}


def compiled(source: str) -> Any:
    namespace: dict[str, Any] = {"math": math}
    exec(source, namespace)  # noqa: S102 - the project's own function, changed by one token
    return namespace["layer_quotas"]


def answer(fn: Any, sizes: list[int], sparsity: float) -> Any:
    try:
        return fn(sizes, sparsity)
    except ValueError:
        return "ValueError"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    source = inspect.getsource(magnitude.layer_quotas)
    original = compiled(source)
    rng = random.Random(args.seed)
    cases = []
    while len(cases) < args.cases:
        sizes = [rng.randint(1, 30) for _ in range(rng.randint(1, 5))]
        s = rng.choice([rng.random(), round(rng.random(), 2), rng.randint(0, 99) / 100, 1 - 1 / rng.randint(2, 40)])
        cases.append((sizes, s))
    want = [answer(original, sz, s) for sz, s in cases]
    results: dict[str, Any] = {}
    for name, (old, new) in MUTANTS.items():
        if old not in source:
            raise SystemExit(f"mutant {name}: {old!r} is not in layer_quotas any more; update MUTANTS")
        mutant = compiled(source.replace(old, new))
        got = ((sz, s, w, answer(mutant, sz, s)) for (sz, s), w in zip(cases, want, strict=True))
        first = next(({"sizes": sz, "sparsity": s, "original": w, "mutant": m} for sz, s, w, m in got if w != m), None)
        results[f"robustprune.sparsity.magnitude.x_layer_quotas__mutmut_{name}"] = {
            "change": f"{old} -> {new}", "first_difference": first}
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python bench/layer_quotas_mutants.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"platform": platform.platform(), "python": platform.python_version()},
              "cases": args.cases, "seed": args.seed, "mutants": results}
    atomic_write(args.out, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    print(json.dumps({k: v["first_difference"] for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
