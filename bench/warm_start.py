"""Mask methods warm-started from a trained model: clean accuracy kept after their first epoch,
the paper's mask initialisation against ``mask_init: function-preserving``.

A standard LeNet5-Caffe is trained for one epoch on ``--limit-train`` MNIST images (the source).
From it, each method trains one more epoch on the same images (``--init-from``): ``bp`` (β 1, no
attack) and the adversarial mask methods ``anp-vs`` (the paper's β 4, λ 1e-3) and
``anp-vs-fast``, each with both initialisations, and, as the yardstick of the adversarial ones,
``pretrained-at`` (AT fine-tuning of the same model). Training attack: the suites' PGD-5 of 0.04
at ε 0.3. Recorded per run: the mean training-batch accuracy of the epoch (training mode,
sampled masks), the clean accuracy on the whole test split at step 0 (eval mode, the warm-started
model before any step) and after the epoch, its ratio to the source's, and the fraction of units
kept. Targets (issue 30): ``bp`` warm-started keeps >= 95 % of the source's clean test accuracy
after its first epoch; an adversarial mask method loses no more clean accuracy in its first
epoch than ``pretrained-at``.

    nice -n 5 python bench/warm_start.py --data-dir DATA --out bench/warm_start.json

``--model`` (with ``--model-args``) measures another network, e.g. the small residual network of
the tests (``PYTHONPATH=tests ... --model factory_models:tiny_resnet --source-epochs 2``);
``--runs`` keeps only the named rows (``bp/paper,bp/function-preserving``); ``--variant
LABEL=METHOD:JSON`` adds a row (``'anp-vs/a49=anp-vs:{"mask_init": "function-preserving",
"a_init_conv": 49, "a_init_fc": 49}'``). ``--eval-split val`` scores every accuracy on the last
``--val-size`` training images instead of the test split (held out: no run trains on them), for
choosing a setting without looking at test points. ``--epochs N`` trains every row N epochs from
the source and records each epoch's fraction of units pruned: how soon each initialisation prunes
when no ``target_sparsity`` cuts it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.config import TrainConfig
from robustprune.data.sources import load_split
from robustprune.defenses import build_method
from robustprune.metrics import unit_sparsity
from robustprune.models import installed_masks
from robustprune.train import fit, load_run
from robustprune.train.run import build_model_for, init_from, method_context
from robustprune.utils import atomic_write, provenance

FP = {"mask_init": "function-preserving"}
#: (label, method, method_args) trained from the source
RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("bp/paper", "bp", {}),
    ("bp/function-preserving", "bp", FP),
    ("pretrained-at", "pretrained-at", {}),
    ("anp-vs/paper", "anp-vs", {}),
    ("anp-vs/function-preserving", "anp-vs", FP),
    ("anp-vs-fast/paper", "anp-vs-fast", {}),
    ("anp-vs-fast/function-preserving", "anp-vs-fast", FP),
]


def config(method: str, out: Path, args: argparse.Namespace, *, init: Path | None = None,
           method_args: dict[str, Any] | None = None, epochs: int = 1) -> TrainConfig:
    return TrainConfig(method=method, model=args.model, model_args=json.loads(args.model_args), dataset="mnist",
                       epochs=epochs, out=str(out),
                       data_dir=args.data_dir, seed=args.seed, limit_train=args.limit_train, batch_size=64,
                       val_size=args.val_size if args.eval_split == "val" else 0,
                       adv_eps=0.3, adv_steps=5, adv_step_size=0.04, init_from=None if init is None else str(init),
                       method_args=method_args or {}, progress=False, tensorboard=False, device="cpu")


@torch.no_grad()
def test_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 1000].float() / 255).argmax(1) == y[i:i + 1000]).sum())
                  for i in range(0, len(y), 1000))
    return correct / len(y)


def step0_accuracy(cfg: TrainConfig, x: Tensor, y: Tensor) -> float:
    """Clean test accuracy of the warm-started model before its first step (what the Trainer builds)."""
    method = build_method(cfg.method, ctx=method_context(cfg, train_size=cfg.limit_train or 1), **cfg.method_args)
    bare = build_model_for(cfg)
    base = set(bare.state_dict())
    model = method.prepare(bare)
    assert cfg.init_from is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the masks start fresh, as they should
        init_from(model, cfg.init_from, base_keys=base, method=cfg.method)
    return test_accuracy(model, x, y)


def one_run(label: str, method: str, method_args: dict[str, Any], source: Path, source_acc: float,
            tmp: Path, args: argparse.Namespace, x: Tensor, y: Tensor) -> dict[str, Any]:
    cfg = config(method, tmp / label.replace("/", "-"), args, init=source, method_args=method_args,
                 epochs=args.epochs)
    at0 = step0_accuracy(cfg, x, y)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        run = fit(cfg)
    wall = time.perf_counter() - t0
    history = json.loads((run / "run.json").read_text())["history"]
    hist, n = history[-1], args.epochs
    model = load_run(run).model
    acc = test_accuracy(model, x, y)
    split = args.eval_split
    keeps = [m.expected_keep().detach() for _, m in installed_masks(model) if hasattr(m, "expected_keep")]
    out = {"method": method, "method_args": method_args, "wall_s": round(wall, 1),
           f"train_acc_epoch{n}": hist.get("acc"), f"train_adv_acc_epoch{n}": hist.get("adv_acc"),
           f"{split}_acc_step0": at0, f"{split}_acc_epoch{n}": acc, "kept_fraction": acc / source_acc,
           "mean_expected_keep": float(torch.cat(keeps).mean()) if keeps else None,
           "clean_loss_points": round(100 * (source_acc - acc), 2),
           "unit_sparsity": unit_sparsity(model) if installed_masks(model) else None}
    if n > 1:  # each epoch's training-batch accuracy and (mask methods) % of units pruned at its end
        out["epochs"] = [{k: h.get(k) for k in ("epoch", "acc", "adv_acc", "unit_sparsity") if k in h} for h in history]
    print(f"{label:34s} step0 {at0:.4f} epoch{n} {acc:.4f} kept {acc / source_acc:.3f} train {hist.get('acc')}",
          flush=True)
    return out


def parse_variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """``LABEL=METHOD:JSON`` -> (label, method, method_args); SystemExit naming a malformed one."""
    label, sep, rest = text.partition("=")
    method, sep2, js = rest.partition(":")
    try:
        margs = json.loads(js) if sep2 else {}
    except json.JSONDecodeError as err:
        raise SystemExit(f"--variant {text!r}: method_args is not JSON ({err})") from None
    if not (sep and label and method) or not isinstance(margs, dict):
        raise SystemExit(f"--variant {text!r}: expected LABEL=METHOD:JSON-object")
    return label, method, margs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="lenet5-caffe")
    ap.add_argument("--model-args", default="{}", help="JSON keyword arguments of the model's builder")
    ap.add_argument("--source-epochs", type=int, default=1, help="standard epochs of the source model")
    ap.add_argument("--epochs", type=int, default=1,
                    help="epochs of each run from the source (>1 adds each epoch's %% of units pruned; the "
                         "accuracies and targets are then after the last epoch, not the first)")
    ap.add_argument("--runs", default=None, help="comma-separated row labels to run (default: all)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=METHOD:JSON",
                    help="an extra row: its label, method and method_args (repeatable)")
    ap.add_argument("--eval-split", choices=("test", "val"), default="test",
                    help="score on the test split or on the last --val-size training images")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")
    chosen = RUNS if args.runs is None else [r for r in RUNS if r[0] in args.runs.split(",")]
    chosen = chosen + [parse_variant(v) for v in args.variant]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if args.eval_split == "val":
        images, labels = load_split("mnist", "train", data_dir=args.data_dir, download=False)
        if args.limit_train + args.val_size > len(labels):
            ap.error(f"--limit-train {args.limit_train} + --val-size {args.val_size} > {len(labels)} training images")
        x, y = images[-args.val_size:], labels[-args.val_size:]
    else:
        x, y = load_split("mnist", "test", data_dir=args.data_dir, download=False)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            source = fit(config("standard", tmp / "standard", args, epochs=args.source_epochs))
        source_acc = test_accuracy(load_run(source).model, x, y)
        source_train = json.loads((source / "run.json").read_text())["history"][-1].get("acc")
        print(f"source: {args.eval_split} {source_acc:.4f} train {source_train}", flush=True)
        for label, method, margs in chosen:
            runs[label] = one_run(label, method, margs, source, source_acc, tmp, args, x, y)
    targets: dict[str, dict[str, bool]] = {
        "bp_keeps_95pct": {lab: runs[lab]["kept_fraction"] >= 0.95 for lab in runs if lab.startswith("bp/")}}
    if "pretrained-at" in runs:
        at_loss = runs["pretrained-at"]["clean_loss_points"]
        targets["adv_mask_loses_no_more_than_at"] = {lab: runs[lab]["clean_loss_points"] <= at_loss
                                                     for lab in runs if lab.startswith("anp-vs")}
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": "python bench/warm_start.py " + " ".join(  # the data directory written as DATA
                  "DATA" if args.data_dir and a == args.data_dir else a
                  for a in (argv if argv is not None else sys.argv[1:])),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": len(os.sched_getaffinity(0)), "torch_threads": args.threads,
                          "loadavg_at_end": list(os.getloadavg())},
              "provenance": provenance("cpu"), "wall_s": round(time.perf_counter() - t_start, 1),
              "setup": {"model": args.model, "model_args": json.loads(args.model_args), "dataset": "mnist",
                        "limit_train": args.limit_train, "epochs": args.epochs,
                        "batch_size": 64, "train_attack": "PGD-5, step 0.04, eps 0.3", "seed": args.seed,
                        "eval_split": args.eval_split, "eval_points": len(y)},
              "source": {"method": "standard", "epochs": args.source_epochs, "train_acc": source_train,
                         f"{args.eval_split}_acc": source_acc},
              "runs": runs, "targets": targets}
    atomic_write(args.out, lambda p: p.write_text(json.dumps(report, indent=1) + "\n"))
    print(json.dumps(targets, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
