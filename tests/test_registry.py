"""The registries: facts on entries, modules found without import lists, minimum-norm attacks by name."""

from __future__ import annotations

import json
import pkgutil
import sys
from pathlib import Path

import pytest

import robustprune.attacks
import robustprune.defenses
import robustprune.models
from robustprune.registry import MINNORM, Registry, discover


def test_facts_are_kept_with_the_entry() -> None:
    reg: Registry[object] = Registry("thing")
    reg.register("a", colour="red")(object)
    reg.register("b")(object)
    assert reg.facts("a") == {"colour": "red"} and reg.facts("b") == {}
    with pytest.raises(ValueError, match="unknown thing 'c'"):
        reg.facts("c")


def test_discover_finds_a_new_module_in_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module dropped into a registry's package registers itself: no import list to extend."""
    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_private.py").write_text("raise RuntimeError('skipped')\n")
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(
            "from robustprune.registry import Registry\nimport plugpkg\n"
            "plugpkg.REG = getattr(plugpkg, 'REG', None) or Registry('plug')\n"
            f"plugpkg.REG.register({name!r})(object)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        found = discover("plugpkg")
        assert found == ["plugpkg.alpha", "plugpkg.beta"]
        assert sys.modules["plugpkg"].REG.names() == ["alpha", "beta"]
        (pkg / "gamma.py").write_text("import plugpkg\nplugpkg.REG.register('gamma')(object)\n")
        assert "plugpkg.gamma" in discover("plugpkg")
        assert "gamma" in sys.modules["plugpkg"].REG.names()
    finally:
        for mod in [m for m in sys.modules if m == "plugpkg" or m.startswith("plugpkg.")]:
            del sys.modules[mod]


@pytest.mark.parametrize("package", [robustprune.attacks, robustprune.defenses, robustprune.models])
def test_every_module_of_a_registry_package_is_imported(package: object) -> None:
    modules = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]  # type: ignore[attr-defined]
    assert modules and all(f"{package.__name__}.{m}" in sys.modules for m in modules)  # type: ignore[attr-defined]


def test_minimum_norm_attacks_are_registered() -> None:
    from robustprune.attacks import FMN, CarliniWagnerL2, DeepFool, build_minnorm
    from robustprune.eval.card import attack_names

    assert {"deepfool", "cw", "fmn"} <= set(MINNORM.names()) <= set(attack_names())
    assert isinstance(build_minnorm("fmn", norm="l2"), FMN) and isinstance(build_minnorm("cw"), CarliniWagnerL2)
    assert isinstance(build_minnorm("deepfool"), DeepFool)
    with pytest.raises(ValueError, match="unknown minimum-norm attack 'nope'"):
        build_minnorm("nope")


def test_eval_runs_every_minimum_norm_attack_by_name(at_run: Path, tiny_mnist: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval --attack fmn,deepfool,cw``: each is built from the registry and reports r2 (FMN in L2)."""
    from robustprune.attacks import CarliniWagnerL2
    from robustprune.cli import main

    fast_cw = lambda **kw: CarliniWagnerL2(steps=5, binary_search_steps=1, **kw)  # noqa: E731
    monkeypatch.setitem(MINNORM._items, "cw", fast_cw)
    out = tmp_path / "card.json"
    assert main(["eval", str(at_run), "--attack", "fmn,deepfool,cw", "--limit", "4", "--data-dir", str(tiny_mnist),
                 "--out", str(out), "--no-progress"]) == 0
    card = json.loads(out.read_text())
    assert card["attacks"] == []
    by = {m["name"]: m for m in card["minnorm"]}
    assert list(by) == ["fmn", "deepfool", "cw"]
    assert by["fmn"]["attack"]["norm"] == "l2" and by["cw"]["attack"]["steps"] == 5
    assert all(m["n"] == 4 and m["n_success"] + m["n_failed"] == m["n_correct"] for m in by.values())


def test_benchmark_names_are_facts_of_the_method() -> None:
    """The APB's short names live on the methods (Method.apb_name), not in a table in jobs/export."""
    from robustprune.jobs.export import apb_taxonomy
    from robustprune.registry import METHODS

    keys = {m: apb_taxonomy(m, {}, pretraining=None)["ap_key"].split("_")[0] for m in ("admm", "anp-vs-fast", "hydra")}
    assert keys == {"admm": "RADMM", "anp-vs-fast": "ANPVS", "hydra": "HYDRA"}
    assert METHODS.get("admm").apb_name == "RADMM" and METHODS.get("hydra").apb_name is None
