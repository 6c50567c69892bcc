"""The comparison table, rendered from suite cards only (STYLE example 7).

A suite card (``DIR/cards/<id>-s<seed>.json``, written by ``robustprune compare``) joins one run's
training record to its evaluation card. :func:`summarize` groups cards by run id and reduces each
metric over seeds to mean ± sample standard deviation (n − 1; a single seed has no std);
:func:`render_markdown` prints AutoAttack (when evaluated) and the paper's columns, and a wall-time
table. Cards are read as typed records (:mod:`robustprune.records`), of any schema it migrates.

The columns are data: one :class:`Column` entry in :data:`COLUMNS` names the column, the card
field it reads and its format, and ``table.json``, ``table.md`` and its notes follow from it.

>>> summary = summarize(cards)
>>> print(render_markdown(summary))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from robustprune.records import AttackEntry, EvalCard, SuiteCard, eval_card, suite_card

CardLike = SuiteCard | dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One column of the report: ``key`` (its name in ``table.json``), ``header`` (in ``table.md``),
    ``value`` (its number read from one suite card, ``None`` where the card has none), ``decimals``;
    an ``optional`` column is printed only when some row has a value; ``note`` is a line under
    the table, printed when the column is."""

    key: str
    header: str
    value: Callable[[SuiteCard], float | None]
    decimals: int = 2
    optional: bool = False
    note: str | None = None


def _acc(attack: AttackEntry | None) -> float | None:
    return None if attack is None else attack.robust_acc


def _worst_white_box(ev: EvalCard) -> float | None:
    """The lowest robust accuracy over the card's white-box attacks, when it has more than one."""
    accs = [a.robust_acc for a in ev.attacks if not a.transfer]
    return min(accs) if len(accs) > 1 else None


def _vuln(attack: AttackEntry | None, *, active: bool = False) -> float | None:
    v = None if attack is None else attack.vulnerability
    if v is None:
        return None
    return v.active_mean if active else v.mean


def _paper(card: SuiteCard, name: str) -> float | None:
    paper = card.eval.sparsity.paper if card.eval.sparsity else None
    return None if paper is None else getattr(paper, name)


def _sparsity(card: SuiteCard, name: str) -> float | None:
    return None if card.eval.sparsity is None else getattr(card.eval.sparsity, name)


def _measured(card: SuiteCard, name: str) -> float | None:
    return None if card.eval.measured is None else getattr(card.eval.measured, name)


def _per_epoch_min(card: SuiteCard) -> float | None:
    times = [t for t in card.train.epoch_time_s or [] if t is not None]
    return sum(times) / len(times) / 60 if times else None


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 60


#: the main table, one entry a column: AutoAttack (when evaluated) leads as the white-box headline,
#: then the paper's columns; optional ones are printed only when some row has them
COLUMNS: tuple[Column, ...] = (
    Column("clean", "clean %", lambda c: c.eval.clean_acc),
    Column("autoattack", "AutoAttack %", lambda c: _acc(c.eval.attack("autoattack")), optional=True),
    Column("white_box", "white-box (PGD) %", lambda c: _acc(c.eval.white_box())),
    Column("black_box", "black-box (transfer) %", lambda c: _acc(c.eval.black_box())),
    Column("eot_pgd", "EOT-PGD %", lambda c: _acc(c.eval.attack("eot-pgd")), optional=True),
    Column("worst_white_box", "strongest white-box %", lambda c: _worst_white_box(c.eval), optional=True,
           note="strongest white-box: the lowest accuracy over the row's white-box attacks (the honest number)."),
    Column("vuln_white_box", "vuln. WB", lambda c: _vuln(c.eval.white_box()), 4),
    Column("vuln_active_white_box", "vuln. WB (active units)", lambda c: _vuln(c.eval.white_box(), active=True), 4,
           optional=True,
           note="vuln. WB (active units): the same mean over only the units each layer's mask keeps in eval mode "
                "(equal to vuln. WB for a dense network), so that a pruned and a dense network compare without "
                "the pruned units' zeros (docs/vulnerability.md)."),
    Column("vuln_black_box", "vuln. BB", lambda c: _vuln(c.eval.black_box()), 4),
    Column("memory_pct", "memory %", lambda c: _paper(c, "memory_pct")),
    Column("flops_speedup", "FLOPs ×", lambda c: _paper(c, "flops_speedup")),
    Column("unit_sparsity", "unit sparsity %", lambda c: _sparsity(c, "unit_sparsity")),
    # only for runs with zero weights (pruned), so dense tables stay narrow
    Column("weight_sparsity", "weight sparsity %", lambda c: _sparsity(c, "weight_sparsity") or None, optional=True),
    Column("measured_params", "params (compacted)", lambda c: _measured(c, "params_compact"), 0),
    Column("measured_flops", "measured FLOPs ×", lambda c: _measured(c, "flops_speedup")),
    Column("latency_speedup", "latency × (b256)", lambda c: _measured(c, "speedup_b256")),
)
#: the wall-time table
TIME_COLUMNS: tuple[Column, ...] = (
    Column("train_min", "train min", lambda c: _minutes(c.train.wall_s)),
    Column("min_per_epoch", "min / epoch", _per_epoch_min, 3),
    Column("epochs", "epochs", lambda c: c.train.epochs, 0),
    Column("eval_min", "eval min", lambda c: _minutes(c.eval.total_wall_s)),
)
#: the marker of a row whose cards were made by older code (kept by ``compare --reuse-stale``)
STALE = "†"


def as_card(card: CardLike) -> SuiteCard:
    """The typed suite card of ``card`` (a :class:`SuiteCard`, or its JSON data of any schema)."""
    return card if isinstance(card, SuiteCard) else suite_card(card)


def train_attack_label(card: CardLike) -> str:
    """The training attack a row was trained under ('PGD-5 of 0.04 (ε 0.3)'), '—' without one."""
    info = (as_card(card).train.method_info or {}).get("train_attack")
    return "—" if not info else str(info["label"])


def card_metrics(card: CardLike, columns: Iterable[Column] | None = None) -> dict[str, float | None]:
    """Every table value of one suite card (None where the card has no such number)."""
    c = as_card(card)
    return {col.key: col.value(c) for col in (columns if columns is not None else (*COLUMNS, *TIME_COLUMNS))}


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1) of ``values``; std is None for one value."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def group_cards(cards: Iterable[CardLike]) -> list[tuple[str, list[SuiteCard]]]:
    """Cards grouped by run id, groups in suite order, seeds ascending within a group."""
    groups: dict[str, list[SuiteCard]] = {}
    for card in sorted(map(as_card, cards), key=lambda c: (c.order, c.run_id, c.seed)):
        groups.setdefault(card.run_id, []).append(card)
    return list(groups.items())


def attack_description(cards: Sequence[CardLike]) -> str:
    """'PGD-40, ε 0.3, step 0.01, n 10000', preceded by 'AutoAttack (standard version) and ' when
    the cards have AutoAttack. Rows evaluated differently (a run's own ``eval:``, ``model_of`` rows)
    get one description each, followed by their run ids: '...; AutoAttack (standard version) and
    PGD-40, ε 0.3, step 0.01, n 100 (at-aa)'."""
    rows: dict[str, list[str]] = {}
    for card in cards:
        ev = card.eval if isinstance(card, SuiteCard) else eval_card(card.get("eval"))
        run_id = card.run_id if isinstance(card, SuiteCard) else str(card.get("run_id", "?"))
        ids = rows.setdefault(_eval_description(ev), [])
        if run_id not in ids:
            ids.append(run_id)
    if len(rows) <= 1:
        return next(iter(rows), "")
    return "; ".join(f"{text} ({', '.join(ids)})" for text, ids in rows.items())


def _eval_description(ev: EvalCard) -> str:
    wb = ev.white_box() or ev.black_box()
    if wb is None:
        return f"clean only, n {ev.n}"
    p = wb.params
    if wb.name == "autoattack":  # the suite's only white-box attack: no steps or step size to show
        name = f"AutoAttack ({p.get('version', 'standard')} version)"
    else:
        name = str(p.get("name", wb.name)).upper()
    parts = [name if p.get("steps") is None else f"{name}-{p.get('steps')}"]
    parts += [f"{label} {p[key]:.4g}" for key, label in (("eps", "ε"), ("step_size", "step"))
              if isinstance(p.get(key), int | float)]
    text = ", ".join(parts + [f"n {ev.n}"])
    if ev.attack("autoattack") is not None and wb.name != "autoattack":
        text = f"AutoAttack (standard version) and {text}"
    return text


def summarize(cards: Sequence[CardLike], columns: Sequence[Column] | None = None,
              time_columns: Sequence[Column] | None = None) -> dict[str, Any]:
    """The table as data: one row per run id with each metric's mean, std and per-seed values, and
    the columns that show them (default :data:`COLUMNS` and :data:`TIME_COLUMNS`, read when called)."""
    if not cards:
        raise ValueError("no cards to summarise")
    main = tuple(COLUMNS if columns is None else columns)
    timed = tuple(TIME_COLUMNS if time_columns is None else time_columns)
    typed = [as_card(c) for c in cards]
    rows = []
    for run_id, group in group_cards(typed):
        per_seed = [card_metrics(c, main + timed) for c in group]
        metrics = {col.key: mean_std([v for m in per_seed if (v := m[col.key]) is not None]) for col in main + timed}
        first = group[0]
        rows.append({
            "run_id": run_id, "method": first.method, "label": first.label or first.method,
            "model_of": first.model_of, "model": first.model, "train_attack": train_attack_label(first),
            "dataset": first.dataset, "seeds": [c.seed for c in group],
            "sources": sorted({c.source for c in group if c.source}),
            "device": first.train.device, "metrics": metrics,
            "stale": [f"{c.run_id}-s{c.seed}: {r}" for c in group for r in c.stale],
            "warnings": [f"{c.run_id}-s{c.seed}: {w}" for c in group for w in c.eval.warnings],
        })
    return {
        "suite": typed[0].suite, "attack": attack_description(typed),
        "columns": [_column_data(c, "main") for c in main] + [_column_data(c, "time") for c in timed],
        "rows": rows,
    }


def _column_data(col: Column, table: str) -> dict[str, Any]:
    return {"key": col.key, "header": col.header, "decimals": col.decimals, "optional": col.optional,
            "note": col.note, "table": table}


def fmt(stat: dict[str, Any], decimals: int) -> str:
    """'91.31 ± 0.42', '91.31' for one seed, '—' without a value."""
    if stat["mean"] is None:
        return "—"
    if isinstance(stat["mean"], float) and math.isinf(stat["mean"]):
        return "∞"
    text = f"{stat['mean']:.{decimals}f}"
    return text if stat["std"] is None else f"{text} ± {stat['std']:.{decimals}f}"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def render_markdown(summary: dict[str, Any]) -> str:
    """The markdown report: the paper's columns, then wall time per run, then notes and warnings
    (the columns are the summary's own, so a column declared in :data:`COLUMNS` needs nothing here)."""
    rows = summary["rows"]
    cols = summary["columns"]

    def has(key: str) -> bool:
        return any(r["metrics"][key]["mean"] is not None for r in rows)

    def table(shown: list[dict[str, Any]], lead: Callable[[dict[str, Any]], list[str]],
              lead_head: list[str]) -> list[str]:
        body = [lead(r) + [fmt(r["metrics"][c["key"]], c["decimals"]) for c in shown] for r in rows]
        return _md_table(lead_head + [c["header"] for c in shown], body)

    def label(r: dict[str, Any]) -> str:
        return f"{r['label']} {STALE}" if r.get("stale") else r["label"]

    main = [c for c in cols if c.get("table", "main") == "main" and (not c.get("optional") or has(c["key"]))]
    lines = [f"# {summary.get('suite') or 'comparison'}", "",
             f"Evaluation: {summary['attack']}; mean ± sample std over seeds.", ""]
    if any(r.get("train_attack", "—") != "—" for r in rows):
        lines += table(main, lambda r: [r["run_id"], label(r), r.get("train_attack", "—"), str(len(r["seeds"]))],
                       ["run", "method", "training attack", "seeds"])
    else:
        lines += table(main, lambda r: [r["run_id"], label(r), str(len(r["seeds"]))], ["run", "method", "seeds"])
    lines += ["", "## Wall time", ""]
    lines += table([c for c in cols if c.get("table") == "time"], lambda r: [r["run_id"], str(r["device"] or "?")],
                   ["run", "device"])
    sources = sorted({s for r in rows for s in r["sources"]})
    lines += ["", "Notes:",
              f"- black-box: the same attack crafted on {', '.join(sources) or '—'} and transferred.",
              "- vulnerability: mean |F(x) − F(x_adv)| over latent layers and the evaluated test points, "
              "under the white-box (PGD) attack.",
              "- memory % and FLOPs ×: the paper's accounting on active units (docs/anp_vs.md, Metrics).",
              "- train minutes exclude the run a method starts from (init_from)."]
    if any(r["model_of"] for r in rows):
        lines.append("- rows evaluating another row's model (test-time defenses: SAP, sampled BNN weights) train "
                     "nothing; their white-box (PGD) column is single-sample, as in the original papers, and "
                     "EOT-PGD / AutoAttack (rand) are the adaptive attacks on the same random model.")
    if "autoattack" in {c["key"] for c in main}:
        lines.append("- AutoAttack (the authors' standard version: APGD-CE, APGD-T, FAB-T, Square) is the white-box "
                     "headline; PGD stands beside it for comparison with papers and is an upper bound.")
    lines += [f"- {c['note']}" for c in main if c.get("note")]
    stale = [s for r in rows for s in r.get("stale", [])]
    if stale:
        lines.append(f"- {STALE}: made by older code than the installed one and kept by `compare --reuse-stale` "
                     "(the stale parts are listed under Stale); run `compare` without it to re-make them.")
        lines += ["", "Stale:"] + [f"- {s}" for s in stale]
    warns = [w for r in rows for w in r["warnings"]]
    if warns:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warns]
    return "\n".join(lines) + "\n"
