"""``render_report(DIR)``: the table (markdown + JSON) and plots of a suite directory, from its cards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustprune.reports.plots import plot_robust_vs_memory, plot_vulnerability
from robustprune.reports.table import render_markdown, summarize
from robustprune.utils import atomic_write_json, atomic_write_text

CARDS_DIR = "cards"


def load_cards(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every suite card in ``out_dir/cards``; a missing or unreadable card raises ``ValueError``."""
    folder = Path(out_dir) / CARDS_DIR
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ValueError(f"no cards in {folder}; run `robustprune compare SUITE --out {out_dir}` first")
    cards = []
    for p in paths:
        try:
            card = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read card {p}: {e}") from e
        if not isinstance(card, dict) or card.get("kind") != "suite-run":
            raise ValueError(f"{p} is not a suite card (kind {card.get('kind') if isinstance(card, dict) else None!r})")
        cards.append(card)
    return cards


def render_report(out_dir: str | Path) -> list[Path]:
    """Write ``table.md``, ``table.json``, ``vulnerability.png`` and ``robust_vs_memory.png``."""
    out_dir = Path(out_dir)
    cards = load_cards(out_dir)
    summary = summarize(cards)
    written = [out_dir / "table.md", out_dir / "table.json"]
    atomic_write_text(written[0], render_markdown(summary))
    atomic_write_json(written[1], summary)
    for plot, name in ((plot_vulnerability, "vulnerability.png"), (plot_robust_vs_memory, "robust_vs_memory.png")):
        path = plot(cards, out_dir / name)
        if path is not None:
            written.append(path)
    return written
