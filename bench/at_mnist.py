"""Benchmark: PGD adversarial training of LeNet5-Caffe on MNIST, and PGD-40 attack throughput.

Measures, in one run on one machine:
1. our AT loop (``robustprune.train.fit``) vs a hand-written minimal AT loop on the same steps
   (ε 0.3, step 0.01, 20 PGD steps, batch 64, Adam 1e-3): seconds per step and their ratio;
2. full epochs of our AT: minutes per epoch, then clean / PGD-40 accuracy on the full test set;
3. PGD-40 throughput (images/s) of our attack vs torchattacks' PGD on the trained model and the
   same batch, with their ratio.

    python bench/at_mnist.py --epochs 1 --data-dir DATA --out bench/at_mnist.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustprune.attacks import PGD
from robustprune.config import TrainConfig
from robustprune.data import TensorLoader, load_split
from robustprune.eval import evaluate_run
from robustprune.models import build_model
from robustprune.train import fit, load_run
from robustprune.utils import provenance

EPS, STEP, TRAIN_STEPS = 0.3, 0.01, 20


def minimal_at(images: torch.Tensor, labels: torch.Tensor, *, seed: int) -> float:
    """The loop a user would write by hand; returns wall seconds."""
    torch.manual_seed(seed)
    model = build_model("lenet5-caffe")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    t0 = time.perf_counter()
    for i in range(0, len(labels), 64):
        x, y = images[i : i + 64].float() / 255, labels[i : i + 64]
        model.eval()
        xa = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(TRAIN_STEPS):
            xa.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(model(xa), y), xa)
            xa = torch.min(torch.max(xa.detach() + STEP * g.sign(), x - EPS), x + EPS).clamp(0, 1)
        model.train()
        loss = (F.cross_entropy(model(x), y) + 2 * F.cross_entropy(model(xa), y)) / 3
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def ours_at(data_dir: str, n: int, out: Path, *, seed: int, epochs: int = 1, progress: bool = False) -> Path:
    cfg = TrainConfig(method="at", model="lenet5-caffe", dataset="mnist", epochs=epochs, out=str(out),
                      data_dir=data_dir, seed=seed, limit_train=n, batch_size=64, adv_eps=EPS,
                      adv_steps=TRAIN_STEPS, adv_step_size=STEP, progress=progress)
    return fit(cfg)


def loop_overhead(data_dir: str, steps: int, tmp: Path) -> dict:
    images, labels = load_split("mnist", "train", data_dir=data_dir)
    n = steps * 64
    mine, theirs = [], []
    for rep in range(2):  # interleaved, to share whatever else the machine is doing
        theirs.append(minimal_at(images[:n], labels[:n], seed=rep))
        t0 = time.perf_counter()
        ours_at(data_dir, n, tmp / f"overhead-{rep}", seed=rep)
        mine.append(time.perf_counter() - t0)
    return {"steps": steps, "ours_s": mine, "minimal_s": theirs, "ratio": min(mine) / min(theirs)}


def throughput(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int) -> dict:
    ours = PGD(eps=EPS, steps=40, step_size=STEP, random_start=True)
    out: dict = {"batch": len(y), "reps": reps}
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    model.eval()
    ours(model, x, y)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        ours(model, x, y)
    out["ours_img_s"] = reps * len(y) / (time.perf_counter() - t0)
    if torchattacks is not None:
        plain = build_model("lenet5-caffe")
        plain.load_state_dict(model.state_dict())
        plain.eval()
        theirs = torchattacks.PGD(plain, eps=EPS, alpha=STEP, steps=40, random_start=True)
        theirs(x, y)
        t0 = time.perf_counter()
        for _ in range(reps):
            theirs(x, y)
        out["torchattacks_img_s"] = reps * len(y) / (time.perf_counter() - t0)
        out["ratio"] = out["ours_img_s"] / out["torchattacks_img_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=1, help="full MNIST epochs of our AT (0: skip, throughput only)")
    ap.add_argument("--overhead-steps", type=int, default=150, help="steps for the loop-overhead comparison")
    ap.add_argument("--data-dir", type=str, default=None)
    ap.add_argument("--run-dir", type=str, default=None, help="keep the AT run here (default: temp dir)")
    ap.add_argument("--reps", type=int, default=5, help="PGD-40 batches timed per attack")
    ap.add_argument("--out", type=str, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(),
                    "cpu": platform.processor() or platform.machine(), **provenance("cpu")}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        result["loop_overhead"] = loop_overhead(args.data_dir, args.overhead_steps, tmp)
        print(json.dumps(result["loop_overhead"]), flush=True)
        if args.epochs > 0:
            run_dir = Path(args.run_dir) if args.run_dir else tmp / "at"
            run = ours_at(args.data_dir, 60000, run_dir, seed=0, epochs=args.epochs, progress=True)
            hist = json.loads((run / "run.json").read_text())["history"]
            result["epoch_minutes"] = [h["time_s"] / 60 for h in hist]
            card = evaluate_run(run, attacks=["pgd"], eps=EPS, steps=40, step_size=STEP, data_dir=args.data_dir)
            result["clean_acc"] = card["clean_acc"]
            result["pgd40_acc"] = card["attacks"][0]["robust_acc"]
            result["eval_wall_s"] = card["total_wall_s"]
            print(json.dumps({k: result[k] for k in ("epoch_minutes", "clean_acc", "pgd40_acc")}), flush=True)
        else:  # throughput only, on the model of the loop-overhead run
            run = tmp / "overhead-0"
        model = load_run(run).model
        images, labels = load_split("mnist", "test", data_dir=args.data_dir)
        x, y = next(iter(TensorLoader(images[:256], labels[:256], batch_size=256)))
        result["pgd40_throughput"] = throughput(model, x, y, args.reps)
        print(json.dumps(result["pgd40_throughput"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
