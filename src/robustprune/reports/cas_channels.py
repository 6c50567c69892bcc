"""The plot of channel-activation magnitudes for natural vs adversarial inputs (the CAS paper's
analysis, Bai et al. ICLR 2021, Fig. 1/3), from the data of
:func:`robustprune.defenses.cas.channel_magnitudes` (which measures them on a model).

>>> plot_channels({"at": data_at, "at+cas": data}, "channels.png")     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustprune.utils import atomic_write


def plot_channels(data: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """One bar panel per model label: natural vs adversarial magnitude per (sorted) channel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(4.5 * len(data), 3.2), squeeze=False)
    for ax, (label, d) in zip(axes[0], data.items(), strict=True):
        idx = range(len(d["natural"]))
        ax.bar(idx, d["natural"], width=1.0, color="tab:blue", alpha=0.6, label="natural")
        ax.bar(idx, d["adversarial"], width=1.0, color="tab:red", alpha=0.5, label="adversarial")
        ax.set(title=f"{label}: {d['layer']} (n={d['n']})", xlabel="channel (sorted by natural magnitude)",
               ylabel="mean |activation|")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
