"""The attack contract and the invariants every attack keeps.

An attack is a small object with one call, ``attack(model, x, y) -> x_adv``. Subclasses implement
:meth:`Attack.perturb`; :meth:`Attack.__call__` wraps it and guarantees, whatever the subclass
does:

- inputs are validated (floating ``x`` in [0, 1], int64 labels ``y`` of shape ``[len(x)]``);
- the model runs in eval mode when ``eval_mode`` is true, and every module's own training flag is
  restored afterwards, also when the attack raises;
- parameters' ``.grad`` are left exactly as they were (the same tensor objects, untouched values);
- the result lies in the ε-ball around ``x`` (``"linf"``: clamp, ``"l2"``: per-example renorm) and
  in [0, 1], has the shape, dtype and device of ``x`` and is detached; ε = 0 returns ``x``;
- inside a ``torch.autocast`` region (bf16 training, ``TrainConfig.amp``) the attack still runs in
  float32: bf16 input gradients keep ~3 significant digits, and whether PGD's sign step minds is
  unmeasured (``Attack.full_precision``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.data.catalog import check_eps
from robustprune.models.base import model_mode

#: ``(model, x_adv, y) -> per-example loss [B]`` that an attack maximises
LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]

NORMS = ("linf", "l2")
#: how far outside [0, 1] an input may lie before it is rejected (rounding of decoded images)
RANGE_TOL = 1e-6


def cross_entropy_loss(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    """The default attack loss: per-example cross-entropy of ``model(x_adv)`` (shape ``[B]``)."""
    return F.cross_entropy(model(x_adv), y, reduction="none")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def check_count(name: str, value: int) -> int:
    """Integer hyperparameters such as ``steps``, ``restarts`` and ``eot`` must be >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_inputs(x: Tensor, y: Tensor) -> None:
    """``ValueError`` naming the bad value or shape unless ``x``/``y`` are a valid batch."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch, got shape {tuple(x.shape)}")
    if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.dim() != 1 or len(y) != x.shape[0]:
        raise ValueError(
            f"y must be an int64 vector of length {x.shape[0]} (the batch size of x), got "
            f"dtype {getattr(y, 'dtype', type(y))} and shape {tuple(getattr(y, 'shape', ()))}"
        )
    lo, hi = torch.aminmax(x.detach())
    lo_v, hi_v = lo.item(), hi.item()
    if not (lo_v >= -RANGE_TOL and hi_v <= 1 + RANGE_TOL):  # also rejects NaN
        raise ValueError(
            f"x must lie in pixel space [0, 1] (normalisation belongs inside the model), "
            f"got values in [{lo_v}, {hi_v}]"
        )


def project(x_adv: Tensor, x: Tensor, *, eps: float, norm: str) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ε-ball around ``x`` and onto [0, 1].

    For ``"l2"`` the per-example renorm comes first; clipping to [0, 1] afterwards only moves
    coordinates towards ``x`` (which is in [0, 1]), so it cannot leave the ball again.
    """
    if norm == "linf":
        return torch.clamp(x_adv, (x - eps).clamp_(min=0), (x + eps).clamp_(max=1))
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    scale = torch.clamp(eps / norms.clamp(min=1e-12), max=1.0)
    return (x + delta * scale).clamp_(0, 1)


def is_stochastic(model: nn.Module, x: Tensor) -> bool:
    """Two passes of ``model`` in its current mode on the same input differ: in eval mode, the model
    is random at test time (attack it with EOT, average accuracies over passes)."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` for an attack's ``generator``: on the CPU it
    draws what the global RNG draws after ``torch.manual_seed(seed)``."""
    return torch.Generator(device=device).manual_seed(seed)


@contextlib.contextmanager
def grads_untouched(model: nn.Module) -> Iterator[None]:
    """Hide the parameters' ``.grad`` during the body and put the same tensors back after.

    Attacks take gradients with ``torch.autograd.grad`` w.r.t. the input only; this guard also
    holds if a subclass (or a loss) calls ``.backward()``: whatever it accumulates is discarded.
    """
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    try:
        yield
    finally:
        for p, g in saved:
            p.grad = g


class Attack:
    """Base class of the fixed-budget attacks: ``attack(model, x, y) -> x_adv``.

    Subclasses implement :meth:`perturb` (and extend :meth:`params`); ``__call__`` validates the
    inputs, handles the model's mode and gradients, and projects the result (see module doc).

    Args:
        eps: radius of the threat model in pixel units (≥ 0).
        norm: ``"linf"`` or ``"l2"``.
        eval_mode: attack the eval-mode model (default ``True``); ``False`` attacks the
            model in whatever mode it is in (fast_adversarial's train-mode attack).
        generator: the ``torch.Generator`` every random draw of the attack comes from (its start,
            R+FGSM's signed step); ``None`` (default) draws from torch's global RNG. It is not part
            of :meth:`params` (a card describes the attack, not its random stream).

    >>> class Identity(Attack):
    ...     def perturb(self, model, x, y):
    ...         return x
    >>> Identity(eps=0.1).params()
    {'name': 'identity', 'eps': 0.1, 'norm': 'linf', 'eval_mode': True}
    """

    name: str = ""
    #: the version of the attack's code: bump it in the change that alters the examples it finds, and
    #: ``compare`` makes every card that ran it again (``eval.card.attack_version``, ``robustprune.records``)
    code_version: ClassVar[int] = 1
    #: compute in float32 even inside an autocast region; an instance may set it to False to let
    #: the region's lower precision through (bench/throughput.py measures that variant)
    full_precision: bool = True

    def __init__(self, *, eps: float, norm: str = "linf", eval_mode: bool = True,
                 generator: torch.Generator | None = None) -> None:
        self.norm = check_norm(norm)
        self.eps = check_eps(eps, norm=self.norm)
        self.eval_mode = bool(eval_mode)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Return an adversarial version of ``x``; ``__call__`` enforces the invariants."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        check_inputs(x, y)
        x = x.detach()
        if self.eps == 0:
            return x.clone()
        with model_mode(model, eval_mode=self.eval_mode), grads_untouched(model):
            with torch.enable_grad(), self._precision(x):
                x_adv = self.perturb(model, x, y)
        x_adv = project(x_adv.detach().to(x.dtype), x, eps=self.eps, norm=self.norm)
        return x_adv.contiguous() if x.is_contiguous() else x_adv

    def _precision(self, x: Tensor) -> contextlib.AbstractContextManager[Any]:
        """Leave an enclosing autocast region (float32 attack) unless ``full_precision`` is off."""
        kind = x.device.type
        if self.full_precision and torch.is_autocast_enabled(kind):
            return torch.autocast(kind, enabled=False)
        return contextlib.nullcontext()

    def params(self) -> dict[str, Any]:
        """JSON-able description of the attack for result cards."""
        name = self.name or type(self).__name__.lower()
        return {"name": name, "eps": self.eps, "norm": self.norm, "eval_mode": self.eval_mode}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items() if k != "name")
        return f"{type(self).__name__}({inner})"
