"""The threat model lives on DatasetInfo, and one ε rule holds for eval, audit, curve, suites, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from robustprune.compare import parse_suite
from robustprune.config import TrainConfig
from robustprune.data import check_eps, dataset_info
from robustprune.defenses import MethodContext, build_method
from robustprune.eval import build_eval_attack
from robustprune.jobs.audit import audit
from robustprune.jobs.curve import check_eps_list
from robustprune.train.run import method_context


@pytest.mark.parametrize(("name", "eps", "step", "train"), [
    ("mnist", 0.3, 0.01, (0.3, 20, 0.01)),
    ("fashion-mnist", 0.1, 0.01, (0.1, 20, 0.01)),
    ("cifar10", 8 / 255, 2 / 255, (8 / 255, 10, 2 / 255)),
    ("mnist-1v7", 0.3, 0.01, (0.3, 20, 0.01)),
])
def test_threat_model_per_dataset(name: str, eps: float, step: float, train: tuple[float, int, float]) -> None:
    info = dataset_info(name)
    assert (info.eps(), info.step(), info.train_attack()) == (eps, step, train)
    assert info.train_attack(eps=0.1, steps=3) == (0.1, 3, train[2])
    ctx = method_context(TrainConfig(dataset=name, adv_steps=7), train_size=1)
    assert (ctx.adv_eps, ctx.adv_steps, ctx.adv_step_size) == (eps, 7, train[2])


def test_paper_beta_lambda_of_a_dataset_without_paper_values_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import robustprune.data.catalog as catalog

    plain = dataclasses.replace(dataset_info("mnist"), name="new", paper_beta_lambda=None)
    monkeypatch.setattr(catalog, "_INFOS", {**catalog._INFOS, "new": plain})
    ctx = MethodContext(dataset="new", train_size=64, num_classes=10, adv_eps=0.3, adv_steps=2, adv_step_size=0.1)
    with pytest.raises(ValueError, match="no beta/lambda for dataset 'new'"):
        build_method("anp-vs", ctx=ctx)
    method = build_method("anp-vs", ctx=ctx, beta=2.0, lam=0.01)
    assert (method.beta, method.lam) == (2.0, 0.01)
    assert dataset_info("mnist").anpvs_beta_lambda() == (4.0, 1e-3)


@pytest.mark.parametrize("bad", [2.0, -0.1, float("nan"), True])
def test_one_eps_rule_everywhere(bad: float) -> None:
    text = "must be a number in [0, 1]"
    with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]")):
        check_eps(bad)
    with pytest.raises(ValueError, match="pixel units"):
        build_eval_attack("pgd", eps=bad, steps=2, step_size=0.01)
    with pytest.raises(ValueError, match="pixel units"):
        dataset_info("mnist").eps(bad)
    with pytest.raises(ValueError, match="pixel units"):
        check_eps_list([0.1, bad])
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="pixel units"):
        audit(model, torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long), eps=bad, step_size=0.01,
              autoattack="no", progress=False)
    with pytest.raises(ValueError, match="pixel units"):
        TrainConfig(adv_eps=bad).validate()
    suite = {"name": "s", "defaults": {"model": "lenet5-caffe", "dataset": "mnist"}, "eval": {"eps": bad},
             "runs": [{"id": "a", "method": "standard"}]}
    with pytest.raises(ValueError, match="pixel units|wrong type"):
        parse_suite(suite)


def test_jobs_leave_the_callers_random_stream_alone(at_run, tiny_mnist) -> None:  # type: ignore[no-untyped-def]
    """Evaluation seeds its attacks' random starts, but the caller's global RNG state is untouched."""
    from robustprune.eval import evaluate_run

    torch.manual_seed(123)
    state = torch.get_rng_state()
    card = evaluate_run(at_run, attacks=["pgd"], steps=2, limit=8, seed=5, data_dir=str(tiny_mnist), progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    again = evaluate_run(at_run, attacks=["pgd"], steps=2, limit=8, seed=5, data_dir=str(tiny_mnist), progress=False)
    assert again["attacks"][0]["robust_acc"] == card["attacks"][0]["robust_acc"]  # the seed still fixes the run
    model, x = nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), torch.rand(8, 1, 2, 2)
    state = torch.get_rng_state()
    audit(model, x, torch.arange(8) % 4, eps=0.1, step_size=0.01, autoattack="no", progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_registered_attack_is_an_evaluation_attack(monkeypatch: pytest.MonkeyPatch) -> None:
    """eval builds registered attacks through the registry, each with the settings it takes."""
    from robustprune.attacks import ATTACKS, PGD
    from robustprune.eval.card import attack_names

    class Probe(PGD):
        def __init__(self, *, eps: float, steps: int = 1) -> None:
            super().__init__(eps=eps, steps=steps, step_size=eps)

    monkeypatch.setitem(ATTACKS._items, "probe", Probe)
    assert "probe" in attack_names()
    probe = build_eval_attack("probe", eps=0.2, steps=3, step_size=0.01, restarts=2, eot=4)
    assert isinstance(probe, Probe) and (probe.steps, probe.step_size, probe.restarts) == (3, 0.2, 1)
    with pytest.raises(ValueError, match="unknown attack 'nope'"):
        build_eval_attack("nope", eps=0.2, steps=3, step_size=0.01)
