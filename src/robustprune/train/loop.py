"""``fit()``: the one training loop for every method."""

from __future__ import annotations

import json
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
from robustprune.records import SCHEMA, CodeVersion, run_record, write_run_record
from robustprune.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_weights
from robustprune.train.distributed import (
    DistInfo,
    average_gradients,
    barrier,
    broadcast_buffers,
    broadcast_flags,
    epoch_seed,
    init_distributed,
    rank_device,
    reduce_mean,
    shard_batch_size,
)
from robustprune.train.run import (
    amp_context,
    build_model_for,
    init_from,
    method_context,
    train_code_parts,
    use_channels_last,
)
from robustprune.train.tensorboard import TrainLogger
from robustprune.utils import fault_point, provenance, resolve_device


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
    images, labels = load_split(cfg.dataset, "train", data_dir=cfg.data_dir, refetch=cfg.refetch_data)
    if cfg.val_size:
        if cfg.val_size >= len(labels):
            raise ValueError(f"val_size={cfg.val_size} leaves no training data ({len(labels)} examples)")
        images, labels = images[: -cfg.val_size], labels[: -cfg.val_size]
    if cfg.limit_train is not None:
        images, labels = images[: cfg.limit_train], labels[: cfg.limit_train]
    return images, labels


def saved_config(cfg: TrainConfig) -> TrainConfig:
    """The config a run records (config.yaml, run.json): the run's, not the invocation's, so that
    ``resume`` and ``refetch_data`` are off; an interrupted and resumed run records what an
    uninterrupted one does."""
    return replace(cfg, resume=False, refetch_data=False)


def resolve_resume(cfg: TrainConfig) -> TrainConfig:
    """On ``--resume`` the saved config wins, except the epoch count, device, progress bars,
    ``refetch_data`` and the paths of this invocation: ``out`` (a run moved to another directory or
    machine resumes where it now is) and, when given, ``data_dir`` and ``init_from``."""
    saved = Path(cfg.out) / "config.yaml"
    if not (cfg.resume and saved.is_file()):
        return cfg
    old = load_train_config(saved)
    if old.epochs != cfg.epochs and old.schedule != "constant":
        warnings.warn(f"resuming {cfg.out} with epochs={cfg.epochs} instead of {old.epochs}: the {old.schedule} "
                      "learning-rate schedule is stretched from here on", stacklevel=3)
    return replace(old, epochs=cfg.epochs, device=cfg.device, progress=cfg.progress, tensorboard=cfg.tensorboard,
                   tensorboard_every=cfg.tensorboard_every, resume=True, refetch_data=cfg.refetch_data,
                   out=cfg.out, data_dir=old.data_dir if cfg.data_dir is None else cfg.data_dir,
                   init_from=old.init_from if cfg.init_from is None else cfg.init_from)


def step(method: Method, model: nn.Module, groups: list[ParamGroup], opts: list[torch.optim.Optimizer],
         x: Tensor, y: Tensor, dist_info: DistInfo | None = None, *, amp: str = "none") -> dict[str, Tensor]:
    """One optimisation step: each group's parameters get the gradient of their own loss
    (averaged over processes when training is distributed). Groups the method declares frozen
    (``Method.frozen_groups``) get no gradient and their optimiser does not step, so its state
    (Adam's moments and step count) is that of an optimiser that has not run yet.
    ``amp="bf16"`` computes the losses under bf16 autocast (the attack inside stays float32) and
    takes the gradients outside it."""
    frozen = agree_frozen(method.frozen_groups(), [g.name for g in groups], dist_info)
    with amp_context(amp, x.device):
        losses, logs = method.loss(model, x, y)
    if amp != "none":
        logs = {k: v.float() for k, v in logs.items()}
    missing = [g.name for g in groups if g.name not in losses]
    if missing:
        raise RuntimeError(f"method {method.name!r} returned no loss for parameter groups {missing}")
    live = [i for i, g in enumerate(groups) if g.name not in frozen]
    for i, g in enumerate(groups):
        if i not in live:
            for p in g.params:
                p.grad = None
    if len(groups) == 1 and live:
        opts[0].zero_grad(set_to_none=True)
        losses[groups[0].name].backward()
    else:
        for n, i in enumerate(live):
            g = groups[i]
            grads = torch.autograd.grad(
                losses[g.name], g.params, retain_graph=n < len(live) - 1, allow_unused=True
            )
            for p, gr in zip(g.params, grads, strict=True):
                p.grad = gr
    if dist_info is not None and dist_info.enabled:
        average_gradients([p for i in live for p in groups[i].params], dist_info)
    for i in live:
        opts[i].step()
    if dist_info is not None:
        broadcast_buffers(model, dist_info)
    method.observe(logs)
    return logs


def agree_frozen(frozen: frozenset[str], names: list[str], dist_info: DistInfo | None) -> frozenset[str]:
    """The frozen groups, rank 0's answer on every rank (a decision taken from local batch
    statistics could otherwise differ between processes and desynchronise them)."""
    unknown = sorted(set(frozen) - set(names))
    if unknown:
        raise RuntimeError(f"frozen_groups names unknown parameter groups {unknown}; groups: {names}")
    if dist_info is None or not dist_info.enabled:
        return frozen
    flags = broadcast_flags([n in frozen for n in names], dist_info)
    return frozenset(n for n, f in zip(names, flags, strict=True) if f)


class Trainer:
    """The state of one training run; ``fit()`` drives it epoch by epoch."""

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg, self.out = cfg, Path(cfg.out)
        info = dataset_info(cfg.dataset)
        self.dist = init_distributed(resolve_device(cfg.device))
        self.device = rank_device(resolve_device(cfg.device), self.dist)
        if cfg.amp == "bf16" and self.device.type == "cpu":
            warnings.warn("amp='bf16' on a CPU runs under CPU autocast: usually slower than float32 unless the CPU "
                          "has native bf16 (AMX / AVX512-BF16); meant for CUDA", stacklevel=3)
        if latest_checkpoint(self.out) is not None and not cfg.resume:
            raise ValueError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        images, labels = train_split(cfg)
        self.train_size = len(labels)
        self.loader = TensorLoader(
            images, labels, batch_size=shard_batch_size(cfg.batch_size, self.dist), shuffle=True, seed=cfg.seed,
            augment=info.name.startswith("cifar"), device=self.device, rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        total_steps = cfg.epochs * len(self.loader)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        ctx = method_context(cfg, train_size=self.train_size, total_steps=total_steps)
        self.method = build_method(cfg.method, ctx=ctx, **cfg.method_args)
        if self.method.needs_init and cfg.init_from is None and not cfg.resume:
            warnings.warn(f"method {cfg.method!r} is meant to start from a trained model (--init-from)", stacklevel=3)
        bare = build_model_for(cfg)
        base_keys = set(bare.state_dict())
        model = self.method.prepare(bare)
        #: run.json's ``init``: the --init-from source, tensors loaded, keys left fresh
        self.init_record: dict[str, Any] | None = None
        if cfg.init_from is not None and not cfg.resume:
            self.init_record = init_from(model, cfg.init_from, base_keys=base_keys, prefix=cfg.init_prefix,
                                         method=cfg.method).as_dict()
        self.model = use_channels_last(model.to(self.device), self.device, cfg.channels_last)
        self.groups = self.method.param_groups(self.model)
        self.opts = [make_optimizer(cfg, g) for g in self.groups]
        self.scheds = [make_scheduler(cfg, o, total_steps) for o in self.opts]
        self.history: list[dict[str, Any]] = []
        self.start, self.global_step, self.wall = 0, 0, 0.0
        self.tb = TrainLogger(self.out, enabled=False)  # opened by ``open_log`` once the run directory exists

    def open_log(self) -> None:
        """Start the TensorBoard log (rank 0, ``cfg.tensorboard``); a resumed run purges the events
        after its checkpoint."""
        self.tb = TrainLogger(self.out, enabled=self.cfg.tensorboard and self.dist.is_main,
                              every=self.cfg.tensorboard_every, purge_step=self.global_step + 1 if self.start else None,
                              monitor=lambda: self.method.monitor(self.model))

    def learning_rates(self) -> dict[str, float]:
        """The current learning rate of each parameter group, by group name."""
        return {g.name: float(o.param_groups[0]["lr"]) for g, o in zip(self.groups, self.opts, strict=True)}

    def restore(self) -> None:
        """Continue from the newest complete checkpoint (``--resume``)."""
        ckpt = load_checkpoint(self.out)
        self.model.load_state_dict(ckpt.weights)
        states = ckpt.state["optimizers"] + ckpt.state["schedulers"]
        stateful: list[torch.optim.Optimizer | torch.optim.lr_scheduler.LambdaLR] = self.opts + self.scheds
        for obj, state in zip(stateful, states, strict=True):
            obj.load_state_dict(state)
        self.method.load_state_dict(ckpt.state.get("method", {}))
        self.init_record = ckpt.state.get("init")
        self.history, self.start = list(ckpt.state["history"]), ckpt.epoch
        self.global_step, self.wall = int(ckpt.state["global_step"]), float(ckpt.state["wall_s"])

    def train_epoch(self, epoch: int) -> None:
        torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.dist.rank))
        t0 = time.perf_counter()
        self.method.on_epoch_start(self.model, epoch)
        logs = run_epoch(self, epoch)
        self.global_step += len(self.loader)
        logs = reduce_mean(logs, self.dist, self.device)
        logs.update(self.method.on_epoch_end(self.model, epoch))
        epoch_s = time.perf_counter() - t0
        self.wall += epoch_s
        self.history.append({"epoch": epoch + 1, "time_s": epoch_s, **logs})
        self.tb.epoch(epoch + 1, self.history[-1])
        if self.dist.is_main:
            save_checkpoint(self.out, epoch + 1, self.model, {
                "epoch": epoch + 1, "global_step": self.global_step, "wall_s": self.wall, "history": self.history,
                "optimizers": [o.state_dict() for o in self.opts], "schedulers": [s.state_dict() for s in self.scheds],
                "method": self.method.state_dict(), "init": self.init_record,
            })
        barrier(self.dist)

    def finish(self) -> None:
        if not self.dist.is_main:
            return
        save_weights(self.model, self.out / "model.safetensors")
        write_run_record(self.out / "run.json", run_record({
            "schema": SCHEMA, "code": CodeVersion.installed(train_code_parts(self.cfg)).to_dict(),
            "status": "complete", "config": to_dict(saved_config(self.cfg)), "epochs_done": len(self.history),
            "history": self.history, "train_size": self.train_size, "wall_s": self.wall,
            "method_info": self.method.card_fields(),
            **({"init": self.init_record} if self.init_record is not None else {}),
            "world_size": self.dist.world_size, **provenance(self.device),
        }))


def refuse_imported(out: Path) -> None:
    """``ValueError`` when ``out`` holds a run made by ``robustprune import`` (its run.json names
    ``imported``): training there would overwrite the imported network."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return  # no run there, or not a record this check can read (the trainer's own checks follow)
    if isinstance(record, dict) and isinstance(record.get("imported"), dict):
        source = record["imported"].get("weights", "?")
        raise ValueError(f"{out} holds a run imported by `robustprune import` (from {source}); training into it "
                         f"would overwrite it: choose another --out (start from it with --init-from {out})")


def fit(cfg: TrainConfig) -> Path:
    """Train one run as ``cfg`` says; resumable (``cfg.resume``); returns the run directory.

    Under ``torchrun`` every process calls ``fit`` and trains its shard; only rank 0 writes.
    """
    refuse_imported(Path(cfg.out))
    tr = Trainer(resolve_resume(cfg))
    if tr.cfg.resume and latest_checkpoint(tr.out) is not None:
        tr.restore()
    if tr.dist.is_main:
        tr.out.mkdir(parents=True, exist_ok=True)
        save_yaml(to_dict(saved_config(tr.cfg)), tr.out / "config.yaml")
    tr.open_log()
    try:
        for epoch in range(tr.start, tr.cfg.epochs):
            tr.train_epoch(epoch)
            if tr.method.stop_training:
                break
    finally:
        tr.tb.close()
    tr.finish()
    barrier(tr.dist)
    return tr.out


def run_epoch(tr: Trainer, epoch: int) -> dict[str, float]:
    """Train one epoch; returns this process's mean logs."""
    cfg, loader = tr.cfg, tr.loader
    loader.set_epoch(epoch)
    tr.model.train()
    sums: dict[str, Tensor] = {}
    show = cfg.progress and tr.dist.is_main
    bar = tqdm(loader, desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False,
               dynamic_ncols=True)
    n = 0
    with warnings.catch_warnings():  # a frozen group's scheduler steps before its optimiser ever has
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        for i, (x, y) in enumerate(bar):
            logs = step(tr.method, tr.model, tr.groups, tr.opts, x, y, tr.dist, amp=cfg.amp)
            for s in tr.scheds:
                s.step()
            tr.method.after_step(tr.model, tr.global_step + i + 1)
            if tr.tb.enabled:
                tr.tb.step(tr.global_step + i + 1, logs, tr.learning_rates(), last=i == len(loader) - 1)
            fault_point("train-step")
            for k, v in logs.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            n += 1
            if show and (i % 20 == 0 or i == len(loader) - 1):
                bar.set_postfix({k: f"{v.item() / n:.4f}" for k, v in sums.items()})
    return {k: v.item() / max(n, 1) for k, v in sums.items()}
