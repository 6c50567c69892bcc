"""The GPU path of training: bf16 autocast (``--amp``) with float32 attacks, pinned / GPU-resident
data, channels_last on CUDA, and the CIFAR-10 suites. Everything runs on a CPU; the one CUDA test
is skipped without a GPU."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

import robustprune.defenses  # noqa: F401  (registers methods)
from robustprune.attacks import PGD
from robustprune.compare.suite import load_suite
from robustprune.config import TrainConfig, load_train_config
from robustprune.data import TensorLoader
from robustprune.data.loader import DEVICE_CACHE_BYTES, data_placement
from robustprune.defenses import MethodContext, build_method
from robustprune.models import build_model
from robustprune.train import fit
from robustprune.train.loop import step
from robustprune.train.run import amp_context, use_channels_last

SUITES = Path(__file__).resolve().parents[1] / "configs" / "suites"
CTX = MethodContext(dataset="mnist", train_size=1000, num_classes=10, adv_eps=0.3, adv_steps=2,
                    adv_step_size=0.1, lr=1e-3, weight_decay=1e-4, total_steps=10)
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class DtypeProbe(nn.Module):
    """A small MLP that records the dtype of its first layer's output on every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(784, 32), nn.Linear(32, 10)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        self.seen.append(h.dtype)
        return self.fc2(torch.relu(h))


# ---- amp: validation and what it does on a CPU ------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["fp16", "BF16", "bfloat16", ""])
def test_amp_rejects_unknown_modes(bad: str) -> None:
    with pytest.raises(ValueError, match=f"amp must be one of none, bf16, got {bad!r}"):
        TrainConfig(amp=bad).validate()
    with pytest.raises(ValueError, match="amp"):
        amp_context(bad, CPU)
    TrainConfig(amp="bf16").validate()


def test_amp_context_is_bf16_autocast_or_nothing() -> None:
    lin, x = nn.Linear(4, 3), torch.rand(2, 4)
    with amp_context("none", CPU):
        assert lin(x).dtype == torch.float32
    with amp_context("bf16", CPU):
        assert lin(x).dtype == torch.bfloat16


def test_attack_inside_autocast_stays_float32() -> None:
    """The training attack leaves the autocast region: float32 activations, the same examples as
    without autocast; ``full_precision = False`` lets bf16 through (the benchmark's variant)."""
    torch.manual_seed(0)
    model, (x, y) = DtypeProbe(), batch()
    attack = PGD(eps=0.3, steps=3, step_size=0.1)
    torch.manual_seed(5)
    plain = attack(model, x, y)
    model.seen.clear()
    torch.manual_seed(5)
    with amp_context("bf16", CPU):
        inside = attack(model, x, y)
        assert torch.is_autocast_enabled("cpu")  # the region is restored after the attack
    assert model.seen and set(model.seen) == {torch.float32}
    assert torch.equal(inside, plain)
    model.seen.clear()
    attack.full_precision = False
    with amp_context("bf16", CPU):
        attack(model, x, y)
    assert set(model.seen) == {torch.bfloat16}


@pytest.mark.parametrize("method", ["at", "trades", "anp-vs"])
def test_bf16_step_on_cpu_trains_every_group(method: str) -> None:
    """One bf16 step of the attack-based methods: float32 parameters all move, logs are float32."""
    torch.manual_seed(0)
    m = build_method(method, ctx=CTX)
    model = m.prepare(build_model("lenet5-caffe"))
    groups = m.param_groups(model)
    opts = [torch.optim.Adam(g.params, lr=g.lr, weight_decay=g.weight_decay) for g in groups]
    before = [[p.detach().clone() for p in g.params] for g in groups]
    logs = step(m, model, groups, opts, *batch(), amp="bf16")
    assert logs and all(v.dtype == torch.float32 and torch.isfinite(v) for v in logs.values())
    for g, old in zip(groups, before, strict=True):
        assert all(p.dtype == torch.float32 for p in g.params)
        assert any(not torch.equal(o, p) for o, p in zip(old, g.params, strict=True)), g.name


def test_fit_with_bf16_on_cpu_warns_and_records_it(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(method="at", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(tmp_path / "bf16"),
                      data_dir=str(tiny_mnist), limit_train=32, batch_size=16, adv_steps=1, adv_step_size=0.1,
                      progress=False, device="cpu", amp="bf16")
    with pytest.warns(UserWarning, match="CPU autocast"):
        out = fit(cfg)
    assert load_train_config(out / "config.yaml").amp == "bf16"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(replace(cfg, amp="none", out=str(tmp_path / "fp32")))
    assert not [w for w in caught if "autocast" in str(w.message)]  # float32 (the default) says nothing


# ---- data placement and layout ----------------------------------------------------------------------------------


def test_placement_rules() -> None:
    small, big = 1000, DEVICE_CACHE_BYTES + 1
    assert data_placement(small, source=CPU, target=CUDA, pin_memory=True) == "resident"
    assert data_placement(big, source=CPU, target=CUDA, pin_memory=False) == "direct"
    assert data_placement(big, source=CPU, target=CUDA, pin_memory=True) == (
        "pinned" if torch.cuda.is_available() else "direct")
    assert data_placement(small, source=CPU, target=CPU, pin_memory=True) == "direct"
    assert data_placement(small, source=CUDA, target=CUDA, pin_memory=True) == "direct"
    assert data_placement(small, source=CPU, target=CUDA, pin_memory=True, cache_bytes=10) != "resident"


@pytest.mark.parametrize("augment", [False, True])
def test_pin_memory_on_cpu_is_harmless_and_changes_no_batch(augment: bool) -> None:
    x = torch.randint(0, 256, (21, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(21) % 10
    kw = {"batch_size": 4, "shuffle": True, "seed": 3, "augment": augment}
    pinned, plain = TensorLoader(x, y, pin_memory=True, **kw), TensorLoader(x, y, pin_memory=False, **kw)
    assert pinned.placement == plain.placement == "direct"
    for (xa, ya), (xb, yb) in zip(pinned, plain, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == torch.float32
    with pytest.raises(ValueError, match="device_cache_bytes"):
        TensorLoader(x, y, batch_size=4, device_cache_bytes=-1)


def test_channels_last_is_used_on_cuda_and_cpu_for_conv_models_only() -> None:
    for device in (CPU, CUDA):  # the layout change itself needs no GPU
        conv = use_channels_last(build_model("lenet5-caffe"), device, True)
        w = next(p for p in conv.parameters() if p.dim() == 4 and p.shape[1] > 1)
        assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    off = use_channels_last(build_model("lenet5-caffe"), CUDA, False)
    assert all(p.is_contiguous() for p in off.parameters())


# ---- the CIFAR-10 suites ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10_table_paper", "cifar10_gpu_smoke"])
def test_cifar10_suites_parse_and_validate(name: str) -> None:
    suite = load_suite(SUITES / f"{name}.yaml")
    trained = [r for r in suite.runs if r.model_of is None]
    assert {r.train["dataset"] for r in trained} == {"cifar10"} and {r.train["model"] for r in trained} == {"vgg16"}
    assert {"standard", "at", "trades", "anp-vs"} <= {r.id for r in suite.runs}
    cfg = suite.run("anp-vs").config(0, out="-")
    assert cfg.adv_eps == pytest.approx(8 / 255) and cfg.adv_steps == 10 and cfg.adv_step_size == pytest.approx(2 / 255)
    assert cfg.method_args == {"beta": 2.0, "lam": 1e-4} and suite.run("anp-vs").init_from == "standard"
    assert cfg.milestones == [0.5, 0.8]
    assert suite.eval.eps == pytest.approx(8 / 255) and suite.eval.source is not None
    if name == "cifar10_table_paper":
        assert suite.eval.limit is None and suite.eval.steps == 40 and cfg.epochs == 200 and cfg.batch_size == 64
    else:
        assert cfg.amp == "bf16" and cfg.limit_train is not None and cfg.epochs == 1


# ---- CUDA -------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_bf16_training_epoch_on_cuda(tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.train.loop import Trainer

    cfg = TrainConfig(method="at", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(tmp_path / "gpu"),
                      data_dir=str(tiny_mnist), limit_train=64, batch_size=32, adv_steps=2, adv_step_size=0.1,
                      progress=False, device="cuda", amp="bf16")
    tr = Trainer(cfg)
    assert tr.loader.placement == "resident" and tr.loader.images.is_cuda
    x, y = next(iter(tr.loader))
    logs = step(tr.method, tr.model, tr.groups, tr.opts, x, y, amp="bf16")
    assert all(torch.isfinite(v) for v in logs.values())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in tr.model.parameters())
    out = fit(replace(cfg, out=str(tmp_path / "fit")))
    assert (out / "model.safetensors").is_file()
