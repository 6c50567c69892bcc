"""The suite runner: train what is missing in dependency order, evaluate, write cards and the report.

Layout of a suite directory ``DIR``::

    suite.yaml                  the resolved suite (provenance)
    runs/<id>-s<seed>/          one training run each (see robustprune.train.checkpoint)
    runs/<id>-s<seed>/eval/suite-<hash>.json   its evaluation card for these eval settings
    cards/<id>-s<seed>.json     the suite's card of a run: training record + evaluation card
    table.md, table.json, *.png the report, rendered from cards/ only

The unit of work is a :class:`Task` (train one run, or evaluate one run); :func:`plan_suite`
lists them in an order that respects every dependency and records each task's prerequisites, so a
scheduler can run independent tasks in parallel. :func:`run_suite` runs them one after another.
Everything is resumable: finished runs with the same config are reused, interrupted ones resumed
from their last checkpoint, cards reused while the eval settings and weights are unchanged. What
code made a run or a card is on its record (:mod:`robustprune.records`): one made by an older
version of the code that defines its numbers is made again (``reuse_stale`` keeps it, marked).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from robustprune.compare.parallel import prefetch_data, run_tasks_parallel
from robustprune.compare.plan import RunSpec, Task, only_rows, plan_runs, plan_suite, run_key
from robustprune.compare.suite import Suite
from robustprune.config import TrainConfig, load_train_config, save_yaml, to_dict
from robustprune.defenses import TestTimeSpec
from robustprune.eval import evaluate_run, evaluate_shard, merge_run_shards
from robustprune.eval.card import eval_code_parts
from robustprune.eval.shards import shard_usable
from robustprune.records import (
    SCHEMA,
    RecordError,
    SuiteCard,
    TrainSummary,
    read_eval_card,
    read_run_record,
    write_suite_card,
)
from robustprune.reports import render_report
from robustprune.train import fit
from robustprune.train.checkpoint import CKPT_DIR, latest_checkpoint
from robustprune.train.run import train_attack, train_code_parts
from robustprune.utils import atomic_write_text, fault_point

__all__ = ["RunSpec", "Task", "card_path", "comparable", "config_diff", "plan_runs", "plan_suite", "run_key",
           "run_suite", "run_task", "suite_card", "suite_lock"]

#: config fields that may differ between a finished run and the suite without making it another run
IGNORED_FIELDS = ("out", "data_dir", "refetch_data", "progress", "device", "resume", "init_from", "tensorboard",
                  "tensorboard_every")
#: where a suite's tasks run: worker processes of this machine, or a Ray cluster
EXECUTORS = ("local", "ray")
#: a running ``run_suite`` holds this file (its pid) in the suite directory
LOCK = ".compare.lock"


def comparable(cfg: TrainConfig) -> dict[str, Any]:
    """The parts of a config that define the trained model (paths, devices, bars left out), with the
    training attack's dataset defaults filled in (``adv_eps: null`` and ``adv_eps: 0.3`` are one MNIST run)."""
    d = to_dict(cfg)
    init = d["init_from"]
    d = {k: v for k, v in d.items() if k not in IGNORED_FIELDS}
    d["init_from"] = None if init is None else Path(init).name
    d["adv_eps"], d["adv_steps"], d["adv_step_size"] = train_attack(cfg)
    return d


def config_diff(old: TrainConfig, new: TrainConfig) -> list[str]:
    a, b = comparable(old), comparable(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def run_status(spec: RunSpec) -> str:
    """``complete``, ``partial`` (a checkpoint to resume), or ``new``; a different config is an error."""
    out = spec.out
    saved = out / "config.yaml"
    if not saved.is_file():
        return "new"
    diff = config_diff(load_train_config(saved), spec.cfg)
    if diff:
        raise ValueError(f"{out} holds a run with another config ({'; '.join(diff)}); "
                         "delete it or choose another --out")
    info = out / "run.json"
    if info.is_file() and (out / "model.safetensors").is_file():
        if read_run_record(info).status == "complete":
            return "complete"
    return "partial" if latest_checkpoint(out) is not None else "new"


def run_stale(spec: RunSpec) -> list[str]:
    """Why the finished run of ``spec`` is older than the installed training code (its method's
    ``code_version``, ``train.run.TRAIN_VERSION``), or started from a run trained again since: empty
    when it is up to date."""
    record = read_run_record(spec.out / "run.json")
    reasons = record.code.older_parts(train_code_parts(spec.cfg))
    init = spec.cfg.init_from
    if init is not None and (Path(init) / "model.safetensors").is_file():
        if (Path(init) / "model.safetensors").stat().st_mtime_ns > (spec.out / "model.safetensors").stat().st_mtime_ns:
            reasons.append(f"init_from {Path(init).name} was trained again")
    return reasons


def train_task(spec: RunSpec, *, progress: bool = True, reuse_stale: bool = False) -> str:
    """Train ``spec`` unless it is finished and up to date; resume it from its checkpoint if
    interrupted; train a finished run again when its training code changed since (:func:`run_stale`),
    unless ``reuse_stale``."""
    status = run_status(spec)
    if status == "complete":
        stale = run_stale(spec)
        if not stale:
            return "reused"
        if reuse_stale:
            return f"reused, stale ({', '.join(stale)}; kept by --reuse-stale)"
        _drop_training(spec.out)
        fit(dataclasses.replace(spec.cfg, resume=False, progress=progress))
        return f"trained again (stale: {', '.join(stale)})"
    fit(dataclasses.replace(spec.cfg, resume=status == "partial", progress=progress))
    return "resumed" if status == "partial" else "trained"


def _drop_training(out: Path) -> None:
    """Remove a finished run's weights, record and checkpoints, so that it trains from the start
    (its config.yaml, the same, stays; its cards are re-made, being older than the new weights)."""
    for name in ("run.json", "model.safetensors"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CKPT_DIR, ignore_errors=True)


def eval_settings(suite: Suite, spec: RunSpec) -> dict[str, Any]:
    return {**spec.eval.settings(), "source": spec.source_key}


def card_path(suite: Suite, spec: RunSpec) -> Path:
    blob = json.dumps(eval_settings(suite, spec), sort_keys=True).encode()
    return spec.out / "eval" / f"suite-{hashlib.sha256(blob).hexdigest()[:12]}.json"


def card_stale(path: Path, models: list[Path], attacks: Sequence[str]) -> list[str] | None:
    """Whether the card at ``path`` must be made (again): ``None`` when it is missing, unreadable, or
    older than one of the weights in ``models``; else the reasons it is stale against the installed
    code (its schema, ``eval.card.EVAL_VERSION``, an attack's ``code_version``), empty when up to date."""
    if not path.is_file():
        return None
    try:
        card = read_eval_card(path)
    except RecordError:
        return None
    newest = max(m.stat().st_mtime_ns for m in models)
    if card.clean_acc is None or path.stat().st_mtime_ns < newest:
        return None
    reasons = [f"card schema {card.read_schema} < {SCHEMA}"] if card.read_schema < SCHEMA else []
    return reasons + card.code.older_parts(eval_code_parts(attacks))


def shard_path(suite: Suite, spec: RunSpec, shard: tuple[int, int]) -> Path:
    """Where the partial record of one shard of ``spec``'s evaluation lives (beside its card)."""
    return card_path(suite, spec).with_suffix(".shards") / f"{shard[0]}-{shard[1]}.json"


def _models(spec: RunSpec, runs_dir: Path) -> tuple[Path | None, list[Path]]:
    """The transfer source's run directory (or ``None``) and the weights a card of ``spec`` reads."""
    source = None if spec.source_key is None else runs_dir / spec.source_key
    return source, [spec.out / "model.safetensors"] + ([] if source is None else [source / "model.safetensors"])


def shard_task(suite: Suite, spec: RunSpec, shard: tuple[int, int], *, runs_dir: Path, progress: bool = True,
               reuse_stale: bool = False) -> str:
    """Evaluate one shard of ``spec``'s test points into its partial record, unless the run's card is
    up to date (or kept by ``reuse_stale``) or the shard's record is (made by the installed code,
    after the weights)."""
    source, models = _models(spec, runs_dir)
    stale = card_stale(card_path(suite, spec), models, spec.eval.attacks)
    if stale is not None and (not stale or reuse_stale):
        return "reused (the card is made)"
    path = shard_path(suite, spec, shard)
    if shard_usable(path, start=shard[0], stop=shard[1], code=eval_code_parts(spec.eval.attacks), newer_than=models):
        return "reused"
    evaluate_shard(spec.out, shard=shard, source=source, data_dir=spec.cfg.data_dir, device=spec.cfg.device,
                   out=path, progress=progress, **spec.eval.fields())
    return "evaluated"


def eval_task(suite: Suite, spec: RunSpec, *, runs_dir: Path, progress: bool = True,
              reuse_stale: bool = False, shards: Sequence[tuple[int, int]] = ()) -> tuple[str, list[str]]:
    """Evaluate ``spec`` with the suite's settings, reusing its card while it is up to date; a card
    made by older code (:func:`card_stale`) is made again, or kept when ``reuse_stale``. With
    ``shards`` the card is merged from their partial records (:func:`shard_task` made them).
    Returns what happened and the stale reasons of a kept card."""
    path = card_path(suite, spec)
    source, models = _models(spec, runs_dir)
    stale = card_stale(path, models, spec.eval.attacks)
    if stale is not None and not stale:
        return "reused", []
    if stale and reuse_stale:
        return f"reused, stale ({', '.join(stale)}; kept by --reuse-stale)", stale
    where: dict[str, Any] = {"source": source, "data_dir": spec.cfg.data_dir, "device": spec.cfg.device,
                             "out": path, "progress": progress}
    if shards:
        merge_run_shards(spec.out, [shard_path(suite, spec, r) for r in shards], **where, **spec.eval.fields())
    else:
        evaluate_run(spec.out, **where, **spec.eval.fields())
    verb = f"merged from {len(shards)} shards" if shards else "evaluated"
    return (verb if stale is None else f"{verb} again (stale: {', '.join(stale)})"), []


def suite_card(suite: Suite, spec: RunSpec, *, stale: Sequence[str] = ()) -> SuiteCard:
    """A run's record for the report: its training record (run.json) joined to its evaluation card;
    ``stale``: why the card (or the run) is older than the installed code, when kept anyway."""
    info = read_run_record(spec.out / "run.json")
    return SuiteCard(
        suite=suite.name, run_id=spec.run.id, seed=spec.seed, order=spec.order, method=spec.cfg.method,
        label=method_label(spec), model=spec.cfg.model, dataset=spec.cfg.dataset,
        init_from=None if spec.run.init_from is None else run_key(spec.run.init_from, spec.seed),
        model_of=None if spec.trains else spec.model_key, source=spec.source_key,
        train=TrainSummary.of(info, trains=spec.trains), eval=read_eval_card(card_path(suite, spec)),
        stale=list(stale))


def method_label(spec: RunSpec) -> str:
    """The method with its test-time defense: ``at``, ``at + SAP-100``, ``at-bnn (sampled weights)``."""
    defense = TestTimeSpec.parse(spec.eval.defense)
    return spec.cfg.method if defense is None else defense.build().row_label(spec.cfg.method)


def run_task(task: Task, suite: Suite, out_dir: Path, *, progress: bool = True, reuse_stale: bool = False) -> str:
    """Do one task; returns what happened (trained, resumed, reused, evaluated; a stale record says
    why it was made again or kept, and that line also goes to stderr)."""
    if task.kind == "train":
        result = train_task(task.spec, progress=progress, reuse_stale=reuse_stale)
        if "stale" in result:
            print(f"train {task.spec.key}: {result}", file=sys.stderr)
        fault_point("task-done")
        return result
    if task.shard is not None:
        result = shard_task(suite, task.spec, task.shard, runs_dir=out_dir / "runs", progress=progress,
                            reuse_stale=reuse_stale)
        fault_point("task-done")
        return result
    result, stale = eval_task(suite, task.spec, runs_dir=out_dir / "runs", progress=progress,
                              reuse_stale=reuse_stale, shards=task.shards)
    if "stale" in result:
        print(f"evaluate {task.spec.key}: {result}", file=sys.stderr)
    run_stale_reasons = run_stale(task.spec) if reuse_stale else []  # a stale run kept: its card says so too
    write_suite_card(out_dir / "cards" / f"{task.spec.key}.json",
                     suite_card(suite, task.spec, stale=[*run_stale_reasons, *stale]))
    fault_point("task-done")
    return result


def run_suite(suite: Suite, out_dir: str | Path, *, data_dir: str | None = None, device: str | None = None,
              progress: bool = True, report: bool = True, jobs: int = 1, threads: int | None = None,
              refetch_data: bool = False, only: list[str] | None = None, reuse_stale: bool = False,
              shard_size: int | None = None, executor: str = "local", address: str | None = None) -> list[Path]:
    """Train, evaluate and report every run of ``suite`` in ``out_dir``; returns the report files.

    A finished run or a card made by older code than the installed one (a method's or an attack's
    ``code_version``, ``eval.card.EVAL_VERSION``, the card schema: :mod:`robustprune.records`) is made
    again, with a line on stderr saying why; ``reuse_stale`` keeps it instead, and the report marks
    its row (``†``) and lists what is stale.

    ``only`` restricts this invocation to those run ids (every seed) and the trainings they need;
    the cards of the other runs are kept and the report shows every run that has one.

    ``refetch_data`` first replaces damaged files of the suite's datasets by downloaded, checked
    copies (``load_split(refetch=True)``); without it a damaged dataset file stops the suite with an
    error naming it.

    ``jobs > 1`` runs independent tasks in that many worker processes, each with ``threads`` torch
    threads (see :mod:`robustprune.compare.parallel`); the results are those of ``jobs == 1``, which
    runs the tasks here one after another (with ``threads`` torch threads meanwhile, when given).

    ``shard_size`` (else each run's ``eval.shard_size``) splits every evaluation into tasks of that
    many test points (:mod:`robustprune.eval.shards`): each writes a partial record, resumed one by
    one after a kill, and the run's card is merged from them (equal to the unsharded card).

    ``executor="ray"`` runs the tasks on the Ray cluster at ``address`` instead (each with
    ``threads`` CPUs, default 1, and one GPU when ``device`` is ``cuda``; see
    :mod:`robustprune.compare.ray_executor`); ``jobs`` is then not used (the cluster's resources
    decide how many tasks run at once).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if executor == "ray" and jobs != 1:
        raise ValueError(f"jobs={jobs} is for the local executor; on Ray the cluster's CPUs and GPUs decide how many "
                         "tasks run at once")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    out_dir = Path(out_dir)
    tasks = plan_suite(suite, out_dir, data_dir=data_dir, device=device, shard_size=shard_size)
    todo = tasks if only is None else only_rows(tasks, suite, only)
    out_dir.mkdir(parents=True, exist_ok=True)
    with suite_lock(out_dir):
        _drop_temp_files(out_dir)
        save_yaml(suite_to_dict(suite), out_dir / "suite.yaml")
        _drop_stale_cards(out_dir, {t.spec.key for t in tasks if t.kind == "evaluate"})
        if refetch_data:
            prefetch_data(todo, refetch=True)
        if executor == "ray":
            from robustprune.compare.ray_executor import run_tasks_ray

            run_tasks_ray(todo, suite, out_dir, run=functools.partial(run_task, reuse_stale=reuse_stale),
                          address=address, progress=progress, threads=threads, device=device)
        elif jobs == 1:
            _run_tasks(todo, suite, out_dir, progress=progress, threads=threads, reuse_stale=reuse_stale)
        else:
            run_tasks_parallel(todo, suite, out_dir, run=functools.partial(run_task, reuse_stale=reuse_stale),
                               jobs=jobs, progress=progress, threads=threads)
    if not report:
        return []
    return render_report(out_dir)


def _run_tasks(tasks: list[Task], suite: Suite, out_dir: Path, *, progress: bool, threads: int | None = None,
               reuse_stale: bool = False) -> None:
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    bar = tqdm(total=len(tasks), desc=suite.name, unit="task", disable=not progress, dynamic_ncols=True)
    try:
        for i, task in enumerate(tasks):
            bar.set_postfix_str(task.label)
            t0 = time.perf_counter()
            result = run_task(task, suite, out_dir, progress=progress, reuse_stale=reuse_stale)
            if progress:
                bar.write(f"[{i + 1}/{len(tasks)}] {task.label}: {result} "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            bar.update(1)
    finally:
        bar.close()
        torch.set_num_threads(prev_threads)


@contextmanager
def suite_lock(out_dir: Path) -> Iterator[None]:
    """Refuse a second runner on the same directory while the first is alive (a dead one's lock is taken over)."""
    lock = out_dir / LOCK
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
    except FileExistsError:
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and _alive(pid):
            raise ValueError(f"{out_dir} is in use by another robustprune compare (pid {pid}); "
                             f"wait for it, or delete {lock} if that process is gone") from None
        atomic_write_text(lock, f"{os.getpid()}\n")  # a dead runner's lock: take it over
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _drop_temp_files(out_dir: Path) -> None:
    """Remove what a killed runner left half-written: ``atomic_write``'s temporary files
    (``.<name>.*.tmp``) and unfinished checkpoint directories (``.epoch-*.tmp-<pid>``). Called under
    the suite lock, so no live runner is writing them; the files they were to replace are intact."""
    for path in sorted(out_dir.rglob(".*.tmp*"), reverse=True):
        if path.is_dir() and path.parent.name == CKPT_DIR and path.name.startswith(".epoch-"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


def _drop_stale_cards(out_dir: Path, keep: set[str]) -> None:
    """Cards of runs no longer in the suite would leak into the report: remove them."""
    for path in (out_dir / "cards").glob("*.json"):
        if path.stem not in keep:
            path.unlink()


def suite_to_dict(suite: Suite) -> dict[str, Any]:
    """The resolved suite as plain data (every run with its merged training fields)."""
    return {
        "name": suite.name, "description": suite.description,
        "runs": [{"id": r.id, "seeds": list(r.seeds), **r.train, "init_from": r.init_from, "source": r.source,
                  "report": r.report, "model_of": r.model_of,
                  "eval": None if r.eval is None else {**r.eval.settings(), "shard_size": r.eval.shard_size}}
                 for r in suite.runs],
        "eval": {**suite.eval.settings(), "source": suite.eval.source, "shard_size": suite.eval.shard_size},
    }
