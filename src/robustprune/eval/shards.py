"""Sharded evaluation: an evaluation's test points split into shards, each evaluated on its own
(a task of its own: it resumes alone after a kill and may run on another worker or GPU) into a
partial record, and the shards merged into the run's card.

A shard is the test points ``[start, stop)``, whole evaluation batches: ``shard_size`` must be a
multiple of the evaluation's ``batch_size`` (:func:`shard_ranges` says so otherwise). Before each
batch the attacks' random stream is seeded from the evaluation seed and the index of the batch's
first test point (:func:`robustprune.eval.evaluate.batch_seed`), for the unsharded evaluation too,
so every example meets the same random starts whichever shard holds it. AutoAttack seeds the
package's generators with the evaluation seed at every batch, which also depends on the batch
only. The merged card therefore equals the unsharded one on every accuracy, vulnerability and
AutoAttack stage count; only wall times differ.

A partial record keeps, per batch, each example's clean and robust correctness per attack (averaged
over passes for a model random at test time), the batch's vulnerability sums (float64, added again
in the same order) and AutoAttack's per-stage counts: the merge replays the batches in order.

>>> ranges = shard_ranges(1000, shard_size=100, batch_size=100)   # [(0, 100), (100, 200), ...]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.attacks import Attack
from robustprune.eval.evaluate import AttackResult, EvalResult, sanity_warnings
from robustprune.metrics import VulnerabilityMeter
from robustprune.metrics.vulnerability import latent_active_units
from robustprune.models import model_mode
from robustprune.utils import atomic_write_json

#: the ``kind`` of a shard's partial record; SHARD_SCHEMA its layout's version
SHARD_KIND = "eval-shard"
SHARD_SCHEMA = 1


def shard_ranges(n: int, *, shard_size: int, batch_size: int) -> list[tuple[int, int]]:
    """The shards ``[(start, stop), ...]`` of ``n`` test points; ``ValueError`` naming a bad value."""
    check_shard_size(shard_size, batch_size)
    if n < 1:
        raise ValueError(f"an evaluation needs >= 1 test point, got {n}")
    return [(a, min(a + shard_size, n)) for a in range(0, n, shard_size)]


def check_shard_size(shard_size: int, batch_size: int) -> int:
    """``shard_size``, a positive multiple of ``batch_size``; else ``ValueError`` naming it."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    if shard_size % batch_size:
        raise ValueError(f"shard_size {shard_size} must be a multiple of the evaluation batch_size {batch_size} "
                         "(a shard holds whole batches, so that its examples draw the random starts they draw "
                         "unsharded)")
    return shard_size


def shard_record(res: EvalResult, attacks: Sequence[tuple[str, Attack]], *, start: int, stop: int,
                 code: dict[str, int]) -> dict[str, Any]:
    """The partial record of a shard evaluated with ``evaluate(record=True)``."""
    if res.batches is None:
        raise ValueError("shard_record needs an evaluation run with record=True")
    return {
        "kind": SHARD_KIND, "schema": SHARD_SCHEMA, "code": code, "start": start, "stop": stop, "n": res.total,
        "stochastic": res.stochastic, "passes": res.passes, "wall_s": res.wall_s,
        "attacks": [{"name": r.name, "wall_s": r.wall_s,
                     "autoattack": atk.tallies() if hasattr(atk, "tallies") else None}
                    for (_, atk), r in zip(attacks, res.attacks, strict=True)],
        "batches": res.batches,
    }


def write_shard(path: str | Path, record: dict[str, Any]) -> None:
    atomic_write_json(path, record)


def read_shard(path: str | Path) -> dict[str, Any]:
    """A shard's partial record; ``ValueError`` naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read evaluation shard {path}: {e}") from e
    if not isinstance(data, dict) or data.get("kind") != SHARD_KIND or data.get("schema") != SHARD_SCHEMA:
        raise ValueError(f"{path} is not an evaluation shard (kind {SHARD_KIND!r}, schema {SHARD_SCHEMA})")
    return data


def shard_usable(path: Path, *, start: int, stop: int, code: dict[str, int], newer_than: Sequence[Path]) -> bool:
    """The shard at ``path`` holds ``[start, stop)``, was made by the installed code (``code``) and
    after every file in ``newer_than`` (the weights it evaluated): it need not be made again."""
    if not path.is_file():
        return False
    try:
        data = read_shard(path)
    except ValueError:
        return False
    newest = max((p.stat().st_mtime_ns for p in newer_than), default=0)
    return (data["start"], data["stop"], data["code"]) == (start, stop, code) and path.stat().st_mtime_ns >= newest


def merge_shards(records: Sequence[dict[str, Any]], model: nn.Module, attacks: Sequence[tuple[str, Attack]],
                 *, n: int, vulnerability: bool = True) -> EvalResult:
    """The :class:`EvalResult` of the whole set from its shards' records (any order), as
    :func:`~robustprune.eval.evaluate.evaluate` would have summed it; AutoAttacks in ``attacks``
    get the shards' stage counts. ``ValueError`` when the shards do not cover ``[0, n)`` exactly
    or were made with other attacks."""
    records = sorted(records, key=lambda r: r["start"])
    spans = [(r["start"], r["stop"]) for r in records]
    gaps = any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False))
    if not spans or spans[0][0] != 0 or spans[-1][1] != n or gaps:
        raise ValueError(f"the shards {spans} do not cover the test points [0, {n}) exactly")
    names = [name for name, _ in attacks]
    for r in records:
        if [a["name"] for a in r["attacks"]] != names:
            raise ValueError(f"shard [{r['start']}, {r['stop']}) was evaluated with attacks "
                             f"{[a['name'] for a in r['attacks']]}, not {names}")
    res = EvalResult(attacks=[AttackResult(name, atk.params()) for name, atk in attacks],
                     stochastic=any(r["stochastic"] for r in records), passes=max(r["passes"] for r in records))
    if vulnerability and getattr(model, "latent_count", 0) > 0:
        with model_mode(model):
            active = latent_active_units(model)
        for a in res.attacks:
            a.active = active
    f64 = torch.float64
    for r in records:
        res.wall_s += r["wall_s"]
        for batch in r["batches"]:
            res.clean_correct += torch.tensor(batch["clean"], dtype=f64).sum().item()
            res.total += len(batch["clean"])
            for a, entry in zip(res.attacks, batch["attacks"], strict=True):
                a.correct += torch.tensor(entry["robust"], dtype=f64).sum().item()
                a.total += len(entry["robust"])
                if entry["vulnerability"] is not None:
                    a.vulnerability = a.vulnerability or VulnerabilityMeter()
                    a.vulnerability.add_batch(entry["vulnerability"])
        for (_, atk), a, entry in zip(attacks, res.attacks, r["attacks"], strict=True):
            a.wall_s += entry["wall_s"]
            if entry["autoattack"] is not None and hasattr(atk, "add_tallies"):
                atk.add_tallies(entry["autoattack"])
    res.warnings += sanity_warnings(res)
    return res
