"""The training loop: every method trains, seeds reproduce, kill-and-resume equals uninterrupted,
checkpoints are atomic, bad input is refused clearly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

import robustprune.defenses  # noqa: F401  (registers methods)
from robustprune.config import TrainConfig
from robustprune.registry import METHODS
from robustprune.train import CheckpointError, fit, load_checkpoint, load_run
from robustprune.train.checkpoint import load_weights


def tiny_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        method="standard", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(out), data_dir=str(data),
        limit_train=64, batch_size=32, adv_steps=2, adv_step_size=0.1, progress=False,
    )
    return replace(base, **kw)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(run / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def standard_run(tiny_mnist: Path, tmp_path: Path) -> Path:
    return fit(tiny_cfg(tiny_mnist, tmp_path / "std"))


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_one_epoch(method: str, tiny_mnist: Path, tmp_path: Path, standard_run: Path) -> None:
    cls = METHODS.get(method)
    init = str(standard_run) if getattr(cls, "needs_init", False) else None
    # hydra's first (score) phase freezes the weights by design: train its weight phase here
    args = {"hydra": {"score_epochs": 0}}.get(method, {})
    out = fit(tiny_cfg(tiny_mnist, tmp_path / method, method=method, limit_train=32, init_from=init, method_args=args))
    before = weights(standard_run) if init else None
    after = weights(out)
    for k, v in after.items():
        assert torch.isfinite(v).all(), f"{method}: {k} is not finite"
    if before is not None:
        shared = [k for k in before if k in after and before[k].dtype.is_floating_point]
        assert any(not torch.equal(before[k], after[k]) for k in shared), f"{method} did not move the weights"
    run = load_run(out)
    assert run.cfg.method == method
    hist = load_checkpoint(out).state["history"]
    assert len(hist) == 1 and all(v == v for v in hist[0].values() if isinstance(v, float))


def test_same_seed_same_weights(tiny_mnist: Path, tmp_path: Path) -> None:
    a = fit(tiny_cfg(tiny_mnist, tmp_path / "a", method="at", seed=3))
    b = fit(tiny_cfg(tiny_mnist, tmp_path / "b", method="at", seed=3))
    c = fit(tiny_cfg(tiny_mnist, tmp_path / "c", method="at", seed=4))
    assert same(weights(a), weights(b))
    assert not same(weights(a), weights(c))


def test_resume_equals_uninterrupted(tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = fit(tiny_cfg(tiny_mnist, tmp_path / "full", method="at", epochs=3))
    cfg = tiny_cfg(tiny_mnist, tmp_path / "killed", method="at", epochs=3)
    # kill the process in the middle of epoch 2 (after epoch 1's checkpoint)
    from robustprune.defenses.standard import AdversarialTraining

    calls = {"n": 0}
    orig = AdversarialTraining.after_step

    def dying(self: AdversarialTraining, model: torch.nn.Module, step: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        orig(self, model, step)

    monkeypatch.setattr(AdversarialTraining, "after_step", dying)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg)
    monkeypatch.setattr(AdversarialTraining, "after_step", orig)
    assert load_checkpoint(cfg.out).epoch == 1
    assert not (Path(cfg.out) / "model.safetensors").exists()
    resumed = fit(replace(cfg, resume=True))
    assert same(weights(full), weights(resumed))


def test_crash_while_saving_keeps_previous_checkpoint(tiny_mnist: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import robustprune.train.checkpoint as ck

    cfg = tiny_cfg(tiny_mnist, tmp_path / "run", epochs=2)
    orig = ck.save_file
    calls = {"n": 0}

    def flaky(tensors: dict, path: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 2's weights
            with open(path, "wb") as f:
                f.write(b"half a file")
            raise OSError("disk full")
        orig(tensors, path)

    monkeypatch.setattr(ck, "save_file", flaky)
    with pytest.raises(OSError, match="disk full"):
        fit(cfg)
    ckpt = load_checkpoint(cfg.out)
    assert ckpt.epoch == 1
    leftovers = [p for p in (Path(cfg.out) / "checkpoints").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_existing_run_needs_resume(standard_run: Path, tiny_mnist: Path) -> None:
    with pytest.raises(ValueError, match="--resume"):
        fit(tiny_cfg(tiny_mnist, standard_run))


def test_resume_of_finished_run_keeps_weights(standard_run: Path, tiny_mnist: Path) -> None:
    before = weights(standard_run)
    fit(tiny_cfg(tiny_mnist, standard_run, resume=True))
    assert same(before, weights(standard_run))


def test_init_from_copies_weights_and_buffers(standard_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    from robustprune.train.run import build_model_for, init_from

    model = build_model_for(tiny_cfg(tiny_mnist, tmp_path / "x"))
    init_from(model, standard_run)
    assert same({k: v for k, v in model.state_dict().items()}, weights(standard_run))
    vgg = build_model_for(tiny_cfg(tiny_mnist, tmp_path / "y", model="lenet-300-100"))
    with pytest.raises(ValueError, match="do not fit"):
        init_from(vgg, standard_run)


def test_corrupt_weights_are_named(standard_run: Path) -> None:
    path = standard_run / "model.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_run(standard_run)


def test_missing_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        load_run(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("batch_size", 0), ("lr", -1.0), ("adv_eps", -0.1), ("optimizer", "rmsprop"), ("schedule", "poly")],
)
def test_bad_config_names_the_value(field: str, value: object, tiny_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=str(value)):
        fit(tiny_cfg(tiny_mnist, tmp_path / "bad", **{field: value}))
    assert not (tmp_path / "bad").exists()


def test_unknown_method_and_model(tiny_mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'magic'"):
        fit(tiny_cfg(tiny_mnist, tmp_path / "m", method="magic"))
    with pytest.raises(ValueError, match="'lenet9'"):
        fit(tiny_cfg(tiny_mnist, tmp_path / "n", model="lenet9"))
