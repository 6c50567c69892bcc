"""One tiny registry used for models, attacks, training methods and test-time defenses."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> builder map.

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny")
    ... def tiny(**kw): ...
    >>> MODELS.names()
    ['tiny']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not fn:
                warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2)
            self._items[name] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


MODELS: Registry[Any] = Registry("model")
ATTACKS: Registry[Any] = Registry("attack")
METHODS: Registry[Any] = Registry("method")
TEST_TIME: Registry[Any] = Registry("test-time defense")
