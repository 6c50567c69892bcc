"""Benchmark: activation-level defenses on MNIST LeNet5-Caffe — SAP, AT+CAS, AT-BNN.

Trains (small budget, resumable: finished runs are reused) ``standard``, ``at``, ``at+cas`` and
``at-bnn``, then writes, under ``--work``:
1. SAP-``--pct`` on the standard and AT runs: FGSM, PGD (single sample, the original paper's
   evaluation) and EOT-PGD (K = 10) side by side, accuracy averaged over 10 passes;
2. the audit (``robustprune.eval.audit``) of the SAP-wrapped AT model: its checks and verdict;
3. AT+CAS and AT-BNN (mean weights) under PGD (final CE and CAS total loss) and AutoAttack (standard) on ``--aa-limit``
   points; AT-BNN with sampled weights under EOT-PGD;
4. calibration (reliability + ECE) of standard, SAP, AT, AT+SAP; CAS channel magnitudes.
The summary goes to ``--summary`` (JSON) and stdout (markdown).

    PYTHONPATH=src .venv/bin/python bench/activation_defenses.py --data-dir DATA \\
        --limit-train 10000 --epochs 2 --limit 500 --aa-limit 200 --summary bench/activation_defenses.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from robustprune.attacks import PGD
from robustprune.config import TrainConfig
from robustprune.defenses.cas import channel_magnitudes
from robustprune.defenses.sap import SAPModel
from robustprune.eval import evaluate_run
from robustprune.eval.context import EvalContext
from robustprune.jobs.calibration import calibration_run
from robustprune.reports.cas_channels import plot_channels
from robustprune.train import fit
from robustprune.utils import atomic_write_json, provenance

METHODS = ("standard", "at", "at+cas", "at-bnn")


def train_all(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    runs = {}
    for method in METHODS:
        out = work / method.replace("+", "_")
        if not (out / "model.safetensors").exists():
            fit(TrainConfig(method=method, model="lenet5-caffe", dataset="mnist", epochs=args.epochs, out=str(out),
                            data_dir=args.data_dir, limit_train=args.limit_train, batch_size=64, adv_eps=0.3,
                            adv_steps=args.adv_steps, adv_step_size=args.adv_step, seed=0, progress=False))
        runs[method] = out
    return runs


def rows_of(card: dict[str, Any], label: str) -> list[dict[str, Any]]:
    base = {"model": label, "n": card["n"], "clean": round(card["clean_acc"], 2), "stochastic": card["stochastic"],
            "passes": card["passes"], "wall_s": round(card["total_wall_s"], 1)}
    out = []
    for a in card["attacks"]:
        p = a["params"]
        desc = f"{a['name']} eps={p['eps']:g}" + (f" steps={p['steps']} eot={p['eot']}" if "steps" in p else "")
        out.append({**base, "attack": desc, "robust": round(a["robust_acc"], 2)})
        out += [{**base, "attack": f"  after {s['name']}", "robust": round(s["robust_acc"], 2)}
                for s in a.get("breakdown", {}).get("stages", [])]
    return out


def cached_eval(run: Path, out: Path, **kw: Any) -> dict[str, Any]:
    """``evaluate_run`` unless its card exists already (reruns resume where they stopped)."""
    if out.exists():
        return json.loads(out.read_text())
    return evaluate_run(run, out=out, **kw)


def evaluations(args: argparse.Namespace, runs: dict[str, Path], work: Path) -> list[dict[str, Any]]:
    ev = {"limit": args.limit, "data_dir": args.data_dir, "progress": False, "steps": args.eval_steps,
          "step_size": args.eval_step}
    rows = []
    for m in ("standard", "at"):
        card = cached_eval(runs[m], work / "cards" / f"{m}.json", attacks=["fgsm", "pgd"], **ev)
        rows += rows_of(card, m)
        card = cached_eval(runs[m], work / "cards" / f"{m}_sap.json", attacks=["fgsm", "pgd", "eot-pgd"],
                           defense=f"sap:pct={args.pct},mode=fast", **ev)
        rows += rows_of(card, f"{m} + SAP-{args.pct:g} (fast)")
    for m in ("at+cas", "at-bnn"):
        card = cached_eval(runs[m], work / "cards" / f"{m}_pgd.json", attacks=["pgd"], **ev)
        rows += rows_of(card, m)
        if not args.no_autoattack:
            card = cached_eval(runs[m], work / "cards" / f"{m}_aa.json", attacks=["pgd", "autoattack"],
                               **(ev | {"limit": args.aa_limit}))
            rows += rows_of(card, m)
    card = cached_eval(runs["at-bnn"], work / "cards" / "at-bnn_sampled.json", attacks=["pgd", "eot-pgd"],
                       defense="bnn-sample", **ev)
    rows += rows_of(card, "at-bnn (sampled weights)")
    return rows


def sap_audit(args: argparse.Namespace, runs: dict[str, Path]) -> dict[str, Any]:
    from robustprune.jobs.audit import audit

    ctx = EvalContext.open(runs["at"], limit=args.audit_limit, data_dir=args.data_dir, device="cpu")
    run, images, labels, dev = ctx.run, ctx.images, ctx.labels, ctx.device
    model = SAPModel(run.model, pct=args.pct, mode="fast")
    card = audit(model, images, labels, eps=0.3, step_size=0.01, eps_sweep=[0.1, 0.3], autoattack="no",
                 passes=10, seed=0, device=dev, progress=False)
    return {"verdict": card["verdict"], "warned": card["warned"], "n": card["n"],
            "ladder": [{"name": r.get("name"), "robust_acc": r.get("robust_acc")} for r in card["ladder"]],
            "checks": [{"name": c["name"], "status": c["status"]} for c in card["checks"]]}


def analyses(args: argparse.Namespace, runs: dict[str, Path], work: Path) -> dict[str, Any]:
    calib = calibration_run([runs["standard"], runs["at"]], defense=f"sap:pct={args.pct}", limit=args.limit,
                            out=work / "calibration", data_dir=args.data_dir)
    chans = {}
    for m in ("at", "at+cas"):
        ctx = EvalContext.open(runs[m], limit=args.audit_limit, data_dir=args.data_dir, device="cpu")
        run, images, labels = ctx.run, ctx.images, ctx.labels
        chans[m] = channel_magnitudes(run.model, images.float() / 255 if images.dtype == torch.uint8 else images,
                                      labels, attack=PGD(eps=0.3, steps=20, step_size=0.025))
    atomic_write_json(work / "cas_channels.json", chans)
    plot_channels(chans, work / "cas_channels.png")
    return {"calibration": [{k: m[k] for k in ("label", "accuracy", "mean_confidence", "ece")}
                            for m in calib["models"]]}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | attack | n | clean % | robust % | passes |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['attack']} | {r['n']} | {r['clean']} | {r['robust']} | {r['passes']} |"
              for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work", default="runs/bench_activation", help="run directories, cards, plots")
    ap.add_argument("--summary", default="bench/activation_defenses.json")
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--adv-steps", type=int, default=5)
    ap.add_argument("--adv-step", type=float, default=0.1)
    ap.add_argument("--limit", type=int, default=500, help="test points of the PGD/EOT evaluations")
    ap.add_argument("--aa-limit", type=int, default=200, help="test points of the AutoAttack evaluations")
    ap.add_argument("--audit-limit", type=int, default=200, help="test points of the audit and channel plots")
    ap.add_argument("--eval-steps", type=int, default=40, help="PGD / EOT-PGD iterations of the evaluations")
    ap.add_argument("--eval-step", type=float, default=0.01, help="their step size")
    ap.add_argument("--pct", type=float, default=100.0, help="SAP's percentage of samples")
    ap.add_argument("--no-autoattack", action="store_true")
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    t0 = time.perf_counter()
    runs = train_all(args, work)
    rows = evaluations(args, runs, work)
    print(markdown(rows), flush=True)
    summary: dict[str, Any] = {"args": vars(args), "rows": rows, **analyses(args, runs, work)}
    summary |= {"wall_s": round(time.perf_counter() - t0, 1), **provenance("cpu")}
    atomic_write_json(args.summary, summary)
    if not args.skip_audit:
        summary["sap_audit"] = sap_audit(args, runs)
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(args.summary, summary)
    print(summary.get("calibration"), summary.get("sap_audit"), sep="\n")


if __name__ == "__main__":
    main()
