"""Benchmark: graph-found masks and compaction of a network robustprune did not write.

torchvision's ``resnet18`` (``num_classes=10``, CIFAR-sized 3×32×32 inputs, random weights) is
wrapped in :class:`robustprune.models.graph.GraphNet` (mask slots from Torch-Pruning's dependency
graph), given BBD masks, trained for one SGD step on random data (so BN statistics and masks have
moved), and then half of every group's channels is pruned (a random half, seeded: the masks' a'
set to −10, E[π] ≈ 5e-5, below the 1e-3 threshold). ``compact_model`` removes them physically.

Measured, on random [0, 1] data:

- the compacted network's max |Δlogit| against the masked model (target: ≤ 1e-5);
- parameters and FLOPs (``FlopCounterMode``) of the dense network (masks stripped) and the
  compacted one;
- CPU latency at batch ``--batch`` (default 64): median of ``--repeats`` timed forward passes after
  3 warm-up passes, the two networks timed alternately (``metrics.measured.paired_latency_ms``);
  target: dense / compact ≥ 1.6.

    python bench/compact_any.py --threads 1 --repeats 20 --out bench/compact_any.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from robustprune.metrics.measured import count_flops, count_params, paired_latency_ms, strip_masks
from robustprune.models import mask_slots
from robustprune.models.graph import GraphNet
from robustprune.sparsity import install_bbd
from robustprune.sparsity.compact import compact_model
from robustprune.utils import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=str, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    shape = (3, 32, 32)
    model = install_bbd(GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=shape))
    x = torch.rand(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        for _, slot in mask_slots(model):
            assert slot.mask is not None
            slot.mask.a_uc[torch.randperm(slot.units, generator=gen)[: slot.units // 2]] = -10.0
    model.eval()
    t0 = time.perf_counter()
    small = compact_model(model, input_shape=shape)
    compact_s = time.perf_counter() - t0
    with torch.no_grad():
        err = float((model(x) - small(x)).abs().max())
    dense = strip_masks(model)
    t_dense, t_small = paired_latency_ms([dense, small], x, repeats=args.repeats)
    out = {
        "model": "torchvision resnet18(num_classes=10), input 3x32x32",
        "groups": len(mask_slots(model)), "units": sum(s.units for _, s in mask_slots(model)),
        "kept_units": sum(int(s.kept.numel()) for _, s in mask_slots(small)),
        "max_abs_logit_diff": err,
        "params_dense": count_params(dense), "params_compact": count_params(small),
        "flops_dense": count_flops(dense, shape), "flops_compact": count_flops(small, shape),
        f"latency_ms_b{args.batch}_dense": t_dense, f"latency_ms_b{args.batch}_compact": t_small,
        "speedup": t_dense / t_small, "compact_seconds": compact_s,
        "batch": args.batch, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
    }
    out["flops_ratio"] = out["flops_dense"] / out["flops_compact"]
    out["params_ratio"] = out["params_dense"] / out["params_compact"]
    for k, v in out.items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    if args.out:
        atomic_write_json(Path(args.out), out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
