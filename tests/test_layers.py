"""The package's layers import only downward (docs/architecture.md): parsed with ``ast``, not run."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "robustprune"

#: lowest first; a module may import its own subpackage or any subpackage of a lower layer
LAYERS: tuple[tuple[str, ...], ...] = (
    ("robustprune",),
    ("utils", "registry"),
    ("records",),
    ("data", "models", "reports"),
    ("config", "attacks", "sparsity"),
    ("metrics",),
    ("defenses",),
    ("train",),
    ("eval",),
    ("jobs", "compare"),
    ("cli",),
    ("__main__",),
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def unit_of(module: str) -> str:
    """``robustprune.eval.card`` -> ``eval``; ``robustprune.utils`` -> ``utils``; ``robustprune`` -> itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path = SRC) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = SRC) -> list[tuple[str, int]]:
    """(imported robustprune module, line) for every import in the file, at any depth."""
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
    return [(t, line) for t, line in out if t == "robustprune" or t.startswith("robustprune.")]


def edges() -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> where, for imports between different units."""
    out: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        src = unit_of(module_name(path))
        for target, line in imports(path):
            dst = unit_of(target)
            if dst != src:
                out.setdefault((src, dst), []).append(f"{path.relative_to(SRC)}:{line} imports {target}")
    return out


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(module_name(p)) for p in SRC.rglob("*.py")}
    assert units <= set(RANK), f"give these a layer in LAYERS and docs/architecture.md: {sorted(units - set(RANK))}"


def test_imports_only_go_downward() -> None:
    upward = [w for (src, dst), where in edges().items() if RANK[dst] >= RANK[src] for w in where]
    assert not upward, "imports to the same or a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for src, dst in edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        if state.get(node) == 1:
            return path[path.index(node):] + [node]
        if state.get(node) == 2:
            return None
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        cycle = visit(node, [])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_relative_and_function_level_imports(tmp_path: Path) -> None:
    """A checker that saw nothing would pass: it must read relative imports and those inside functions."""
    fake = tmp_path / "robustprune" / "attacks" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import torch\n\ndef f():\n    from ..eval import evaluate\n    import robustprune.cli\n"
                    "    from . import base\n")
    found = [t for t, _ in imports(fake, tmp_path / "robustprune")]
    assert found == ["robustprune.eval", "robustprune.cli", "robustprune.attacks"]
