"""Calibration (confidence vs accuracy) as data and pictures: reliability bins, expected calibration
error and reliability diagrams. The measurement on models is :mod:`robustprune.jobs.calibration`.

ECE (Guo et al. 2017) with ``bins`` equal-width confidence bins: ``Σ_b (n_b/n)·|acc_b − conf_b|``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustprune.utils import atomic_write


def reliability(confidence: Tensor, correct: Tensor, *, bins: int = 10) -> dict[str, Any]:
    """Equal-width reliability bins and ECE from per-example confidence and correctness.

    >>> reliability(torch.tensor([0.9, 0.6]), torch.tensor([1.0, 0.0]), bins=10)["ece"]
    0.35
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if confidence.shape != correct.shape or confidence.numel() == 0:
        raise ValueError(f"confidence and correct must be equal-shaped and non-empty, got "
                         f"{tuple(confidence.shape)} and {tuple(correct.shape)}")
    conf, corr = confidence.double().flatten(), correct.double().flatten()
    idx = (conf * bins).long().clamp_(0, bins - 1)
    count = torch.bincount(idx, minlength=bins).double()
    acc_sum = torch.bincount(idx, weights=corr, minlength=bins)
    conf_sum = torch.bincount(idx, weights=conf, minlength=bins)
    safe = count.clamp_min(1)
    ece = ((acc_sum - conf_sum).abs().sum() / conf.numel()).item()
    return {
        "bins": bins, "n": conf.numel(), "ece": round(ece, 12), "accuracy": corr.mean().item(),
        "mean_confidence": conf.mean().item(), "count": count.long().tolist(),
        "bin_accuracy": (acc_sum / safe).tolist(), "bin_confidence": (conf_sum / safe).tolist(),
    }


def plot_reliability(entries: list[dict[str, Any]], path: str | Path) -> Path:
    """One reliability diagram per entry (``label`` plus :func:`reliability` fields), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 3.4), squeeze=False)
    for ax, e in zip(axes[0], entries, strict=True):
        b = e["bins"]
        centers = [(i + 0.5) / b for i in range(b)]
        acc = [a if c else 0.0 for a, c in zip(e["bin_accuracy"], e["count"], strict=True)]
        ax.bar(centers, acc, width=1.0 / b, edgecolor="black", color="tab:blue", label="accuracy")
        conf = [c if n else 0.0 for c, n in zip(e["bin_confidence"], e["count"], strict=True)]
        ax.bar(centers, conf, width=1.0 / b, fill=False, edgecolor="tab:red", hatch="//", lw=1.2,
               label="mean confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{e['label']}\nECE {100 * e['ece']:.2f}%, "
               f"acc {100 * e['accuracy']:.1f}%")
        ax.title.set_fontsize(9)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)
