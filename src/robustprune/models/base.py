"""Shared pieces of every model: input normalisation, mask slots, latent features.

Every registered model follows one contract:

- ``model(x)`` returns logits for inputs in pixel space [0, 1];
- ``model(x, features=True)`` returns ``(logits, [latent maps])``, and costs nothing
  extra when ``features`` is false;
- ``model.latent_count`` says how many latent maps it returns;
- unit masks live in :class:`MaskSlot` modules; a slot is an identity until a mask is installed
  (``install_masks``), and every mask follows the :class:`UnitMask` contract, so metrics and
  compaction walk any model the same way.

What a method needs to know about one architecture is declared by the model's class, so a new
model touches only ``models/``; methods ask :func:`model_quirk` (see :data:`QUIRKS`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from robustprune.models.accounting import PaperCost

SlotKind = Literal["conv", "fc"]


@dataclass(frozen=True)
class ModelInfo:
    """What other layers need to know about a registered architecture, declared on its registry
    entry (``@MODELS.register("vgg16", info=ModelInfo(...))``) and read with ``models.model_info``:

    - ``display_name``: how papers and benchmarks write it (``"VGG-16"``); ``None``: its registry name;
    - ``shape``: ``(in_channels, image_size)`` of the inputs it is built for by default (the
      registry-parametrised tests build it so);
    - ``paper_cost``: the ANP-VS paper's memory/FLOPs accounting (:class:`~robustprune.models.accounting.PaperCost`),
      ``None`` where the paper has none;
    - ``apb_code``: its code in the Adversarial Pruning Benchmark's model keys (``"V16"``), ``None``
      where the benchmark does not take it.
    """

    display_name: str | None = None
    shape: tuple[int, int] = (1, 28)
    paper_cost: PaperCost | None = None
    apb_code: str | None = None

#: the class attributes a model may declare for the methods that need them
QUIRKS = {
    "cas_placements": "CAS modules (Bai et al. 2021): ((target module name, channels, apply ReLU first), ...)",
    "bnn_prior": "AT-BNN: (ρ₀, σ_p), the initial softplus⁻¹ std and the prior std (default (-3, 1), LeNet's)",
    "fold_plan": "compaction: the steps (dicts; kinds in sparsity.fold.STEPS) saying which layer, mask and BN "
                 "fold into which; a model without one cannot be compacted",
    "bbd_conv_init": "BBD masks: the initial a' of conv masks (default -1, E[π] ≈ 0.24; VGG-16's 2, E[π] ≈ 0.68)",
}
#: quirks that name no module, so a wrapper (a graph-masked ``GraphNet`` in its ``net``) inherits them
#: from the network it wraps
VALUE_QUIRKS = frozenset({"bnn_prior", "bbd_conv_init"})


def model_quirk(model: nn.Module, name: str) -> Any:
    """The quirk ``name`` (one of :data:`QUIRKS`) that ``model``'s class declares, else ``None``."""
    if name not in QUIRKS:
        raise ValueError(f"unknown model quirk {name!r}; known: {', '.join(QUIRKS)}")
    value = getattr(type(model), name, None)
    inner = getattr(model, "net", None)
    if value is None and name in VALUE_QUIRKS and isinstance(inner, nn.Module) and inner is not model:
        return model_quirk(inner, name)
    return value


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` inside the model, so ε stays in pixel units."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean: Tensor
        self.std: Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@runtime_checkable
class UnitMask(Protocol):
    """What every unit-mask layer can say (STYLE example 5)."""

    units: int

    def active(self) -> Tensor:
        """Boolean vector [units]: which units survive in eval mode."""

    def eval_scale(self) -> Tensor:
        """Float vector [units]: the deterministic eval-mode multiplier (0 for pruned units)."""

    def n_active(self) -> int:
        """Number of surviving units."""


class MaskSlot(nn.Module):
    """A place where a per-unit mask may sit: conv channels (4-D input) or fc neurons (2-D)."""

    def __init__(self, units: int, kind: SlotKind) -> None:
        super().__init__()
        self.units = units
        self.kind: SlotKind = kind
        self.mask: nn.Module | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.mask is None else self.mask(x)

    def extra_repr(self) -> str:
        return f"units={self.units}, kind={self.kind}"


@contextlib.contextmanager
def model_mode(*models: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """Run the body with ``models`` in eval mode (when ``eval_mode``) and restore every module's own
    train/eval flag afterwards, also when the body raises: the one way this package switches modes.

    >>> with model_mode(model):                              # doctest: +SKIP
    ...     logits = model(x)                                # eval mode here, the caller's mode after
    """
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        if eval_mode:
            for model in models:
                model.eval()
        yield
    finally:
        for m, training in flags:
            m.training = training


def mask_slots(model: nn.Module) -> list[tuple[str, MaskSlot]]:
    """All mask slots of a model, in forward order (module registration order)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MaskSlot)]


def installed_masks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The installed masks, one per filled slot, in order."""
    return [(name, slot.mask) for name, slot in mask_slots(model) if slot.mask is not None]


def install_masks(model: nn.Module, factory: Callable[[MaskSlot], nn.Module]) -> nn.Module:
    """Put ``factory(slot)`` into every slot of ``model``; returns the model.

    Raises ``ValueError`` when the model has no slots (a method that prunes units cannot use it).
    """
    slots = mask_slots(model)
    if not slots:
        raise ValueError(f"model {type(model).__name__} has no mask slots; it cannot carry unit masks")
    ref = next(iter(model.parameters()), None)
    for _, slot in slots:
        mask = factory(slot)
        if ref is not None:
            mask = mask.to(device=ref.device)
        slot.mask = mask
    return model


def base_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The network's own parameters θ (everything that is not inside a mask slot)."""
    mask_ids = {id(p) for _, slot in mask_slots(model) if slot.mask is not None for p in slot.mask.parameters()}
    for p in model.parameters():
        if id(p) not in mask_ids:
            yield p


def mask_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """The parameters φ of the installed masks."""
    for _, slot in mask_slots(model):
        if slot.mask is not None:
            yield from slot.mask.parameters()
