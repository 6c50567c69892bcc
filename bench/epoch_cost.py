"""CPU cost of one training epoch per method: ANP-VS against AT (target: ANP-VS <= 1.3x AT).

Each method trains one epoch of ``--limit-train`` MNIST images and one of twice as many (LeNet5-Caffe,
batch 64, the suites' PGD-5 of 0.04 stand-in) through ``robustprune.train.fit`` on one torch thread,
``--repeats`` times; the difference of the two costs is the cost of ``--limit-train`` images' batches
alone, without the fixed cost of building the run (reading MNIST, the model, the checkpoint);
ANP-VS (the faithful recipe, beta 4, lambda 1e-3) starts from a standard run trained once first (not
timed). Both the wall time and this process's CPU time (user + system, ``resource.getrusage``) are
recorded: on a machine shared with other jobs the CPU time is the figure to compare, since it counts
the work done rather than the time waited for a core. The per-epoch figures scale the measured
seconds per batch to the 938 batches of all 60,000 images.

    python bench/epoch_cost.py --data-dir DATA --out bench/epoch_cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from robustprune.config import TrainConfig
from robustprune.train import fit
from robustprune.utils import provenance

FULL_BATCHES = 938  # ceil(60,000 / 64)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def config(method: str, out: Path, args: argparse.Namespace, *, init_from: str | None = None,
           method_args: dict[str, Any] | None = None, scale: int = 1) -> TrainConfig:
    return TrainConfig(method=method, model="lenet5-caffe", dataset="mnist", epochs=1, out=str(out),
                       data_dir=args.data_dir, seed=0, limit_train=scale * args.limit_train, batch_size=64,
                       adv_eps=0.3, adv_steps=5, adv_step_size=0.04, init_from=init_from,
                       method_args=method_args or {}, progress=False, tensorboard=False, device="cpu")


def timed(method: str, out: Path, args: argparse.Namespace, **kw: Any) -> dict[str, float]:
    """CPU and wall seconds of ``limit_train`` images' batches: an epoch of twice as many minus one of
    ``limit_train`` (each a fresh run)."""
    cost = []
    for scale in (1, 2):
        c0, w0 = cpu_seconds(), time.perf_counter()
        fit(config(method, out / f"x{scale}", args, scale=scale, **kw))
        cost.append((cpu_seconds() - c0, time.perf_counter() - w0))
    return {"cpu_s": cost[1][0] - cost[0][0], "wall_s": cost[1][1] - cost[0][1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit-train", type=int, default=6400, help="images per timed epoch (100 batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    batches = -(-args.limit_train // 64)
    with tempfile.TemporaryDirectory() as tmp:
        base = fit(config("standard", Path(tmp) / "standard", args))
        runs: dict[str, list[dict[str, float]]] = {"at": [], "anp-vs": []}
        for r in range(args.repeats):  # interleaved, so a change in the machine's load hits both
            runs["at"].append(timed("at", Path(tmp) / f"at-{r}", args))
            runs["anp-vs"].append(timed("anp-vs", Path(tmp) / f"anpvs-{r}", args, init_from=str(base),
                                        method_args={"beta": 4.0, "lam": 1e-3}))
    methods = {}
    for name, rs in runs.items():
        cpu = statistics.median(x["cpu_s"] for x in rs)
        wall = statistics.median(x["wall_s"] for x in rs)
        methods[name] = {"repeats": rs, "median_cpu_s": cpu, "median_wall_s": wall,
                         "cpu_min_per_full_epoch": cpu / batches * FULL_BATCHES / 60,
                         "wall_min_per_full_epoch": wall / batches * FULL_BATCHES / 60}
    ratio = methods["anp-vs"]["median_cpu_s"] / methods["at"]["median_cpu_s"]
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
              # the data directory is this machine's: the record says DATA, as the commands in RESULTS do
              "command": "python bench/epoch_cost.py " + " ".join(
                  "DATA" if a == args.data_dir else a for a in (sys.argv[1:] if argv is None else argv)),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": len(__import__("os").sched_getaffinity(0)), "torch_threads": 1,
                          "loadavg_at_end": list(__import__("os").getloadavg())},
              "provenance": provenance("cpu"), "limit_train": args.limit_train, "batches": batches,
              "methods": methods, "anp_vs_over_at_cpu": ratio, "target": "anp_vs_over_at_cpu <= 1.3",
              "met": ratio <= 1.3}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    tmp_out.replace(args.out)
    print(json.dumps({k: report[k] for k in ("anp_vs_over_at_cpu", "met")}
                     | {m: round(v["cpu_min_per_full_epoch"], 2) for m, v in methods.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
