"""Training methods. Importing this package registers every method in ``METHODS``."""

from __future__ import annotations

from typing import Any

from robustprune.defenses import admm, anpvs, bnn, cas, hydra, magnitude, standard, trades  # noqa: F401  (registration)
from robustprune.defenses.base import Method, MethodContext, ParamGroup
from robustprune.registry import METHODS

__all__ = ["METHODS", "Method", "MethodContext", "ParamGroup", "build_method"]


def build_method(name: str, *, ctx: MethodContext, **kwargs: Any) -> Method:
    """``build_method("at", ctx=ctx, adv_weight=2.0)``; unknown names or arguments raise ValueError."""
    cls = METHODS.get(name)
    try:
        return cls(ctx=ctx, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for method {name!r}: {kwargs} ({e})") from e
