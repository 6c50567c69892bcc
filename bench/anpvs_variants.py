"""Choose an ANP-VS variant's defaults on a validation split carved from the training set.

Every run (one standard start, one AT reference, one ANP-VS run per candidate) trains on the
first ``--limit-train`` examples of the training set *after* the last ``--val-size`` examples are
held out (``TrainConfig.val_size``); every run is then scored on the first ``--val-points`` of
those held-out examples with PGD-40 (ε 0.3, step 0.01): clean and robust accuracy, white-box
latent vulnerability, unit sparsity, paper memory %. No test image is read.

``--start at`` selects for the protocol of pruning a robust model: every candidate starts from the
AT run (instead of the standard one) and trains ``--epochs`` more, and the reference it is held
against is that AT run trained on dense for the same extra epochs (``pretrained-at``, the
``at-more`` rows of the suites); the AT start is scored too, as ``at-start``.

Selection rule: among the candidates whose validation PGD-40 accuracy is within ``--tolerance``
points of the AT reference's (and, with ``--max-vuln-ratio R``, whose validation vulnerability is at
most R × AT's), the one with the highest unit sparsity (ties: the lower vulnerability); when none
qualifies, the most robust candidate. ``--diagnostic NAME=JSON`` runs are trained and scored the
same way and reported under ``diagnostics`` but never chosen (β 0, for instance, isolates what the
recipe costs when nothing is pruned: the fallback would otherwise pick it as the most robust).

    python bench/anpvs_variants.py --out /tmp/select --data-dir DIR --limit-train 20000 --val-size 5000 \\
        --epochs 2 --adv-steps 5 --adv-step-size 0.04 --method anp-vs-fast \\
        --variant b12='{"beta": 12}' --variant b40='{"beta": 40}'

writes ``OUT/selection.json`` (``--report``): the command, the split, every candidate's scores and the choice.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from robustprune.attacks import build_attack
from robustprune.config import TrainConfig
from robustprune.data import TensorLoader, load_split
from robustprune.eval.evaluate import evaluate
from robustprune.metrics import unit_sparsity
from robustprune.metrics.cost import paper_cost
from robustprune.train import fit
from robustprune.train.run import load_run


def train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    if (out / "run.json").exists():
        return out
    return fit(replace(cfg, resume=(out / "checkpoints").exists()))


def validation_points(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``val_points`` of the ``val_size`` training examples that no run trains on."""
    images, labels = load_split("mnist", "train", data_dir=args.data_dir)
    held_images, held_labels = images[-args.val_size:], labels[-args.val_size:]
    return held_images[: args.val_points], held_labels[: args.val_points]


def score(name: str, run: Path, val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    loaded = load_run(run)
    pgd = build_attack("pgd", eps=0.3, steps=40, step_size=0.01)
    torch.manual_seed(0)
    res = evaluate(loaded.model, TensorLoader(*val, batch_size=256), [("pgd", pgd)], progress=False).summary()
    attack = res["attacks"][0]
    paper = paper_cost("lenet5-caffe", loaded.model, in_channels=1, num_classes=10, image_size=28)
    hist = json.loads((run / "run.json").read_text())["history"]
    return {
        "name": name, "val_clean": res["clean_acc"], "val_pgd40": attack["robust_acc"],
        "val_vuln": attack.get("vulnerability", {}).get("mean"), "unit_sparsity": unit_sparsity(loaded.model),
        "memory_pct": paper.get("memory_pct"), "s_per_epoch": sum(h["time_s"] for h in hist) / len(hist),
    }


def choose(reference: dict[str, Any], candidates: list[dict[str, Any]], tolerance: float,
           max_vuln_ratio: float | None = None) -> dict[str, Any]:
    close = [c for c in candidates if c["val_pgd40"] >= reference["val_pgd40"] - tolerance]
    if max_vuln_ratio is not None:
        close = [c for c in close if (c["val_vuln"] or 0.0) <= max_vuln_ratio * reference["val_vuln"]]
    if close:
        return max(close, key=lambda c: (c["unit_sparsity"], -(c["val_vuln"] or 0.0)))
    return max(candidates, key=lambda c: c["val_pgd40"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit-train", type=int, default=20000)
    ap.add_argument("--val-size", type=int, default=5000, help="last training examples held out for validation")
    ap.add_argument("--val-points", type=int, default=1000, help="held-out examples scored")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--adv-steps", type=int, default=5)
    ap.add_argument("--adv-step-size", type=float, default=0.04)
    ap.add_argument("--tolerance", type=float, default=3.0, help="points of validation PGD-40 below AT allowed")
    ap.add_argument("--max-vuln-ratio", type=float, default=None,
                    help="also require validation vulnerability <= this x AT's")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON method_args")
    ap.add_argument("--diagnostic", action="append", default=[],
                    help="NAME=JSON method_args: trained and scored like a variant, reported, never chosen")
    ap.add_argument("--method", default="anp-vs-fast", help="method of the candidates")
    ap.add_argument("--report", default="selection.json", help="file name of the report in --out")
    ap.add_argument("--start", choices=("standard", "at"), default="standard",
                    help="what the candidates start from: the standard run (the paper's protocol) or the AT run "
                         "(pruning a robust model; the reference is then AT trained on for the same epochs)")
    args = ap.parse_args()
    if args.val_points > args.val_size:
        ap.error(f"--val-points {args.val_points} exceeds --val-size {args.val_size}")
    root = Path(args.out)
    base = TrainConfig(model="lenet5-caffe", dataset="mnist", data_dir=args.data_dir, limit_train=args.limit_train,
                       val_size=args.val_size, epochs=args.epochs, adv_steps=args.adv_steps,
                       adv_step_size=args.adv_step_size, progress=False)
    val = validation_points(args)
    std = train(replace(base, method="standard", out=str(root / "standard")))
    at_run = train(replace(base, method="at", out=str(root / "at")))
    start = std
    extra: dict[str, Any] = {}
    if args.start == "at":
        extra["at_start"] = score("at-start", at_run, val)
        print(json.dumps(extra["at_start"]), flush=True)
        at_run = train(replace(base, method="pretrained-at", init_from=str(at_run), out=str(root / "at-more")))
        start = root / "at"
    at = score("at-more" if args.start == "at" else "at", at_run, val)
    print(json.dumps(at), flush=True)
    scored: dict[str, list[dict[str, Any]]] = {"variant": [], "diagnostic": []}
    for kind in scored:
        for spec in getattr(args, kind):
            name, _, js = spec.partition("=")
            cfg = replace(base, method=args.method, init_from=str(start), method_args=json.loads(js or "{}"),
                          out=str(root / name))
            scored[kind].append({**score(name, train(cfg), val), "method_args": cfg.method_args})
            print(json.dumps(scored[kind][-1]), flush=True)
    candidates = scored["variant"]
    chosen = choose(at, candidates, args.tolerance, args.max_vuln_ratio) if candidates else None
    report = {
        "command": " ".join(["python", "bench/anpvs_variants.py", *sys.argv[1:]]),
        "split": {"train": f"training examples 0..{args.limit_train - 1}",
                  "validation": f"the first {args.val_points} of the last {args.val_size} training examples"},
        "rule": f"highest unit sparsity within {args.tolerance} points of AT's validation PGD-40"
                + ("" if args.max_vuln_ratio is None else f" and vulnerability <= {args.max_vuln_ratio} x AT's")
                + ", else the most robust",
        "start": args.start, "reference": at, **extra, "candidates": candidates,
        "diagnostics": scored["diagnostic"], "chosen": None if chosen is None else chosen["name"],
    }
    (root / args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(f"chosen: {report['chosen']}", flush=True)


if __name__ == "__main__":
    main()
