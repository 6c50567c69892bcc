"""One tiny registry used for models, attacks, training methods and test-time defenses, and
:func:`discover`, which imports every module of a registry's package (no hand-kept import lists)."""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> builder map; each entry may carry facts (keyword arguments of :meth:`register`).

    >>> MODELS = Registry("model")
    >>> @MODELS.register("tiny", info="a tiny model")
    ... def tiny(**kw): ...
    >>> MODELS.names(), MODELS.facts("tiny")
    (['tiny'], {'info': 'a tiny model'})
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._facts: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **facts: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items and self._items[name] is not fn:
                warnings.warn(f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2)
            self._items[name] = fn
            self._facts[name] = dict(facts)
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    def facts(self, name: str) -> dict[str, Any]:
        """What the entry ``name`` was registered with (``{}`` for none); unknown names raise ``ValueError``."""
        self.get(name)
        return dict(self._facts.get(name, {}))

    def create(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


def discover(package: str | ModuleType) -> list[str]:
    """Import every module of ``package`` (a package's name or the package), so that each registers
    what it defines: a new ``attacks/<name>.py`` is found without an import list. Returns the
    imported modules' names, sorted; subpackages are imported, not walked. Modules whose name
    starts with ``_`` are skipped."""
    pkg = importlib.import_module(package) if isinstance(package, str) else package
    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{pkg.__name__}.{name}")
    return [f"{pkg.__name__}.{n}" for n in names]


MODELS: Registry[Any] = Registry("model")
ATTACKS: Registry[Any] = Registry("attack")
#: minimum-norm attacks (``attack(model, x, y) -> MinNormResult``): no ε, a distance per example
MINNORM: Registry[Any] = Registry("minimum-norm attack")
METHODS: Registry[Any] = Registry("method")
TEST_TIME: Registry[Any] = Registry("test-time defense")
