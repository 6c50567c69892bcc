"""Run a suite's tasks on a Ray cluster (``robustprune compare SUITE --executor ray``).

Every task of the plan is submitted at once as a Ray task whose arguments include the results of
the tasks it needs, so Ray starts it only when they are finished (and never when one failed). Each
task asks for ``threads`` CPUs (its torch threads, default 1) and, with ``device="cuda"``, one GPU:
Ray then places it on a node with a free GPU and shows it only that one. The tasks write their
results straight into the suite directory, so the directory (and the data directory) must be on a
filesystem every node sees (docs/cluster.md); nothing but a task's one-line outcome travels back.

Ray is an optional extra (``pip install "robustprune[ray]"``), imported only here, only when used.
``address`` is passed to ``ray.init``: ``None`` starts a local cluster for this run (shut down
after), ``"auto"`` joins the cluster of this node, ``"HOST:PORT"`` (or ``ray://HOST:PORT``) a
remote one. A task whose worker dies (``kill -9``, the OOM killer) is retried by Ray up to
``retries`` times; a task resumes from what its killed attempt left (checkpoints, finished
evaluation shards), so a retry, or a rerun of the command, loses only the unfinished part.

>>> run_tasks_ray(tasks, suite, Path("runs/quick"), run=run_task, address=None)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from robustprune.compare.parallel import TaskFailed, TaskFn, WorkerDied, _check_plan, prefetch_data
from robustprune.compare.plan import Task
from robustprune.compare.suite import Suite
from robustprune.utils import UserError

#: how often Ray retries a task whose worker died (Ray's own default for tasks)
RETRIES = 3


def import_ray() -> Any:
    """The ``ray`` module, or a :class:`~robustprune.utils.UserError` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise UserError("--executor ray needs Ray, an optional extra: pip install 'robustprune[ray]'") from e
    return ray


def _ray_work(run: TaskFn, task: Task, suite: Suite, out_dir: Path, threads: int, *needs: Any) -> tuple[str, float]:
    """One task in a Ray worker (``needs``: the results of the tasks it waited for, unused)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    result = run(task, suite, out_dir, progress=False)
    return result, time.perf_counter() - t0


def run_tasks_ray(tasks: list[Task], suite: Suite, out_dir: Path, *, run: TaskFn, address: str | None = None,
                  progress: bool = True, threads: int | None = None, device: str | None = None,
                  retries: int = RETRIES) -> None:
    """Run ``tasks`` on the Ray cluster at ``address`` (see the module docstring), each after the
    tasks in its ``needs``. Raises :class:`~robustprune.compare.parallel.TaskFailed` naming the
    first task that failed, after the tasks already running finish (the others are cancelled)."""
    threads = 1 if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    ray = import_ray()
    _check_plan(tasks)
    if not tasks:
        return
    prefetch_data(tasks)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False)
    try:
        _submit_and_wait(ray, tasks, suite, out_dir, run=run, progress=progress, threads=threads,
                         gpus=1 if (device or "").startswith("cuda") else 0, retries=retries)
    finally:
        if started:
            ray.shutdown()


def _submit_and_wait(ray: Any, tasks: list[Task], suite: Suite, out_dir: Path, *, run: TaskFn, progress: bool,
                     threads: int, gpus: int, retries: int) -> None:
    remote = ray.remote(_ray_work).options(num_cpus=threads, num_gpus=gpus, max_retries=retries)
    refs: dict[str, Any] = {}
    for t in tasks:  # plan order: every task's needs are submitted before it
        refs[t.name] = remote.remote(run, t, suite, out_dir, threads, *(refs[n] for n in t.needs))
    by_ref = {ref: t for t, ref in zip(tasks, refs.values(), strict=True)}
    waiting, done = list(refs.values()), 0
    failed: tuple[Task, BaseException] | None = None
    bar = tqdm(total=len(tasks), desc=suite.name, unit="task", disable=not progress, dynamic_ncols=True)
    try:
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            task = by_ref[ready[0]]
            try:
                result, seconds = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 (Ray wraps the task's exception; named below)
                if failed is None:
                    failed = (task, _cause(ray, task, e))
                    for ref in waiting:  # tasks not started yet never start; running ones finish
                        ray.cancel(ref, force=False)
                    if progress:
                        bar.write(f"[failed] {task.label}: {type(failed[1]).__name__}: {failed[1]}", file=sys.stderr)
                continue
            done += 1
            if progress:
                bar.write(f"[{done}/{len(tasks)}] {task.label}: {result} ({seconds:.0f} s)", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
    if failed is not None:
        raise TaskFailed(failed[0].name, failed[1], not_started=len(tasks) - done - 1) from failed[1]


def _cause(ray: Any, task: Task, error: BaseException) -> BaseException:
    """The task's own exception where Ray kept it; a worker that died, as :class:`WorkerDied`."""
    exceptions = ray.exceptions
    if isinstance(error, exceptions.WorkerCrashedError):
        died = WorkerDied(f"the Ray worker running {task.name} died (killed by a signal: out of memory, kill -9?) "
                          "and its retries are spent; what finished is kept: rerun to resume")
        died.__cause__ = error
        return died
    if isinstance(error, exceptions.RayTaskError):
        cause = error.as_instanceof_cause() if hasattr(error, "as_instanceof_cause") else error
        return cause
    return error
