"""Attacks draw from an explicit ``torch.Generator``; the jobs pass one seeded with their ``seed``
instead of reseeding the global RNG. On the CPU a generator seeded with ``s`` draws what the global
RNG draws after ``torch.manual_seed(s)``, so for a deterministic model the numbers are the same
both ways, bit for bit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustprune.attacks import EOTPGD, FGSM, PGD, RFGSM, Attack, seeded_generator
from robustprune.data import TensorLoader
from robustprune.eval.card import evaluate_run
from robustprune.eval.evaluate import evaluate
from robustprune.jobs import audit as audit_job
from robustprune.jobs import curve as curve_job
from robustprune.jobs import sweep as sweep_job
from robustprune.models import build_model

SEED = 7


def small_model() -> nn.Module:
    """A deterministic LeNet-300-100 with fixed random weights (latent maps: vulnerability too)."""
    torch.manual_seed(0)
    return build_model("lenet-300-100").eval()


def batch(n: int = 24) -> tuple[Tensor, Tensor]:
    """Random images labelled with :func:`small_model`'s own predictions (clean accuracy 100%)."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, small_model()(x).argmax(1)


def attacks(generator: torch.Generator | None) -> list[tuple[str, Attack]]:
    """Every random draw an attack makes: uniform L∞ and L2 starts, restarts, R+FGSM's signed step."""
    g = generator
    return [
        ("fgsm", FGSM(eps=0.02, generator=g)),
        ("pgd", PGD(eps=0.02, steps=3, step_size=0.008, restarts=2, generator=g)),
        ("pgd-l2", PGD(eps=0.5, steps=3, step_size=0.2, norm="l2", generator=g)),
        ("pgd-normal", PGD(eps=0.02, steps=2, step_size=0.008, random_start="normal", start_radius=0.01,
                           generator=g)),
        ("rfgsm", RFGSM(eps=0.02, generator=g)),
        ("eot-pgd", EOTPGD(eps=0.02, steps=2, step_size=0.008, eot=2, generator=g)),
    ]


def results(res: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.summary().items() if k != "wall_s"} for a in res.attacks]


def test_generator_draws_what_the_seeded_global_rng_draws() -> None:
    model, (x, y) = small_model(), batch()
    torch.manual_seed(SEED)
    want = [atk(model, x, y) for _, atk in attacks(None)]
    torch.manual_seed(12345)  # the global stream must not matter
    gen = seeded_generator(SEED)
    got = [atk(model, x, y) for _, atk in attacks(gen)]
    for (name, _), a, b in zip(attacks(None), want, got, strict=True):
        assert torch.equal(a, b), name


def test_generator_leaves_the_global_rng_alone() -> None:
    model, (x, y) = small_model(), batch()
    torch.manual_seed(3)
    before = torch.get_rng_state()
    for _, atk in attacks(seeded_generator(SEED)):
        atk(model, x, y)
    assert torch.equal(torch.get_rng_state(), before)


def test_generator_is_not_an_attack_parameter() -> None:
    """Cards (and suite hashes) describe the attack, not its random stream."""
    assert PGD(eps=0.1, generator=seeded_generator(0)).params() == PGD(eps=0.1).params()
    with pytest.raises(ValueError, match="generator"):
        PGD(eps=0.1, generator=0)  # type: ignore[arg-type]


def test_evaluate_deterministic_model_both_ways_is_bit_identical() -> None:
    model, (x, y) = small_model(), batch(40)
    loader = TensorLoader(x, y, batch_size=16)
    torch.manual_seed(SEED)  # the old way: the job reseeds the global RNG
    old = evaluate(model, loader, attacks(None), passes=1, progress=False)
    torch.manual_seed(999)
    new = evaluate(model, loader, attacks(seeded_generator(SEED)), passes=1, progress=False)
    assert results(old) == results(new)
    assert 0 < old.attacks[1].correct < old.clean_correct  # PGD moved some, not all: a real comparison


def _old_way(monkeypatch: pytest.MonkeyPatch, *modules: Any) -> None:
    """Make the jobs take their global-RNG branch (what they did before generators)."""
    for mod in modules:
        monkeypatch.setattr(mod, "seeded_generator", lambda seed, device="cpu": None)


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[Tensor]:
    """Every random start a PGD-family attack draws (the only random part of a deterministic
    model's evaluation), in order: robust accuracies alone hardly notice another seed."""
    seen: list[Tensor] = []
    start = PGD._start

    def record(self: PGD, x: Tensor) -> Tensor:
        out = start(self, x)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(PGD, "_start", record)
    return seen


def _same(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def _attack_entries(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in a.items() if k != "wall_s"} for a in card["attacks"]]


def test_evaluate_run_both_ways(at_run: Path, tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                starts: list[Tensor]) -> None:
    from robustprune.eval import context as context_mod  # the RNG policy of every evaluation job

    kw: dict[str, Any] = {"attacks": ["pgd", "rfgsm", "fgsm"], "steps": 3, "restarts": 2, "limit": 24, "seed": SEED,
                          "data_dir": str(tiny_mnist), "progress": False, "measure": False}
    new = evaluate_run(at_run, out=tmp_path / "new.json", **kw)
    new_starts = list(starts)
    starts.clear()
    _old_way(monkeypatch, context_mod)
    old = evaluate_run(at_run, out=tmp_path / "old.json", **kw)
    assert new_starts and _same(new_starts, starts)
    assert _attack_entries(new) == _attack_entries(old)
    assert new["clean_acc"] == old["clean_acc"]


def test_curve_audit_and_sweep_both_ways(monkeypatch: pytest.MonkeyPatch, starts: list[Tensor],
                                         one_thread: None) -> None:
    model, (x, y) = small_model(), batch(32)
    loader = TensorLoader(x, y, batch_size=16)

    def jobs() -> tuple[Any, Any, Any]:
        curve = curve_job.robust_curve(model, loader, [0.01, 0.02], steps=3, passes=1, seed=SEED, progress=False)
        card = audit_job.audit(model, x, y, eps=0.02, step_size=0.008, eps_sweep=[0.02], autoattack="no",
                               seed=SEED, batch_size=16, progress=False)
        ev = sweep_job.SweepEval(eps=0.02, deepfool_steps=2, cw_steps=2, cw_search=1, batch_size=16, seed=SEED)
        swept = sweep_job.measure(model, x, y, ev, device=torch.device("cpu"), progress=False)
        ladder = [(e["name"], e["robust_acc"]) for e in card["ladder"]]
        return ([p["robust_acc"] for p in curve["points"]],
                ladder + [p["robust_acc"] for p in card["curve"]["points"]],
                (swept["fgsm_acc"], swept["rfgsm_acc"]))

    new = jobs()
    new_starts = list(starts)
    starts.clear()
    _old_way(monkeypatch, curve_job, audit_job, sweep_job)
    old = jobs()
    assert new_starts and _same(new_starts, starts)
    assert new == old
