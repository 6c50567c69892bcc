"""A suite's plan: every (run, seed) placed in the suite directory, and the tasks that train and
evaluate them in an order that respects every dependency (each task lists the tasks it needs, so a
scheduler may run independent ones in parallel)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from robustprune.compare.suite import EvalSpec, RunEntry, Suite, init_order
from robustprune.config import TrainConfig
from robustprune.data import dataset_info
from robustprune.eval.shards import shard_ranges


@dataclass(frozen=True)
class RunSpec:
    """One seed of one suite run, placed in the suite directory."""

    run: RunEntry
    seed: int
    order: int
    cfg: TrainConfig
    source_key: str | None
    eval: EvalSpec

    @property
    def key(self) -> str:
        return f"{self.run.id}-s{self.seed}"

    @property
    def trains(self) -> bool:
        """False for a ``model_of`` row: it evaluates another run's model."""
        return self.run.model_of is None

    @property
    def model_key(self) -> str:
        """The run whose trained model this spec evaluates."""
        return self.key if self.trains else run_key(self.run.model_of, self.seed)  # type: ignore[arg-type]

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


@dataclass(frozen=True)
class Task:
    """``train`` or ``evaluate`` one run, or evaluate one ``shard`` of its test points (``[start,
    stop)``); ``needs`` are the task names that must finish first. A sharded evaluation's
    ``evaluate`` task lists its ``shards`` and merges their partial records into the card."""

    kind: str
    spec: RunSpec
    needs: tuple[str, ...]
    shard: tuple[int, int] | None = None
    shards: tuple[tuple[int, int], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.spec.key}" + ("" if self.shard is None else f"@{self.shard[0]}-{self.shard[1]}")

    @property
    def label(self) -> str:
        """How progress lines name the task: ``evaluate at-s0``, ``shard at-s0 [100, 200)``."""
        where = "" if self.shard is None else f" [{self.shard[0]}, {self.shard[1]})"
        return f"{self.kind} {self.spec.key}{where}"


def run_key(run_id: str, seed: int) -> str:
    return f"{run_id}-s{seed}"


def plan_runs(suite: Suite, out_dir: str | Path, *, data_dir: str | None = None,
              device: str | None = None) -> list[RunSpec]:
    """Every (run, seed) of the suite, dependencies first, with its resolved TrainConfig."""
    runs_dir = Path(out_dir) / "runs"
    position = {r.id: i for i, r in enumerate(suite.runs)}
    specs = []
    for run_id in init_order(suite):
        run = suite.run(run_id)
        for seed in run.seeds:
            init = None if run.init_from is None else str(runs_dir / run_key(run.init_from, seed))
            trained_by = run.id if run.model_of is None else run.model_of
            cfg = run.config(seed, out=str(runs_dir / run_key(trained_by, seed)), init_from=init)
            if data_dir is not None:
                cfg = dataclasses.replace(cfg, data_dir=data_dir)
            if device is not None:
                cfg = dataclasses.replace(cfg, device=device)
            src = suite.source_seed(run, seed) if run.report else None
            specs.append(RunSpec(run=run, seed=seed, order=position[run.id], cfg=cfg,
                                 source_key=None if src is None else run_key(*src), eval=suite.eval_of(run)))
    return specs


def eval_shards(spec: RunSpec, shard_size: int | None = None) -> tuple[tuple[int, int], ...]:
    """The shards of ``spec``'s evaluation: its test points (``limit``, else the dataset's test set)
    in runs of ``shard_size`` (default the suite's ``eval.shard_size``); ``()`` when unsharded."""
    size = spec.eval.shard_size if shard_size is None else shard_size
    if size is None:
        return ()
    n = spec.eval.limit if spec.eval.limit is not None else dataset_info(spec.cfg.dataset).test_size
    return tuple(shard_ranges(n, shard_size=size, batch_size=spec.eval.batch_size))


def plan_suite(suite: Suite, out_dir: str | Path, *, data_dir: str | None = None,
               device: str | None = None, shard_size: int | None = None) -> list[Task]:
    """Training tasks in dependency order, each evaluation task as soon as its run and source are
    trained; ``model_of`` rows have only an evaluation task, after the run whose model they evaluate.
    A sharded evaluation (``shard_size``, else the run's ``eval.shard_size``) is a ``shard`` task per
    shard, each after the trainings, and the ``evaluate`` task that merges them after every shard."""
    specs = plan_runs(suite, out_dir, data_dir=data_dir, device=device)
    trains, evals = [], []
    needs: tuple[str, ...]
    for s in specs:
        if s.trains:
            needs = () if s.run.init_from is None else (f"train:{run_key(s.run.init_from, s.seed)}",)
            trains.append(Task("train", s, needs))
    for s in specs:
        if s.run.report:
            needs = (f"train:{s.model_key}",) + (() if s.source_key is None else (f"train:{s.source_key}",))
            needs = tuple(dict.fromkeys(needs))
            shards = eval_shards(s, shard_size)
            parts = [Task("shard", s, needs, shard=r) for r in shards]
            evals += [*parts, Task("evaluate", s, tuple(t.name for t in parts) or needs, shards=shards)]
    # each evaluation right after the last training it needs, so a long suite's first rows have
    # their numbers while later runs still train
    tasks: list[Task] = []
    done: set[str] = set()
    for t in trains:
        tasks.append(t)
        done.add(t.name)
        ready = []
        for e in evals:  # a merge becomes ready when its shards are placed
            if set(e.needs) <= done:
                ready.append(e)
                done.add(e.name)
        tasks += ready
        evals = [e for e in evals if e not in ready]
    return tasks + evals


def only_rows(tasks: list[Task], suite: Suite, rows: list[str]) -> list[Task]:
    """The tasks of the suite runs ``rows`` (every seed) and, transitively, the trainings they need,
    in plan order. An id that is not a run of the suite raises ``ValueError`` naming it."""
    ids = [r.id for r in suite.runs]
    unknown = [r for r in rows if r not in ids]
    if unknown:
        verb = "is not a run" if len(unknown) == 1 else "are not runs"
        raise ValueError(f"--only: {', '.join(map(repr, unknown))} {verb} of suite {suite.name!r} "
                         f"(its runs: {', '.join(ids)})")
    if not rows:
        raise ValueError("--only: no run ids given")
    by_name = {t.name: t for t in tasks}
    keep = {t.name for t in tasks if t.spec.run.id in rows}
    todo = list(keep)
    while todo:
        for need in by_name[todo.pop()].needs:
            if need not in keep:
                keep.add(need)
                todo.append(need)
    return [t for t in tasks if t.name in keep]
