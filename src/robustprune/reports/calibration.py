"""Calibration (confidence vs accuracy): reliability diagrams and expected calibration error.

The SAP paper (Dhillon et al. 2018) compares the calibration of dense, SAP, adversarially trained
and AT+SAP models; :func:`calibration_run` does that for any runs: each run as trained and, with a
test-time ``defense`` (``"sap:pct=100"``), also wrapped in it. A stochastic model's confidence is
the top probability of its softmax averaged over ``passes`` forward passes (≥ 10). Writes
``calibration.json`` (per model: bins, ECE, accuracy, mean confidence) and ``calibration.png`` (one
reliability diagram per model).

ECE (Guo et al. 2017) with ``bins`` equal-width confidence bins: ``Σ_b (n_b/n)·|acc_b − conf_b|``.

>>> calibration_run(["runs/std", "runs/at"], defense="sap:pct=100", out="calib")     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.utils import atomic_write, atomic_write_json


def mean_probs(model: nn.Module, x: Tensor, *, passes: int) -> Tensor:
    """Softmax of the eval-mode model averaged over ``passes`` forward passes [B, K]."""
    with torch.no_grad():
        return sum(F.softmax(model(x), 1) for _ in range(passes)) / passes  # type: ignore[return-value]


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


def calibration_of(model: nn.Module, images: Tensor, labels: Tensor, *, passes: int = 10, bins: int = 10,
                   batch_size: int = 256) -> dict[str, Any]:
    """Reliability of one model on ``images``; ``passes`` is used only when the model is random."""
    from robustprune.eval.evaluate import is_stochastic

    if images.dtype == torch.uint8:
        images = images.float() / 255
    ref = next(model.parameters(), None)
    if ref is not None:
        images, labels = images.to(ref.device), labels.to(ref.device)
    was_training = model.training
    model.eval()
    try:
        stochastic = is_stochastic(model, images[:batch_size])
        n_pass = passes if stochastic else 1
        probs = torch.cat([mean_probs(model, images[i:i + batch_size], passes=n_pass)
                           for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)
    conf, pred = probs.max(1)
    out = reliability(conf, (pred == labels).float(), bins=bins)
    return {**out, "stochastic": stochastic, "passes": n_pass}


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


def calibration_run(runs: list[str | Path], *, out: str | Path, defense: Any = None, sap: float | None = None,
                    sap_mode: str | None = None, limit: int | None = 1000, bins: int = 10, passes: int = 10,
                    data_dir: str | None = None, device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Calibration of each run (and of it wrapped in the test-time ``defense``, e.g. ``"sap:pct=100"``;
    ``sap``/``sap_mode`` are the older spelling); writes ``out/calibration.json`` and
    ``out/calibration.png``; returns the JSON data. Arguments are checked before anything runs."""
    from robustprune.defenses import resolve_test_time
    from robustprune.eval.curve import run_test_points
    from robustprune.utils import provenance

    if not runs:
        raise ValueError("calibration needs at least one run directory, got none")
    test_time = resolve_test_time(defense, sap=sap, sap_mode=sap_mode)
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be an integer >= 1, got {passes!r}")
    entries, dev = [], None
    for run_dir in runs:
        run, images, labels, dev = run_test_points(run_dir, limit=limit, data_dir=data_dir, device=device)
        models = [(run.cfg.method, run.model)]
        if test_time is not None:
            test_time.check(run.method)
            models.append((f"{run.cfg.method}+{test_time.label()}", test_time.wrap(run.model, run.method)))
        for label, model in models:
            torch.manual_seed(seed)
            res = calibration_of(model, images, labels, passes=passes, bins=bins)
            entries.append({"label": label, "run": str(run_dir), "model": run.cfg.model, **res})
    assert dev is not None  # runs is not empty
    data = {"kind": "calibration", **(test_time.card_fields() if test_time else {}), "limit": limit, "seed": seed,
            "models": entries, **provenance(dev)}
    out = Path(out)
    atomic_write_json(out / "calibration.json", data)
    plot_reliability(entries, out / "calibration.png")
    return data
