"""Every registered model: forward/backward, latent maps, mask slots (STYLE example 6)."""

from __future__ import annotations

import pytest
import torch

from robustprune.models import MODELS, ModelInfo, build_model, mask_slots, model_info

#: every registered model's input shape (channels, size), from its own registry entry
SHAPES = {name: model_info(name).shape for name in MODELS.names()}
UNITS = {"lenet-300-100": 400, "lenet5-caffe": 1370, "vgg16": 5248, "resnet18": 2 * (64 + 128 + 256 + 512),
         "linear": 0}


def make(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    c, s = SHAPES[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=c, image_size=s)
    return model, torch.rand(4, c, s, s)


def test_every_registered_model_declares_its_facts() -> None:
    assert all(isinstance(MODELS.facts(name).get("info"), ModelInfo) for name in MODELS.names())
    assert {n: SHAPES[n] for n in ("lenet-300-100", "lenet5-caffe", "vgg16", "resnet18", "linear")} == {
        "lenet-300-100": (1, 28), "lenet5-caffe": (1, 28), "vgg16": (3, 32), "resnet18": (3, 32), "linear": (1, 28)}
    assert [n for n in MODELS.names() if model_info(n).paper_cost] == ["lenet-300-100", "lenet5-caffe", "vgg16"]
    assert model_info("torchvision:resnet18") == ModelInfo()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_backward_reaches_every_parameter(name: str) -> None:
    model, x = make(name)
    model.train()
    logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_latent_maps(name: str) -> None:
    model, x = make(name)
    model.eval()
    with torch.no_grad():
        plain = model(x)
        logits, feats = model(x, features=True)
    assert isinstance(plain, torch.Tensor)
    assert torch.equal(plain, logits)
    assert len(feats) == model.latent_count
    assert all(f.shape[0] == 4 for f in feats)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_mask_slot_units(name: str) -> None:
    model, _ = make(name)
    assert sum(s.units for _, s in mask_slots(model)) == UNITS[name]


def test_lenet5_slots_match_design() -> None:
    model, _ = make("lenet5-caffe")
    assert [(s.units, s.kind) for _, s in mask_slots(model)] == [(20, "conv"), (50, "conv"), (800, "fc"), (500, "fc")]


def test_unknown_model_names_the_value() -> None:
    with pytest.raises(ValueError, match="'lenet7'"):
        build_model("lenet7")


def test_vgg_normalises_inside() -> None:
    model, x = make("vgg16")
    assert hasattr(model, "normalize")
    assert torch.allclose(model.normalize(x), (x - model.normalize.mean) / model.normalize.std)


@pytest.mark.parametrize("name", MODELS.names())
def test_declared_quirks_name_real_modules(name: str) -> None:
    """A model's quirks are its own declarations: CAS targets exist with the declared width."""
    from robustprune.models import model_quirk

    model = build_model(name)
    modules = dict(model.named_modules())
    for target, channels, rectify in model_quirk(model, "cas_placements") or ():
        assert target in modules and channels >= 1 and isinstance(rectify, bool)
    prior = model_quirk(model, "bnn_prior")
    assert prior is None or (prior[0] < 0 < prior[1])


def test_a_new_model_gets_cas_and_its_bnn_prior_from_its_own_class() -> None:
    """Adding a model touches only models/: the methods ask the model's class, not a table of names."""
    from torch import nn

    from robustprune.defenses import MethodContext, build_method
    from robustprune.defenses.cas import cas_modules, install_cas

    class Tiny(nn.Module):
        cas_placements = (("body", 6, True),)
        bnn_prior = (-4.0, 0.5)

        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.body(x.flatten(1))))

    model = install_cas(Tiny(), num_classes=3)
    assert len(cas_modules(model)) == 1 and model(torch.rand(2, 1, 2, 2)).shape == (2, 3)
    ctx = MethodContext(dataset="mnist", train_size=8, num_classes=3, adv_eps=0.3, adv_steps=1, adv_step_size=0.3)
    method = build_method("at-bnn", ctx=ctx)
    method.prepare(Tiny())
    assert (method.rho_init, method.prior_sigma) == (-4.0, 0.5)
    with pytest.raises(ValueError, match="declares no cas_placements"):
        install_cas(nn.Sequential(nn.Linear(3, 3)), num_classes=3)
