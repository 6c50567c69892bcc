"""A suite's plan: every (run, seed) placed in the suite directory, and the tasks that train and
evaluate them in an order that respects every dependency (each task lists the tasks it needs, so a
scheduler may run independent ones in parallel)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from robustprune.compare.suite import EvalSpec, RunEntry, Suite, init_order
from robustprune.config import TrainConfig


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
    """``train`` or ``evaluate`` one run; ``needs`` are the task names that must finish first."""

    kind: str
    spec: RunSpec
    needs: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.spec.key}"


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


def plan_suite(suite: Suite, out_dir: str | Path, *, data_dir: str | None = None,
               device: str | None = None) -> list[Task]:
    """Training tasks in dependency order, each evaluation task as soon as its run and source are
    trained; ``model_of`` rows have only an evaluation task, after the run whose model they evaluate."""
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
            evals.append(Task("evaluate", s, tuple(dict.fromkeys(needs))))
    # each evaluation right after the last training it needs, so a long suite's first rows have
    # their numbers while later runs still train
    tasks: list[Task] = []
    done: set[str] = set()
    for t in trains:
        tasks.append(t)
        done.add(t.name)
        ready = [e for e in evals if set(e.needs) <= done]
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
