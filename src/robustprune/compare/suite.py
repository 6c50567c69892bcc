"""Suite files: which runs to train (methods, seeds, dependencies) and how to evaluate them.

A suite is YAML::

    name: mnist_quick
    seeds: [0]                      # default seeds of every run
    defaults:                       # any TrainConfig field, for every run (a run's own fields win;
      model: lenet5-caffe           #   method_args are merged key by key, model_args replaced whole)
      dataset: mnist
      adv_steps: 5
    runs:
      - {id: standard, method: standard, epochs: 2}
      - {id: anp-vs, method: anp-vs, init_from: standard, method_args: {beta: 4}}
      - {id: anp-vs-75, method: anp-vs, init_from: standard, target_sparsity: 0.75, method_args: {mask_until: 0.5}}
      - {id: at, method: at}
      - {id: at-source, method: at, seeds: [100], report: false}
    eval:
      attacks: [pgd, transfer]      # white-box PGD and black-box transfer
      eps: 0.3
      steps: 40
      step_size: 0.01
      limit: null                   # a test-set prefix, or the whole test set
      source: at-source             # default transfer source of every reported run
      shard_size: null              # test points per evaluation task (a multiple of batch_size), or one task

Dependency rules. ``init_from: ID`` starts seed s of a run from seed s of run ID (ANP-VS from the
standard run of the same seed). ``source: ID`` (per run, else ``eval.source``) names the
independently trained model the transfer attack is crafted on: if ID has one seed, it serves every
seed; otherwise the i-th seed of the target is attacked from the i-th seed of ID (so the source can
be seeded apart from the targets). A run may not be its own source, nor a copy of itself (same
config and seed). ``report: false`` runs are trained (as dependencies) but neither evaluated nor
tabled. Every error raises ``ValueError`` naming the run and the value at fault. A run id names
the run's directory (``runs/<id>-s<seed>``): letters, digits and ``._+-``, a letter or digit
first, no ``..``, at most 100 characters (docs/security.md).

Evaluation variants. A run may carry its own ``eval:`` mapping, merged key by key over the suite's
(``limit``, ``attacks``, ...). ``model_of: ID`` makes a row that trains nothing and evaluates run
ID's models (every seed) with its own ``eval``: test-time defenses that need no fine-tuning, so the
table shows them beside the model they wrap::

      - {id: at+sap, model_of: at, eval: {defense: {name: sap, pct: 100}, attacks: [pgd, eot-pgd], limit: 1000}}
      - {id: at-bnn-sampled, model_of: at-bnn, eval: {defense: bnn-sample, attacks: [pgd, eot-pgd]}}

Target sparsity. ``target_sparsity: S`` (in ``defaults`` or per run; a run's own wins, ``null``
clears the default) is the method's ``target_sparsity`` argument (as ``train --target-sparsity``):
it is written into the run's ``method_args``, so a run's config is the same whichever way it was
given; a different ``target_sparsity`` inside ``method_args`` is refused, and so is a method that
prunes to no target (``at``, ``standard``, ...), naming the run, the method and the value.

``defense`` names a registered test-time defense with its options (``sap`` with ``pct`` and
``mode``; ``bnn-sample`` for an ``at-bnn`` run; see ``robustprune list``). A defense is named only
so: a key that spells it as a setting of its own is refused, naming the ``defense:`` to write
(``scripts/migrate_suite.py`` rewrites older suite files). Both defenses make the model
random, so their rows should list ``pgd`` (single-sample, the original papers' evaluation) beside
``eot-pgd`` (the adaptive one).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustprune.config import SEED_LIMIT, EvalConfig, TrainConfig, check_type, with_target_sparsity
from robustprune.defenses import TestTimeSpec, build_method, spelled_as_setting
from robustprune.eval.card import attack_names
from robustprune.eval.shards import check_shard_size
from robustprune.models import check_model_args, resolve_model
from robustprune.registry import METHODS
from robustprune.train.run import method_context

#: TrainConfig fields a suite does not set: the runner owns them
RUNNER_FIELDS = ("out", "resume", "seed", "progress")
RUN_KEYS = ("id", "seeds", "source", "report", "init_from", "eval", "model_of", "target_sparsity")
#: suite keys that are no TrainConfig field: the method's ``target_sparsity``, written into ``method_args``
TARGET_KEY = "target_sparsity"
#: the keys a ``model_of`` row may set (it trains nothing, so no training fields)
MODEL_OF_KEYS = ("id", "model_of", "eval", "source", "report")
TOP_KEYS = ("name", "description", "seeds", "defaults", "runs", "eval")
#: a run id names directories and files in the suite directory (``runs/<id>-s<seed>``): letters,
#: digits and ``._+-``, starting with a letter or digit, no ``..``, at most ID_MAX characters, so no
#: id is a path that leaves the suite directory (``../x``, ``/abs``, ``a/b``) or too long a file name
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
ID_MAX = 100


@dataclass(frozen=True)
class EvalSpec(EvalConfig):
    """How a reported run is evaluated: an :class:`~robustprune.config.EvalConfig` (suites default to
    ``attacks: [pgd, transfer]``) plus ``source``, the id of the run the transfer attack is crafted on.
    ``defense`` holds the canonical text of a :class:`~robustprune.defenses.TestTimeSpec`."""

    attacks: tuple[str, ...] = ("pgd", "transfer")
    source: str | None = None
    #: test points per evaluation shard (``None``: one task per evaluation); a multiple of
    #: ``batch_size``; not a setting of the card's numbers (the merged card is the unsharded one)
    shard_size: int | None = None

    def settings(self) -> dict[str, Any]:
        """The values that decide a card's numbers (``source`` is resolved per run instead).

        The test-time defense adds its own keys (``TestTimeDefense.settings``) only when set, so
        the cards of rows without one keep the names they had before defenses existed."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalConfig) if f.name != "defense"}
        out["attacks"] = list(self.attacks)
        if self.defense is not None:
            out.update(TestTimeSpec.parse(self.defense).build().settings())  # type: ignore[union-attr]
        return out


@dataclass(frozen=True)
class RunEntry:
    """One row of the suite: a training recipe repeated over ``seeds``."""

    id: str
    seeds: tuple[int, ...]
    train: dict[str, Any]
    init_from: str | None = None
    source: str | None = None
    report: bool = True
    eval: EvalSpec | None = None
    model_of: str | None = None

    def config(self, seed: int, *, out: str, init_from: str | None = None) -> TrainConfig:
        """The run's TrainConfig for one seed, written to ``out``."""
        return TrainConfig(**self.train, seed=seed, out=out, init_from=init_from, progress=True)


@dataclass(frozen=True)
class Suite:
    """A parsed, validated suite (see the module docstring for the file format)."""

    name: str
    runs: tuple[RunEntry, ...]
    eval: EvalSpec = field(default_factory=EvalSpec)
    description: str = ""

    def run(self, run_id: str) -> RunEntry:
        for r in self.runs:
            if r.id == run_id:
                return r
        raise ValueError(f"suite {self.name!r} has no run {run_id!r}")

    def eval_of(self, run: RunEntry) -> EvalSpec:
        """How ``run`` is evaluated: its own ``eval`` (merged over the suite's) or the suite's."""
        return self.eval if run.eval is None else run.eval

    def source_seed(self, run: RunEntry, seed: int) -> tuple[str, int] | None:
        """(source run id, its seed) whose examples attack ``run``'s seed ``seed``; None without a
        source or when the run's evaluation has no transfer attack."""
        if run.source is None or "transfer" not in self.eval_of(run).attacks:
            return None
        src = self.run(run.source)
        if len(src.seeds) == 1:
            return src.id, src.seeds[0]
        return src.id, src.seeds[run.seeds.index(seed)]


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; any problem raises ``ValueError`` naming the file and value."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read suite {path}: {e}") from e
    except (yaml.YAMLError, ValueError) as e:  # PyYAML raises ValueError for "\U10010000" (chr() range)
        raise ValueError(f"suite {path} is not valid YAML: {e}") from e
    return parse_suite(data, default_name=path.stem, where=str(path))


def parse_suite(data: Any, *, default_name: str = "suite", where: str = "suite") -> Suite:
    """Build a :class:`Suite` from the loaded YAML mapping and validate it."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a suite must be a mapping with 'runs', got {type(data).__name__}")
    _no_unknown(data, TOP_KEYS, where)
    seeds = _seeds(data.get("seeds", [0]), f"{where}: seeds")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ValueError(f"{where}: defaults must be a mapping, got {defaults!r}")
    train_keys = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNNER_FIELDS)
    _no_unknown(defaults, tuple(k for k in train_keys if k != "init_from") + (TARGET_KEY,), f"{where}: defaults")
    runs_data = data.get("runs")
    if not isinstance(runs_data, list) or not runs_data:
        raise ValueError(f"{where}: 'runs' must be a non-empty list of runs, got {runs_data!r}")
    eval_data = data.get("eval") or {}
    ev = _eval_spec(eval_data, where)
    runs = tuple(_run_entry(r, i, defaults, seeds, eval_data, train_keys, where) for i, r in enumerate(runs_data))
    runs = _resolve_model_of(runs, where)
    suite = Suite(name=str(data.get("name", default_name)), runs=runs, eval=ev,
                  description=str(data.get("description", "")))
    validate_suite(suite, where=where)
    return suite


def _no_unknown(data: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")


def _seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise ValueError(f"{where} must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} has repeated seeds: {value!r}")
    bad = [s for s in value if not 0 <= s < SEED_LIMIT]
    if bad:
        raise ValueError(f"{where}: seeds must be in [0, 2**63), got {bad!r}")
    return tuple(value)


def _eval_spec(data: Any, where: str) -> EvalSpec:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: eval must be a mapping, got {data!r}")
    known = tuple(f.name for f in dataclasses.fields(EvalSpec))
    for key in data:
        hint = spelled_as_setting(str(key)) if key not in known else None
        if hint is not None:
            name, _, opts = hint.partition(":")
            mapping = ", ".join([f"name: {name}", *(o.replace("=", ": ") for o in opts.split(",") if o)])
            raise ValueError(f"{where}: eval: {key!r} is not an evaluation setting: name the test-time defense as "
                             f"data, defense: {{{mapping}}} (scripts/migrate_suite.py rewrites a suite file)")
    _no_unknown(data, known, f"{where}: eval")
    hints = typing.get_type_hints(EvalSpec)
    for key, value in data.items():
        if key != "defense":
            check_type(value, hints[key], f"{where}: eval.{key}")
    kw = dict(data)
    try:
        spec = TestTimeSpec.parse(data.get("defense"))
    except ValueError as e:
        raise ValueError(f"{where}: eval: {e}") from None
    kw["defense"] = None if spec is None else str(spec)
    if "attacks" in kw:
        kw["attacks"] = tuple(kw["attacks"])
    ev = EvalSpec(**kw)
    bad = [a for a in ev.attacks if a not in attack_names()]
    if bad:
        raise ValueError(f"{where}: unknown attacks {bad}; known: {', '.join(attack_names())}")
    try:
        ev.validate()
        if ev.shard_size is not None:
            check_shard_size(ev.shard_size, ev.batch_size)
    except ValueError as e:
        raise ValueError(f"{where}: eval.{e}") from None
    return ev


def _run_entry(data: Any, index: int, defaults: dict[str, Any], seeds: tuple[int, ...], eval_data: dict[str, Any],
               train_keys: tuple[str, ...], where: str) -> RunEntry:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: runs[{index}] must be a mapping, got {data!r}")
    run_id = check_run_id(data.get("id"), f"{where}: runs[{index}]")
    here = f"{where}: run {run_id!r}"
    if "seed" in data:
        raise ValueError(f"{here}: use 'seeds: [{data['seed']}]' instead of 'seed'")
    run_eval = data.get("eval") or {}
    if not isinstance(run_eval, dict):
        raise ValueError(f"{here}: eval must be a mapping, got {run_eval!r}")
    ev = _eval_spec({**eval_data, **run_eval}, here) if run_eval else None
    source = data.get("source", eval_data.get("source"))
    report = data.get("report", True)
    if not isinstance(report, bool):
        raise ValueError(f"{here}: report must be true or false, got {report!r}")
    if "model_of" in data:
        _no_unknown(data, MODEL_OF_KEYS, f"{here} (a model_of row trains nothing)")
        if not isinstance(data["model_of"], str):
            raise ValueError(f"{here}: model_of must be a run id, got {data['model_of']!r}")
        return RunEntry(id=run_id, seeds=(), train={}, source=source, report=report, eval=ev,
                        model_of=data["model_of"])
    _no_unknown(data, RUN_KEYS + tuple(k for k in train_keys if k != "init_from"), here)
    train = {**{k: v for k, v in defaults.items() if k != TARGET_KEY},
             **{k: v for k, v in data.items() if k not in RUN_KEYS}}
    for args, whose in ((defaults.get("method_args"), f"{where}: defaults"), (data.get("method_args"), here)):
        if args is not None and not isinstance(args, dict):
            raise ValueError(f"{whose}: method_args must be a mapping, got {args!r}")
    train["method_args"] = {**(defaults.get("method_args") or {}), **(data.get("method_args") or {})}
    target = data[TARGET_KEY] if TARGET_KEY in data else defaults.get(TARGET_KEY)
    try:
        train["method_args"] = with_target_sparsity(train["method_args"], target)
    except ValueError as e:
        raise ValueError(f"{here}: {e}") from None
    hints = typing.get_type_hints(TrainConfig)
    for key, value in train.items():
        check_type(value, hints[key], f"{here}: {key}")
    for key in ("init_from", "source"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{here}: {key} must be a run id, got {data[key]!r}")
    return RunEntry(id=run_id, seeds=_seeds(data.get("seeds", list(seeds)), f"{here}: seeds"), train=train,
                    init_from=data.get("init_from"), source=source, report=report, eval=ev)


def check_run_id(run_id: Any, where: str) -> str:
    """``run_id`` if it is a safe run id (see :data:`ID_PATTERN`), else ``ValueError`` naming it."""
    if (not isinstance(run_id, str) or not ID_PATTERN.fullmatch(run_id) or ".." in run_id
            or len(run_id) > ID_MAX):
        raise ValueError(f"{where} needs an id of letters, digits, '.', '_', '+', '-' (no '..', a letter or "
                         f"digit first, at most {ID_MAX} characters), got {run_id!r}")
    return run_id


def _resolve_model_of(runs: tuple[RunEntry, ...], where: str) -> tuple[RunEntry, ...]:
    """A ``model_of`` row takes its target's training fields and seeds (it evaluates those models)."""
    by_id = {r.id: r for r in runs}
    out = []
    for r in runs:
        if r.model_of is not None:
            target = by_id.get(r.model_of)
            if target is None:
                raise ValueError(f"{where}: run {r.id!r}: model_of names run {r.model_of!r}, which the suite "
                                 "does not define")
            if target.model_of is not None:
                raise ValueError(f"{where}: run {r.id!r}: model_of must name a trained run, but {target.id!r} is "
                                 f"itself a model_of row")
            r = dataclasses.replace(r, train=dict(target.train), seeds=target.seeds, init_from=target.init_from)
        out.append(r)
    return tuple(out)


def validate_suite(suite: Suite, *, where: str = "suite") -> None:
    """Names, methods, configs, dependencies, sources, cycles; raises ``ValueError`` at the first fault."""
    ids = [r.id for r in suite.runs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{where}: repeated run ids {dup}")
    for run in suite.runs:
        _validate_run(suite, run, where=f"{where}: run {run.id!r}")
    init_order(suite)


def _validate_run(suite: Suite, run: RunEntry, *, where: str) -> None:
    cfg = run.config(run.seeds[0], out="-")
    if cfg.method not in METHODS:
        raise ValueError(f"{where}: unknown method {cfg.method!r}; known: {', '.join(METHODS.names())}")
    try:
        check_model_args(resolve_model(cfg.model), cfg.model_args)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    try:
        cfg.validate()
        method = build_method(cfg.method, ctx=method_context(cfg, train_size=1), **cfg.method_args)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    defense = suite.eval_of(run).defense
    if defense is not None:
        try:
            TestTimeSpec.parse(defense).build().check(method)  # type: ignore[union-attr]
        except ValueError as e:
            raise ValueError(f"{where}: eval: {e}") from None
    for kind, dep_id in (("init_from", run.init_from), ("source", run.source)):
        if dep_id is None:
            continue
        if dep_id not in [r.id for r in suite.runs]:
            raise ValueError(f"{where}: {kind} names run {dep_id!r}, which the suite does not define")
        dep = suite.run(dep_id)
        for key in ("model", "model_args", "dataset"):
            if getattr(dep.config(dep.seeds[0], out="-"), key) != getattr(cfg, key):
                raise ValueError(f"{where}: {kind} run {dep_id!r} has another {key}")
    if run.init_from is not None:
        missing = sorted(set(run.seeds) - set(suite.run(run.init_from).seeds))
        if missing:
            raise ValueError(f"{where}: init_from run {run.init_from!r} lacks seeds {missing} (same seed needed)")
    if run.report:
        _validate_source(suite, run, where=where)


def _validate_source(suite: Suite, run: RunEntry, *, where: str) -> None:
    if "transfer" in suite.eval_of(run).attacks and run.source is None:
        raise ValueError(f"{where}: the transfer attack needs a source run (eval.source or the run's source)")
    if run.source is None or "transfer" not in suite.eval_of(run).attacks:
        return
    src = suite.run(run.source)
    if len(src.seeds) not in (1, len(run.seeds)):
        raise ValueError(f"{where}: source run {src.id!r} has {len(src.seeds)} seeds; "
                         f"it needs 1 or as many as the target ({len(run.seeds)})")
    for seed in run.seeds:
        src_id, src_seed = suite.source_seed(run, seed)  # type: ignore[misc]
        mine = dataclasses.replace(run.config(seed, out="-"), init_from=run.init_from)
        theirs = dataclasses.replace(src.config(src_seed, out="-"), init_from=src.init_from)
        if (src_id, src_seed) == (run.id, seed) or mine == theirs:
            raise ValueError(f"{where}: seed {seed} would be attacked from {src_id!r} seed {src_seed}, the same "
                             "model; black-box needs an independently trained source (another run or seed)")


def init_order(suite: Suite) -> list[str]:
    """Run ids in an order where every ``init_from`` comes first; a cycle raises ``ValueError``."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(run_id: str, path: list[str]) -> None:
        if state.get(run_id) == 2:
            return
        if state.get(run_id) == 1:
            cycle = path[path.index(run_id):] + [run_id]
            raise ValueError(f"suite {suite.name!r}: init_from cycle {' -> '.join(cycle)}")
        state[run_id] = 1
        dep = suite.run(run_id).init_from
        if dep is not None:
            visit(dep, path + [run_id])
        state[run_id] = 2
        order.append(run_id)

    for r in suite.runs:
        visit(r.id, [])
    return order
