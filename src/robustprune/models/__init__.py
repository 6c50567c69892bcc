"""Registered models. Importing this package registers every builder in ``MODELS``."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustprune.models import lenet, linear, resnet, vgg  # noqa: F401  (registration)
from robustprune.models.base import (
    MaskSlot,
    Normalize,
    UnitMask,
    base_parameters,
    install_masks,
    installed_masks,
    mask_parameters,
    mask_slots,
    model_mode,
    model_quirk,
)
from robustprune.registry import MODELS

__all__ = [
    "MODELS",
    "MaskSlot",
    "Normalize",
    "UnitMask",
    "base_parameters",
    "build_model",
    "install_masks",
    "installed_masks",
    "mask_parameters",
    "mask_slots",
    "model_mode",
    "model_quirk",
]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``build_model("lenet5-caffe", num_classes=10, in_channels=1,
    image_size=28)``. Unknown names raise ``ValueError`` listing the known ones."""
    return MODELS.create(name, **kwargs)
