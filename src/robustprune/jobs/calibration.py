"""``robustprune calibration``: confidence vs accuracy of runs, measured; the bins, ECE and diagrams
are :mod:`robustprune.reports.calibration`.

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import is_stochastic
from robustprune.config import replaced
from robustprune.defenses import resolve_test_time
from robustprune.eval.context import EvalContext, check_limit
from robustprune.models import model_mode
from robustprune.reports.calibration import plot_reliability, reliability
from robustprune.utils import atomic_write_json, keeps_global_rng, provenance


def mean_probs(model: nn.Module, x: Tensor, *, passes: int) -> Tensor:
    """Softmax of the eval-mode model averaged over ``passes`` forward passes [B, K]."""
    with torch.no_grad():
        return sum(F.softmax(model(x), 1) for _ in range(passes)) / passes  # type: ignore[return-value]


def calibration_of(model: nn.Module, images: Tensor, labels: Tensor, *, passes: int = 10, bins: int = 10,
                   batch_size: int = 256) -> dict[str, Any]:
    """Reliability of one model on ``images``; ``passes`` is used only when the model is random."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    ref = next(model.parameters(), None)
    if ref is not None:
        images, labels = images.to(ref.device), labels.to(ref.device)
    with model_mode(model, eval_mode=True):
        stochastic = is_stochastic(model, images[:batch_size])
        n_pass = passes if stochastic else 1
        probs = torch.cat([mean_probs(model, images[i:i + batch_size], passes=n_pass)
                           for i in range(0, len(images), batch_size)])
    conf, pred = probs.max(1)
    out = reliability(conf, (pred == labels).float(), bins=bins)
    return {**out, "stochastic": stochastic, "passes": n_pass}


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``robustprune calibration`` measures: each run as trained and, with a test-time
    ``defense`` (``"sap:pct=100"``), wrapped in it; on the first ``limit`` test points, ``bins``
    equal-width confidence bins, ``passes`` forward passes for a model random in eval mode, ``seed``
    of the global RNG those passes draw from."""

    defense: Any = None
    limit: int | None = 1000
    bins: int = 10
    passes: int = 10
    seed: int = 0

    def validate(self) -> None:
        """``ValueError`` naming the first bad value."""
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 1:
            raise ValueError(f"passes must be an integer >= 1, got {self.passes!r}")
        check_limit(self.limit)


@keeps_global_rng
def calibration_run(runs: list[str | Path], config: CalibrationConfig | None = None, *, out: str | Path,
                    data_dir: str | None = None, device: str = "auto", **settings: Any) -> dict[str, Any]:
    """Calibration of each run (and of it wrapped in the test-time defense); ``config``
    (:class:`CalibrationConfig`) with ``settings`` replacing its fields; writes ``out/calibration.json``
    and ``out/calibration.png``; returns the JSON data. Arguments are checked before anything runs;
    the defense is built once for all runs."""
    if not runs:
        raise ValueError("calibration needs at least one run directory, got none")
    cfg = replaced(CalibrationConfig, config, settings, "calibration")
    test_time = resolve_test_time(cfg.defense)
    entries, dev = [], None
    for run_dir in runs:
        ctx = EvalContext.open(run_dir, limit=cfg.limit, defense=test_time, seed=cfg.seed, data_dir=data_dir,
                               device=device)
        run, images, labels, dev = ctx.run, ctx.images, ctx.labels, ctx.device
        models = [(run.cfg.method, run.model)]
        if test_time is not None:
            models.append((f"{run.cfg.method}+{test_time.label()}", ctx.model))
        for label, model in models:
            ctx.seed_global()  # no attack here: the passes of a model random at test time (SAP, sampled
            # BNN) draw from the global RNG inside the model; keeps_global_rng restores it
            res = calibration_of(model, images, labels, passes=cfg.passes, bins=cfg.bins)
            entries.append({"label": label, "run": str(run_dir), "model": run.cfg.model, **res})
    assert dev is not None  # runs is not empty
    data = {"kind": "calibration", **(test_time.card_fields() if test_time else {}), "limit": cfg.limit,
            "seed": cfg.seed,
            "models": entries, **provenance(dev)}
    out = Path(out)
    atomic_write_json(out / "calibration.json", data)
    plot_reliability(entries, out / "calibration.png")
    return data
