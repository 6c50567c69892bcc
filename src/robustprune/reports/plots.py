"""Plots rendered from suite cards only: the vulnerability histograms and robustness vs memory.

(a) :func:`plot_vulnerability` — the paper's figure: per latent layer, the distribution of the
per-unit latent vulnerability |F(x) − F(x_adv)| under the white-box attack, one row per run, seeds
pooled. Units with zero vulnerability are drawn as a separate bar just left of zero, split into the
units their mask prunes (hatched) and active ones (dead ReLUs, grey), and counted in the legend;
each panel names the layer's mean over all units (the paper's) and over active units only.
(b) :func:`plot_robust_vs_memory` — white-box and black-box accuracy against the paper's memory %,
mean ± std over seeds. The white-box point is the row's strongest white-box attack (the lowest
accuracy over them, AutoAttack where it was run), PGD only for rows evaluated with PGD alone: the
plot shows the table's honest number, not PGD's upper bound.

Matplotlib is used through its object API (no pyplot state, no display) and imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustprune.records import SuiteCard, Vulnerability
from robustprune.reports.table import CardLike, as_card, group_cards, summarize
from robustprune.utils import atomic_write

#: a unit whose vulnerability is at most this is counted as zero (pruned or dead)
ZERO = 1e-12


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    return path


def _white_box(card: SuiteCard) -> Vulnerability | None:
    """The vulnerability of the card's first white-box attack, when it has per-unit values."""
    for a in card.eval.attacks:
        if not a.transfer:
            v = a.vulnerability
            return v if v is not None and v.per_unit is not None else None
    return None


def pooled_units(cards: Sequence[CardLike]) -> list[tuple[str, list[list[float]]]]:
    """Per run id: per layer, the per-unit white-box vulnerabilities of all its seeds."""
    return [(run_id, [[v for v, _ in layer] for layer in layers]) for run_id, layers in _pooled(cards)]


def _pooled(cards: Sequence[CardLike]) -> list[tuple[str, list[list[tuple[float, bool | None]]]]]:
    """Per run id: per layer, (vulnerability, pruned by its mask) of every unit of all its seeds;
    ``None`` for "pruned" where the card does not say (made before the active-unit mean)."""
    out = []
    for run_id, group in group_cards(cards):
        layers: list[list[tuple[float, bool | None]]] = []
        for card in group:
            vul = _white_box(card)
            if vul is None or vul.per_unit is None:
                continue
            units = vul.per_unit
            pruned: list[list[int] | None] = list(vul.pruned_units) if vul.pruned_units else [None] * len(units)
            while len(layers) < len(units):
                layers.append([])
            for pooled, values, gone in zip(layers, units, pruned, strict=False):
                off = None if gone is None else set(gone)
                pooled.extend((float(v), None if off is None else i in off) for i, v in enumerate(values))
        if layers:
            out.append((run_id, layers))
    return out


#: run colours: matplotlib's cycle without its grey (C7, which reads as "pruned"), then darker ones
RUN_COLORS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C8", "C9",
              "#1b4f72", "#7e5109", "#145a32", "#78281f", "#4a235a", "#0e6251", "#7b7d2a")


def run_color(i: int) -> str:
    """The i-th run's colour (distinct for the first 16 runs)."""
    return RUN_COLORS[i % len(RUN_COLORS)]


def plot_vulnerability(cards: Sequence[CardLike], path: str | Path, *, bins: int = 30) -> Path | None:
    """Write the per-layer histograms of per-unit vulnerability; None when no card has per-unit data.

    Units with zero vulnerability are one hatched bar left of zero, split into those their mask
    prunes and the active ones (dead ReLUs); each panel names the layer's mean over all units (the
    paper's) and over active units."""
    import numpy as np
    from matplotlib.figure import Figure

    data = _pooled(cards)
    if not data:
        return None
    n_layers = max(len(layers) for _, layers in data)
    fig = Figure(figsize=(3.6 * n_layers, 2.2 * len(data) + 0.6), layout="constrained")
    axes = fig.subplots(len(data), n_layers, squeeze=False, sharex="col")
    for col in range(n_layers):
        top = max((max(v for v, _ in layers[col]) for _, layers in data if col < len(layers) and layers[col]),
                  default=1.0)
        edges = np.linspace(0.0, top if top > 0 else 1.0, bins + 1)
        width = edges[1] - edges[0]
        for row, (run_id, layers) in enumerate(data):
            ax = axes[row][col]
            if col >= len(layers) or not layers[col]:
                ax.set_axis_off()
                continue
            v = np.asarray([u for u, _ in layers[col]])
            known = all(p is not None for _, p in layers[col])
            pruned = np.asarray([bool(p) for _, p in layers[col]], dtype=bool)
            zero = v <= ZERO
            dead = zero & ~pruned
            weight = 100.0 / len(v)
            ax.hist(v[~zero], bins=edges, weights=np.full((~zero).sum(), weight), color=run_color(row),
                    label=f"nonzero: {(~zero).sum()}")
            # left of 0, apart from the smallest bin: pruned by the mask (hatched), then active but zero (dead)
            if known:  # a card made before the active-unit mean does not say which units are pruned
                ax.bar([-1.25 * width], [(zero & pruned).sum() * weight], width=width, align="edge", color="white",
                       edgecolor="k", hatch="///", label=f"pruned: {(zero & pruned).sum()}")
            ax.bar([-1.25 * width], [dead.sum() * weight], bottom=[(zero & pruned).sum() * weight], width=width,
                   align="edge", color="lightgrey", edgecolor="k",
                   label=f"zero, active (dead){'' if known else ' or pruned'}: {dead.sum()}")
            active = ~pruned
            means = f"mean {v.mean():.4f}" + (f"\nactive {v[active].mean():.4f}" if known and active.any() else "")
            ax.text(0.98, 0.5, means, transform=ax.transAxes, ha="right", fontsize=7)
            ax.legend(fontsize=7, loc="upper right", frameon=False)
            if row == 0:
                ax.set_title(f"latent layer {col + 1} ({len(layers[col]) // max(1, _seeds(cards, run_id))} units)",
                             fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{run_id}\n% of units", fontsize=9)
            if row == len(data) - 1:
                ax.set_xlabel("vulnerability |F(x) − F(x_adv)|", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle("Latent vulnerability per unit (white-box attack, seeds pooled)", fontsize=10)
    return _save(fig, Path(path))


def _seeds(cards: Sequence[CardLike], run_id: str) -> int:
    return sum(1 for c in map(as_card, cards) if c.run_id == run_id and _white_box(c) is not None)


def robust_vs_memory_points(cards: Sequence[CardLike]) -> list[dict[str, Any]]:
    """The points of :func:`plot_robust_vs_memory`, one per run id with memory data: ``memory``,
    ``white_box`` and ``black_box`` as (mean, std) or None, and ``white_box_key``, the table metric
    the white-box point shows ("worst_white_box" where the row ran several white-box attacks, else
    "white_box", its single PGD-type attack)."""
    points = []
    for r in summarize(cards)["rows"]:
        m = r["metrics"]
        if m["memory_pct"]["mean"] is None:
            continue
        wb_key = "worst_white_box" if m["worst_white_box"]["mean"] is not None else "white_box"
        points.append({"run_id": r["run_id"], "memory": _pair(m["memory_pct"]), "white_box": _pair(m[wb_key]),
                       "white_box_key": wb_key, "black_box": _pair(m["black_box"])})
    return points


def _pair(stat: dict[str, Any]) -> tuple[float, float] | None:
    """(mean, std) of a summarised metric, std 0 for one seed; None when no seed has it."""
    return None if stat["mean"] is None else (stat["mean"], stat["std"] or 0.0)


def plot_robust_vs_memory(cards: Sequence[CardLike], path: str | Path) -> Path | None:
    """Write white-box / black-box accuracy against memory %; None when no card has memory data."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    rows = robust_vs_memory_points(cards)
    if not rows:
        return None
    strongest = any(p["white_box_key"] == "worst_white_box" for p in rows)
    wb_label = "strongest white-box" if strongest else "white-box PGD"
    fig = Figure(figsize=(7.0, 4.8))
    ax = fig.subplots()
    for i, p in enumerate(rows):
        x, xerr = p["memory"]
        for key, marker, fill, label in (("white_box", "o", run_color(i), wb_label),
                                         ("black_box", "^", "none", "black-box transfer")):
            if p[key] is None:
                continue
            ax.errorbar(x, p[key][0], xerr=xerr, yerr=p[key][1], fmt=marker, color=run_color(i),
                        markerfacecolor=fill, markersize=7, capsize=3, label=label if i == 0 else None)
        anchor = p["white_box"] or p["black_box"]
        ax.annotate(p["run_id"], (x, anchor[0] if anchor else 0.0), textcoords="offset points", xytext=(6, -10),
                    fontsize=8)
    ax.set_xscale("log")
    xs = [p["memory"][0] for p in rows]
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if min(xs) / 2 <= t <= max(xs) * 2]
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("memory % (paper accounting, log scale)")
    ax.set_ylabel("robust accuracy %")
    title = ("● strongest white-box attack (AutoAttack where run), △ black-box transfer" if strongest
             else "● white-box PGD, △ black-box transfer")
    ax.set_title(f"Robustness vs memory ({title})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center")  # the marker kinds; runs are named beside their points
    return _save(fig, Path(path))
