"""The comparison table, rendered from suite cards only (STYLE example 7).

A suite card (``DIR/cards/<id>-s<seed>.json``, written by ``robustprune compare``) joins one run's
training record to its evaluation card. :func:`summarize` groups cards by run id and reduces each
metric over seeds to mean ± sample standard deviation (n − 1; a single seed has no std);
:func:`render_markdown` prints AutoAttack (when evaluated) and the paper's columns, and a wall-time
table.

>>> summary = summarize(cards)
>>> print(render_markdown(summary))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

#: (key, header, decimals) of the main table: AutoAttack (when evaluated) leads as the white-box
#: headline, then the paper's columns; the OPTIONAL ones are printed only when some row has them
#: (adaptive attacks, weight sparsity)
COLUMNS = (
    ("clean", "clean %", 2),
    ("autoattack", "AutoAttack %", 2),
    ("white_box", "white-box (PGD) %", 2),
    ("black_box", "black-box (transfer) %", 2),
    ("eot_pgd", "EOT-PGD %", 2),
    ("worst_white_box", "strongest white-box %", 2),
    ("vuln_white_box", "vuln. WB", 4),
    ("vuln_black_box", "vuln. BB", 4),
    ("memory_pct", "memory %", 2),
    ("flops_speedup", "FLOPs ×", 2),
    ("unit_sparsity", "unit sparsity %", 2),
    ("weight_sparsity", "weight sparsity %", 2),
    ("measured_params", "params (compacted)", 0),
    ("measured_flops", "measured FLOPs ×", 2),
    ("latency_speedup", "latency × (b256)", 2),
)
OPTIONAL = ("eot_pgd", "autoattack", "worst_white_box", "weight_sparsity")
#: (key, header, decimals) of the wall-time table
TIME_COLUMNS = (
    ("train_min", "train min", 2),
    ("min_per_epoch", "min / epoch", 3),
    ("epochs", "epochs", 0),
    ("eval_min", "eval min", 2),
)


def _attack(card: dict[str, Any], transfer: bool) -> dict[str, Any] | None:
    """The white-box column's attack (the one named ``pgd``, else the first white-box one), or the
    first transfer attack."""
    found = [a for a in card["eval"].get("attacks", []) if bool(a.get("params", {}).get("transfer")) == transfer]
    if not transfer:
        found.sort(key=lambda a: a["name"] != "pgd")
    return found[0] if found else None


def _named(card: dict[str, Any], name: str) -> float | None:
    return next((a["robust_acc"] for a in card["eval"].get("attacks", []) if a["name"] == name), None)


def _worst_white_box(card: dict[str, Any]) -> float | None:
    """The lowest robust accuracy over the card's white-box attacks, when it has more than one."""
    accs = [a["robust_acc"] for a in card["eval"].get("attacks", []) if not a.get("params", {}).get("transfer")]
    return min(accs) if len(accs) > 1 else None


def _vuln(attack: dict[str, Any] | None) -> float | None:
    if attack is None or "vulnerability" not in attack:
        return None
    return attack["vulnerability"]["mean"]


def _get(data: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return None
        data = data[k]
    return data


def train_attack_label(card: dict[str, Any]) -> str:
    """The training attack a row was trained under ('PGD-5 of 0.04 (ε 0.3)'), '—' without one."""
    info = _get(card, "train", "method_info", "train_attack")
    return "—" if not info else str(info["label"])


def card_metrics(card: dict[str, Any]) -> dict[str, float | None]:
    """Every table value of one suite card (None where the card has no such number)."""
    ev = card["eval"]
    wb, bb = _attack(card, transfer=False), _attack(card, transfer=True)
    train = card.get("train", {})
    epoch_times = [t for t in train.get("epoch_time_s") or [] if t is not None]
    return {
        "clean": ev.get("clean_acc"),
        "white_box": None if wb is None else wb["robust_acc"],
        "black_box": None if bb is None else bb["robust_acc"],
        "eot_pgd": _named(card, "eot-pgd"),
        "autoattack": _named(card, "autoattack"),
        "worst_white_box": _worst_white_box(card),
        "vuln_white_box": _vuln(wb),
        "vuln_black_box": _vuln(bb),
        "memory_pct": _get(ev, "sparsity", "paper", "memory_pct"),
        "flops_speedup": _get(ev, "sparsity", "paper", "flops_speedup"),
        "unit_sparsity": _get(ev, "sparsity", "unit_sparsity"),
        "weight_sparsity": _weight_sparsity(ev),
        "measured_params": _get(ev, "measured", "params_compact"),
        "measured_flops": _get(ev, "measured", "flops_speedup"),
        "latency_speedup": _get(ev, "measured", "speedup_b256"),
        "train_min": None if train.get("wall_s") is None else train["wall_s"] / 60,
        "min_per_epoch": sum(epoch_times) / len(epoch_times) / 60 if epoch_times else None,
        "epochs": train.get("epochs"),
        "eval_min": None if ev.get("total_wall_s") is None else ev["total_wall_s"] / 60,
    }


def _weight_sparsity(ev: dict[str, Any]) -> float | None:
    """Weight sparsity in %, only for runs with zero weights (pruned), so dense tables stay narrow."""
    value = _get(ev, "sparsity", "weight_sparsity")
    return value if value else None


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1) of ``values``; std is None for one value."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "n": 0, "values": []}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n, "values": list(values)}


def group_cards(cards: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Cards grouped by run id, groups in suite order, seeds ascending within a group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for card in sorted(cards, key=lambda c: (c.get("order", 0), c["run_id"], c["seed"])):
        groups.setdefault(card["run_id"], []).append(card)
    return list(groups.items())


def attack_description(cards: list[dict[str, Any]]) -> str:
    """'PGD-40, ε 0.3, step 0.01, n 10000' from the first card (all cards of a suite share it),
    preceded by 'AutoAttack (standard version) and ' when the card has AutoAttack."""
    if not cards:
        return ""
    card = cards[0]
    wb = _attack(card, transfer=False) or _attack(card, transfer=True)
    if wb is None:
        return f"clean only, n {card['eval'].get('n')}"
    p = wb["params"]
    name = str(p.get("name", wb["name"])).upper()
    text = f"{name}-{p.get('steps')}, ε {p.get('eps'):.4g}, step {p.get('step_size'):.4g}, n {card['eval'].get('n')}"
    if any(a["name"] == "autoattack" for a in card["eval"].get("attacks", [])):
        text = f"AutoAttack (standard version) and {text}"
    return text


def summarize(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """The table as data: one row per run id with each metric's mean, std and per-seed values."""
    if not cards:
        raise ValueError("no cards to summarise")
    rows = []
    for run_id, group in group_cards(cards):
        per_seed = [card_metrics(c) for c in group]
        metrics = {}
        for key, _, _ in COLUMNS + TIME_COLUMNS:
            metrics[key] = mean_std([v for m in per_seed if (v := m[key]) is not None])
        rows.append({
            "run_id": run_id, "method": group[0]["method"], "label": group[0].get("label", group[0]["method"]),
            "model_of": group[0].get("model_of"), "model": group[0]["model"],
            "train_attack": train_attack_label(group[0]),
            "dataset": group[0]["dataset"], "seeds": [c["seed"] for c in group],
            "sources": sorted({c["source"] for c in group if c.get("source")}),
            "device": group[0].get("train", {}).get("device"), "metrics": metrics,
            "warnings": [f"{c['run_id']}-s{c['seed']}: {w}" for c in group for w in c["eval"].get("warnings", [])],
        })
    return {
        "suite": cards[0].get("suite"), "attack": attack_description(cards),
        "columns": [{"key": k, "header": h} for k, h, _ in COLUMNS + TIME_COLUMNS], "rows": rows,
    }


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
    """The markdown report: the paper's columns, then wall time per run, then notes and warnings."""
    rows = summary["rows"]

    def table(cols: tuple[tuple[str, str, int], ...], lead: Callable[[dict[str, Any]], list[str]],
              lead_head: list[str]) -> list[str]:
        body = [lead(r) + [fmt(r["metrics"][k], d) for k, _, d in cols] for r in rows]
        return _md_table(lead_head + [h for _, h, _ in cols], body)

    lines = [f"# {summary.get('suite') or 'comparison'}", "",
             f"Evaluation: {summary['attack']}; mean ± sample std over seeds.", ""]
    shown = tuple(c for c in COLUMNS if c[0] not in OPTIONAL or any(r["metrics"][c[0]]["mean"] is not None
                                                                     for r in rows))
    if any(r.get("train_attack", "—") != "—" for r in rows):
        lines += table(shown, lambda r: [r["run_id"], r["label"], r.get("train_attack", "—"), str(len(r["seeds"]))],
                       ["run", "method", "training attack", "seeds"])
    else:
        lines += table(shown, lambda r: [r["run_id"], r["label"], str(len(r["seeds"]))], ["run", "method", "seeds"])
    lines += ["", "## Wall time", ""]
    lines += table(TIME_COLUMNS, lambda r: [r["run_id"], str(r["device"] or "?")], ["run", "device"])
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
    if any(r["metrics"]["autoattack"]["mean"] is not None for r in rows):
        lines.append("- AutoAttack (the authors' standard version: APGD-CE, APGD-T, FAB-T, Square) is the white-box "
                     "headline; PGD stands beside it for comparison with papers and is an upper bound.")
    if any(r["metrics"]["worst_white_box"]["mean"] is not None for r in rows):
        lines.append("- strongest white-box: the lowest accuracy over the row's white-box attacks (the honest number).")
    warns = [w for r in rows for w in r["warnings"]]
    if warns:
        lines += ["", "Warnings:"] + [f"- {w}" for w in warns]
    return "\n".join(lines) + "\n"
