"""Training methods and test-time defenses. Importing this package imports every module in it
(:func:`robustprune.registry.discover`), registering every method in ``METHODS`` and every
test-time defense in ``TEST_TIME``: a new ``defenses/<name>.py`` needs no import list.

Code outside ``defenses/`` uses only what this module exports: the method contract
(:class:`Method`, :func:`build_method`) and the test-time defense contract
(:class:`TestTimeDefense`, :class:`TestTimeSpec`, :func:`resolve_test_time`)."""

from __future__ import annotations

from typing import Any

from robustprune.defenses.base import Method, MethodContext, ParamGroup
from robustprune.defenses.testtime import TestTimeDefense, TestTimeSpec, resolve_test_time, spelled_as_setting
from robustprune.registry import METHODS, TEST_TIME, discover

discover(__name__)  # every method and test-time defense module registers itself

__all__ = ["METHODS", "TEST_TIME", "Method", "MethodContext", "ParamGroup", "TestTimeDefense", "TestTimeSpec",
           "build_method", "resolve_test_time", "spelled_as_setting"]


def build_method(name: str, *, ctx: MethodContext, **kwargs: Any) -> Method:
    """``build_method("at", ctx=ctx, adv_weight=2.0)``; unknown names or arguments raise ValueError."""
    cls = METHODS.get(name)
    try:
        return cls(ctx=ctx, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for method {name!r}: {kwargs} ({e})") from e
