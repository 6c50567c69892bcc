"""Training methods and test-time defenses. Importing this package imports every module in it
(:func:`robustprune.registry.discover`), registering every method in ``METHODS`` and every
test-time defense in ``TEST_TIME``: a new ``defenses/<name>.py`` needs no import list.

Code outside ``defenses/`` uses only what this module exports: the method contract
(:class:`Method`, :func:`build_method`) and the test-time defense contract
(:class:`TestTimeDefense`, :class:`TestTimeSpec`, :func:`resolve_test_time`)."""

from __future__ import annotations

import inspect
from typing import Any

from robustprune.defenses.base import Method, MethodContext, ParamGroup
from robustprune.defenses.testtime import TestTimeDefense, TestTimeSpec, resolve_test_time, spelled_as_setting
from robustprune.registry import METHODS, TEST_TIME, discover

discover(__name__)  # every method and test-time defense module registers itself

__all__ = ["METHODS", "TEST_TIME", "Method", "MethodContext", "ParamGroup", "TestTimeDefense", "TestTimeSpec",
           "build_method", "resolve_test_time", "spelled_as_setting", "takes_target"]


def takes_target(name: str) -> bool:
    """Whether method ``name`` prunes to a ``target_sparsity``: its ``__init__`` has that argument (one
    that passes ``**kwargs`` on is asked through its base classes)."""
    entry = METHODS.get(name)
    for cls in entry.__mro__ if isinstance(entry, type) else ():
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(vars(cls)["__init__"]).parameters
        if "target_sparsity" in params:
            return True
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return False
    return False


def build_method(name: str, *, ctx: MethodContext, **kwargs: Any) -> Method:
    """``build_method("at", ctx=ctx, adv_weight=2.0)``; unknown names or arguments raise ValueError
    (a ``target_sparsity`` for a method that prunes to none names the method, the value and the
    methods that do)."""
    cls = METHODS.get(name)
    if "target_sparsity" in kwargs and not takes_target(name):
        raise ValueError(f"method {name!r} does not prune to a target sparsity, got target_sparsity "
                         f"{kwargs['target_sparsity']!r}; the methods that do: "
                         f"{', '.join(n for n in METHODS.names() if takes_target(n))}")
    try:
        return cls(ctx=ctx, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for method {name!r}: {kwargs} ({e})") from e
