"""Benchmark: suites on Ray beside the local pool, and a sharded AutoAttack that resumes (issue 28).

``suite``: one suite (default ``configs/suites/mnist_quick.yaml``) run twice from scratch, as
``robustprune compare`` subprocesses: ``--jobs 2 --threads 1`` and ``--executor ray --threads 1``
(a local Ray cluster started by the command: every CPU of the machine). Reports both wall times and
whether every accuracy and vulnerability of ``table.json`` is equal.

``suite-eval``: the suite trained and evaluated once (``--jobs 2``), then its evaluations alone made
again under ``--jobs 2 --threads 1`` and under ``--executor ray --threads 1`` (every ``eval/`` folder
removed before each; with ``--eval-shard-size N`` a third pass under ``--executor ray --shard-size
N``): the evaluation wall times, their ratios to ``--jobs 2``, and whether the accuracies agree.

``shards``: one AT LeNet5-Caffe run evaluated by AutoAttack on ``--points`` test points, unsharded,
then in shards of ``--shard-size`` (``--jobs 1``) killed (``SIGKILL`` through
``$ROBUSTPRUNE_FAULT=eval-batch:K``) after about half of the batches, and rerun. Reports the wall
times, how many shards the rerun evaluated and reused, and whether the merged card's robust
accuracies (PGD-40 beside it, AutoAttack and each of its stages) equal the unsharded card's.

    PYTHONPATH=src python bench/cluster.py --part both --data-dir DATA --json bench/cluster.json
    PYTHONPATH=src python bench/cluster.py --part suite-eval --data-dir DATA --json bench/cluster_eval.json
    PYTHONPATH=src python bench/cluster.py --quick     # generated data, tiny sizes: checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generated data the tests use (--quick)

ACCURACY_KEYS = ("clean", "white_box", "black_box", "autoattack", "eot_pgd", "vuln_white_box", "vuln_black_box")


def compare(suite: Path, out: Path, *args: str, fault: str | None = None) -> tuple[int, float, str]:
    """``robustprune compare SUITE --out OUT ARGS`` in a subprocess: (exit code, seconds, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("ROBUSTPRUNE_FAULT", None)
    if fault is not None:
        env["ROBUSTPRUNE_FAULT"] = fault
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "robustprune", "compare", str(suite), "--out", str(out),
                           "--no-progress", *args], env=env, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - t0, proc.stderr


def accuracies(suite_dir: Path) -> dict[str, Any]:
    table = json.loads((suite_dir / "table.json").read_text())
    return {row["run_id"]: {k: row["metrics"][k]["values"] for k in ACCURACY_KEYS} for row in table["rows"]}


def bench_suite(suite: Path, work: Path, data_dir: str | None) -> dict[str, Any]:
    extra = [] if data_dir is None else ["--data-dir", data_dir]
    out: dict[str, Any] = {"suite": str(suite.relative_to(ROOT) if suite.is_relative_to(ROOT) else suite)}
    for name, args in (("jobs2", ["--jobs", "2", "--threads", "1"]), ("ray", ["--executor", "ray", "--threads", "1"])):
        rc, seconds, err = compare(suite, work / name, *args, *extra)
        if rc != 0:
            raise RuntimeError(f"compare {' '.join(args)} failed ({rc}):\n{err[-3000:]}")
        out[f"{name}_wall_s"] = round(seconds, 1)
    out["same_accuracies"] = accuracies(work / "jobs2") == accuracies(work / "ray")
    return out


def bench_suite_eval(suite: Path, work: Path, data_dir: str | None, shard_size: int | None = None,
                     passes: Sequence[str] = ("jobs2", "ray", "ray_shards")) -> dict[str, Any]:
    """Evaluation alone: the suite trained once (``--jobs 2``), then every card made again, first by
    ``--jobs 2 --threads 1`` and then by ``--executor ray --threads 1`` on the same trained runs (and,
    with ``shard_size``, by ``--executor ray --threads 1 --shard-size N``)."""
    extra = [] if data_dir is None else ["--data-dir", data_dir]
    out: dict[str, Any] = {"suite": str(suite.relative_to(ROOT) if suite.is_relative_to(ROOT) else suite)}
    rc, seconds, err = compare(suite, work, "--jobs", "2", "--threads", "1", *extra)
    if rc != 0:
        raise RuntimeError(f"compare --jobs 2 failed ({rc}):\n{err[-3000:]}")
    out["train_and_eval_jobs2_wall_s"] = round(seconds, 1)
    tables = {}
    commands = {"jobs2": ["--jobs", "2", "--threads", "1"], "ray": ["--executor", "ray", "--threads", "1"]}
    if shard_size is not None:
        commands["ray_shards"] = ["--executor", "ray", "--threads", "1", "--shard-size", str(shard_size)]
        out["shard_size"] = shard_size
    if "jobs2" not in passes:
        raise ValueError("suite-eval's passes must include jobs2 (the ratios are to it)")
    for name in [p for p in passes if p in commands]:
        args = commands[name]
        for eval_dir in work.glob("runs/*/eval"):
            shutil.rmtree(eval_dir)
        rc, seconds, err = compare(suite, work, *args, *extra)
        if rc != 0:
            raise RuntimeError(f"evaluation {' '.join(args)} failed ({rc}):\n{err[-3000:]}")
        if "trained" in err.replace("trained again", ""):
            raise RuntimeError(f"evaluation {' '.join(args)} trained a run; expected evaluation only:\n{err[-3000:]}")
        out[f"eval_only_{name}_wall_s"] = round(seconds, 1)
        tables[name] = accuracies(work)
    for name in tables:
        if name != "jobs2":
            out[f"{name}_over_jobs2_eval"] = round(out[f"eval_only_{name}_wall_s"] / out["eval_only_jobs2_wall_s"], 3)
    out["same_accuracies"] = all(t == tables["jobs2"] for t in tables.values())
    return out


def aa_suite(path: Path, *, data_dir: str | None, points: int, batch: int, epochs: int,
             limit_train: int | None) -> Path:
    defaults: dict[str, Any] = {"model": "lenet5-caffe", "dataset": "mnist", "epochs": epochs}
    if data_dir is not None:
        defaults["data_dir"] = data_dir
    if limit_train is not None:
        defaults["limit_train"] = limit_train
    suite = {"name": "aa-shards", "seeds": [0], "defaults": defaults, "runs": [{"id": "at", "method": "at"}],
             # PGD beside AutoAttack: the report's header describes the suite by its PGD (an AutoAttack-only
             # suite's header fails to render: reports.table._eval_description reads a step size)
             "eval": {"attacks": ["pgd", "autoattack"], "limit": points, "batch_size": batch}}
    path.write_text(yaml.safe_dump(suite))
    return path


def stage_numbers(suite_dir: Path) -> dict[str, Any]:
    card = json.loads((suite_dir / "cards" / "at-s0.json").read_text())["eval"]
    pgd, aa = card["attacks"]
    return {"clean": card["clean_acc"], "pgd": pgd["robust_acc"], "autoattack": aa["robust_acc"],
            "stages": [(s["name"], s["robust_acc"]) for s in aa["breakdown"]["stages"]]}


def bench_shards(work: Path, *, data_dir: str | None, points: int, shard_size: int, batch: int, epochs: int,
                 limit_train: int | None) -> dict[str, Any]:
    suite = aa_suite(work / "aa.yaml", data_dir=data_dir, points=points, batch=batch, epochs=epochs,
                     limit_train=limit_train)
    # train once (the evaluation timed apart): the same run under a suite that evaluates one batch, then
    # the real suite reuses the trained run (a run is the same whatever the suite evaluates)
    train_only = aa_suite(work / "train.yaml", data_dir=data_dir, points=batch, batch=batch, epochs=epochs,
                          limit_train=limit_train)
    whole, sharded = work / "whole", work / "sharded"
    rc, first_s, err = compare(train_only, whole)
    if rc != 0:
        raise RuntimeError(f"training failed ({rc}):\n{err[-3000:]}")
    for card in (whole / "runs" / "at-s0" / "eval").glob("suite-*.json"):  # an earlier --work's cards
        card.unlink()
    rc, whole_s, err = compare(suite, whole)
    if rc != 0:
        raise RuntimeError(f"unsharded evaluation failed ({rc}):\n{err[-3000:]}")
    shutil.rmtree(sharded, ignore_errors=True)
    shutil.copytree(whole / "runs", sharded / "runs", ignore=shutil.ignore_patterns("eval"))
    n_shards = -(-points // shard_size)
    batches = -(-points // batch)
    kill_at = max(1, batches // 2)
    rc, killed_s, _ = compare(suite, sharded, "--shard-size", str(shard_size), fault=f"eval-batch:{kill_at}")
    before = {p: p.stat().st_mtime_ns for p in sharded.glob("runs/at-s0/eval/*.shards/*.json")}
    rc2, rerun_s, err = compare(suite, sharded, "--shard-size", str(shard_size))
    if rc2 != 0:
        raise RuntimeError(f"sharded rerun failed ({rc2}):\n{err[-3000:]}")
    after = {p: p.stat().st_mtime_ns for p in sharded.glob("runs/at-s0/eval/*.shards/*.json")}
    reused = sum(after.get(p) == t for p, t in before.items())  # a shard the rerun did not write again
    return {
        "points": points, "shard_size": shard_size, "batch_size": batch, "shards": n_shards,
        "train_s": round(first_s, 1), "unsharded_eval_s": round(whole_s, 1),
        "killed_after_batch": kill_at, "killed_exit": rc, "killed_run_s": round(killed_s, 1),
        "shards_done_before_kill": len(before), "rerun_s": round(rerun_s, 1),
        "rerun_reused": reused, "rerun_evaluated": len(after) - reused,
        "unsharded": stage_numbers(whole), "merged": stage_numbers(sharded),
        "identical": stage_numbers(whole) == stage_numbers(sharded),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["suite", "suite-eval", "shards", "both"], default="both",
                   help="suite: the suite from scratch under each executor; suite-eval: trained once, then "
                        "evaluation alone under each; shards: the sharded AutoAttack; both: suite and shards")
    p.add_argument("--suite", type=Path, default=ROOT / "configs" / "suites" / "mnist_quick.yaml")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--points", type=int, default=1000)
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="generated data and tiny sizes: checks the script only")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--eval-shard-size", type=int, default=None,
                   help="suite-eval: a third pass, --executor ray with --shard-size N")
    p.add_argument("--eval-passes", default="jobs2,ray,ray_shards",
                   help="suite-eval: which passes, of jobs2 (always), ray, ray_shards (needs --eval-shard-size)")
    p.add_argument("--work", type=Path, default=None,
                   help="scratch directory, kept afterwards; a rerun reuses the runs already trained in it")
    ns = p.parse_args(argv)
    keep = ns.work is not None
    work = ns.work if keep else Path(tempfile.mkdtemp(prefix="robustprune-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if ns.quick:
            from conftest import write_tiny_mnist

            ns.data_dir = str(write_tiny_mnist(work / "data"))
            ns.points, ns.shard_size, ns.batch_size, ns.epochs, ns.limit_train = 32, 8, 8, 1, 64
            ns.suite = aa_suite(work / "tiny.yaml", data_dir=ns.data_dir, points=32, batch=8, epochs=1,
                                limit_train=64)
        out: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "quick": ns.quick}
        if ns.part in ("suite", "both"):
            (work / "suite").mkdir(exist_ok=True)
            out["suite"] = bench_suite(ns.suite, work / "suite", ns.data_dir)
            print(json.dumps(out["suite"], indent=2))
        if ns.part == "suite-eval":
            (work / "suite-eval").mkdir(exist_ok=True)
            out["suite_eval"] = bench_suite_eval(ns.suite, work / "suite-eval", ns.data_dir, ns.eval_shard_size,
                                                 ns.eval_passes.split(","))
            print(json.dumps(out["suite_eval"], indent=2))
        if ns.part in ("shards", "both"):
            (work / "shards").mkdir(exist_ok=True)
            out["shards"] = bench_shards(work / "shards", data_dir=ns.data_dir, points=ns.points,
                                         shard_size=ns.shard_size, batch=ns.batch_size, epochs=ns.epochs,
                                         limit_train=ns.limit_train)
            print(json.dumps(out["shards"], indent=2))
        if ns.json is not None:
            ns.json.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
