"""The loss surface around test points, along the adversarial and a random direction.

For a point ``x`` with label ``y``: ``d_adv = sign(∇ₓ CE(f(x), y))`` (the FGSM direction) and
``d_rand`` a Rademacher (random ±1) vector, both of L∞ norm 1; the surface is
``CE(f(clip(x + a·d_adv + b·d_rand)), y)`` on a grid ``a, b ∈ [−span·ε, span·ε]``. A smooth surface
that rises along ``d_adv`` is what a working gradient attack needs; a flat, jagged or
random-direction-dominated one is the picture of gradient masking (Tramèr et al. 2018; Engstrom
et al. 2018). Where the gradient is exactly zero the adversarial axis is undefined and a second
random direction is used (``zero_gradient`` records it).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import is_stochastic
from robustprune.config import replaced
from robustprune.eval.context import EvalContext
from robustprune.models import model_mode
from robustprune.reports.audit_plots import plot_surface
from robustprune.utils import atomic_write_json, provenance


def _check(points: int, resolution: int, span: float, eps: float) -> None:
    for name, v, lo in (("points", points, 1), ("resolution", resolution, 3)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    for label, f in (("span", span), ("eps", eps)):
        if not isinstance(f, int | float) or not 0 < f <= 1:
            raise ValueError(f"{label} must be a number in (0, 1], got {f!r}")


def _mean_loss(model: nn.Module, imgs: Tensor, y: int, samples: int, chunk: int = 512) -> Tensor:
    out = []
    with torch.no_grad():
        for part in imgs.split(chunk):
            target = torch.full((len(part),), y, dtype=torch.long, device=part.device)
            losses = [F.cross_entropy(model(part), target, reduction="none") for _ in range(samples)]
            out.append(torch.stack(losses).mean(0))
    return torch.cat(out)


def loss_surface(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, span: float = 1.0, resolution: int = 21,
                 samples: int = 1, seed: int = 0) -> dict[str, Any]:
    """Cross-entropy on a ``resolution × resolution`` grid around each point of ``x`` (see module doc).

    Args:
        eps: the threat model's radius; the grid covers ``±span·eps`` on both axes.
        samples: forward passes averaged per grid point (use > 1 for models random in eval mode).
        seed: seed of the random directions (a private generator; the global RNG is untouched).

    Returns ``{"eps", "span", "offsets", "points": [{"label", "loss": [[...]], "zero_gradient"}]}``
    with ``loss[i][j]`` at ``a = offsets[i]`` (adversarial axis), ``b = offsets[j]`` (random axis).

    >>> surf = loss_surface(model, x[:3], y[:3], eps=0.3)      # doctest: +SKIP
    """
    _check(len(x), resolution, span, eps)
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.linspace(-span * eps, span * eps, resolution, dtype=x.dtype)
    a, b = torch.meshgrid(offsets, offsets, indexing="ij")
    shape = (-1, *([1] * (x.dim() - 1)))
    points = []
    with model_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
        for k in range(len(x)):
            d_rand = torch.randint(0, 2, x[k].shape, generator=gen).to(x) * 2 - 1
            d_adv = grad[k].sign()
            zero = bool((d_adv == 0).all())
            if zero:
                d_adv = torch.randint(0, 2, x[k].shape, generator=gen).to(x) * 2 - 1
            imgs = x[k] + a.reshape(shape).to(x) * d_adv + b.reshape(shape).to(x) * d_rand
            loss = _mean_loss(model, imgs.clamp(0, 1), int(y[k]), samples)
            points.append({"label": int(y[k]), "loss": loss.view(resolution, resolution).tolist(),
                           "zero_gradient": zero})
    return {"kind": "surface", "eps": eps, "span": span, "offsets": offsets.tolist(), "samples": samples,
            "directions": {"adversarial": "sign of the input gradient of CE", "random": "Rademacher, seed "
                           f"{seed}"}, "points": points}


@dataclass(frozen=True)
class SurfaceConfig:
    """What ``robustprune surface`` draws: ``points`` correctly classified test points, at ``eps``
    (default: the dataset's), a grid of ``resolution`` points per axis over ``±span·eps``,
    ``samples`` passes per grid point (``None``: 10 for a model random in eval mode, else 1) and
    ``seed`` for the random direction."""

    points: int = 4
    eps: float | None = None
    span: float = 1.0
    resolution: int = 21
    samples: int | None = None
    seed: int = 0

    def validate(self) -> None:
        """``ValueError`` naming the first bad value."""
        _check(self.points, self.resolution, self.span, 1.0 if self.eps is None else self.eps)


def surface_config(config: SurfaceConfig | None = None, **settings: Any) -> SurfaceConfig:
    """``config`` with ``settings`` replacing its fields, validated; an unknown name raises ``ValueError``."""
    return replaced(SurfaceConfig, config, settings, "surface")


def surface_of(model: nn.Module, images: Tensor, labels: Tensor, config: SurfaceConfig | None = None,
               **settings: Any) -> dict[str, Any]:
    """:func:`loss_surface` of the first ``points`` correctly classified examples of ``images``
    (uint8 or [0, 1] floats), topped up with misclassified ones when too few are correct
    (``config``, :class:`SurfaceConfig`, with ``settings`` replacing its fields; ``eps`` must be
    given). ``test_index`` and each point's ``correct`` record which examples were used."""
    cfg = surface_config(config, **settings)
    if cfg.eps is None:
        raise ValueError("surface_of needs eps (pixel units)")
    points, samples = cfg.points, cfg.samples
    dev = next(iter(model.parameters())).device
    x = images[: max(256, 4 * points)].to(dev).float()
    x = x.div(255) if images.dtype == torch.uint8 else x
    y = labels[: len(x)].to(dev).long()
    with model_mode(model):
        with torch.no_grad():
            correct = model(x).argmax(1) == y
        if samples is None:
            samples = 10 if is_stochastic(model, x[:64]) else 1
    idx = torch.cat([correct.nonzero(), (~correct).nonzero()]).squeeze(1)[:points]
    surf = loss_surface(model, x[idx], y[idx], eps=cfg.eps, span=cfg.span, resolution=cfg.resolution, samples=samples,
                        seed=cfg.seed)
    for p, ok in zip(surf["points"], correct[idx].tolist(), strict=True):
        p["correct"] = ok
    return surf | {"test_index": idx.tolist()}


def surface_run(run_dir: str | Path, config: SurfaceConfig | None = None, *, out: str | Path,
                data_dir: str | None = None, device: str = "auto", **settings: Any) -> dict[str, Any]:
    """Loss surfaces (:func:`surface_of`) of run ``run_dir`` (``config``/``settings`` as there; ``eps``
    defaults to the dataset's); writes ``surface.json`` and ``surface.png`` into ``out``.

    >>> surface_run("runs/at", out="runs/at/surface", points=4)    # doctest: +SKIP
    """
    cfg = surface_config(config, **settings)
    ctx = EvalContext.open(run_dir, limit=max(256, 4 * cfg.points), data_dir=data_dir, device=device)
    cfg = dataclasses.replace(cfg, eps=ctx.info.eps(cfg.eps))
    t0 = time.perf_counter()
    surf = surface_of(ctx.model, ctx.images, ctx.labels, cfg)
    surf |= {**ctx.describe(), **provenance(ctx.device), "wall_s": time.perf_counter() - t0}
    write_surface(surf, out)
    return surf


def write_surface(surf: dict[str, Any], out: str | Path) -> None:
    """``surface.json`` and ``surface.png`` into directory ``out``."""
    out = Path(out)
    atomic_write_json(out / "surface.json", surf)
    plot_surface(surf, out / "surface.png")
