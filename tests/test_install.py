"""What the README's set-up installs is enough: no test module imports an optional package at
import time (a missing one skips the tests that need it, naming it, instead of stopping the
collection), the table of optional packages matches pyproject's extras, and the README's main
command (configs/suites/mnist_quick.yaml) names only what the core install provides and runs its
imports with every optional package blocked."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from optional_deps import OPTIONAL_EXTRAS, OPTIONAL_MODULES

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
QUICK = ROOT / "configs" / "suites" / "mnist_quick.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement (``torch-pruning>=1.6`` -> ``torch-pruning``)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert name is not None, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


def installed_modules() -> dict[str, set[str]]:
    """Normalised distribution name -> the top-level modules it installs (for those installed)."""
    out: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            out.setdefault(dist_name(dist), set()).add(module)
    return out


def required_modules() -> set[str]:
    """Top-level modules a test may import at module level: the standard library, robustprune, the
    helpers in tests/, and what the README's set-up installs (core dependencies and ``dev``)."""
    reqs = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"]["dev"]]
    by_dist = installed_modules()
    modules = {"robustprune", *sys.stdlib_module_names, *(p.stem for p in TESTS.glob("*.py"))}
    for req in reqs:
        dist = dist_name(req)
        assert dist in by_dist, f"{req} (a dependency of the README's set-up) is not installed"
        modules |= by_dist[dist]
    return modules


def import_time_imports(source: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import that runs when the module is imported: the module's
    own statements, nested ``if``/``try``/``with`` blocks and class bodies, not function bodies."""
    found: list[tuple[int, str]] = []

    def visit(nodes: list[Any]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.lineno, node.module.split(".")[0]))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):  # blocks that run on import
                    visit(getattr(node, field, []))

    visit(ast.parse(source).body)
    return found


def test_the_scan_finds_import_time_imports_only() -> None:
    source = textwrap.dedent("""
        import os, scipy.integrate
        from onnx import helper
        try:
            import torchattacks
        except ImportError:
            import secmlt
        class A:
            import yaml
        def f():
            import onnxruntime
        if True:
            from . import sibling
    """)
    assert import_time_imports(source) == [(2, "os"), (2, "scipy"), (3, "onnx"), (5, "torchattacks"),
                                           (7, "secmlt"), (9, "yaml")]


def test_no_test_module_imports_a_package_the_readme_does_not_install() -> None:
    allowed = required_modules()
    assert "scipy" not in allowed and "torchattacks" not in allowed and "yaml" in allowed
    bad = [f"{path.relative_to(ROOT)}:{line}: {module}"
           for path in sorted(TESTS.rglob("*.py"))
           for line, module in import_time_imports(path.read_text())
           if module not in allowed]
    assert not bad, ("module-level imports of packages that pip install -e '.[dev]' does not install "
                     "(import them inside the test with pytest.importorskip): " + ", ".join(bad))


def test_the_optional_table_matches_the_extras() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    # every extra is classified: a new one must join the table (its tests then skip, and CI's second
    # phase installs it and runs them) or be named here with the reason it holds no test dependency
    assert set(extras) - {"dev", "eval"} == set(OPTIONAL_EXTRAS), sorted(extras)
    in_extras = {dist_name(r) for name in OPTIONAL_EXTRAS for r in extras[name]}
    in_table = {dist_name(dist) for dist, _ in OPTIONAL_MODULES.values()}
    assert in_extras <= in_table, f"extras without a module in tests/optional_deps.py: {in_extras - in_table}"
    # the table holds no core or dev dependency (a missing one of those must fail CI, not skip)
    readme = {dist_name(r) for r in [*PYPROJECT["project"]["dependencies"], *extras["dev"]]}
    assert not in_table & readme
    assert in_table - in_extras == {"torchattacks"}  # installed apart, with --no-deps (README)
    for module, (dist, how) in OPTIONAL_MODULES.items():
        if how.startswith(".["):  # the extra named is the one that lists the distribution
            assert dist_name(dist) in {dist_name(r) for r in extras[how[2:-1]]}, (module, how)


#: run in a fresh interpreter with every optional package blocked: imports every robustprune module,
#: then parses the quick suite and builds what its main command builds (methods, models, attacks,
#: test-time defenses, the task plan)
BLOCKED_SCRIPT = r"""
import importlib, importlib.abc, json, pkgutil, sys, tempfile
blocked = set(json.loads(sys.argv[1]))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: optional)", name=name)
        return None

sys.meta_path.insert(0, Block())
for mod in list(sys.modules):
    if mod.split(".")[0] in blocked:
        del sys.modules[mod]

import robustprune
modules = [m.name for m in pkgutil.walk_packages(robustprune.__path__, "robustprune.")
           if not m.name.endswith("__main__")]  # that one runs the CLI
for name in modules:
    importlib.import_module(name)

import torch
from robustprune.compare import load_suite, plan_suite
from robustprune.data.catalog import dataset_info, dataset_names
from robustprune.defenses import TestTimeSpec, build_method
from robustprune.eval.card import build_eval_attack
from robustprune.registry import METHODS
from robustprune.train.run import build_model_for, method_context

suite = load_suite(sys.argv[2])
names = {"methods": set(), "models": set(), "datasets": set(), "attacks": set(), "defenses": set()}
for run in suite.runs:
    if run.model_of is not None:
        continue
    cfg = run.config(run.seeds[0], out="-")
    assert cfg.method in METHODS.names(), cfg.method
    assert cfg.dataset in dataset_names(), cfg.dataset
    method = build_method(cfg.method, ctx=method_context(cfg, train_size=1), **cfg.method_args)
    model = method.prepare(build_model_for(cfg))
    info = dataset_info(cfg.dataset)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(2, info.in_channels, info.image_size, info.image_size))
    assert logits.shape == (2, info.num_classes), logits.shape
    names["methods"].add(cfg.method)
    names["models"].add(cfg.model)
    names["datasets"].add(cfg.dataset)
for run in suite.runs:
    spec = suite.eval_of(run)
    for attack in spec.attacks:
        built = build_eval_attack(attack, eps=spec.eps, steps=spec.steps, step_size=spec.step_size,
                                  source=torch.nn.Identity())
        assert built is not None, attack
        names["attacks"].add(attack)
    if spec.defense is not None:
        TestTimeSpec.parse(spec.defense).build()
        names["defenses"].add(spec.defense)
with tempfile.TemporaryDirectory() as out:
    tasks = plan_suite(suite, out)
print(json.dumps({"modules": len(modules), "tasks": len(tasks), **{k: sorted(v) for k, v in names.items()},
                  "optional_loaded": sorted(m for m in sys.modules if m.split(".")[0] in blocked)}))
"""


def test_quick_tour_needs_only_the_core_install() -> None:
    """The README's main command with scipy, secml-torch, ONNX and torchattacks unimportable."""
    blocked = sorted(OPTIONAL_MODULES)
    proc = subprocess.run([sys.executable, "-c", BLOCKED_SCRIPT, json.dumps(blocked), str(QUICK)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["optional_loaded"] == []
    assert seen["modules"] > 50  # every module of the package was imported
    # what the suite file names, read from the file itself: the script built every one of them
    data = yaml.safe_load(QUICK.read_text())
    runs = [{**data.get("defaults", {}), **r} for r in data["runs"]]
    trained = [r for r in runs if "model_of" not in r]
    assert seen["methods"] == sorted({r["method"] for r in trained})
    assert seen["models"] == sorted({r["model"] for r in trained})
    assert seen["datasets"] == sorted({r["dataset"] for r in trained})
    attacks = {a for r in runs for a in {**data["eval"], **r.get("eval", {})}["attacks"]}
    assert seen["attacks"] == sorted(attacks) and "autoattack" in attacks  # the headline evaluation
    seeds = len(data["seeds"])
    n_train = sum(len(r.get("seeds", data["seeds"])) for r in trained)
    n_eval = sum(len(r.get("seeds", data["seeds"])) for r in runs if r.get("report", True))
    assert seen["tasks"] == n_train + n_eval and seeds >= 1


def test_the_blocker_really_blocks() -> None:
    """The finder above makes each optional module unimportable, installed or not, and nothing else."""
    check = textwrap.dedent("""
        failed = []
        for name in sorted(blocked) + ["json", "torch"]:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                failed.append(name) if "blocked: optional" in str(e) else None
        print(json.dumps(failed))
    """)
    script = BLOCKED_SCRIPT.split("import robustprune")[0] + check
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(sorted(OPTIONAL_MODULES))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == sorted(OPTIONAL_MODULES)


def test_ci_runs_the_readme_blocks_and_they_install_no_extra() -> None:
    """.ci/run executes these blocks as written; they install the package with ``dev`` only, so
    the optional packages are really absent from CI's first phase."""
    namespace: dict[str, Any] = {"__name__": "readme_block", "__file__": str(ROOT / ".ci" / "readme_block.py")}
    exec((ROOT / ".ci" / "readme_block.py").read_text(), namespace)
    readme = (ROOT / "README.md").read_text()
    setup, tests = namespace["block"](readme, "Set-up"), namespace["block"](readme, "Tests")
    assert 'pip install -e ".[dev]"' in setup.splitlines()
    assert not any(extra in setup for extra in [*OPTIONAL_EXTRAS, *OPTIONAL_MODULES])
    assert tests.split() == ["pytest"]
    with pytest.raises(ValueError, match="no section '## Nowhere'"):
        namespace["block"](readme, "Nowhere")


def test_ci_tells_a_missing_optional_package_from_a_missing_required_one(tmp_path: Path) -> None:
    """.ci/skips.py: a skip for scipy is expected in CI's first phase (and rerun in the second),
    one for yaml (a core dependency) fails it; any missing module fails the second phase."""
    report = tmp_path / "skips.json"
    skipped = [{"nodeid": "tests/a.py::t[1]", "reason": "could not import 'scipy.integrate': No module named 'scipy'"},
               {"nodeid": "tests/b.py::u", "reason": "needs CUDA"}]
    report.write_text(json.dumps({"skipped": skipped}))
    script = [sys.executable, str(ROOT / ".ci" / "skips.py")]

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*script, mode, str(report)], capture_output=True, text=True, timeout=60)

    assert run("required").returncode == 0
    assert run("optional").stdout.split("\n")[:-1] == ["tests/a.py::t[1]"]
    assert run("none").returncode == 1 and "'scipy' is missing" in run("none").stderr
    skipped.append({"nodeid": "tests/c.py::v", "reason": "could not import 'yaml': No module named 'yaml'"})
    report.write_text(json.dumps({"skipped": skipped}))
    failed = run("required")
    assert failed.returncode == 1
    assert "tests/c.py::v skipped: module 'yaml' is missing (required package)" in failed.stderr
