"""Run a suite's tasks in parallel worker processes, each task after the tasks it needs.

Workers are started with multiprocessing's ``spawn`` (forking a process that has used torch is
unsafe), set ``torch.set_num_threads(threads)`` once, and run whole tasks with
:func:`~robustprune.compare.runner.run_task` (their own progress bars off); the parent shows one bar
over the tasks and a line per finished task. Tasks write disjoint files (a training task its run
directory; an evaluation task its run's ``eval/suite-<hash>.json`` and ``cards/<key>.json``) and only
read what the tasks they need wrote, so any order that respects ``Task.needs`` gives the results of
the sequential runner (weights and accuracies; wall times and the CPU latency of compacted models are
measured while other tasks run). Datasets are loaded once in the parent first, so that a download
happens there, not in two workers writing one directory at once.

A worker exits as soon as the runner that started it dies, so a killed suite leaves no process
behind that would keep writing while a rerun takes over the directory.

On a failure no new task is started (the sequential runner also stops at its first error): running
tasks finish and keep their results, so a rerun resumes; then :class:`TaskFailed` names the task and
its exception.

>>> suite = load_suite("configs/suites/mnist_quick.yaml")  # doctest: +SKIP
>>> run_suite(suite, "runs/quick", jobs=2)                  # doctest: +SKIP
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch
from tqdm.auto import tqdm

from robustprune.compare.plan import Task
from robustprune.compare.suite import Suite
from robustprune.data import load_split
from robustprune.utils import UserError

#: runs one task in a worker: ``run(task, suite, out_dir, progress=False) -> what happened``
TaskFn = Callable[..., str]


class WorkerDied(UserError, RuntimeError):
    """A worker process of a parallel suite run ended without an answer (killed by a signal)."""


class TaskFailed(RuntimeError):
    """A task of a parallel suite run raised; ``task`` is its name, ``__cause__`` its exception."""

    def __init__(self, task: str, error: BaseException, *, not_started: int = 0) -> None:
        rest = f"; {not_started} task(s) not started (rerun to resume)" if not_started else ""
        super().__init__(f"task {task} failed: {type(error).__name__}: {error}{rest}")
        self.task = task


def default_threads(jobs: int) -> int:
    """Torch threads per worker: the CPUs this process may use, shared out over ``jobs`` workers."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // jobs)


#: how often a worker checks that the runner that started it is alive (seconds)
PARENT_CHECK_S = 0.25


def _init_worker(threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="robustprune-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """A worker whose runner died (``kill -9``, the OOM killer) exits at once instead of finishing its
    task in a suite directory that a rerun may meanwhile take over (it would then also live on,
    idle, for ever). What it was writing is atomic, so stopping it anywhere loses nothing."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def _work(run: TaskFn, task: Task, suite: Suite, out_dir: Path) -> tuple[str, float]:
    t0 = time.perf_counter()
    result = run(task, suite, out_dir, progress=False)
    return result, time.perf_counter() - t0


def prefetch_data(tasks: list[Task], *, refetch: bool = False) -> None:
    """Load every dataset the tasks use once, here: a missing one is downloaded by one process only
    (a damaged one replaced, with ``refetch``)."""
    for dataset, data_dir in dict.fromkeys((t.spec.cfg.dataset, t.spec.cfg.data_dir) for t in tasks):
        for split in ("train", "test"):
            load_split(dataset, split, data_dir=data_dir, refetch=refetch)


def _check_plan(tasks: list[Task]) -> None:
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"repeated task names: {sorted({n for n in names if names.count(n) > 1})}")
    for t in tasks:
        missing = [n for n in t.needs if n not in names]
        if missing:
            raise ValueError(f"task {t.name} needs {missing}, which the plan does not hold")


def run_tasks_parallel(tasks: list[Task], suite: Suite, out_dir: Path, *, run: TaskFn, jobs: int, progress: bool,
                       threads: int | None = None) -> None:
    """Run ``tasks`` in up to ``jobs`` worker processes, each once every task in its ``needs`` is done;
    ``run`` does one task (:func:`robustprune.compare.runner.run_task`; a module-level function, so
    the spawned workers can unpickle it).

    ``threads`` is each worker's torch thread count (default :func:`default_threads`). Raises
    :class:`TaskFailed` after the running tasks finish when one fails.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    threads = default_threads(jobs) if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    _check_plan(tasks)
    if not tasks:
        return
    prefetch_data(tasks)
    order = {t.name: i for i, t in enumerate(tasks)}
    pending, running, done = list(tasks), dict[Future, Task](), set[str]()
    failed: tuple[Task, BaseException] | None = None
    bar = tqdm(total=len(tasks), desc=suite.name, unit="task", disable=not progress, dynamic_ncols=True)
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads, os.getpid()))
    try:
        while pending or running:
            if failed is None:
                _submit_ready(pool, pending, running, done, suite, out_dir, run=run, jobs=jobs)
            if not running:
                if failed is None:  # cannot happen for a plan from plan_suite: a cycle in ``needs``
                    raise ValueError(f"tasks {[t.name for t in pending]} wait on each other")
                break
            bar.set_postfix_str("running " + ", ".join(t.name for t in running.values()))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=lambda f: order[running[f].name]):
                task = running.pop(fut)
                try:
                    result, seconds = fut.result()
                except Exception as e:  # the worker's exception, its traceback as __cause__
                    if isinstance(e, BrokenProcessPool):  # a worker was killed: every running task ends here
                        died = WorkerDied(f"a worker process died while {task.name} ran (killed by a signal: out of "
                                          "memory, kill -9?); what finished is kept: rerun to resume")
                        died.__cause__ = e
                        e = died
                    failed = failed or (task, e)
                    if progress:
                        bar.write(f"[failed] {task.label}: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                done.add(task.name)
                if progress:
                    bar.write(f"[{len(done)}/{len(tasks)}] {task.label}: {result} ({seconds:.0f} s)",
                              file=sys.stderr)
                bar.update(1)
        bar.set_postfix_str("")
    finally:
        bar.close()
        pool.shutdown(wait=True, cancel_futures=True)
    if failed is not None:
        raise TaskFailed(failed[0].name, failed[1], not_started=len(pending)) from failed[1]


def _submit_ready(pool: ProcessPoolExecutor, pending: list[Task], running: dict[Future, Task], done: set[str],
                  suite: Suite, out_dir: Path, *, run: TaskFn, jobs: int) -> None:
    """Start pending tasks whose needs are done, in plan order, while fewer than ``jobs`` run."""
    for task in [t for t in pending if all(n in done for n in t.needs)]:
        if len(running) >= jobs:
            return
        pending.remove(task)
        running[pool.submit(_work, run, task, suite, out_dir)] = task
