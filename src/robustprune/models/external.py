"""Models from outside the registry: torchvision's classifiers and importable factories.

``--model`` names a model in one of three ways (:func:`resolve_model`):

- a registered name (``lenet5-caffe``, ``resnet18``; ``robustprune list``) — always wins;
- ``torchvision:NAME``, one of torchvision's classification models (``torchvision:resnet18``),
  built untrained (``weights=None``; robustprune downloads nothing: pretrained weights come in as
  a file through ``--init-from``) with ``num_classes`` set to the dataset's; the prefix is
  required, so a plain name never changes meaning when a model is registered later (the
  registered ``resnet18`` is the CIFAR variant, not torchvision's);
- ``package.module:function`` (or ``package.module:Class``, a dotted attribute path after the
  colon), any importable callable returning an ``nn.Module``.

``model_args`` (``--model-args '{depth: 16}'``) are its keyword arguments. A factory also gets
``num_classes``, ``in_channels`` and ``image_size`` from the dataset when its signature names
them as parameters (a ``**kwargs`` catch-all gets none of them); ``model_args`` win over them.

An external model is wrapped in :class:`ExternalModel`: the dataset's ``Normalize`` first (inputs
stay in pixel space [0, 1], so ε keeps its units), then the model. The wrapper is a
:class:`~robustprune.models.graph.GraphNet`: its mask slots (and latent maps, one per mask site)
come from the model's traced graph, so the masked methods, the metrics and ``compact`` work on it
as on the built-in models. Building one runs a probe forward on two zero images of the dataset's
shape in eval mode, so a model that cannot take the input, or gives other than
``[batch, num_classes]`` logits, is refused at once, before the graph is traced.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.models.base import Normalize, model_mode
from robustprune.models.graph import GraphNet
from robustprune.registry import MODELS
from robustprune.utils import UserError

TORCHVISION_PREFIX = "torchvision:"
#: what a dataset passes to every model builder; not settable through ``model_args``
DATASET_KEYS = ("num_classes", "in_channels", "image_size", "mean", "std")
#: what a factory receives from the dataset when its signature names it
FACTORY_KEYS = ("num_classes", "in_channels", "image_size")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ModelSpecError(UserError, ValueError):
    """A ``--model`` / ``--model-args`` that names no buildable model; the message names the value."""


@dataclass(frozen=True)
class ModelSpec:
    """A resolved ``--model``: ``kind`` is ``registered``, ``torchvision`` or ``factory``;
    ``target`` the registry name, torchvision name or the callable."""

    name: str
    kind: str
    target: Any

    @property
    def external(self) -> bool:
        return self.kind != "registered"


def torchvision_names() -> list[str]:
    """torchvision's classification model names (``torchvision.models.list_models``)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def resolve_model(name: str) -> ModelSpec:
    """What ``name`` refers to (see the module docstring); imports a factory's module but builds
    nothing. Raises :class:`ModelSpecError` naming the value: unknown name (with the known ones),
    bad syntax, module not importable, attribute missing, not callable."""
    if not isinstance(name, str) or not name:
        raise ModelSpecError(f"model must be a non-empty string, got {name!r}")
    if name in MODELS:
        return ModelSpec(name, "registered", name)
    if name.startswith(TORCHVISION_PREFIX):
        tv = name[len(TORCHVISION_PREFIX):]
        known = torchvision_names()
        if tv not in known:
            close = [k for k in known if k.startswith(tv[:4])] if tv else []
            hint = f" (close: {', '.join(close[:8])})" if close else ""
            raise ModelSpecError(f"model {name!r}: {tv!r} is not one of torchvision's classification models"
                                 f"{hint}; known: {', '.join(known)}")
        return ModelSpec(name, "torchvision", tv)
    if ":" in name:
        return ModelSpec(name, "factory", _import_factory(name))
    hint = ""
    if name in torchvision_names():
        hint = f"; did you mean {TORCHVISION_PREFIX}{name} (torchvision's {name})?"
    raise ModelSpecError(f"unknown model {name!r}; known: {', '.join(MODELS.names())}{hint} "
                         f"(also {TORCHVISION_PREFIX}NAME for torchvision's classifiers and "
                         "package.module:function for a factory)")


def _import_factory(name: str) -> Callable[..., Any]:
    module_name, _, attr_path = name.partition(":")
    if not _DOTTED.match(module_name) or not _DOTTED.match(attr_path):
        raise ModelSpecError(f"model {name!r} is not of the form package.module:function (dotted names on both "
                             "sides of one colon)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ModelSpecError(f"model {name!r}: cannot import module {module_name!r} ({e}); is it installed "
                                 "or on PYTHONPATH?") from e
        raise ModelSpecError(f"model {name!r}: importing module {module_name!r} failed: {e}") from e
    except Exception as e:  # the user's module raised while importing
        raise ModelSpecError(f"model {name!r}: importing module {module_name!r} failed: "
                             f"{type(e).__name__}: {e}") from e
    obj: Any = module
    for i, part in enumerate(attr_path.split(".")):
        if not hasattr(obj, part):
            where = ".".join([module_name, *attr_path.split(".")[:i]])
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            raise ModelSpecError(f"model {name!r}: {where!r} has no attribute {part!r}; its public callables: "
                                 f"{', '.join(public[:20]) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelSpecError(f"model {name!r} is a {type(obj).__name__}, not a callable that returns an nn.Module")
    return obj  # type: ignore[no-any-return]


def _named_parameters(fn: Callable[..., Any]) -> set[str] | None:
    """The keyword-passable parameter names of ``fn`` (``None`` when it has no readable signature)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    return {p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_model_args(spec: ModelSpec, model_args: dict[str, Any]) -> None:
    """Refuse ``model_args`` that ``spec`` cannot take, naming them: not a mapping with string
    keys; a dataset key (``num_classes``... for a registered model, which gets them from the
    dataset); ``weights`` for torchvision (nothing is downloaded); a key a registered builder or
    a factory's signature does not name (a factory with ``**kwargs`` takes any)."""
    if not isinstance(model_args, dict) or not all(isinstance(k, str) for k in model_args):
        raise ModelSpecError(f"model_args must be a mapping of names to values, got {model_args!r}")
    if spec.kind == "registered":
        clash = sorted(set(model_args) & set(DATASET_KEYS))
        if clash:
            raise ModelSpecError(f"model_args {clash} of model {spec.name!r} come from the dataset; leave them out")
        named = _named_parameters(MODELS.get(spec.name))
        unknown = sorted(set(model_args) - (named or set()) - set(DATASET_KEYS))
        if unknown:
            takes = sorted((named or set()) - set(DATASET_KEYS))
            raise ModelSpecError(f"model {spec.name!r} takes no model_args {unknown}; it takes: "
                                 f"{', '.join(takes) or 'none'}")
    elif spec.kind == "torchvision":
        if "weights" in model_args:
            raise ModelSpecError(f"model_args 'weights' ({model_args['weights']!r}) is not accepted: robustprune "
                                 "builds torchvision models untrained and downloads nothing; pass a saved state "
                                 "dict with --init-from FILE instead")
    else:
        try:
            sig = inspect.signature(spec.target)
        except (TypeError, ValueError):
            return
        try:
            sig.bind_partial(**model_args)
        except TypeError as e:
            raise ModelSpecError(f"model_args {model_args!r} do not fit factory {spec.name}{sig}: {e}") from None


def _call(spec: ModelSpec, kwargs: dict[str, Any]) -> Any:
    if spec.kind == "torchvision":
        import torchvision

        fn: Callable[..., Any] = torchvision.models.get_model
        args: tuple[Any, ...] = (spec.target,)
        kwargs = {"weights": None, **kwargs}
    else:
        fn, args = spec.target, ()
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # the factory is the user's code: its failure is a problem with the input
        raise ModelSpecError(f"model {spec.name!r} with arguments {kwargs} failed: {type(e).__name__}: {e}") from e


def build_external(spec: ModelSpec, model_args: dict[str, Any], *, num_classes: int, in_channels: int,
                   image_size: int, mean: Sequence[float], std: Sequence[float]) -> ExternalModel:
    """Build a torchvision or factory model (see the module docstring), wrap it in the dataset's
    normalisation and probe one forward; every failure is a :class:`ModelSpecError` naming ``spec``."""
    check_model_args(spec, model_args)
    dataset = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    if spec.kind == "torchvision":
        passed = {"num_classes": num_classes}
    else:
        named = _named_parameters(spec.target) or set()
        passed = {k: v for k, v in dataset.items() if k in named}
    net = _call(spec, {**passed, **model_args})
    if not isinstance(net, nn.Module):
        raise ModelSpecError(f"model {spec.name!r} returned a {type(net).__name__}, not a torch.nn.Module")
    shape = (in_channels, image_size, image_size)
    _probe(_Probe(net, Normalize(mean, std), spec.name), spec.name, shape, num_classes,
           passed_classes="num_classes" in passed or "num_classes" in model_args)
    try:
        return ExternalModel(net, mean=mean, std=std, name=spec.name, input_shape=shape)
    except Exception as e:
        raise ModelSpecError(f"model {spec.name!r}: its graph could not be traced to find its prunable units: "
                             f"{type(e).__name__}: {e}") from e


def _logits(out: Any, name: str) -> Tensor:
    """A model output as a logits tensor: the tensor itself, or a tensor ``logits`` attribute
    (torchvision's Inception/GoogLeNet training outputs)."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if not isinstance(logits, Tensor):
        raise ModelSpecError(f"model {name!r} returned a {type(out).__name__}, not a logits tensor")
    return logits


class _Probe(nn.Module):
    """``net(normalize(x))`` as logits: what the probe forward runs before the graph is traced."""

    def __init__(self, net: nn.Module, normalize: nn.Module, name: str) -> None:
        super().__init__()
        self.net, self.normalize, self.name = net, normalize, name

    def forward(self, x: Tensor) -> Tensor:
        return _logits(self.net(self.normalize(x)), self.name)


@torch.no_grad()
def _probe(model: nn.Module, name: str, shape: tuple[int, int, int], num_classes: int, *, passed_classes: bool) -> None:
    x = torch.zeros(2, *shape)
    try:
        with model_mode(model):
            out = model(x)
    except ModelSpecError:
        raise
    except Exception as e:
        raise ModelSpecError(f"model {name!r} cannot take the dataset's input of shape {list(x.shape)}: "
                             f"{type(e).__name__}: {e}") from e
    if tuple(out.shape) != (2, num_classes):
        hint = "" if passed_classes else (" (its factory takes no num_classes parameter: pass it in model_args, "
                                           f"e.g. '{{num_classes: {num_classes}}}')")
        raise ModelSpecError(f"model {name!r} gives outputs of shape {list(out.shape)} for an input of shape "
                             f"{list(x.shape)}; expected [2, {num_classes}] logits{hint}")


class ExternalModel(GraphNet):
    """An outside model behind the dataset's normalisation: ``net(normalize(x))``, with mask slots
    from its traced graph (:class:`~robustprune.models.graph.GraphNet`).

    Follows the model contract (``model(x)`` logits for inputs in [0, 1]; ``features=True`` gives
    ``(logits, maps)``, one map per mask site). State-dict keys are ``normalize.mean``,
    ``normalize.std``, the wrapped model's own under ``net.`` and masks under ``slots.``. An output
    that is not a tensor but carries a tensor ``logits`` attribute (torchvision's
    Inception/GoogLeNet training outputs) gives those logits.

    >>> model = ExternalModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), mean=(0.1307,), std=(0.3081,),
    ...                       input_shape=(1, 28, 28))
    """

    use_own_latents = False  # the latent maps are the mask sites' outputs, read behind the normalisation

    def __init__(self, net: nn.Module, *, mean: Sequence[float], std: Sequence[float], name: str = "",
                 input_shape: Sequence[int]) -> None:
        super().__init__(net, input_shape=input_shape)
        self.normalize = Normalize(mean, std)
        self.source_name = name

    def logits_of(self, x: Tensor) -> Tensor:
        return _logits(self.net(self.normalize(x)), self.source_name or type(self.net).__name__)

    def extra_repr(self) -> str:
        return f"source={self.source_name!r}" if self.source_name else ""
