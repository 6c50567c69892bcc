"""TensorBoard logs: every run writes event files that TensorBoard's own reader reads back with the
expected tags and values; the flag turns them off; a resumed run does not duplicate steps."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY
from robustprune.cli import main
from robustprune.config import TrainConfig
from robustprune.train import fit, load_checkpoint
from robustprune.train.tensorboard import TB_DIR, TrainLogger


def tiny_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(method="at", model="lenet5-caffe", dataset="mnist", epochs=1, out=str(out), data_dir=str(data),
                       limit_train=64, batch_size=16, adv_steps=2, adv_step_size=0.1, progress=False)
    return replace(base, **kw)


def scalars(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run / TB_DIR))
    acc.Reload()
    return acc


def test_at_run_writes_losses_accuracies_and_learning_rates(tiny_mnist: Path, tmp_path: Path) -> None:
    out = fit(tiny_cfg(tiny_mnist, tmp_path / "at", epochs=2, tensorboard_every=2))
    acc = scalars(out)
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "train/adv_acc", "lr/weights", "epoch/loss", "epoch/acc", "epoch/adv_acc",
            "epoch/time_s"} <= tags
    # 64 examples / batch 16 = 4 steps per epoch, a point every 2 steps: steps 2, 4, 6, 8
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]
    assert [e.step for e in acc.Scalars("epoch/loss")] == [1, 2]
    history = load_checkpoint(out).state["history"]
    for row, event in zip(history, acc.Scalars("epoch/adv_acc"), strict=True):
        assert event.value == pytest.approx(row["adv_acc"], rel=1e-6)
    assert all(0.0 <= e.value <= 1.0 for e in acc.Scalars("train/adv_acc"))
    assert acc.Scalars("lr/weights")[0].value == pytest.approx(1e-3)


@pytest.mark.filterwarnings("ignore:method 'anp-vs' is meant to start")
def test_masked_method_logs_per_layer_keep_rates_and_kl(tiny_mnist: Path, tmp_path: Path) -> None:
    out = fit(tiny_cfg(tiny_mnist, tmp_path / "anpvs", method="anp-vs", limit_train=32))
    tags = set(scalars(out).Tags()["scalars"])
    for metric in ("keep_rate", "expected_keep", "kl"):
        layers = {t.split("/", 2)[2] for t in tags if t.startswith(f"masks/{metric}/")}
        assert len(layers) >= 2, f"{metric}: {sorted(tags)}"
    assert {"lr/masks", "lr/weights", "train/kl", "epoch/unit_sparsity", "epoch/kl"} <= tags
    keep = [e.value for t in tags if t.startswith("masks/keep_rate/") for e in scalars(out).Scalars(t)]
    assert all(0.0 <= v <= 1.0 for v in keep)


def test_no_tensorboard_flag_writes_nothing(tiny_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "quiet"
    assert main(["train", "--method", "standard", "--model", "lenet5-caffe", "--dataset", "mnist", "--epochs", "1",
                 "--out", str(out), "--data-dir", str(tiny_mnist), "--no-tensorboard", *TINY]) == 0
    assert (out / "model.safetensors").is_file()
    assert not (out / TB_DIR).exists()
    assert json.loads((out / "run.json").read_text())["config"]["tensorboard"] is False


def test_cli_default_writes_event_files(tiny_mnist: Path, tmp_path: Path) -> None:
    out = tmp_path / "loud"
    assert main(["train", "--method", "standard", "--model", "lenet5-caffe", "--dataset", "mnist", "--epochs", "1",
                 "--out", str(out), "--data-dir", str(tiny_mnist), *TINY]) == 0
    assert list((out / TB_DIR).glob("events.out.tfevents.*"))
    assert "train/loss" in scalars(out).Tags()["scalars"]


@pytest.mark.filterwarnings("ignore:resuming")
def test_resume_purges_the_steps_of_the_interrupted_epoch(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_mnist, tmp_path / "r", method="standard", tensorboard_every=1)
    fit(cfg)
    # a second epoch that crashed after logging steps 5 and 6 (value 99), before its checkpoint
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "r" / TB_DIR)) as crashed:
        for step in (5, 6):
            crashed.add_scalar("train/loss", 99.0, step)
    fit(replace(cfg, epochs=2, resume=True))
    events = scalars(tmp_path / "r").Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 9))
    assert all(e.value != 99.0 for e in events)


def test_bad_frequency_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tensorboard_every must be >= 1, got 0"):
        TrainLogger(tmp_path, every=0)
    with pytest.raises(ValueError, match="tensorboard_every must be >= 1, got 0"):
        TrainConfig(tensorboard_every=0).validate()


def test_logging_settings_do_not_make_another_suite_run() -> None:
    from robustprune.compare.runner import config_diff

    cfg = TrainConfig()
    assert config_diff(cfg, replace(cfg, tensorboard=False, tensorboard_every=7)) == []
    assert [d.split(":")[0] for d in config_diff(cfg, replace(cfg, epochs=cfg.epochs + 1))] == ["epochs"]
