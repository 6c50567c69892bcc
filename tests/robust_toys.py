"""Tiny data, a plain trained model and models built to fail the audit's checks.

Shared by test_audit.py, test_autoattack.py, test_minnorm.py, test_fmn.py, test_attack_contracts.py and
test_metrics_contracts.py (not collected: no ``test_`` prefix).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLASSES = 4


def levels(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """4 classes of 1×8×8 images told apart by brightness (0.2, 0.4, 0.6, 0.8), with a per-image
    offset and per-pixel noise: the nearest wrong class is always a neighbouring level, so PGD on
    cross-entropy is a near-optimal attack and robust accuracy falls smoothly with ε."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    level = 0.2 + 0.6 * y.float() / (CLASSES - 1)
    offset = (torch.rand(n, generator=g) - 0.5) * 0.16
    x = (level + offset).view(-1, 1, 1, 1) + (torch.rand(n, 1, 8, 8, generator=g) - 0.5) * 0.1
    return x.clamp(0, 1), y


def trained_mlp(seed: int = 0, n: int = 768, epochs: int = 10) -> nn.Module:
    """A plain (standard-trained) 64-32-4 MLP on :func:`levels` data, in eval mode (~95 % clean)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, CLASSES))
    x, y = levels(n, seed=100 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for idx in torch.randperm(n).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


class Quantised(nn.Module):
    """``base(round(x·levels)/levels)``: a hard input quantisation, so every input gradient is 0."""

    def __init__(self, base: nn.Module, levels: int = 32) -> None:
        super().__init__()
        self.base, self.levels = base, levels

    def forward(self, x: Tensor) -> Tensor:
        return self.base(torch.round(x * self.levels) / self.levels)


class Noisy(nn.Module):
    """Gaussian input noise also in eval mode: a randomised defence."""

    def __init__(self, base: nn.Module, sigma: float = 0.05) -> None:
        super().__init__()
        self.base, self.sigma = base, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x + self.sigma * torch.randn_like(x))


def grey(n: int, *, noise: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Images around grey 0.4 whose pixel mean is exactly 0.4; every label is 0."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 8, 8, generator=g) - 0.5) * noise
    x -= x.flatten(1).mean(1).view(-1, 1, 1, 1)
    return 0.4 + x, torch.zeros(n, dtype=torch.long)


def _two_logits(wrong: Tensor, x: Tensor) -> Tensor:
    """Logits ``[0, wrong, -10, -10]``: class 1 wins iff ``wrong > 0``; tied to ``x`` in the graph."""
    tie = 0 * x.flatten(1).sum(1)
    rest = torch.full((len(x), CLASSES - 2), -10.0, dtype=x.dtype, device=x.device)
    return torch.cat([tie[:, None], (wrong + tie)[:, None], rest], dim=1)


class Interval(nn.Module):
    """Wrong exactly when ``‖x − 0.4‖∞ ∈ (0.1, 0.2]``; piecewise constant (zero gradient). Random
    starts of radius 0.15-0.2 fool it, larger ones do not: robust accuracy is not monotone in ε."""

    def forward(self, x: Tensor) -> Tensor:
        d = (x - 0.4).abs().flatten(1).amax(1)
        return _two_logits(((d > 0.1) & (d <= 0.2)).to(x.dtype) * 2 - 1, x)


class Trap(nn.Module):
    """The wrong-class logit is ``φ(s)``, ``s = mean(x) − 0.4``: a bump at s = 0.04 that PGD's
    small steps climb and stay on, behind it a drop, and far out (s > 0.2) a rise where the model
    is wrong. FGSM's single step of ε = 0.3 jumps over the trap; PGD does not."""

    def forward(self, x: Tensor) -> Tensor:
        s = x.flatten(1).mean(1) - 0.4
        phi = (-1 + 0.8 * torch.exp(-(((s - 0.04) / 0.02) ** 2)) - 3 * torch.sigmoid((s - 0.08) / 0.01)
               + 6 * torch.sigmoid((s - 0.2) / 0.01))
        return _two_logits(phi, x)


class Threshold(nn.Module):
    """Class 0 where the first input value is above 0.5, class 1 below: every distance to the boundary
    is known by hand. Records its training flag at each forward pass in ``modes``."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        v = x.flatten(1)[:, :1]
        return torch.cat([v - 0.5, 0.5 - v], dim=1)


def linear_model(w: Tensor, b: Tensor) -> nn.Module:
    """Logits ``W·flatten(x) + b`` with the given weights, in float64 for exact distances."""
    lin = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return nn.Sequential(nn.Flatten(), lin).eval()


def one_thread() -> Iterator[None]:
    """Body of the minimum-norm tests' autouse fixture. Tiny tensors: one thread avoids OpenMP
    hand-offs that, on a loaded 2-core machine, made these ops up to ~50x slower than
    single-threaded (measured while writing these tests)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
