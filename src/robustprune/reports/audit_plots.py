"""Plots of the robustness audit, rendered from its JSON data only (STYLE example 7).

:func:`plot_curve` draws robust accuracy against ε (``curve.json``), with the audit's other attacks
at the dataset's ε as markers and, where the card has one, FMN's security curve beside the PGD
sweep; :func:`plot_surface` draws the loss surfaces of ``surface.json`` as 3-D plots with a
contour map underneath. Matplotlib's object API (Agg, no pyplot state), imported lazily; files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustprune.utils import atomic_write

MARKERS = "osD^vP*X"


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    return path


def plot_curve(curve: dict[str, Any], path: str | Path) -> Path:
    """Robust accuracy (%) vs ε from a curve card; ``curve["marks"]`` (optional) adds
    ``{"label", "eps", "robust_acc"}`` points such as FGSM or AutoAttack at the dataset's ε;
    ``curve["security"]`` (optional, with ``points``) adds the minimum-norm attack's security curve,
    drawn at every ε from its per-example ``distances`` with its values at the sweep's ε marked.

    >>> plot_curve(json.load(open("audit/curve.json")), "audit/curve.png")   # doctest: +SKIP
    """
    from matplotlib.figure import Figure

    pts = curve["points"]
    if not pts:
        raise ValueError("curve has no points")
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    atk = curve.get("attack", {})
    steps = atk.get("steps", "?")
    label = f"PGD-{steps} sweep, step 2.5·ε/{steps}" + (f", EOT-{atk['eot']}" if atk.get("eot", 1) > 1 else "")
    ax.plot([p["eps"] for p in pts], [p["robust_acc"] for p in pts], "-o", color="C0", label=label, zorder=3)
    security = curve.get("security") or {}
    if security.get("points"):
        _plot_security(ax, security, hi=max(p["eps"] for p in pts))
    for i, mark in enumerate(curve.get("marks", [])):
        ax.plot([mark["eps"]], [mark["robust_acc"]], MARKERS[i % len(MARKERS)], color=f"C{i + 1}", markersize=8,
                linestyle="none", label=f"{mark['label']} ({mark['robust_acc']:.1f} %)", zorder=4)
    if curve.get("default_eps") is not None:
        ax.axvline(curve["default_eps"], color="grey", linestyle="--", linewidth=1,
                   label=f"ε = {curve['default_eps']:g}")
    ax.set_xlabel("ε (L∞, pixel units)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    title = " / ".join(str(curve[k]) for k in ("method", "model", "dataset") if k in curve)
    ax.set_title(f"{title}  (n = {curve.get('n', '?')})" if title else f"robust accuracy vs ε (n = {curve.get('n')})")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def security_label(security: dict[str, Any]) -> str:
    """``FMN-L∞, 100 steps × 3 targets``: the attack of a security card, for legends and reports."""
    atk = security.get("attack", {})
    norm = {"linf": "L∞", "l2": "L2", "l1": "L1"}.get(atk.get("norm", ""), atk.get("norm", "?"))
    passes = f" × {atk['targets']} targets" if atk.get("targets") else ""
    return f"{str(atk.get('name', '?')).upper()}-{norm}, {atk.get('steps', '?')} steps{passes}"


def _plot_security(ax: Any, security: dict[str, Any], *, hi: float) -> None:
    """The security curve ``% of points correct with distance > ε`` on [0, ``hi``]."""
    import numpy as np

    n = security["n"]
    d = np.array([np.inf if v is None else v for v, ok in zip(security["distances"], security["correct"], strict=True)
                  if ok], dtype=float)
    grid = np.linspace(0.0, hi, 401)
    acc = 100.0 * (d[None, :] > grid[:, None]).sum(1) / max(n, 1)
    ax.plot(grid, acc, "-", color="C9", linewidth=1.6, label=f"{security_label(security)} security curve", zorder=3)
    sp = security["points"]
    ax.plot([p["eps"] for p in sp], [p["robust_acc"] for p in sp], "s", color="C9", markersize=5,
            markerfacecolor="none", linestyle="none", zorder=3)


def plot_surface(surface: dict[str, Any], path: str | Path) -> Path:
    """3-D loss surfaces (one panel per point) from a surface card, ε-ball edges marked.

    >>> plot_surface(json.load(open("audit/surface.json")), "audit/surface.png")   # doctest: +SKIP
    """
    import numpy as np
    from matplotlib.figure import Figure

    pts = surface["points"]
    if not pts:
        raise ValueError("surface has no points")
    eps = surface["eps"]
    offs = np.asarray(surface["offsets"]) / eps
    a, b = np.meshgrid(offs, offs, indexing="ij")
    fig = Figure(figsize=(4.6 * len(pts), 4.6))
    fig.subplots_adjust(wspace=0.35)
    for k, p in enumerate(pts):
        ax = fig.add_subplot(1, len(pts), k + 1, projection="3d")
        loss = np.asarray(p["loss"])
        floor = loss.min() - 0.25 * max(np.ptp(loss), 1e-6)
        ax.plot_surface(a, b, loss, cmap="viridis", linewidth=0, antialiased=True, alpha=0.9)
        ax.contourf(a, b, loss, zdir="z", offset=floor, cmap="viridis", alpha=0.6, levels=12)
        ax.set_zlim(floor, loss.max() + 1e-6)
        axis = "2nd random dir." if p.get("zero_gradient") else "adversarial dir."
        ticks = [offs[0], 0.0, offs[-1]]
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xlabel(f"{axis} (× ε)", fontsize=8)
        ax.set_ylabel("random dir. (× ε)", fontsize=8)
        ax.set_zlabel("cross-entropy", fontsize=8, labelpad=2)
        ax.tick_params(labelsize=7)
        ax.view_init(elev=25, azim=-60)
        note = "  [zero gradient]" if p.get("zero_gradient") else ""
        note += "  [misclassified]" if p.get("correct") is False else ""
        ax.set_title(f"point {k} (label {p['label']}){note}", fontsize=9)
    head = " / ".join(str(surface[k]) for k in ("method", "model", "dataset") if k in surface)
    fig.suptitle(f"{head}  loss around test points, ε = {eps:g}".strip(), fontsize=10)
    return _save(fig, path)
