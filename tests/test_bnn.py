"""AT-BNN: mean weights are deterministic, sampling is random, the KL matches its closed form,
the loss carries the scaled KL, runs load, bad arguments are refused."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.nn.utils import parametrize

from robustprune.defenses import MethodContext, build_method
from robustprune.defenses.bnn import GaussianWeight, bayes_layers, gaussian_kl, model_kl, set_sampling
from robustprune.models import build_model

CTX = MethodContext(dataset="mnist", train_size=1000, num_classes=10, adv_eps=0.3, adv_steps=1, adv_step_size=0.3)


def test_mean_weights_deterministic_sampling_random() -> None:
    method = build_method("at-bnn", ctx=CTX)
    model = method.prepare(build_model("lenet5-caffe")).eval()
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(model(x), model(x))
    assert torch.equal(model.conv1.weight, model.conv1.parametrizations.weight.original)
    assert set_sampling(model, True) == 4
    assert not torch.equal(model(x), model(x))
    set_sampling(model, False)
    model.train()
    assert not torch.equal(model.fc1.weight, model.fc1.weight)  # training forward samples


def test_sampled_weights_have_the_posterior_std() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(50, 40)
    parametrize.register_parametrization(layer, "weight", GaussianWeight(layer.weight, rho_init=-3.0))
    layer.train()
    w = torch.stack([layer.weight.detach() for _ in range(400)])
    sigma = math.log1p(math.exp(-3.0))
    assert abs(w.std(0).mean().item() - sigma) < 0.05 * sigma
    assert torch.allclose(w.mean(0), layer.parametrizations.weight.original, atol=5 * sigma / 20)


def test_architecture_defaults() -> None:
    lenet = build_method("at-bnn", ctx=CTX)
    lenet.prepare(build_model("lenet5-caffe"))
    assert (lenet.rho_init, lenet.prior_sigma) == (-3.0, 1.0)
    vgg = build_method("at-bnn", ctx=CTX)
    model = vgg.prepare(build_model("vgg16"))
    assert (vgg.rho_init, vgg.prior_sigma) == (-5.0, 0.1)
    assert all(torch.all(p.rho == -5.0) for _, p in bayes_layers(model))


def test_kl_matches_closed_form_and_numeric_integral() -> None:
    mu, sigma, sp = torch.tensor([0.3, -1.2]), torch.tensor([0.5, 0.05]), 0.7
    want = sum(math.log(sp / s) + (s**2 + m**2) / (2 * sp**2) - 0.5 for m, s in zip(mu.tolist(), sigma.tolist(),
                                                                                       strict=True))
    assert math.isclose(gaussian_kl(mu, sigma, sp).item(), want, rel_tol=1e-5)
    # numeric integral of q log(q/p) for the first coordinate
    z = torch.linspace(-6, 6, 200001, dtype=torch.float64) * 0.5 + 0.3
    q = torch.distributions.Normal(0.3, 0.5)
    p = torch.distributions.Normal(0.0, sp)
    integrand = q.log_prob(z).exp() * (q.log_prob(z) - p.log_prob(z))
    numeric = torch.trapezoid(integrand, z).item()
    assert math.isclose(gaussian_kl(mu[:1], sigma[:1], sp).item(), numeric, rel_tol=1e-4)
    assert gaussian_kl(torch.zeros(3), torch.full((3,), sp), sp).abs().item() < 1e-6  # q = p


def test_loss_contains_kl_over_100n() -> None:
    torch.manual_seed(0)
    method = build_method("at-bnn", ctx=CTX)
    model = method.prepare(build_model("lenet5-caffe")).train()
    losses, logs = method.loss(model, torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    kl = model_kl(model, 1.0).item() / (100 * 1000)
    assert math.isclose(logs["kl"].item(), kl, rel_tol=1e-5)
    losses["weights"].backward()
    rho = model.conv1.parametrizations.weight[0].rho
    assert rho.grad is not None and rho.grad.abs().sum() > 0


def test_kl_is_per_example_of_the_whole_split_on_a_subset() -> None:
    """On a 20k subset the KL is divided by the 60k split by default (the BBD methods' rule), by
    the subset with ``kl_n="train"``; the card says which."""
    from dataclasses import replace

    subset = replace(CTX, train_size=20_000, dataset_size=60_000)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    for rule, n in (("dataset", 60_000), ("train", 20_000)):
        torch.manual_seed(0)
        method = build_method("at-bnn", ctx=subset, kl_n=rule)
        model = method.prepare(build_model("lenet5-caffe")).train()
        _, logs = method.loss(model, x, y)
        assert math.isclose(logs["kl"].item(), model_kl(model, 1.0).item() / (100 * n), rel_tol=1e-5)
        card = method.card_fields()
        assert card["kl_size"] == n and card["kl_n"] == rule and card["train_size"] == 20_000
        assert math.isclose(card["kl_weight"], 1 / (100 * n))
    with pytest.raises(ValueError, match="'subset'"):
        build_method("at-bnn", ctx=subset, kl_n="subset")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="-1.0"):
        build_method("at-bnn", ctx=CTX, prior_sigma=-1.0)
    with pytest.raises(ValueError, match="0.0"):
        build_method("at-bnn", ctx=CTX, kl_scale=0.0)
    with pytest.raises(ValueError, match="LeNet5Caffe"):
        set_sampling(build_model("lenet5-caffe"), True)
    with pytest.raises(ValueError, match="0"):
        gaussian_kl(torch.zeros(1), torch.ones(1), 0.0)


def test_run_loads_and_card_reports_memory_and_sampling(tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.config import TrainConfig
    from robustprune.eval import evaluate_run
    from robustprune.train import fit, load_run

    out = fit(TrainConfig(method="at-bnn", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(tmp_path / "r"),
                          data_dir=str(tiny_mnist), limit_train=32, batch_size=32, adv_steps=1, adv_step_size=0.3,
                          progress=False))
    run = load_run(out)
    assert len(bayes_layers(run.model)) == 4 and not any(p.sample for _, p in bayes_layers(run.model))
    mean = evaluate_run(out, attacks=["none"], limit=16, progress=False)
    assert mean["memory_factor"] == 2.0 and not mean["stochastic"]
    sampled = evaluate_run(out, attacks=["fgsm"], limit=16, passes=3, defense="bnn-sample", progress=False)
    assert sampled["stochastic"] and sampled["bnn_sample"] and sampled["passes"] == 3
    assert Path(sampled["card_path"]).name == "fgsm-bnnsample.json"


def test_no_weight_decay_and_rho_is_optimised() -> None:
    method = build_method("at-bnn", ctx=CTX)
    model = method.prepare(build_model("lenet5-caffe"))
    (group,) = method.param_groups(model)
    assert group.weight_decay == 0.0
    assert any(p is model.fc1.parametrizations.weight[0].rho for p in group.params)
