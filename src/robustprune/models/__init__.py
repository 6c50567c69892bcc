"""Registered models. Importing this package imports every module in it
(:func:`robustprune.registry.discover`), registering every builder in ``MODELS``."""

from __future__ import annotations

from typing import Any

from torch import nn

from robustprune.models.base import (
    MaskSlot,
    ModelInfo,
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
from robustprune.models.external import (
    TORCHVISION_PREFIX,
    ExternalModel,
    ModelSpec,
    ModelSpecError,
    build_external,
    check_model_args,
    resolve_model,
)
from robustprune.registry import MODELS, discover

discover(__name__)  # every model module registers its builders

__all__ = [
    "MODELS",
    "TORCHVISION_PREFIX",
    "ExternalModel",
    "MaskSlot",
    "ModelInfo",
    "ModelSpec",
    "ModelSpecError",
    "Normalize",
    "UnitMask",
    "base_parameters",
    "build_model",
    "check_model_args",
    "install_masks",
    "installed_masks",
    "mask_parameters",
    "mask_slots",
    "model_info",
    "model_mode",
    "model_quirk",
    "resolve_model",
]


def build_model(name: str, *, model_args: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build a model: ``build_model("lenet5-caffe", num_classes=10, in_channels=1, image_size=28)``.

    ``name`` is a registered name, ``torchvision:NAME`` or ``package.module:function``
    (:func:`~robustprune.models.external.resolve_model`); ``model_args`` are the builder's own
    keyword arguments (checked against it), ``kwargs`` the dataset's (``num_classes``,
    ``in_channels``, ``image_size``, ``mean``, ``std``). An external model is wrapped in the
    dataset's normalisation (:class:`ExternalModel`) and needs all five dataset keywords. Bad
    names and arguments raise :class:`ModelSpecError` (a ``ValueError``) naming them."""
    spec = resolve_model(name)
    args = dict(model_args or {})
    if not spec.external:
        check_model_args(spec, args)
        return MODELS.create(name, **kwargs, **args)
    missing = [k for k in ("num_classes", "in_channels", "image_size", "mean", "std") if kwargs.get(k) is None]
    if missing:
        raise ModelSpecError(f"model {name!r} is built for a dataset: pass {missing}")
    return build_external(spec, args, **kwargs)


def model_info(name: str) -> ModelInfo:
    """The facts registered with model ``name`` (:class:`ModelInfo`); an outside model
    (``torchvision:NAME``, ``package.module:function``) has none beyond the defaults. A name that is
    neither raises :class:`ModelSpecError` naming it."""
    spec = resolve_model(name)
    if spec.external:
        return ModelInfo()
    info = MODELS.facts(name).get("info")
    return info if isinstance(info, ModelInfo) else ModelInfo()
