"""Reports rendered from result cards only (STYLE example 7): tables and plots.

>>> render_report("runs/quick")     # table.md, table.json, vulnerability.png, robust_vs_memory.png
"""

from robustprune.reports.plots import plot_robust_vs_memory, plot_vulnerability
from robustprune.reports.report import load_cards, render_report
from robustprune.reports.table import mean_std, render_markdown, summarize

__all__ = [
    "load_cards", "mean_std", "plot_robust_vs_memory", "plot_vulnerability", "render_markdown", "render_report",
    "summarize",
]
