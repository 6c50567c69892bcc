"""Benchmark: PGD-10 adversarial-training throughput (training images/s), and 2-process DDP vs 1 process.

1. The training step itself (``robustprune.train.loop.step`` with the ``at`` method: PGD-10 with random
   start against the eval-mode model, then [CE(x) + 2·CE(x_adv)]/3 and an Adam step; batches from
   ``TensorLoader``, CIFAR augmentation on) for LeNet5-Caffe on MNIST-shaped data (1×28×28) and VGG-16
   on CIFAR-10-shaped data (3×32×32). Images/s over the timed steps after ``--warmup`` untimed ones;
   the timing stops early when the next step would end past ``--budget-s`` seconds (at least one
   timed step), so slow CPU configurations (VGG-16) stay short. Devices: CPU (float32) and, when CUDA is available,
   CUDA × {fp32, bf16 (training loss under bf16 autocast, attack float32: what ``--amp bf16`` does),
   bf16-attack (the attack under bf16 too, to price the float32 choice)} × {channels_last (the
   default, unmeasured on GPUs so far), contiguous NCHW}.
2. ``torchrun --standalone --nproc_per_node 2 -m robustprune train`` (gloo) vs one
   ``python -m robustprune train`` process on the CPU: LeNet5-Caffe, AT with PGD-10, the same global
   batch, ``--limit-train`` images for ``--ddp-epochs`` epochs; training images/s of the last epoch
   (the first one warms up) from each run's ``run.json``, and their ratio. The single process uses
   ``--ddp-threads`` threads (default: all cores), each DDP process half of them (what
   ``init_distributed`` sets from the core count).

The data are random uint8 tensors of the right shapes (and, for the DDP runs, random IDX files in a
temporary directory): the speed of these steps does not depend on the pixel values, and no
accuracy is measured.

    PYTHONPATH=src python bench/throughput.py --out bench/throughput.json   # ~3-5 min on 2 CPU cores
    PYTHONPATH=src python bench/throughput.py --steps 2 --warmup 1 --ddp-images 128 --ddp-epochs 2  # smoke
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import robustprune.defenses  # noqa: F401  (registers methods)
from robustprune.config import TrainConfig
from robustprune.data import TensorLoader, dataset_info
from robustprune.defenses import build_method
from robustprune.train.loop import make_optimizer, step
from robustprune.train.run import build_model_for, method_context, use_channels_last
from robustprune.utils import provenance

SRC = Path(__file__).resolve().parents[1] / "src"
#: (model, dataset whose shape and training attack it uses, batch-size flag)
MODELS = (("lenet5-caffe", "mnist", "lenet_batch"), ("vgg16", "cifar10", "vgg_batch"))
CUDA_PRECISIONS = ("fp32", "bf16", "bf16-attack")
PGD_STEPS = 10


def batches(loader: TensorLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def at_throughput(model_name: str, dataset: str, *, batch: int, device: torch.device, precision: str,
                  channels_last: bool, steps: int, warmup: int, budget_s: float) -> dict:
    """Images/s of AT (PGD-10) training steps on random data of ``dataset``'s shape."""
    amp = "none" if precision == "fp32" else "bf16"
    cfg = TrainConfig(method="at", model=model_name, dataset=dataset, batch_size=batch, adv_steps=PGD_STEPS,
                      device=str(device), amp=amp, channels_last=channels_last, progress=False)
    cfg.validate()
    torch.manual_seed(0)
    info = dataset_info(dataset)
    c, h, w = info.in_channels, info.image_size, info.image_size
    n = 4 * batch  # a small pool of random images, cycled through epoch after epoch
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    loader = TensorLoader(images, labels, batch_size=batch, shuffle=True, augment=dataset.startswith("cifar"),
                          drop_last=True, device=device)
    method = build_method("at", ctx=method_context(cfg, train_size=n, total_steps=steps + warmup))
    if precision == "bf16-attack":
        method.attack.full_precision = False  # type: ignore[attr-defined]
    model = use_channels_last(method.prepare(build_model_for(cfg)).to(device), device, channels_last)
    groups = method.param_groups(model)
    opts = [make_optimizer(cfg, gr) for gr in groups]
    model.train()
    it = batches(loader)
    for _ in range(warmup):
        step(method, model, groups, opts, *next(it), amp=amp)
    sync(device)
    done, t0 = 0, time.perf_counter()
    while done < steps:
        step(method, model, groups, opts, *next(it), amp=amp)
        done += 1
        spent = time.perf_counter() - t0
        if spent * (done + 1) / done > budget_s:  # the next step would end past the budget
            break
    sync(device)
    elapsed = time.perf_counter() - t0
    return {"model": model_name, "data": f"{dataset}-shaped {c}x{h}x{w}", "device": str(device),
            "precision": precision, "layout": "channels_last" if channels_last else "nchw", "batch": batch,
            "pgd_steps": PGD_STEPS, "warmup_steps": warmup, "timed_steps": done, "seconds": elapsed,
            "s_per_step": elapsed / done, "img_s": done * batch / elapsed, "placement": loader.placement,
            "threads": torch.get_num_threads()}


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(str(path) + ".gz", "wb", compresslevel=1) as f:
        f.write(header + array.tobytes())


def random_mnist(root: Path, n: int) -> Path:
    """Random images and labels in torchvision's MNIST layout (train: ``n``, test: 64)."""
    rng = np.random.default_rng(0)
    for split, size in (("train", n), ("t10k", 64)):
        write_idx(root / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (size, 28, 28)))
        write_idx(root / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, size))
    return root


def train_run(cmd: list[str], out: Path, *, threads: int, timeout_s: float) -> dict:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    run = json.loads((out / "run.json").read_text())
    last = run["history"][-1]
    return {"world_size": run["world_size"], "train_images": run["train_size"], "epochs": len(run["history"]),
            "last_epoch_s": last["time_s"], "img_s": run["train_size"] / last["time_s"], "process_wall_s": wall,
            "device_name": run["device_name"]}


def ddp_ratio(*, images: int, epochs: int, batch: int, threads: int, tmp: Path, timeout_s: float) -> dict:
    """One process with ``threads`` threads vs two with ``threads // 2`` each (as ``init_distributed``
    sets them from the core count), the same global batch and data."""
    data = random_mnist(tmp / "data", images)
    args = ["train", "--method", "at", "--model", "lenet5-caffe", "--dataset", "mnist", "--adv-steps",
            str(PGD_STEPS), "--batch-size", str(batch), "--limit-train", str(images), "--epochs", str(epochs),
            "--device", "cpu", "--no-progress", "--schedule", "constant", "--data-dir", str(data)]
    one = train_run([sys.executable, "-m", "robustprune", *args], tmp / "one", threads=threads, timeout_s=timeout_s)
    two = train_run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     "-m", "robustprune", *args], tmp / "two", threads=max(1, threads // 2), timeout_s=timeout_s)
    return {"model": "lenet5-caffe", "method": "at", "pgd_steps": PGD_STEPS, "global_batch": batch,
            "one_process": one, "two_processes_gloo": two, "ratio_2_to_1": two["img_s"] / one["img_s"]}


def table(rows: list[dict], ddp: dict | None) -> str:
    lines = ["| model | device | precision | layout | batch | timed steps | s/step | img/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['precision']} | {r['layout']} | {r['batch']} | "
                     f"{r['timed_steps']} | {r['s_per_step']:.3f} | {r['img_s']:.1f} |")
    if ddp is not None:
        one, two = ddp["one_process"], ddp["two_processes_gloo"]
        lines += ["", "| LeNet5-Caffe AT PGD-10, CPU | train images | last epoch s | img/s |", "|---|---|---|---|",
                  f"| 1 process | {one['train_images']} | {one['last_epoch_s']:.2f} | {one['img_s']:.1f} |",
                  f"| 2 processes (torchrun, gloo) | {two['train_images']} | {two['last_epoch_s']:.2f} | "
                  f"{two['img_s']:.1f} |", f"| ratio 2 : 1 | | | {ddp['ratio_2_to_1']:.2f} |"]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lenet-batch", type=int, default=64, help="LeNet5-Caffe batch size (default 64)")
    ap.add_argument("--vgg-batch", type=int, default=128, help="VGG-16 batch size (default 128)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per configuration (default 20)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on CPU, 3 on CUDA)")
    ap.add_argument("--budget-s", type=float, default=40.0,
                    help="stop timing a configuration after this many seconds (default 40)")
    ap.add_argument("--devices", type=str, default="auto", help="auto (cpu, plus cuda when available), cpu, cuda")
    ap.add_argument("--models", type=str, default="lenet5-caffe,vgg16", help="comma-separated subset")
    ap.add_argument("--cpu-bf16", action="store_true", help="also time bf16 (CPU autocast) on the CPU")
    ap.add_argument("--ddp", action=argparse.BooleanOptionalAction, default=True,
                    help="measure 2-process DDP vs 1 process on the CPU (default on)")
    ap.add_argument("--ddp-images", type=int, default=2048, help="training images of each DDP run (default 2048)")
    ap.add_argument("--ddp-epochs", type=int, default=2, help="epochs of each DDP run; the last is timed (default 2)")
    ap.add_argument("--ddp-threads", type=int, default=os.cpu_count() or 1,
                    help="threads of the single process (each of the two gets half; default: all cores)")
    ap.add_argument("--quick", action="store_true", help="--steps 5 --budget-s 20 --ddp-images 1024")
    ap.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.budget_s, args.ddp_images = 5, 20.0, 1024
    if min(args.steps, args.lenet_batch, args.vgg_batch, args.ddp_images, args.ddp_epochs) < 1 or (
            args.warmup is not None and args.warmup < 0):
        ap.error("--steps, batch sizes, --ddp-images and --ddp-epochs must be >= 1, --warmup >= 0")
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    if args.devices == "auto" and not torch.cuda.is_available():
        devices = ["cpu"]
    models = args.models.split(",")
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
                    "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "data": "random uint8 tensors of the datasets' shapes (speed only)",
                    "args": vars(args), **provenance("cuda" if "cuda" in devices else "cpu"), "rows": []}
    for dev_name in devices:
        device = torch.device(dev_name)
        precisions = CUDA_PRECISIONS if device.type == "cuda" else ("fp32", "bf16") if args.cpu_bf16 else ("fp32",)
        layouts = (True, False) if device.type == "cuda" else (True,)
        warmup = args.warmup if args.warmup is not None else 3 if device.type == "cuda" else 1
        for model_name, dataset, batch_flag in MODELS:
            if model_name not in models:
                continue
            for precision in precisions:
                for cl in layouts:
                    row = at_throughput(model_name, dataset, batch=getattr(args, batch_flag), device=device,
                                        precision=precision, channels_last=cl, steps=args.steps,
                                        warmup=warmup, budget_s=args.budget_s)
                    result["rows"].append(row)
                    print(json.dumps(row), flush=True)
    ddp = None
    if args.ddp:
        with tempfile.TemporaryDirectory() as tmp:
            ddp = ddp_ratio(images=args.ddp_images, epochs=args.ddp_epochs, batch=args.lenet_batch,
                            threads=args.ddp_threads, tmp=Path(tmp), timeout_s=600)
        result["ddp_cpu"] = ddp
        print(json.dumps(ddp), flush=True)
    print(table(result["rows"], ddp))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
