"""``evaluate_run()``: evaluate a saved run under named attacks and write a JSON result card."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustprune.attacks import (
    ATTACKS,
    MINNORM,
    Attack,
    TransferAttack,
    build_attack,
    build_minnorm,
)
from robustprune.attacks import autoattack as aa
from robustprune.config import EvalConfig, eval_config, to_dict
from robustprune.data import TensorLoader, check_eps
from robustprune.defenses import TestTimeSpec, spelled_as_setting
from robustprune.eval.context import EvalContext
from robustprune.eval.evaluate import EvalResult, batch_seed, evaluate
from robustprune.eval.shards import merge_shards, read_shard, shard_record, write_shard
from robustprune.metrics.cost import sparsity_record
from robustprune.metrics.measured import measured_cost
from robustprune.metrics.minnorm import minnorm_robustness
from robustprune.models import installed_masks
from robustprune.records import SCHEMA, CodeVersion, EvalCard, eval_card, write_eval_card
from robustprune.sparsity.compact import compact_model, compact_summary
from robustprune.train.run import load_run
from robustprune.utils import keeps_global_rng, provenance

#: attacks an evaluation builds itself: they need more than the threat model (a source model;
#: AutoAttack's version and seed)
COMPOSITE_NAMES = ("transfer", "autoattack")


def attack_names() -> tuple[str, ...]:
    """Every name an evaluation accepts: ``none``, the registered attacks (``ATTACKS``, as they are
    now), the composite ones and the registered minimum-norm ones (``MINNORM``: no ε; they report
    r₂, the mean ‖δ‖₂ over correct points, not an accuracy)."""
    return ("none", *ATTACKS.names(), *COMPOSITE_NAMES, *MINNORM.names())


def build_eval_attack(
    name: str,
    *,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int = 1,
    eot: int | None = None,
    source: nn.Module | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> Attack | None:
    """One evaluation attack by name (``none`` -> ``None``); bad values raise ``ValueError``.

    A registered attack (``ATTACKS``) gets the settings its constructor takes (``fgsm``: ε only;
    ``pgd``: ε, steps, step size, restarts, EOT), ``None`` ones left to its defaults (``eot-pgd``:
    EOT-10). ``transfer`` is PGD (without EOT) crafted on ``source``; ``autoattack`` pyautoattack's
    standard version, or ``rand`` (EOT-20) when the model is random. ``generator`` is the random
    stream of every attack that takes one (``None``: the global RNG); AutoAttack, which draws from its
    own generators, gets ``seed`` (the evaluation's).
    """
    if name not in attack_names() or name in MINNORM:
        known = [n for n in attack_names() if n not in MINNORM]
        raise ValueError(f"unknown attack {name!r}; known: {', '.join(known)} (and the minimum-norm "
                         f"{', '.join(MINNORM.names())} through evaluate_run)")
    eps = check_eps(eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    settings = {"eps": eps, "steps": steps, "step_size": step_size, "restarts": restarts, "eot": eot,
                "generator": generator}
    if name == "none":
        return None
    if name == "autoattack":
        return aa.AutoAttack(eps=eps, version="auto", seed=seed)
    if name == "transfer":
        if source is None:
            raise ValueError("attack 'transfer' needs --source RUN (the model the examples are crafted on)")
        inner = _accepted("pgd", {**settings, "eot": None})  # crafted on the (deterministic) source: no EOT
        return TransferAttack(source=source, attack=build_attack("pgd", **inner))
    return build_attack(name, **_accepted(name, settings))


def _accepted(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The non-``None`` settings that the registered attack ``name``'s constructor takes."""
    params = inspect.signature(ATTACKS.get(name)).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in settings.items() if v is not None and (takes_all or k in params)}


def evaluate_run(
    run_dir: str | Path,
    config: EvalConfig | None = None,
    *,
    source: str | Path | None = None,
    data_dir: str | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    progress: bool = True,
    measure: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate run ``run_dir`` on its test set and write the card (default ``RUN/eval/<attacks>.json``).

    ``config`` (:class:`~robustprune.config.EvalConfig`: attacks, ε, steps, test points, test-time
    defense, seed, ...) with ``settings`` replacing its fields (``evaluate_run(run, attacks=["pgd"],
    limit=100)``); ``source`` is the run the transfer attack is crafted on. ``defense``
    (``"sap:pct=100,mode=fast"``, ``"bnn-sample"``, see :class:`robustprune.defenses.TestTimeSpec`)
    wraps the model for this evaluation.
    The run's method adds its own evaluation attacks and card fields (``Method.eval_attacks``,
    ``Method.eval_fields``).

    For a run whose masks prune units, ``measure`` adds ``card["measured"]``: the compacted
    network's parameters, FLOPs and CPU latency against the dense original.

    ``deepfool`` and ``cw`` (C&W-L2, 1000 Adam steps × 9 binary-search steps per point: use ``limit``)
    are minimum-norm attacks: they add ``card["minnorm"]``, one r₂ summary each
    (:func:`robustprune.metrics.minnorm.minnorm_robustness`), instead of a robust accuracy.

    The attacks' random stream is seeded per batch (:func:`robustprune.eval.evaluate.batch_seed`),
    so :func:`evaluate_shard` and :func:`merge_run_shards` give this card in pieces.
    """
    return _evaluate_run(run_dir, config, source=source, data_dir=data_dir, device=device, out=out,
                         progress=progress, measure=measure, settings=settings)


def evaluate_shard(run_dir: str | Path, config: EvalConfig | None = None, *, shard: tuple[int, int],
                   source: str | Path | None = None, data_dir: str | None = None, device: str = "auto",
                   out: str | Path, progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Evaluate test points ``shard = (start, stop)`` (of the first ``limit``) of run ``run_dir``
    as :func:`evaluate_run` would, and write their partial record (:mod:`robustprune.eval.shards`)
    to ``out``; returns it."""
    return _evaluate_run(run_dir, config, source=source, data_dir=data_dir, device=device, out=out,
                         progress=progress, measure=False, settings=settings, shard=shard)


def merge_run_shards(run_dir: str | Path, shards: Sequence[str | Path], config: EvalConfig | None = None, *,
                     source: str | Path | None = None, data_dir: str | None = None, device: str = "auto",
                     out: str | Path | None = None, progress: bool = True, **settings: Any) -> dict[str, Any]:
    """The card of :func:`evaluate_run`, its attacks' results merged from the partial records at
    ``shards`` (covering every test point, made by :func:`evaluate_shard` with the same settings)
    instead of attacking; minimum-norm attacks, which are not sharded, run here on every point."""
    return _evaluate_run(run_dir, config, source=source, data_dir=data_dir, device=device, out=out,
                         progress=progress, measure=True, settings=settings, shards=shards)


@keeps_global_rng
def _evaluate_run(run_dir: str | Path, config: EvalConfig | None, *, source: str | Path | None, data_dir: str | None,
                  device: str, out: str | Path | None, progress: bool, measure: bool, settings: dict[str, Any],
                  shard: tuple[int, int] | None = None, shards: Sequence[str | Path] | None = None) -> dict[str, Any]:
    base = config or EvalConfig()
    cfg = eval_config(base, **with_defense({"defense": base.defense, **settings}))
    attacks, seed = list(cfg.attacks), cfg.seed
    minnorm = [n for n in attacks if n in MINNORM]
    ctx = EvalContext.open(run_dir, limit=cfg.limit, defense=cfg.defense, seed=seed, data_dir=data_dir, device=device)
    run, model, fields, dev, test_time = ctx.run, ctx.model, ctx.fields, ctx.device, ctx.test_time
    if minnorm and test_time is not None and test_time.stochastic:
        raise ValueError(f"minimum-norm attacks {minnorm} need a deterministic model; drop the test-time "
                         f"defense {test_time.name!r}")
    attacks_bounded = [n for n in attacks if n not in MINNORM]
    info = ctx.info
    eps, step_size = info.eps(cfg.eps), info.step(cfg.step_size)
    src_run = load_run(source, device=dev) if source is not None else None
    src_model = src_run.model if src_run is not None else None
    # one random stream for every attack, seeded with ``seed`` (EvalContext's RNG policy); a random
    # transfer source also makes its attacks draw from the global RNG, as they always did
    gen = ctx.generator(ctx.random or (src_run is not None and src_run.method.stochastic))
    built = [(n, build_eval_attack(n, eps=eps, steps=cfg.steps, step_size=step_size, restarts=cfg.restarts,
                                   eot=cfg.eot, source=src_model, generator=gen, seed=seed))
             for n in attacks_bounded]
    named = [(n, a) for n, a in built if a is not None]
    named += run.method.eval_attacks(run.model, named)  # copies of the attacks above: the same stream
    if shard is not None:
        start, stop = shard
        if not 0 <= start < stop <= len(ctx.labels):
            raise ValueError(f"shard [{start}, {stop}) is not inside the {len(ctx.labels)} test points")
        ctx.images, ctx.labels = ctx.images[start:stop], ctx.labels[start:stop]
    loader = ctx.loader(cfg.batch_size)
    if gen is None:
        ctx.seed_global()
    t0 = time.perf_counter()
    if shard is not None:
        res = evaluate(model, loader, named, passes=cfg.passes, progress=progress, reseed=_reseeder(seed, gen),
                       start=shard[0], record=True)
        partial = shard_record(res, named, start=shard[0], stop=shard[1], code=eval_code_parts(attacks))
        write_shard(out, partial)  # type: ignore[arg-type]  # evaluate_shard's out is required
        return partial
    if shards is not None:
        res = merge_shards([read_shard(p) for p in shards], model, named, n=len(ctx.labels))
    else:
        res = evaluate(model, loader, named, passes=cfg.passes, progress=progress, reseed=_reseeder(seed, gen))
    minnorm_cards = [minnorm_entry(n, model, loader, progress=progress) for n in minnorm]
    card = make_card(run.cfg, res, run_dir=Path(run_dir), source=source, seed=seed, device=dev,
                     wall_s=time.perf_counter() - t0, attacks=attacks)
    if minnorm_cards:
        card["minnorm"] = minnorm_cards
    card.update(fields)
    for (_, atk), entry in zip(named, card["attacks"], strict=True):
        if hasattr(atk, "breakdown"):  # AutoAttack: robust accuracy after each stage, its self-check flags
            entry["breakdown"] = atk.breakdown()
            card["warnings"] += [f"AutoAttack self-check: {f}" for f in entry["breakdown"]["flags"]]
    if run.compact is None:
        card["sparsity"] = model_cost(run.cfg.model, run.model, info)
        card["compact"] = None
        card["measured"] = measured_compaction(run.model, info) if measure else None
    else:  # a compacted run: the masked source's sparsity, plus what compaction recorded (measured cost)
        card["sparsity"] = run.compact.get("source_cost")
        card["compact"] = compact_summary(run.compact)
    tag = "+".join(attacks) + ("" if test_time is None else test_time.tag())
    path = Path(out) if out is not None else Path(run_dir) / "eval" / f"{tag}.json"
    record = eval_card(card, source=str(path))  # the typed record: the one way a card reaches the disk
    write_eval_card(path, record)
    return {**record.to_dict(), "card_path": str(path)}


def _reseeder(seed: int, gen: torch.Generator | None) -> Callable[[int], None]:
    """``reseed(index)`` for :func:`~robustprune.eval.evaluate.evaluate`: seeds the attacks' stream
    (``gen``, else the global RNG a random model draws from) for the batch starting at test point
    ``index`` (:func:`~robustprune.eval.evaluate.batch_seed`)."""
    def reseed(index: int) -> None:
        if gen is not None:
            gen.manual_seed(batch_seed(seed, index))
        else:
            torch.manual_seed(batch_seed(seed, index))
    return reseed


def with_defense(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with its test-time defense as the canonical text of its spec (``defense`` given as
    text, a mapping or a spec); a key that spells a defense as a setting of its own is refused,
    naming the spelling to use."""
    for key in settings:
        hint = spelled_as_setting(key) if key != "defense" else None
        if hint is not None:
            raise ValueError(f"{key!r} is not an evaluation setting: name the test-time defense as data, "
                             f"defense={hint!r}")
    spec = TestTimeSpec.parse(settings.get("defense"), validate=False)  # built (and so checked) once, by the job
    out = {k: v for k, v in settings.items() if k != "defense"}
    return out if spec is None else {**out, "defense": str(spec)}


def minnorm_entry(name: str, model: nn.Module, loader: TensorLoader, *, progress: bool) -> dict[str, Any]:
    """r₂ of ``model`` under the registered minimum-norm attack ``name`` (``MINNORM``: ``deepfool``,
    ``cw``, ``fmn``, ...) with its defaults; one that minimises another norm too (FMN) minimises L2 here."""
    takes_norm = "norm" in inspect.signature(MINNORM.get(name)).parameters
    attack = build_minnorm(name, **({"norm": "l2"} if takes_norm else {}))
    return {"name": name, **minnorm_robustness(model, loader, attack, progress=progress)}


def measured_compaction(model: nn.Module, info: Any) -> dict[str, Any] | None:
    """Measured cost of the compacted network against the dense original (params, FLOPs, CPU
    latency at batch 1 and 256; ``robustprune.metrics.measured``), for models whose masks prune
    units; ``None`` for models without masks or architectures compaction does not know."""
    if not installed_masks(model):
        return None
    try:
        small = compact_model(model)
    except ValueError:  # an architecture compaction does not support
        return None
    return measured_cost(model, small, (info.in_channels, info.image_size, info.image_size), repeats=5)


def model_cost(model_name: str, model: nn.Module, info: Any) -> dict[str, Any]:
    """The card's sparsity block of ``model`` on dataset ``info`` (``metrics.cost.sparsity_record``,
    the one builder: a compacted run's card holds the same block of its masked source)."""
    return sparsity_record(model_name, model, in_channels=info.in_channels, num_classes=info.num_classes,
                           image_size=info.image_size)


#: the version of the evaluation code (``evaluate``, this module, the metrics a card holds): bump it
#: in the change that alters a card's numbers or adds a field the report reads, and every suite
#: re-makes its cards (``compare``). 1: the code before versions; 2: vulnerability over active units;
#: 3: the attacks' random stream seeded per batch (``batch_seed``), so that shards merge exactly
EVAL_VERSION = 3


def attack_version(name: str) -> int:
    """The version of the evaluation attack ``name`` (its class's ``code_version``, 1 when it has none)."""
    composite = {"transfer": TransferAttack, "autoattack": aa.AutoAttack}
    registry = ATTACKS if name in ATTACKS else MINNORM if name in MINNORM else None
    cls = composite.get(name) or (registry.get(name) if registry is not None else None)
    return int(getattr(cls, "code_version", 1))


def eval_code_parts(attacks: Sequence[str]) -> dict[str, int]:
    """The versions of the code a card evaluated with ``attacks`` depends on: ``eval``
    (:data:`EVAL_VERSION`) and ``attack:<name>`` for each attack (``transfer`` also PGD's, which it
    runs on the source). A card whose parts are older than these is stale."""
    parts = {"eval": EVAL_VERSION}
    for name in attacks:
        if name == "none":
            continue
        parts[f"attack:{name}"] = attack_version(name)
        if name == "transfer":
            parts["attack:pgd"] = attack_version("pgd")
    return parts


def make_card(cfg: Any, res: EvalResult, *, run_dir: Path, source: Any, seed: int, device: torch.device,
              wall_s: float, attacks: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON result card: method, model, data, seeds, attack parameters, config, versions
    (``schema``, ``code``: see :mod:`robustprune.records`), device, wall time."""
    return {
        "schema": SCHEMA,
        "code": CodeVersion.installed(eval_code_parts(attacks)).to_dict(),
        "kind": "eval",
        "run": str(run_dir),
        "method": cfg.method,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "train_seed": cfg.seed,
        "eval_seed": seed,
        "source": None if source is None else str(source),
        **res.summary(),
        "config": to_dict(cfg),
        **provenance(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "total_wall_s": wall_s,
    }


def format_table(card: dict[str, Any] | EvalCard) -> str:
    """A small markdown table of one card (the record, or its JSON data), for the terminal."""
    c = card if isinstance(card, EvalCard) else eval_card(card)
    rows = [("clean", "-", f"{c.clean_acc:.2f}", "-", "-")]
    for a in c.attacks:
        desc = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in a.params.items()
                         if k not in ("name",) and not isinstance(v, dict))
        v = a.vulnerability
        vul = "-" if v is None else f"{v.mean:.4f}"
        active = "-" if v is None or v.active_mean is None else f"{v.active_mean:.4f}"
        rows.append((a.name, desc, f"{a.robust_acc:.2f}", vul, active))
        stages = (a.breakdown or {}).get("stages", [])
        rows += [(f"↳ after {s['name']}", "-", f"{s['robust_acc']:.2f}", "-", "-") for s in stages]
    head = f"{c.method} / {c.model} / {c.dataset}  (n={c.n})"
    if c.compact:
        head += "  [compacted]"
    if c.test_time:
        head += f"  [{c.test_time['label']}]"
    if c.stochastic:
        head += f"  [stochastic: accuracy averaged over {c.passes} passes]"
    lines = [head, "", "| attack | parameters | accuracy % | vulnerability | vulnerability (active units) |",
             "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {d} | {e} | {f} |" for a, b, d, e, f in rows]
    for m in c.minnorm or []:
        r2 = "—" if m["r2"] is None else f"r2 {m['r2']:.4f} (normalised {m['r2_normalised']:.4f})"
        rate = "—" if m["success_rate"] is None else f"{m['success_rate']:.2f} %"
        lines.append(f"| {m['name']} | minimum-norm L2, success {rate} of {m['n_correct']} correct points | {r2} "
                     "| - | - |")
    for w in c.warnings:
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)
