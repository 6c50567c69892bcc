"""Typed run configuration: dataclass defaults <- YAML file <- CLI flags.

The CLI builds its flags from these dataclasses (``add_dataclass_flags``), jsonargparse merges the
YAML file given with ``--config`` and the flags, and the resolved config is saved with every run.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, TypeVar

import yaml
from jsonargparse import ActionYesNo

from robustprune.data import check_eps
from robustprune.utils import atomic_write_text

#: seeds are in [0, SEED_LIMIT): what ``torch.manual_seed`` takes without overflowing
SEED_LIMIT = 2**63

#: mixed-precision modes of training (``TrainConfig.amp``)
AMP_MODES = ("none", "bf16")


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field docs double as ``--help`` text."""

    method: str = field(default="standard", metadata={"help": "training method (see `robustprune methods`)"})
    model: str = field(
        default="lenet5-caffe",
        metadata={"help": "a registered model name (see `robustprune list`), torchvision:NAME (one of torchvision's "
                          "classification models, untrained) or package.module:function (an importable factory "
                          "returning an nn.Module); docs/models.md"},
    )
    model_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "keyword arguments of the model's builder or factory, e.g. '{depth: 16, widen_factor: 4}'"},
    )
    dataset: str = field(default="mnist", metadata={"help": "mnist, fashion-mnist, cifar10 or cifar100"})
    epochs: int = field(default=1, metadata={"help": "number of training epochs"})
    out: str = field(default="runs/run", metadata={"help": "run directory"})
    data_dir: str | None = field(
        default=None, metadata={"help": "dataset directory (else $ROBUSTPRUNE_DATA, else cache)"}
    )
    refetch_data: bool = field(
        default=False, metadata={"help": "replace a damaged dataset file in the data directory by a downloaded, "
                                         "checked copy (the damaged one is kept as <name>.damaged); without it "
                                         "a damaged file is an error and is never touched"}
    )
    seed: int = field(default=0, metadata={"help": "seed; fixes a CPU run to the bit"})
    limit_train: int | None = field(default=None, metadata={"help": "train on the first N training examples"})
    val_size: int = field(default=0, metadata={"help": "hold out the last N training examples as validation"})
    batch_size: int = field(default=64, metadata={"help": "minibatch size"})
    optimizer: str = field(default="adam", metadata={"help": "adam or sgd"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate of the network weights"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "coupled L2 (gradient of wd/2 * ||w||^2)"})
    schedule: str = field(default="step", metadata={"help": "step, cosine or constant (per optimiser step)"})
    milestones: list[float] = field(
        default_factory=lambda: [0.5, 0.7],
        metadata={"help": "step schedule: fractions of training at which lr *= gamma"},
    )
    gamma: float = field(default=0.1, metadata={"help": "step schedule decay factor"})
    adv_eps: float | None = field(default=None, metadata={"help": "training attack eps (default: dataset's)"})
    adv_steps: int | None = field(default=None, metadata={"help": "training PGD steps (default: 20 MNIST, 10 CIFAR)"})
    adv_step_size: float | None = field(default=None, metadata={"help": "training PGD step (default: 0.01 / 2/255)"})
    method_args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "method hyperparameters, e.g. '{beta: 4}'"}
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "start from saved weights: a run directory, or a state dict file (.safetensors; "
                          ".pt/.pth/.bin/.ckpt read with torch.load(weights_only=True)); parts a method adds "
                          "start fresh and are named in a warning"},
    )
    init_prefix: str | None = field(
        default=None,
        metadata={"help": "comma-separated key rules for --init-from: OLD=NEW renames a key prefix (module.= "
                          "strips it), !PREFIX keeps this model's own weights under PREFIX (e.g. !fc. for a "
                          "classifier of another size)"},
    )
    resume: bool = field(default=False, metadata={"help": "continue from the last finished epoch in --out"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    channels_last: bool = field(
        default=True,
        metadata={"help": "channels_last memory format for conv models (CPU: measured faster; CUDA: unmeasured)"},
    )
    amp: str = field(
        default="none",
        metadata={"help": "none or bf16: the training loss's forward (and so its backward) under "
                          "torch.autocast(bfloat16); the attack crafting training examples stays float32 "
                          "(bf16 input gradients lose precision; PGD's sign step may not care, unmeasured). "
                          "CUDA: the GPU path; CPU: CPU autocast, slower than float32 without native bf16"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    tensorboard: bool = field(
        default=True, metadata={"help": "write TensorBoard event files under OUT/tensorboard (losses, accuracies, "
                                        "learning rates, mask keep-rates); --no-tensorboard turns it off"})
    tensorboard_every: int = field(
        default=50, metadata={"help": "optimiser steps between two TensorBoard points (their mean is written)"})

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad value (a value of the wrong type included)."""
        if self.adv_eps is not None:  # the one ε rule first: its message says what an ε is
            check_eps(self.adv_eps, what="adv_eps")
        check_fields(self)
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (0 <= self.seed < SEED_LIMIT, f"seed must be in [0, 2**63), got {self.seed}"),
            (all(isinstance(k, str) for k in self.method_args),
             f"method_args must be named by text (beta: 4), got {self.method_args!r}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.limit_train is None or self.limit_train >= 1, f"limit_train must be >= 1, got {self.limit_train}"),
            (self.val_size >= 0, f"val_size must be >= 0, got {self.val_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.optimizer in ("adam", "sgd"), f"optimizer must be adam or sgd, got {self.optimizer!r}"),
            (
                self.schedule in ("step", "cosine", "constant"),
                f"schedule must be step, cosine or constant, got {self.schedule!r}",
            ),
            (all(0 < m < 1 for m in self.milestones), f"milestones must be fractions in (0, 1), got {self.milestones}"),
            (self.adv_eps is None or eps_ok(self.adv_eps),
             f"adv_eps must be a number in [0, 1] (pixel units), got {self.adv_eps}"),
            (self.adv_steps is None or self.adv_steps >= 1, f"adv_steps must be >= 1, got {self.adv_steps}"),
            (
                self.adv_step_size is None or self.adv_step_size > 0,
                f"adv_step_size must be > 0, got {self.adv_step_size}",
            ),
            (self.tensorboard_every >= 1, f"tensorboard_every must be >= 1, got {self.tensorboard_every}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
            (
                self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                f"device must be auto, cpu or cuda, got {self.device!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if not isinstance(self.model_args, dict) or not all(isinstance(k, str) for k in self.model_args):
            raise ValueError(f"model_args must be a mapping of names to values, got {self.model_args!r}")


@dataclass(frozen=True)
class EvalConfig:
    """How a run is evaluated: the settings ``robustprune eval``, ``audit``, ``curve`` and suites
    share (each uses those it needs). ``eps``/``step_size`` default to the dataset's threat model
    (:class:`~robustprune.data.DatasetInfo`); ``defense`` names a test-time defense as data
    (``sap:pct=100,mode=fast``). Field docs double as ``--help`` text.

    >>> EvalConfig(attacks=("pgd", "eot-pgd"), limit=1000, defense="sap:pct=100").validate()
    """

    attacks: tuple[str, ...] = field(default=("pgd",), metadata={"help": "attack names (see `robustprune list`)"})
    eps: float | None = field(default=None, metadata={"help": "L-inf radius in pixel units (default: dataset's)"})
    steps: int = field(default=40, metadata={"help": "attack iterations"})
    step_size: float | None = field(
        default=None, metadata={"help": "attack step (default: dataset's, 0.01 MNIST, 2/255 CIFAR)"})
    restarts: int = field(default=1, metadata={"help": "random restarts (worst case kept per example)"})
    eot: int | None = field(default=None, metadata={"help": "gradient samples per step (eot-pgd default 10)"})
    defense: str | None = field(
        default=None, metadata={"help": "test-time defense NAME[:key=value,...] wrapping the model, e.g. "
                                        "sap:pct=100,mode=fast or bnn-sample (see `robustprune list`); random "
                                        "at test time, so attack it with EOT"})
    limit: int | None = field(default=None, metadata={"help": "evaluate the first N test examples"})
    batch_size: int = field(default=256, metadata={"help": "evaluation batch size"})
    passes: int = field(default=10, metadata={"help": "forward passes averaged for a stochastic model"})
    seed: int = field(default=0, metadata={"help": "seed of the attacks' random starts"})

    def validate(self) -> None:
        """``ValueError`` naming the first bad value (ε by :func:`robustprune.data.check_eps`)."""
        if self.eps is not None:  # the one ε rule first: its message says what an ε is
            check_eps(self.eps)
        check_fields(self)
        checks = [
            (len(self.attacks) > 0, "attacks is empty"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.step_size is None or self.step_size > 0, f"step_size must be > 0, got {self.step_size}"),
            (self.restarts >= 1, f"restarts must be >= 1, got {self.restarts}"),
            (self.eot is None or self.eot >= 1, f"eot must be >= 1, got {self.eot}"),
            (self.limit is None or self.limit >= 1, f"limit must be >= 1, got {self.limit}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.passes >= 1, f"passes must be >= 1, got {self.passes}"),
            (0 <= self.seed < SEED_LIMIT, f"seed must be in [0, 2**63), got {self.seed}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def fields(self) -> dict[str, Any]:
        """The evaluation settings by name (``evaluate_run(run, **cfg.fields())``; a subclass's own
        fields are left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalConfig)}


#: a config dataclass that has a ``validate()`` method
C = TypeVar("C")


def eval_config_of(ns: Any, *, skip: tuple[str, ...] = (), **settings: Any) -> EvalConfig:
    """The :class:`EvalConfig` of parsed flags (those :func:`add_dataclass_flags` added for it, but
    ``skip``; fields without a flag keep their defaults), with ``settings`` on top."""
    names = [f.name for f in dataclasses.fields(EvalConfig) if f.name in ns and f.name not in skip]
    return eval_config(None, **{**{k: ns[k] for k in names}, **settings})


def replaced(cls: type[C], config: C | None, settings: dict[str, Any], what: str) -> C:
    """``config`` (default ``cls()``, a dataclass with a ``validate()`` method) with ``settings``
    replacing its fields, validated; a name that is not a field raises ``ValueError`` naming it and
    the known ones (``what`` says whose settings they are)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ValueError(f"unknown {what} settings {unknown}; known: {sorted(names)}")
    cfg = dataclasses.replace(config or cls(), **settings)  # type: ignore[type-var]
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def eval_config(config: EvalConfig | None = None, **settings: Any) -> EvalConfig:
    """``config`` (default :class:`EvalConfig`) with ``settings`` replacing its fields, validated;
    an unknown setting raises ``ValueError`` naming it."""
    if "attacks" in settings and set(settings) <= {f.name for f in dataclasses.fields(EvalConfig)}:
        settings["attacks"] = tuple(settings["attacks"])
    return replaced(EvalConfig, config, settings, "evaluation")


def job_config(config: Any, **settings: Any) -> Any:
    """A job's config dataclass (one with an ``eval`` field holding an :class:`EvalConfig`) with
    ``settings`` replacing its own fields, or else its ``eval``'s (``audit_run(run, limit=100,
    autoattack="no")``), validated; a name that is neither raises ``ValueError`` naming it."""
    names = {f.name for f in dataclasses.fields(config)} - {"eval"}
    own = {k: v for k, v in settings.items() if k in names}
    rest = {k: v for k, v in settings.items() if k not in names}
    if rest:
        unknown = sorted(set(rest) - {f.name for f in dataclasses.fields(EvalConfig)})
        if unknown:
            raise ValueError(f"unknown settings {unknown} of {type(config).__name__}; known: {sorted(names)} and "
                             f"the evaluation settings {sorted(f.name for f in dataclasses.fields(EvalConfig))}")
        own["eval"] = eval_config(config.eval, **rest)
    out = dataclasses.replace(config, **own)
    if hasattr(out, "validate"):
        out.validate()
    return out


#: ``--target-sparsity`` / a suite's ``target_sparsity``: what it says (train's --help)
TARGET_SPARSITY_HELP = ("prune exactly this fraction in [0, 1) of the method's units (structured forms: "
                        "filters / channels / units; unstructured: weights), given to the method as its "
                        "target_sparsity argument (bp, anp, anp-vs, anp-vs-fast, hydra, admm, magnitude); "
                        "docs/pruning_targets.md")


def with_target_sparsity(method_args: dict[str, Any], target: Any) -> dict[str, Any]:
    """``method_args`` with ``target`` (``--target-sparsity``, a suite's ``target_sparsity``) as their
    ``target_sparsity``; ``None`` leaves them as they are. A value that is not a fraction in [0, 1),
    or one that differs from a ``target_sparsity`` already in ``method_args``, raises ``ValueError``
    naming it. Whether the method takes a target is the method's to say
    (:func:`robustprune.defenses.build_method`)."""
    if target is None:
        return dict(method_args)
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 <= target < 1:
        raise ValueError(f"target_sparsity must be a fraction in [0, 1), got {target!r}")
    inner = method_args.get("target_sparsity")
    if inner is not None and inner != target:
        raise ValueError(f"target_sparsity {target!r} differs from method_args' target_sparsity {inner!r}; "
                         "give it once")
    return {**method_args, "target_sparsity": target}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_yaml(data: dict[str, Any], path: Path) -> None:
    """Write YAML atomically (temp file + rename)."""

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def load_train_config(path: Path) -> TrainConfig:
    """Read a saved (resolved) config; unknown keys, values of the wrong type and unreadable files
    raise ``ValueError`` naming the file and the key."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: non-UTF-8 bytes, "\U10010000"
        raise ValueError(f"cannot read config {path}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config {path} is not a mapping")
    return from_dict(TrainConfig, data, source=str(path))


def from_dict(cls: type, data: dict[str, Any], *, source: str = "config") -> Any:
    """``cls(**data)`` after checking that every key is a field and every value has its field's type."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(data) - names)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        check_type(value, hints[key], f"{source}: {key}")
    return cls(**data)


def check_fields(obj: Any) -> None:
    """Every field of the dataclass instance ``obj`` has its annotated type, else ``ValueError``
    naming the field and value (``method_args: null`` in a ``--config`` file)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_type(getattr(obj, f.name), hints[f.name], f.name)


def check_type(value: Any, hint: Any, where: str) -> None:
    """Reject a YAML value of the wrong type (``epochs: "2"``) with the value in the message."""
    if type_ok(value, hint):
        return
    raise ValueError(f"{where} has the wrong type: {value!r} is not {getattr(hint, '__name__', hint)}")


def type_ok(value: Any, hint: Any) -> bool:
    """Whether a loaded YAML value fits a field annotation (``int | None``, ``list[float]``, ...); an
    int is a float, a bool is neither."""
    origin = typing.get_origin(hint)
    if origin in (UnionType, typing.Union):
        return any(type_ok(value, h) for h in typing.get_args(hint))
    if hint is NoneType:
        return value is None
    if hint is Any:
        return True
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(type_ok(v, arg) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def YES_NO() -> Any:  # noqa: N802  (an action class, spelled like one)
    """The action of a boolean flag: ``--flag`` / ``--no-flag`` (no ``type=bool`` trap)."""
    return ActionYesNo(no_prefix="no-")


def add_dataclass_flags(parser: Any, cls: type, *, skip: tuple[str, ...] = (),
                        defaults: dict[str, Any] | None = None) -> None:
    """Add one typed ``--kebab-case`` flag per dataclass field (but ``skip``); jsonargparse parses
    each value by the field's annotation (``int | None``, ``list[float]``); booleans are
    ``--flag``/``--no-flag`` switches (:func:`YES_NO`). ``defaults`` replace the fields' own."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = (defaults or {}).get(f.name, default)
        flag, helptext = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=YES_NO(), default=default, help=helptext)
        else:
            parser.add_argument(flag, dest=f.name, type=hints[f.name], default=default, help=helptext)


def eps_ok(eps: float) -> bool:
    """Whether ``eps`` passes :func:`robustprune.data.check_eps` (the one rule for an L∞ radius)."""
    try:
        check_eps(eps)
    except ValueError:
        return False
    return True
