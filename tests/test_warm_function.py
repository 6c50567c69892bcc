"""``mask_init="function-preserving"``: a mask method started from a trained model computes, at
step 0, what that model computed (eval mode exactly, to 1e-4 on the logits; training mode in
expectation), for registered models and a user's residual network masked through the graph."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from robustprune.config import TrainConfig
from robustprune.defenses import build_method
from robustprune.models import installed_masks
from robustprune.sparsity.bbdropout import PRESERVE_A_INIT, BBDropout, install_bbd
from robustprune.sparsity.compact import compact_model
from robustprune.train.run import build_model_for, init_from, method_context

FP = {"mask_init": "function-preserving"}
#: (model, dataset): LeNet5-Caffe, VGG-16 and a user's residual network (GraphNet slots)
MODELS = [("lenet5-caffe", "mnist"), ("vgg16", "cifar10"), ("factory_models:tiny_resnet", "mnist")]


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with the marks of training a fresh init lacks: batch-norm statistics and affine
    parameters away from 0/1, and a classifier whose logits are of order 10 (so that 1e-4 is a
    real tolerance). Eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    model.eval()
    x = inputs(model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(10.0 / float(model(x).abs().max()))
    return model


def inputs(model: nn.Module, n: int = 4) -> Tensor:
    shape = (3, 32, 32) if any(isinstance(m, nn.Conv2d) and m.in_channels == 3 for m in model.modules()) \
        else (1, 28, 28)
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(7))


def warm(cfg: TrainConfig, source: Path) -> nn.Module:
    """What the Trainer does with ``--init-from``: prepare the bare model, load the source."""
    method = build_method(cfg.method, ctx=method_context(cfg, train_size=64), **cfg.method_args)
    bare = build_model_for(cfg)
    base = set(bare.state_dict())
    model = method.prepare(bare)
    with pytest.warns(UserWarning, match="keep their initial values"):
        init_from(model, source, base_keys=base, method=cfg.method)
    return model.eval()


def source_file(cfg: TrainConfig, tmp_path: Path) -> tuple[Path, Tensor, Tensor]:
    torch.manual_seed(0)
    src = trained_like(build_model_for(cfg))
    path = tmp_path / "trained.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    x = inputs(src)
    with torch.no_grad():
        return path, x, src(x)


@pytest.mark.parametrize(("name", "dataset"), MODELS)
def test_function_preserving_masks_compute_the_trained_models_logits(name: str, dataset: str, tmp_path: Path) -> None:
    cfg = TrainConfig(model=name, dataset=dataset, method="bp", method_args=dict(FP))
    path, x, want = source_file(cfg, tmp_path)
    assert float(want.abs().max()) > 5.0
    model = warm(cfg, path)
    assert installed_masks(model), "the method installed no masks"
    with torch.no_grad():
        got = model(x)
    assert float((got - want).abs().max()) <= 1e-4
    paper = warm(TrainConfig(model=name, dataset=dataset, method="bp"), path)
    with torch.no_grad():
        assert float((paper(x) - want).abs().max()) > 1e-2  # the paper's masks do change the function


@pytest.mark.parametrize("method", ["anp-vs", "anp", "anp-vs-fast"])
def test_every_mask_method_takes_the_option_and_names_it_on_the_card(method: str, tmp_path: Path) -> None:
    cfg = TrainConfig(method=method, method_args=dict(FP))
    path, x, want = source_file(cfg, tmp_path)
    model = warm(cfg, path)
    with torch.no_grad():
        assert float((model(x) - want).abs().max()) <= 1e-4
    keep = [float(m.expected_keep().detach().mean()) for _, m in installed_masks(model) if isinstance(m, BBDropout)]
    assert keep and all(math.isclose(k, 0.98, abs_tol=1e-3) for k in keep)  # a' = 49 also for anp-vs-fast
    ctx = method_context(cfg, train_size=64)
    assert build_method(method, ctx=ctx, **FP).card_fields()["mask_init"] == "function-preserving"
    assert "initial_keep" not in build_method(method, ctx=ctx).card_fields()  # not known before prepare
    assert build_method(method, ctx=ctx).card_fields()["mask_init"] == "paper"
    with pytest.raises(ValueError, match="mask_init must be one of paper, function-preserving, got 'keep'"):
        build_method(method, ctx=ctx, mask_init="keep")


def test_the_card_names_the_keep_rates_each_initialisation_started_at() -> None:
    """``initial_keep``: the mean E[π₀] per mask kind, read from the installed masks."""
    cfg = TrainConfig(method="anp-vs", model="vgg16", dataset="cifar10")
    ctx = method_context(cfg, train_size=64)
    a = {x: math.log1p(math.exp(x)) for x in (-1.0, 2.0, PRESERVE_A_INIT, 3.0)}
    paper = build_method("anp-vs", ctx=ctx)
    paper.prepare(build_model_for(cfg))
    want = {"conv": a[2.0] / (a[2.0] + 1), "fc": a[-1.0] / (a[-1.0] + 1)}  # VGG conv a' = 2, fc a' = -1
    assert paper.card_fields()["initial_keep"] == pytest.approx(want, abs=1e-4)
    fp = build_method("anp-vs", ctx=ctx, **FP)
    fp.prepare(build_model_for(cfg))
    assert fp.card_fields()["initial_keep"] == pytest.approx({"conv": 0.98, "fc": 0.98}, abs=1e-4)
    own = build_method("anp-vs", ctx=ctx, a_init_fc=3.0, **FP)
    own.prepare(build_model_for(cfg))
    assert own.card_fields()["initial_keep"] == pytest.approx({"conv": 0.98, "fc": a[3.0] / (a[3.0] + 1)}, abs=1e-4)


def test_paper_init_is_unchanged() -> None:
    """The faithful recipe's masks: no gain, E[π] = a/(a+1) for a = softplus(-1)."""
    model = build_method("anp-vs", ctx=method_context(TrainConfig(method="anp-vs"), train_size=64)).prepare(
        build_model_for(TrainConfig()))
    masks = [m for _, m in installed_masks(model) if isinstance(m, BBDropout)]
    a = math.log1p(math.exp(-1.0))
    assert all(m.gain is None and not any(k.endswith("gain") for k in m.state_dict()) for m in masks)
    assert all(torch.allclose(m.eval_scale(), torch.full((m.units,), a / (a + 1)), atol=1e-5) for m in masks)


@pytest.mark.parametrize("a_init", [9.0, -1.0])
def test_training_mode_output_equals_the_input_in_expectation(a_init: float) -> None:
    torch.manual_seed(0)
    fp = BBDropout(64, kind="fc", a_init=a_init, preserve=True).train()
    plain = BBDropout(64, kind="fc", a_init=a_init).train()
    x = torch.ones(256, 64)
    with torch.no_grad():
        mean_fp = torch.stack([fp(x).mean() for _ in range(300)]).mean()
        mean_plain = torch.stack([plain(x).mean() for _ in range(300)]).mean()
        keep0 = float(plain.expected_keep()[0])
    assert abs(float(mean_fp) - 1.0) < 0.03
    assert abs(float(mean_plain) - keep0) < 0.03 and keep0 < 0.95  # without the gain: E[π₀], not 1
    assert torch.equal(fp.eval()(x), x * (fp.expected_keep() * fp.gain).unsqueeze(0))


def test_a_masked_source_keeps_its_own_function(tmp_path: Path) -> None:
    """Warm-starting function-preserving masks from a run that has masks (the paper's, no gain):
    its a', b' are loaded and the gain is 1, so the model computes what the masked source did."""
    cfg = TrainConfig(method="bp")
    torch.manual_seed(0)
    src = install_bbd(trained_like(build_model_for(cfg)))
    with torch.no_grad():
        for _, m in installed_masks(src):
            assert isinstance(m, BBDropout)
            m.a_uc.copy_(torch.randn(m.units))
    src.eval()
    x = inputs(src)
    path = tmp_path / "masked.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = build_method("bp", ctx=method_context(cfg, train_size=64), **FP).prepare(build_model_for(cfg))
    with pytest.warns(UserWarning, match="gain"):
        init_from(model, path, base_keys=set(build_model_for(cfg).state_dict()))
    model.eval()
    with torch.no_grad():
        assert float((model(x) - src(x)).abs().max()) <= 1e-5


@pytest.mark.parametrize(("name", "dataset"), [MODELS[0], MODELS[2]])
def test_gain_is_saved_reloaded_and_folded_by_compaction(name: str, dataset: str) -> None:
    cfg = TrainConfig(model=name, dataset=dataset, method="bp", method_args=dict(FP))
    method = build_method("bp", ctx=method_context(cfg, train_size=64), **FP)
    torch.manual_seed(0)
    model = method.prepare(trained_like(build_model_for(cfg)))
    with torch.no_grad():  # learning moved the keep rates; prune every third unit
        for _, m in installed_masks(model):
            assert isinstance(m, BBDropout)
            m.a_uc.add_(torch.randn(m.units))
            m.a_uc[::3] = -12.0
    model.eval()
    x = inputs(model)
    with torch.no_grad():
        want = model(x)
        copy = method.prepare(build_model_for(cfg))
        copy.load_state_dict(model.state_dict())  # strict: the gain is a saved buffer
        assert torch.equal(copy.eval()(x), want)
        net = compact_model(model, input_shape=tuple(x.shape[1:]))
        assert float((net(x) - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_bad_preserve_settings_are_named() -> None:
    with pytest.raises(ValueError, match="preserve must be True or False, got 1"):
        BBDropout(4, preserve=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial keep rate above the threshold 0.5"):
        BBDropout(4, a_init=-1.0, threshold=0.5, preserve=True)
    with pytest.raises(ValueError, match="mask_init must be one of paper, function-preserving, got 'fp'"):
        install_bbd(build_model_for(TrainConfig()), mask_init="fp")
