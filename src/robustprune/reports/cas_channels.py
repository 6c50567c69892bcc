"""Channel-activation magnitudes for natural vs adversarial inputs (the CAS paper's analysis,
Bai et al. ICLR 2021, Fig. 1/3): mean |activation| per channel of the last CAS placement, channels
sorted by their natural magnitude. Adversarial examples activate more (and more uniform) channels
in plain AT; CAS suppresses the redundant ones. Reads models only; writes JSON + PNG.

>>> data = channel_magnitudes(model, x, y, attack=PGD(eps=0.3, steps=40, step_size=0.01))
>>> plot_channels({"at": data_at, "at+cas": data}, "channels.png")     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import Attack
from robustprune.defenses.cas import PLACEMENTS
from robustprune.utils import atomic_write


def _target(model: nn.Module) -> tuple[nn.Module, bool, str]:
    kind = type(model).__name__
    if kind not in PLACEMENTS:
        raise ValueError(f"no CAS placement (hence no channel layer) for model class {kind!r}")
    name, _, rectify = PLACEMENTS[kind][-1]
    return dict(model.named_modules())[name], rectify, name


def channel_magnitudes(model: nn.Module, images: Tensor, labels: Tensor, *, attack: Attack,
                       batch_size: int = 256) -> dict[str, Any]:
    """Mean |activation| per channel at the last CAS placement (after CAS when installed), for
    natural and ``attack``-ed inputs; channels sorted by natural magnitude (descending)."""
    target, rectify, name = _target(model)
    grabbed: list[Tensor] = []

    def grab(_m: nn.Module, _i: Any, out: Any) -> None:
        h = out[0] if isinstance(out, tuple) else out
        h = F.relu(h) if rectify else h
        grabbed.append(h.detach().abs().mean(dim=(2, 3)) if h.dim() == 4 else h.detach().abs())

    was_training = model.training
    model.eval()
    sums: dict[str, float | Tensor] = {"natural": 0.0, "adversarial": 0.0}
    try:
        for i in range(0, len(images), batch_size):
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            x_adv = attack(model, x, y)
            handle = target.register_forward_hook(grab)
            try:
                with torch.no_grad():
                    for key, inp in (("natural", x), ("adversarial", x_adv)):
                        grabbed.clear()
                        model(inp)
                        sums[key] = sums[key] + grabbed[-1].sum(0)
            finally:
                handle.remove()
    finally:
        model.train(was_training)
    nat, adv = cast(Tensor, sums["natural"]) / len(images), cast(Tensor, sums["adversarial"]) / len(images)
    order = torch.argsort(nat, descending=True)
    return {"layer": name, "n": len(images), "attack": attack.params(), "order": order.tolist(),
            "natural": nat[order].tolist(), "adversarial": adv[order].tolist()}


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
