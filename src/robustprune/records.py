"""Typed records of results: the evaluation card, the training run's record and the suite card.

Every result file is JSON written and read here, and nowhere else: builders hand a record to
``write_*``, readers get one back from ``read_*`` (or ``*.from_dict`` for data already loaded), so
a field is named once, in these dataclasses, and the modules above read attributes
(``card.eval.sparsity.paper.memory_pct``) instead of string paths.

Each record carries

- ``schema``: the layout of the file (:data:`SCHEMA`). A file without one was written before
  records had versions (schema 1) and is migrated on reading (:func:`migrate`); a newer schema
  than this code knows is refused with a message saying how to re-make the file.
- ``code``: :class:`CodeVersion`, the package version, the git revision when there is one and the
  version of each part of the code whose change alters the numbers (``eval``, ``attack:pgd``,
  ``method:anp-vs``, ...). A part the record does not name was made by that part's version 1,
  the code as it was when versions were introduced. Whether a record is stale against the
  installed code is :meth:`CodeVersion.older_parts`; the suite runner decides with it.

Fields a builder adds that no dataclass names (a method's ``eval_fields``, a test-time defense's
card fields, provenance) are kept in ``extra`` and written back at the top level, so the JSON
layout is the one the builders always wrote.

>>> card = read_eval_card("runs/x/eval/pgd.json")
>>> card.clean_acc, card.attacks[0].vulnerability.active_mean
>>> write_eval_card(path, card)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from robustprune import __version__
from robustprune.utils import atomic_write_json, git_sha

#: the layout of every record written now; 1 = files written before records had a schema
SCHEMA = 2
R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A result file that cannot be read as the record it should be (the message says how to re-make it)."""


@dataclass(frozen=True)
class CodeVersion:
    """The code that made a record: package version, git revision (``None`` outside a checkout) and
    ``parts``, the version of each part whose change alters the numbers (``{"eval": 2,
    "attack:pgd": 1}``); a part not named is at version 1."""

    package: str = "unknown"
    git: str | None = None
    parts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def installed(cls, parts: Mapping[str, int]) -> CodeVersion:
        """The installed code, with the given part versions."""
        sha = git_sha()
        return cls(package=__version__, git=None if sha == "unknown" else sha, parts=dict(sorted(parts.items())))

    def version(self, part: str) -> int:
        return int(self.parts.get(part, 1))

    def older_parts(self, installed: Mapping[str, int]) -> list[str]:
        """The parts this record's code has at an older version than ``installed``, as
        ``"attack:pgd 1 < 2"``; empty when the record is up to date."""
        return [f"{k} {self.version(k)} < {v}" for k, v in sorted(installed.items()) if self.version(k) < v]

    def to_dict(self) -> dict[str, Any]:
        return {"package": self.package, "git": self.git, "parts": dict(self.parts)}

    @classmethod
    def from_dict(cls, data: Any) -> CodeVersion:
        if not isinstance(data, Mapping):
            return cls()
        parts = data.get("parts") or {}
        if not isinstance(parts, Mapping) or not all(isinstance(v, int) for v in parts.values()):
            raise RecordError(f"code.parts must map names to integer versions, got {parts!r}")
        git = data.get("git")
        return cls(package=str(data.get("package", "unknown")), git=None if git is None else str(git),
                   parts={str(k): int(v) for k, v in parts.items()})


#: the annotations checked on reading: a number where a number belongs (a bool is no number), a
#: list or an object where one belongs
_KINDS: dict[str, tuple[type, ...]] = {"float": (int, float), "int": (int,), "str": (str,), "bool": (bool,),
                                       "list": (list,), "dict": (dict,)}


def _check_value(cls: type, key: str, value: Any) -> None:
    """Raise :class:`RecordError` naming the field and the value when ``value`` does not fit the type
    the dataclass field declares: ``None`` where the field is not optional, a value of another kind
    for ``float``, ``int``, ``str``, ``bool``, ``list[...]`` and ``dict[...]`` fields (nested
    records check themselves)."""
    annotation = str(cls.__dataclass_fields__[key].type)  # type: ignore[attr-defined]
    base, _, rest = annotation.partition(" | ")
    if value is None:
        if rest != "None":
            raise RecordError(f"{cls.__name__}.{key} must be {annotation}, got None")
        return
    kinds = _KINDS.get(base.partition("[")[0])
    if kinds is None:
        return
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise RecordError(f"{cls.__name__}.{key} must be {annotation}, got {value!r}")


class Record:
    """Shared JSON handling of the record dataclasses: known fields are typed, nested records are
    converted by ``NESTED`` (field -> record class) and ``NESTED_LISTS`` (field -> class of the
    items), everything else goes to ``extra``; ``OMIT_NONE`` fields are left out of the JSON when
    ``None`` (as the builders always did)."""

    NESTED: ClassVar[dict[str, type[Record]]] = {}
    NESTED_LISTS: ClassVar[dict[str, type[Record]]] = {}
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any]
    #: the schema of the file the record was read from (before migration); not written
    read_schema: int = SCHEMA

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        if not isinstance(data, Mapping):
            raise RecordError(f"a {cls.__name__} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known: dict[str, Any] = {}
        for key, value in data.items():
            if key not in names:
                continue
            if key == "code":
                value = CodeVersion.from_dict(value)
            else:
                _check_value(cls, key, value)
            if key in cls.NESTED and value is not None:
                value = cls.NESTED[key].from_dict(value)
            elif key in cls.NESTED_LISTS and value is not None:
                value = [cls.NESTED_LISTS[key].from_dict(v) for v in value]
            known[key] = value
        try:
            return cls(**known, extra={k: v for k, v in data.items() if k not in names})  # type: ignore[call-arg]
        except TypeError as e:  # a required field is missing
            raise RecordError(f"not a {cls.__name__}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self.OMIT_NONE:
                continue
            if isinstance(value, (Record, CodeVersion)):
                value = value.to_dict()
            elif isinstance(value, list) and f.name in self.NESTED_LISTS:
                value = [v.to_dict() for v in value]
            out[f.name] = value
        return {**out, **self.extra}


@dataclass
class Vulnerability(Record):
    """Latent vulnerability under one attack (``robustprune.metrics.vulnerability``): the paper's
    ``mean`` over every unit (pruned ones count as 0) and ``active_mean`` over the units each
    layer's mask keeps (``None`` where the model does not say which mask gates a latent map)."""

    OMIT_NONE = frozenset({"per_unit", "active_mean", "active_per_layer", "active_units", "pruned_units"})
    mean: float
    per_layer: list[float] = field(default_factory=list)
    per_unit: list[list[float]] | None = None
    active_mean: float | None = None
    active_per_layer: list[float | None] | None = None
    #: per layer, how many units are active (all of them for a layer no mask gates)
    active_units: list[int] | None = None
    #: per layer, the indices of the units its mask prunes
    pruned_units: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackEntry(Record):
    """One attack's result: robust accuracy % over ``n`` points, its parameters, vulnerability."""

    NESTED = {"vulnerability": Vulnerability}
    OMIT_NONE = frozenset({"n", "wall_s", "vulnerability", "breakdown"})
    name: str
    robust_acc: float
    params: dict[str, Any] = field(default_factory=dict)
    n: int | None = None
    wall_s: float | None = None
    vulnerability: Vulnerability | None = None
    #: AutoAttack: robust accuracy after each stage and its self-check flags
    breakdown: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transfer(self) -> bool:
        """Whether the attack is black-box (crafted on another model and transferred)."""
        return bool(self.params.get("transfer"))


@dataclass
class PaperCost(Record):
    """The paper's memory/FLOPs accounting of a pruned network (``metrics.cost.paper_cost``)."""

    memory_pct: float | None = None
    flops_speedup: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sparsity(Record):
    """Unit and weight sparsity (%, ``metrics.sparsity_summary``), with the paper's accounting
    (``paper``, the paper's architectures) and unstructured zeros' cost (``unstructured``)."""

    NESTED = {"paper": PaperCost}
    OMIT_NONE = frozenset({"paper", "unstructured", "active_units", "total_units", "unit_sparsity",
                           "weight_sparsity"})
    unit_sparsity: float | None = None
    weight_sparsity: float | None = None
    active_units: list[int] | None = None
    total_units: list[int] | None = None
    paper: PaperCost | None = None
    unstructured: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured(Record):
    """The compacted network measured against the dense one (``metrics.measured.measured_cost``)."""

    params_compact: float | None = None
    flops_speedup: float | None = None
    speedup_b256: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalCard(Record):
    """The result card of ``robustprune eval`` (``eval.card.evaluate_run``): one run under named attacks."""

    NESTED = {"sparsity": Sparsity, "measured": Measured}
    NESTED_LISTS = {"attacks": AttackEntry}
    OMIT_NONE = frozenset({"minnorm", "test_time", "sparsity", "n", "wall_s", "config",
                           "created", "total_wall_s", "stochastic", "passes", "run", "train_seed", "eval_seed",
                           "device", "device_name"})
    clean_acc: float | None = None
    schema: int = SCHEMA
    code: CodeVersion = field(default_factory=CodeVersion)
    kind: str = "eval"
    run: str | None = None
    method: str | None = None
    model: str | None = None
    dataset: str | None = None
    train_seed: int | None = None
    eval_seed: int | None = None
    source: str | None = None
    n: int | None = None
    stochastic: bool | None = None
    passes: int | None = None
    attacks: list[AttackEntry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_s: float | None = None
    minnorm: list[dict[str, Any]] | None = None
    sparsity: Sparsity | None = None
    compact: dict[str, Any] | None = None
    measured: Measured | None = None
    test_time: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    device: str | None = None
    device_name: str | None = None
    created: str | None = None
    total_wall_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def attack(self, name: str) -> AttackEntry | None:
        """The attack named ``name``, else ``None``."""
        return next((a for a in self.attacks if a.name == name), None)

    def white_box(self) -> AttackEntry | None:
        """The white-box column's attack: the one named ``pgd``, else the first white-box one."""
        found = sorted((a for a in self.attacks if not a.transfer), key=lambda a: a.name != "pgd")
        return found[0] if found else None

    def black_box(self) -> AttackEntry | None:
        """The first transfer attack."""
        return next((a for a in self.attacks if a.transfer), None)


@dataclass
class RunRecord(Record):
    """A training run's record, ``RUN/run.json`` (written by ``train.fit`` when it finishes)."""

    OMIT_NONE = frozenset({"init"})
    status: str
    schema: int = SCHEMA
    code: CodeVersion = field(default_factory=CodeVersion)
    config: dict[str, Any] = field(default_factory=dict)
    epochs_done: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    train_size: int | None = None
    wall_s: float | None = None
    method_info: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    world_size: int | None = None
    device: str | None = None
    device_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSummary(Record):
    """What a suite card keeps of a run's training (a row evaluating another row's model keeps
    only where it ran)."""

    OMIT_NONE = frozenset({"wall_s", "epoch_time_s", "train_size"})
    wall_s: float | None = None
    epochs: int | None = None
    epoch_time_s: list[float | None] | None = None
    train_size: int | None = None
    device: str | None = None
    method_info: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, run: RunRecord, *, trains: bool = True) -> TrainSummary:
        """The summary of ``run``; without ``trains`` only the device, epochs and method info."""
        device = run.device_name or run.device
        if not trains:
            return cls(device=device, epochs=run.epochs_done, method_info=run.method_info)
        return cls(wall_s=run.wall_s, epochs=run.epochs_done, epoch_time_s=[h.get("time_s") for h in run.history],
                   train_size=run.train_size, device=device, method_info=run.method_info)


@dataclass
class SuiteCard(Record):
    """A suite's card of one run (``DIR/cards/<id>-s<seed>.json``): its training summary joined to
    its evaluation card; ``stale`` names the parts of the code that changed since the card or the
    run was made, when ``compare --reuse-stale`` kept it (empty when up to date)."""

    NESTED = {"train": TrainSummary, "eval": EvalCard}
    run_id: str
    seed: int
    method: str
    model: str
    dataset: str
    eval: EvalCard
    schema: int = SCHEMA
    kind: str = "suite-run"
    suite: str | None = None
    order: int = 0
    label: str | None = None
    init_from: str | None = None
    model_of: str | None = None
    source: str | None = None
    train: TrainSummary = field(default_factory=TrainSummary)
    stale: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- migration

REMAKE = {
    "eval": "re-make it with `robustprune eval RUN` (or delete it: `robustprune compare` re-makes a suite's cards)",
    "run": "re-train the run (delete its directory; `robustprune compare` trains it again)",
    "suite-run": "re-run `robustprune compare SUITE --out DIR`, which re-makes the suite's cards",
}


def migrate(data: Any, what: str, *, source: str = "record") -> dict[str, Any]:
    """``data`` (a loaded JSON object) brought to :data:`SCHEMA`. Schema 1 (no ``schema`` field)
    gains ``schema`` and ``code`` (the package version and git revision it recorded, every part at
    version 1); a newer schema is refused. ``what``: ``eval``, ``run`` or ``suite-run``."""
    if not isinstance(data, dict):
        raise RecordError(f"{source} is not a JSON object; {REMAKE[what]}")
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise RecordError(f"{source} has schema {schema!r}, not a positive integer; {REMAKE[what]}")
    if schema > SCHEMA:
        raise RecordError(f"{source} was written by a newer robustprune (schema {schema}; this one reads up to "
                          f"{SCHEMA}): upgrade robustprune, or {REMAKE[what]}")
    if schema == SCHEMA:
        return data
    out = dict(data)  # schema 1 -> 2: the code version from the provenance fields it has
    if what != "suite-run":
        sha = out.get("git_sha")
        out["code"] = {"package": str(out.get("robustprune_version", "unknown")),
                       "git": None if sha in (None, "unknown") else str(sha), "parts": {}}
    out["schema"] = 2
    if what == "suite-run" and isinstance(out.get("eval"), dict):
        out["eval"] = migrate(out["eval"], "eval", source=f"{source} (its evaluation card)")
    return out


def _check_kind(data: dict[str, Any], kind: str, source: str, what: str) -> None:
    if data.get("kind", kind) != kind:
        raise RecordError(f"{source} is not a {what} (kind {data.get('kind')!r})")


def _read_schema(record: R, data: Any) -> R:
    record.read_schema = data.get("schema", 1)
    return record


def eval_card(data: Any, *, source: str = "evaluation card") -> EvalCard:
    """An :class:`EvalCard` from loaded JSON (any schema this code reads)."""
    new = migrate(data, "eval", source=source)
    _check_kind(new, "eval", source, "evaluation card")
    return _read_schema(EvalCard.from_dict(new), data)


def run_record(data: Any, *, source: str = "run record") -> RunRecord:
    """A :class:`RunRecord` from loaded JSON (any schema this code reads)."""
    return _read_schema(RunRecord.from_dict(migrate(data, "run", source=source)), data)


def suite_card(data: Any, *, source: str = "suite card") -> SuiteCard:
    """A :class:`SuiteCard` from loaded JSON (any schema this code reads)."""
    new = migrate(data, "suite-run", source=source)
    if new.get("kind", "suite-run") != "suite-run":
        raise RecordError(f"{source} is not a suite card (kind {new.get('kind')!r})")
    card = _read_schema(SuiteCard.from_dict(new), data)
    if isinstance(data.get("eval"), dict):
        _read_schema(card.eval, data["eval"])
    return card


def _load(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"cannot read {path}: {e}") from e


def read_eval_card(path: str | Path) -> EvalCard:
    return eval_card(_load(path), source=str(path))


def read_run_record(path: str | Path) -> RunRecord:
    return run_record(_load(path), source=str(path))


def read_suite_card(path: str | Path) -> SuiteCard:
    return suite_card(_load(path), source=str(path))


def write_record(path: str | Path, record: Record) -> Path:
    """Write any record atomically as JSON (its schema and code as they are on the record)."""
    atomic_write_json(Path(path), record.to_dict())
    return Path(path)


write_eval_card = write_run_record = write_suite_card = write_record
