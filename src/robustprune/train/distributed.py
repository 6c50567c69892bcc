"""Multi-process data-parallel training on PyTorch's own collectives (``torchrun``).

``torchrun --nproc_per_node N -m robustprune train ...`` starts N processes; each trains on its
shard of every global batch (``--batch-size`` is the global batch) and, after every step, the
gradients of all parameter groups are averaged with one ``all_reduce`` — the same collective
DistributedDataParallel uses. We do not wrap the model in ``DistributedDataParallel`` itself:
its reducer assumes one forward per backward, while our methods run several forwards per step
(the attack, the clean and the adversarial pass) and take per-group gradients with
``torch.autograd.grad``, which DDP's hooks never see. Buffers (BN statistics) are broadcast from
rank 0 after every step, as DDP does before every forward. gloo on CPU, nccl on CUDA; only rank 0
writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return info


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:<local_rank>``."""
    if device.type == "cuda" and info.enabled:
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


def average_gradients(params: list[nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` over ranks with one flat all_reduce (missing grads count as zero)."""
    if not info.enabled:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(info.world_size)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    if info.enabled:
        for b in model.buffers():
            dist.broadcast(b, src=0)


def broadcast_flags(flags: list[bool], info: DistInfo) -> list[bool]:
    """Rank 0's booleans on every rank (on the current CUDA device under nccl)."""
    if not info.enabled:
        return list(flags)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average per-rank epoch logs over ranks."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / info.world_size).tolist(), strict=True))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shard_batch_size(batch_size: int, info: DistInfo) -> int:
    if batch_size % info.world_size:
        raise ValueError(f"batch_size={batch_size} (the global batch) is not divisible by {info.world_size} processes")
    return batch_size // info.world_size


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG seed of one epoch on one rank (attack starts, mask noise): resuming at an
    epoch boundary needs no saved RNG state, and ranks draw independent noise."""
    return (seed * 1_000_003 + epoch * 1_009 + rank * 7_919) % (2**63)


