"""``render_report(DIR)``: the table (markdown + JSON) and plots of a suite directory, from its cards."""

from __future__ import annotations

from pathlib import Path

from robustprune.records import SuiteCard, read_suite_card
from robustprune.reports.plots import plot_robust_vs_memory, plot_vulnerability
from robustprune.reports.table import render_markdown, summarize
from robustprune.utils import atomic_write_json, atomic_write_text

CARDS_DIR = "cards"


def load_cards(out_dir: str | Path) -> list[SuiteCard]:
    """Every suite card in ``out_dir/cards`` as a typed record (older schemas migrated); a missing
    or unreadable card raises ``ValueError`` saying how to re-make it."""
    folder = Path(out_dir) / CARDS_DIR
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ValueError(f"no cards in {folder}; run `robustprune compare SUITE --out {out_dir}` first")
    return [read_suite_card(p) for p in paths]  # a RecordError (ValueError) names the file and the remedy


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
