"""``fit()``: the one training loop for every method."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustprune.config import TrainConfig, load_train_config, save_yaml, to_dict
from robustprune.data import TensorLoader, dataset_info, load_split
from robustprune.defenses import Method, ParamGroup, build_method
from robustprune.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from robustprune.train.run import build_model_for, init_from, method_context, use_channels_last
from robustprune.utils import atomic_write_json, provenance, resolve_device


def make_optimizer(cfg: TrainConfig, group: ParamGroup) -> torch.optim.Optimizer:
    lr = group.lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(group.params, lr=lr, momentum=cfg.momentum, weight_decay=group.weight_decay)
    return torch.optim.Adam(group.params, lr=lr, weight_decay=group.weight_decay)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: staircase at fractions of training, cosine, or constant."""
    if cfg.schedule == "step":
        bounds = [m * total_steps for m in cfg.milestones]

        def factor(step: int) -> float:
            return cfg.gamma ** sum(step >= b for b in bounds)

    elif cfg.schedule == "cosine":

        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    else:

        def factor(step: int) -> float:
            return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def train_split(cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """The training examples this run uses (after ``limit_train`` and the validation hold-out)."""
    images, labels = load_split(cfg.dataset, "train", data_dir=cfg.data_dir)
    if cfg.val_size:
        if cfg.val_size >= len(labels):
            raise ValueError(f"val_size={cfg.val_size} leaves no training data ({len(labels)} examples)")
        images, labels = images[: -cfg.val_size], labels[: -cfg.val_size]
    if cfg.limit_train is not None:
        images, labels = images[: cfg.limit_train], labels[: cfg.limit_train]
    return images, labels


def resolve_resume(cfg: TrainConfig) -> TrainConfig:
    """On ``--resume`` the saved config wins, except the epoch count, device and progress bars."""
    saved = Path(cfg.out) / "config.yaml"
    if not (cfg.resume and saved.is_file()):
        return cfg
    old = load_train_config(saved)
    return replace(old, epochs=cfg.epochs, device=cfg.device, progress=cfg.progress, resume=True)


def step(method: Method, model: nn.Module, groups: list[ParamGroup], opts: list[torch.optim.Optimizer],
         x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """One optimisation step: each group's parameters get the gradient of their own loss."""
    losses, logs = method.loss(model, x, y)
    missing = [g.name for g in groups if g.name not in losses]
    if missing:
        raise RuntimeError(f"method {method.name!r} returned no loss for parameter groups {missing}")
    if len(groups) == 1:
        opts[0].zero_grad(set_to_none=True)
        losses[groups[0].name].backward()
    else:
        for i, g in enumerate(groups):
            grads = torch.autograd.grad(
                losses[g.name], g.params, retain_graph=i < len(groups) - 1, allow_unused=True
            )
            for p, gr in zip(g.params, grads, strict=True):
                p.grad = gr
    for opt in opts:
        opt.step()
    return logs


def fit(cfg: TrainConfig) -> Path:
    """Train one run as ``cfg`` says; resumable; returns the run directory."""
    cfg = resolve_resume(cfg)
    cfg.validate()
    info = dataset_info(cfg.dataset)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    if latest_checkpoint(out) is not None and not cfg.resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    images, labels = train_split(cfg)
    loader = TensorLoader(
        images, labels, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed,
        augment=info.name.startswith("cifar"), device=device,
    )
    total_steps = cfg.epochs * len(loader)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg.method, ctx=method_context(cfg, train_size=len(labels), total_steps=total_steps),
                          **cfg.method_args)
    if method.needs_init and cfg.init_from is None and not cfg.resume:
        warnings.warn(f"method {cfg.method!r} is meant to start from a trained model (--init-from)", stacklevel=2)
    model = method.prepare(build_model_for(cfg))
    if cfg.init_from is not None and not cfg.resume:
        init_from(model, cfg.init_from)
    model = use_channels_last(model.to(device), device, cfg.channels_last)
    groups = method.param_groups(model)
    opts = [make_optimizer(cfg, g) for g in groups]
    scheds = [make_scheduler(cfg, o, total_steps) for o in opts]
    history: list[dict[str, Any]] = []
    start, global_step, wall = 0, 0, 0.0
    if cfg.resume and latest_checkpoint(out) is not None:
        ckpt = load_checkpoint(out)
        model.load_state_dict(ckpt.weights)
        for obj, state in zip(opts + scheds, ckpt.state["optimizers"] + ckpt.state["schedulers"], strict=True):
            obj.load_state_dict(state)
        method.load_state_dict(ckpt.state.get("method", {}))
        torch.set_rng_state(ckpt.state["rng"])
        history, start = list(ckpt.state["history"]), ckpt.epoch
        global_step, wall = int(ckpt.state["global_step"]), float(ckpt.state["wall_s"])
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(to_dict(cfg), out / "config.yaml")
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        logs = run_epoch(cfg, method, model, groups, opts, scheds, loader, epoch, global_step)
        global_step += len(loader)
        logs.update(method.on_epoch_end(model, epoch))
        epoch_s = time.perf_counter() - t0
        wall += epoch_s
        history.append({"epoch": epoch + 1, "time_s": epoch_s, **logs})
        state = {
            "epoch": epoch + 1, "global_step": global_step, "wall_s": wall, "history": history,
            "optimizers": [o.state_dict() for o in opts], "schedulers": [s.state_dict() for s in scheds],
            "method": method.state_dict(), "rng": torch.get_rng_state(),
        }
        save_checkpoint(out, epoch + 1, model, state)
        if method.stop_training:
            break
    save_weights(model, out / "model.safetensors")
    atomic_write_json(out / "run.json", {
        "status": "complete", "config": to_dict(cfg), "epochs_done": len(history), "history": history,
        "train_size": len(labels), "wall_s": wall, **provenance(device),
    })
    return out


def run_epoch(cfg: TrainConfig, method: Method, model: nn.Module, groups: list[ParamGroup],
              opts: list[torch.optim.Optimizer], scheds: list[Any], loader: TensorLoader,
              epoch: int, global_step: int) -> dict[str, float]:
    """Train one epoch; returns the epoch's mean logs."""
    loader.set_epoch(epoch)
    model.train()
    sums: dict[str, Tensor] = {}
    bar = tqdm(loader, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
               leave=False, dynamic_ncols=True)
    n = 0
    for i, (x, y) in enumerate(bar):
        logs = step(method, model, groups, opts, x, y)
        for s in scheds:
            s.step()
        method.after_step(model, global_step + i + 1)
        for k, v in logs.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
        n += 1
        if cfg.progress and (i % 20 == 0 or i == len(loader) - 1):
            bar.set_postfix({k: f"{v.item() / n:.4f}" for k, v in sums.items()})
    return {k: v.item() / max(n, 1) for k, v in sums.items()}
