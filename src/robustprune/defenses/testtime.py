"""Test-time defenses: wrappers that change how a trained model is evaluated, without training.

A test-time defense (SAP, sampled BNN weights, ...) is a class registered in ``TEST_TIME`` that
says, for one evaluation, how the model is wrapped, what the result card records about it, how a
table labels the row and whether the wrapped model is random. Evaluation code (``eval``, ``audit``,
``calibration``, suites) knows only this contract and a :class:`TestTimeSpec`, the defense as data:
a name and its options, written ``sap:pct=100,mode=fast`` on the command line and
``{name: sap, pct: 100, mode: fast}`` in a suite file.

>>> spec = TestTimeSpec.parse("sap:pct=100,mode=fast")
>>> defense = spec.build()
>>> model = defense.wrap(run.model, run.method)                     # doctest: +SKIP
>>> defense.card_fields()["test_time"]["label"]
'SAP-100 (fast)'
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar

import yaml
from torch import nn

from robustprune.defenses.base import Method
from robustprune.registry import TEST_TIME


class TestTimeDefense:
    """Base class: subclasses set ``name``, take their options as keyword arguments (validated in
    ``__init__``, ``ValueError`` naming the bad value) and implement :meth:`wrap` and :meth:`label`.

    ``stochastic``: the wrapped model is random in eval mode (minimum-norm attacks refuse it; the
    audit adds its EOT rung). ``options``: the constructor's keywords as given, for the card hash.
    """

    __test__ = False  # not a pytest class
    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    def check(self, method: Method) -> None:
        """Raise ``ValueError`` when the runs of ``method`` cannot be evaluated this way. Default: any."""

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        """The model to attack (a wrapper, or ``model`` itself switched into the defended mode)."""
        raise NotImplementedError

    def label(self) -> str:
        """How a table names the defense, e.g. ``SAP-100 (fast)``."""
        raise NotImplementedError

    def row_label(self, method: str) -> str:
        """A table row's method column: ``at + SAP-100``. Override for another form."""
        return f"{method} + {self.label()}"

    def tag(self) -> str:
        """A file-name suffix of the evaluation card, e.g. ``-sap100-exact``."""
        opts = "".join(f"-{k}{v}" for k, v in sorted(self.options.items()))
        return f"-{self.name}{opts}"

    def card_fields(self) -> dict[str, Any]:
        """What a result card records about the defense (``test_time``: name, options, label)."""
        return {"test_time": {"name": self.name, **self.options, "label": self.label()}}

    def settings(self) -> dict[str, Any]:
        """The evaluation-setting keys that identify this defense in a suite's card hash."""
        return {"defense": {"name": self.name, **self.options}}


@dataclass(frozen=True)
class TestTimeSpec:
    """A test-time defense as data: its registered ``name`` and ``options`` (sorted key/value pairs).

    >>> TestTimeSpec.parse({"name": "sap", "pct": 100})
    TestTimeSpec(name='sap', options=(('pct', 100),))
    """

    __test__ = False  # not a pytest class
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, value: Any, *, validate: bool = True) -> TestTimeSpec | None:
        """From ``None``, a spec, a mapping ``{name: ..., **options}`` or text ``name[:k=v,k=v]``
        (values read as YAML scalars); with ``validate`` the defense is built once to check it."""
        if value is None or isinstance(value, TestTimeSpec):
            spec = value
        elif isinstance(value, dict):
            opts = {k: v for k, v in value.items() if k != "name"}
            if not isinstance(value.get("name"), str):
                raise ValueError(f"a test-time defense needs a name, got {value!r}")
            if not all(isinstance(k, str) for k in opts):
                raise ValueError(f"test-time defense options are named by text, got {value!r}")
            spec = cls(value["name"], tuple(sorted(opts.items())))
        elif isinstance(value, str):
            spec = cls._from_text(value)
        else:
            raise ValueError(f"a test-time defense is a name, 'name:key=value,...' or a mapping, got {value!r}")
        if spec is not None and validate:
            spec.build()
        return spec

    @classmethod
    def _from_text(cls, text: str) -> TestTimeSpec:
        name, _, rest = text.strip().partition(":")
        opts: dict[str, Any] = {}
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"test-time defense option {item!r} in {text!r} is not key=value")
            try:
                opts[key.strip()] = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise ValueError(f"test-time defense option {item!r} in {text!r} has a value that is not "
                                 f"a YAML scalar: {e}") from None
        return cls(name.strip(), tuple(sorted(opts.items())))

    def build(self) -> TestTimeDefense:
        """The registered defense with these options; unknown names or options raise ``ValueError``."""
        cls = TEST_TIME.get(self.name)
        try:
            return cls(**dict(self.options))
        except TypeError as e:
            raise ValueError(f"bad options for test-time defense {self.name!r}: {dict(self.options)} ({e})") from e
        except ValueError as e:  # a value the defense refuses: name the whole spec as it was written
            raise ValueError(f"test-time defense {str(self)!r}: {e}") from e

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v}" for k, v in self.options) if self.options else "")


def resolve_test_time(defense: Any = None) -> TestTimeDefense | None:
    """One built defense from ``defense`` (a built one as it is, or anything :meth:`TestTimeSpec.parse`
    takes), built once; ``None`` for none."""
    if isinstance(defense, TestTimeDefense):
        return defense
    spec = TestTimeSpec.parse(defense, validate=False)
    return None if spec is None else spec.build()


def spelled_as_setting(key: str) -> str | None:
    """When ``key`` (a flag such as ``--name-option`` or a settings key such as ``name_option``) spells
    a registered test-time defense, or one of its options, as a setting of its own, the spelling
    that names it as data instead (``--defense``/``defense:``), e.g. ``"NAME:option=VALUE"``;
    else ``None``. Every entry point refuses such a key with this hint."""
    k = key.lstrip("-").replace("_", "-")
    for name in TEST_TIME.names():
        if k == name or k.startswith(name + "-"):
            params = [p for p in inspect.signature(TEST_TIME.get(name)).parameters
                      if p not in ("self", "options") and not p.startswith("_")]
            return name + (":" + ",".join(f"{p}=VALUE" for p in params) if params else "")
    return None
