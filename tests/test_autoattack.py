"""The AutoAttack adapter (pyautoattack behind our Attack contract) and its part in the audit.

pyautoattack is a dependency of robustprune, so nothing here is skipped: a set-up that lacks it
fails these tests (``test_autoattack_comes_with_the_package``). The missing-package error is tested
in test_audit.py. Iterations and queries are cut down here for
speed (recorded in the attack's params); the benchmark runs the package's defaults.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robust_toys import Noisy, Quantised, levels  # noqa: E402
from robustprune.attacks.autoattack import AutoAttack  # noqa: E402
from robustprune.cli import main  # noqa: E402
from robustprune.jobs.audit import audit  # noqa: E402


def test_autoattack_comes_with_the_package() -> None:
    """The README's set-up command installs AutoAttack: it is a declared dependency, and importable."""
    from importlib import metadata

    requires = metadata.requires("robustprune") or []
    assert any(r.replace(" ", "").startswith("pyautoattack==0.2.0") and "extra" not in r for r in requires), requires
    import pyautoattack  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.04
QUICK = {"n_iter": 20, "n_queries": 300}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def test_invariants_and_silence(plain: nn.Module, capfd: pytest.CaptureFixture[str],
                                caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 4)).train()
    model[1].weight.grad = torch.ones_like(model[1].weight)
    grad = model[1].weight.grad
    x, y = levels(12, seed=1)
    rng = torch.random.get_rng_state()

    def tracer(*_: Any) -> None:
        return None

    sys.settrace(tracer)
    try:
        x_adv = AutoAttack(eps=EPS, seed=3, **QUICK)(model, x, y)
        assert sys.gettrace() is tracer, "pyautoattack's dynamic-defence check cleared the trace function"
    finally:
        sys.settrace(None)
    assert torch.equal(rng, torch.random.get_rng_state()), "pyautoattack's manual_seed leaked"
    assert model.training and all(m.training for m in model.modules())
    assert model[1].weight.grad is grad and torch.equal(grad, torch.ones_like(grad))
    assert (x_adv - x).abs().max() <= EPS + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.levelno >= 30]


def test_breakdown_matches_the_evaluation(plain: nn.Module) -> None:
    x, y = levels(64, seed=2)
    attack = AutoAttack(eps=EPS, **QUICK)
    t0 = time.perf_counter()
    x_adv = attack(plain, x, y)
    wall = time.perf_counter() - t0
    b = attack.breakdown()
    assert b["versions"] == ["standard"] and b["n"] == 64 and b["flags"] == []
    assert 0 < sum(s["wall_s"] for s in b["stages"]) <= wall  # each stage's own time, inside the call's
    assert [s["name"] for s in b["stages"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    accs = [b["clean_acc"]] + [s["robust_acc"] for s in b["stages"]]
    assert accs == sorted(accs, reverse=True), "a cascade can only remove robust points"
    assert b["clean_acc"] == pytest.approx(accuracy(plain, x, y))
    with torch.no_grad():
        robust = ((plain(x).argmax(1) == y) & (plain(x_adv).argmax(1) == y)).float().mean() * 100
    assert accs[-1] == pytest.approx(float(robust))
    assert 0 < accs[-1] < b["clean_acc"]
    first = attack.tallies()
    x_adv8 = attack(plain, x[:8], y[:8])
    assert attack.breakdown()["n"] == 72
    # the counts of both calls add up, stage by stage, and so do the seconds
    t = attack.tallies()
    with torch.no_grad():
        clean8 = int((plain(x[:8]).argmax(1) == y[:8]).sum())
        robust8 = int(((plain(x[:8]).argmax(1) == y[:8]) & (plain(x_adv8).argmax(1) == y[:8])).sum())
    assert t["clean"] == first["clean"] + clean8
    assert t["robust"]["square"] == first["robust"]["square"] + robust8
    assert all(t["robust"][k] >= first["robust"][k] for k in first["robust"])
    assert all(t["seconds"][k] > first["seconds"][k] > 0 for k in first["seconds"])
    assert sum(t["seconds"].values()) < 600
    attack.reset()
    assert attack.breakdown()["n"] == 0
    p = attack.params()
    assert p["n_iter"] == 20 and p["n_queries"] == 300 and p["package"].startswith("pyautoattack 0.2")


def test_random_models_get_the_rand_version(plain: nn.Module) -> None:
    x, y = levels(8, seed=3)
    attack = AutoAttack(eps=EPS, n_iter=3)
    attack(Noisy(plain), x, y)
    b = attack.breakdown()
    assert b["versions"] == ["rand"] and [s["name"] for s in b["stages"]] == ["apgd-ce", "apgd-dlr"]
    attack.reset()
    attack(plain, x, y)
    assert attack.breakdown()["versions"] == ["standard"]


def test_audit_passes_a_plain_model_and_flags_a_quantised_one(plain: nn.Module) -> None:
    x, y = levels(64, seed=4)
    card = audit(plain, x, y, eps=EPS, step_size=2.5 * EPS / 40, autoattack="yes", aa_options=QUICK, progress=False)
    check = next(c for c in card["checks"] if c["name"] == "autoattack_vs_pgd")
    assert check["status"] == "pass", check
    assert card["verdict"] == "pass", card["warned"]
    card = audit(Quantised(plain), x, y, eps=EPS, step_size=2.5 * EPS / 40, autoattack="yes", aa_options=QUICK,
                 progress=False)
    check = next(c for c in card["checks"] if c["name"] == "autoattack_vs_pgd")
    assert check["status"] == "warn" and check["evidence"]["gap"] > 3, check
    assert any("zero gradient" in f for f in check["evidence"]["flags"]), check["evidence"]["flags"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"version": "fast"}, "fast"), ({"seed": 1.5}, "1.5"), ({"n_iter": 0}, "n_iter"), ({"eps": -1.0}, "-1.0"),
     ({"n_queries": -3}, "-3")],
)
def test_bad_arguments_raise(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        AutoAttack(**({"eps": EPS} | kwargs))


def test_too_few_classes_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = levels(4, seed=5)
    with pytest.raises(ValueError, match="needs a model with >= 4 classes, got 3"):
        AutoAttack(eps=EPS, version="standard")(model, x, y.clamp(max=2))


def test_eval_command_reports_each_stage(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import robustprune.attacks.autoattack as aa

    class Quick(aa.AutoAttack):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw, n_iter=3, n_queries=20)

    monkeypatch.setattr(aa, "AutoAttack", Quick)
    run = tmp_path / "run"
    assert main(["train", "--method", "standard", "--model", "lenet5-caffe", "--dataset", "mnist", "--epochs", "1",
                 "--limit-train", "256", "--out", str(run), "--data-dir", str(tiny_mnist), "--no-progress"]) == 0
    card_path = tmp_path / "card.json"
    assert main(["eval", str(run), "--attack", "pgd,autoattack", "--steps", "3", "--limit", "8", "--data-dir",
                 str(tiny_mnist), "--out", str(card_path), "--no-progress"]) == 0
    card = json.loads(card_path.read_text())
    entry = card["attacks"][1]
    assert entry["name"] == "autoattack" and entry["params"]["n_iter"] == 3
    assert [s["name"] for s in entry["breakdown"]["stages"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert entry["breakdown"]["stages"][-1]["robust_acc"] == pytest.approx(entry["robust_acc"])
    assert "↳ after apgd-t" in capsys.readouterr().out


def test_the_evaluation_seed_reaches_autoattack() -> None:
    """eval and the audit pass their seed to AutoAttack (its card params record it); it was fixed at 0."""
    from robustprune.eval import build_eval_attack
    from robustprune.jobs.audit import build_ladder

    for seed in (0, 7):
        attack = build_eval_attack("autoattack", eps=EPS, steps=2, step_size=0.01, seed=seed)
        assert isinstance(attack, AutoAttack) and attack.seed == seed and attack.params()["seed"] == seed
        rung = next(r for r in build_ladder(eps=EPS, step_size=0.01, stochastic=False, seed=seed)
                    if r.name == "autoattack")
        assert rung.attack.params()["seed"] == seed
    ladder = build_ladder(eps=EPS, step_size=0.01, stochastic=False, seed=7, aa_options={"seed": 2})
    assert next(r for r in ladder if r.name == "autoattack").attack.params()["seed"] == 2
