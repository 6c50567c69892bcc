"""``--init-from``: warm-start a model from a run or from a plain state-dict file.

Sources (:func:`read_state_dict`):

- a robustprune run directory (its ``model.safetensors``) or any ``.safetensors`` file;
- a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` file, read with ``torch.load(weights_only=True)``
  only: a file that holds pickled Python objects other than tensors and plain containers is
  refused (:class:`InitFromError` naming what torch refused), never unpickled. A checkpoint that
  nests its weights under ``state_dict``, ``model_state_dict``, ``model`` or ``module`` is
  unwrapped.

Keys are then fitted to the model (:func:`fit_keys`), in this order:

1. a prefix that every key carries and no model key does, ``module.`` (DataParallel / DDP) or
   ``_orig_mod.`` (``torch.compile``), is stripped;
2. the user's rules (``--init-prefix``, comma-separated, first matching rule per key):
   ``OLD=NEW`` renames the prefix ``OLD`` to ``NEW`` (``module.=`` strips it);
3. for a wrapped outside model (``models.ExternalModel``) whose source keys are the bare
   model's, ``net.`` is put in front (the wrapper holds the model under ``net``);
4. a weight a method re-parametrised (AT-BNN's ``layer.parametrizations.weight.original``) is
   filled from the plain ``layer.weight``;
5. rules ``!PREFIX`` drop source keys under ``PREFIX`` (in this model's key names; on a wrapped
   outside model ``!fc.`` also means ``!net.fc.``): the model keeps its own (fresh) weights
   there, e.g. ``!fc.`` for a classifier head of another size.

Then every source key must land on a model key of the same shape. Model keys the source lacks
are allowed only when they are *fresh*: added by the training method (CAS heads, BNN's ρ, masks,
HYDRA scores: the prepared model's keys that the bare architecture does not have), kept by a
``!`` rule, or the dataset's ``Normalize`` buffers. They keep their initial values and a
warning names them; anything else missing, unexpected or of another shape is an
:class:`InitFromError` naming the keys.
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.models import ExternalModel, Normalize, mask_parameters
from robustprune.sparsity.magnitude import fresh_state_keys
from robustprune.train.checkpoint import load_weights
from robustprune.utils import UserError

#: suffixes read with ``torch.load(weights_only=True)``
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
#: keys under which checkpoints commonly nest their state dict, tried in this order
NEST_KEYS = ("state_dict", "model_state_dict", "model", "module")
#: wrappers' prefixes stripped when every source key carries one
AUTO_STRIP = ("module.", "_orig_mod.")
_PARAMETRIZED = re.compile(r"^(?:(.*)\.)?parametrizations\.([^.]+)\.original$")
#: how many keys an error or warning lists
SHOW = 10


class InitFromError(UserError, ValueError):
    """An ``--init-from`` source that cannot be read or does not fit the model; names file and keys."""


@dataclass(frozen=True)
class KeyRules:
    """Parsed ``--init-prefix``: ``renames`` (OLD, NEW) pairs and ``keep`` prefixes (``!PREFIX``)."""

    renames: tuple[tuple[str, str], ...] = ()
    keep: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> KeyRules:
        """``"module.=,backbone.=net.,!fc."`` -> renames and keep prefixes; a rule that is neither
        ``OLD=NEW`` nor ``!PREFIX`` raises :class:`InitFromError` naming it."""
        renames: list[tuple[str, str]] = []
        keep: list[str] = []
        for raw in (text or "").split(","):
            rule = raw.strip()
            if not rule:
                continue
            if rule.startswith("!"):
                if len(rule) == 1 or "=" in rule:
                    raise InitFromError(f"--init-prefix rule {rule!r}: '!PREFIX' needs a prefix and no '='")
                keep.append(rule[1:])
            elif rule.count("=") == 1 and not rule.startswith("="):
                old, new = rule.split("=")
                renames.append((old, new))
            else:
                raise InitFromError(f"--init-prefix rule {rule!r} is neither OLD=NEW (OLD not empty) nor !PREFIX")
        return cls(tuple(renames), tuple(keep))


@dataclass
class InitReport:
    """What :func:`warm_start` did: the source, how many tensors it loaded, the model keys that
    kept their initial values (``fresh``) and the key rewrites applied (``renamed``: a few
    examples, old -> new)."""

    source: str
    loaded: int
    fresh: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "loaded": self.loaded, "fresh": list(self.fresh),
                "renamed_examples": dict(list(self.renamed.items())[:SHOW])}


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return "[" + ", ".join(keys[:SHOW]) + "]" + more


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _unnest(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensor mapping inside a loaded checkpoint (see :data:`NEST_KEYS`)."""
    seen = []
    for _ in range(4):
        if _is_tensor_dict(obj):
            return {str(k): v for k, v in obj.items()}
        if not isinstance(obj, dict):
            break
        key = next((k for k in NEST_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        seen.append(key)
        obj = obj[key]
    where = "".join(f"[{k!r}]" for k in seen)
    if isinstance(obj, dict) and not obj:
        raise InitFromError(f"--init-from {path}{where}: an empty mapping, no weights")
    if isinstance(obj, dict):
        other = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
        raise InitFromError(f"--init-from {path}{where}: not a state dict (a mapping of names to tensors); its "
                            f"non-tensor entries: {_listing(other)}; weights nested under another key than "
                            f"{', '.join(NEST_KEYS)} need re-saving as a plain state dict")
    raise InitFromError(f"--init-from {path}{where}: holds a {type(obj).__name__}, not a state dict "
                        "(save model.state_dict(), not the model)")


def read_state_dict(source: str | Path) -> dict[str, Tensor]:
    """The tensors of ``source`` (a run directory or a file; see the module docstring)."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.is_file():
            raise InitFromError(f"--init-from {source}: a directory without model.safetensors (not a finished "
                                "robustprune run)")
    if not path.exists():
        raise FileNotFoundError(f"--init-from {source}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return load_weights(path)
    if suffix not in TORCH_SUFFIXES:
        raise InitFromError(f"--init-from {source}: unknown file type {path.suffix!r}; expected a run directory, "
                            f".safetensors or {', '.join(TORCH_SUFFIXES)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln), None)
        if refused is None:
            raise InitFromError(f"--init-from {source}: cannot read it with torch.load: {e}") from e
        why = refused
        raise InitFromError(f"--init-from {source}: refused, the file holds pickled Python objects that "
                            f"torch.load(weights_only=True) does not load ({why}); robustprune never unpickles "
                            "arbitrary objects: save a plain state dict (torch.save(model.state_dict(), ...)) "
                            "or a .safetensors file") from e
    except Exception as e:  # torch raises several types for damaged files
        raise InitFromError(f"--init-from {source}: cannot read it with torch.load: {type(e).__name__}: {e}") from e
    return _unnest(obj, path)


def _rename(key: str, rules: KeyRules) -> str:
    for old, new in rules.renames:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def fit_keys(weights: dict[str, Tensor], model_keys: set[str], rules: KeyRules, *,
             external: bool) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Steps 1-5 of the module docstring: ``weights`` under the model's key names, and a map of
    every rewritten key (old -> new)."""
    keys = {k: k for k in weights}
    for prefix in AUTO_STRIP:
        if all(k.startswith(prefix) for k in keys.values()) and not any(k.startswith(prefix) for k in model_keys):
            keys = {o: k[len(prefix):] for o, k in keys.items()}
    keys = {o: _rename(k, rules) for o, k in keys.items()}
    if external and not any(k.startswith(("net.", "normalize.")) for k in keys.values()):
        keys = {o: "net." + k for o, k in keys.items()}
    plain_of = {}
    for mk in model_keys:
        m = _PARAMETRIZED.match(mk)
        if m:
            plain_of[f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)] = mk
    keys = {o: plain_of[k] if k in plain_of and k not in model_keys else k for o, k in keys.items()}
    out: dict[str, Tensor] = {}
    for o, k in keys.items():
        if any(k.startswith(p) for p in rules.keep):
            continue
        if k in out:
            raise InitFromError(f"--init-from: keys {o!r} and another both map to {k!r} (check --init-prefix)")
        out[k] = weights[o]
    return out, {o: k for o, k in keys.items() if o != k}


def _canonical(key: str) -> str:
    """``a.parametrizations.weight.original`` -> ``a.weight`` (the key before a method
    re-parametrised it); other keys unchanged."""
    m = _PARAMETRIZED.match(key)
    if not m:
        return key
    return f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)


def added_keys(model: nn.Module, base_keys: set[str] | None) -> set[str]:
    """State-dict keys a training method added to the bare architecture: those of ``model`` whose
    pre-parametrisation name is not in ``base_keys`` (the bare model's keys). Without
    ``base_keys`` (a model prepared elsewhere): mask parameters and the masks and scores that
    ``sparsity.magnitude.fresh_state_keys`` knows."""
    own = set(model.state_dict())
    if base_keys is not None:
        return {k for k in own if k not in base_keys and _canonical(k) not in base_keys}
    mask_ids = {id(p) for p in mask_parameters(model)}
    return {k for k, p in model.named_parameters() if id(p) in mask_ids} | fresh_state_keys(model)


def _gainless_mask(model: nn.Module, key: str) -> bool:
    """Whether ``key`` is the ``gain`` of one of ``model``'s masks that has none (a paper-init mask
    offered a function-preserving source's gain)."""
    name, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return False
    return leaf == "gain" and hasattr(module, "gain") and module.gain is None and hasattr(module, "a_uc")


def _normalize_keys(model: nn.Module) -> set[str]:
    return {f"{name}.{b}" if name else b for name, m in model.named_modules() if isinstance(m, Normalize)
            for b in ("mean", "std")}


def warm_start(model: nn.Module, source: str | Path, *, base_keys: set[str] | None = None,
               prefix: str | None = None, method: str | None = None, warn: bool = True) -> InitReport:
    """Copy ``source``'s weights and buffers (BN statistics included) into ``model``.

    ``base_keys`` are the bare architecture's state-dict keys (before the method's ``prepare``):
    the rest of ``model``'s keys are the method's and may start fresh. ``prefix`` holds the
    ``--init-prefix`` rules. Model keys left at their initial values are named in a
    ``UserWarning`` (when ``warn``) and in the returned :class:`InitReport`."""
    rules = KeyRules.parse(prefix)
    external = isinstance(model, ExternalModel)
    if external:  # ``!fc.`` on a wrapped model means the wrapped model's ``fc.``: ``net.fc.``
        rules = KeyRules(rules.renames, tuple(dict.fromkeys(
            q for p in rules.keep for q in ((p,) if p.startswith(("net.", "normalize.")) else (p, "net." + p)))))
    raw = read_state_dict(source)
    own = model.state_dict()
    weights, renamed = fit_keys(raw, set(own), rules, external=external)
    kept = {k for k in own if any(k.startswith(p) for p in rules.keep)}
    may_be_fresh = added_keys(model, base_keys) | kept | _normalize_keys(model)
    unexpected = sorted(set(weights) - set(own))
    missing = sorted(set(own) - set(weights) - may_be_fresh)
    bad_shape = sorted(f"{k} {list(weights[k].shape)} vs model {list(own[k].shape)}"
                       for k in set(weights) & set(own) if weights[k].shape != own[k].shape)
    if unexpected or missing or bad_shape:
        parts = [f"{name} {_listing(keys)}" for name, keys in
                 (("unexpected", unexpected), ("missing", missing), ("shape mismatch", bad_shape)) if keys]
        hint = ""
        if not set(weights) & set(own):
            hint = (f"; no key matched: the source's look like {_listing(sorted(raw)[:3])}, this model's like "
                    f"{_listing(sorted(own)[:3])} (rename prefixes with --init-prefix OLD=NEW)")
        elif bad_shape:
            hint = "; keep this model's own layers with --init-prefix '!PREFIX' (e.g. a classifier of another size)"
        elif unexpected and not missing and all(_gainless_mask(model, k) for k in unexpected):
            hint = ("; the source's masks carry a gain (it was trained with mask_init: function-preserving) and "
                    "this model's masks have none (mask_init: paper): add mask_init: function-preserving to "
                    "--method-args, so the masks take the source's gain and compute what the source did")
        raise InitFromError(f"--init-from {source}: weights do not fit this model: {'; '.join(parts)}{hint}")
    model.load_state_dict(weights, strict=False)
    fresh = sorted(set(own) - set(weights))
    report = InitReport(source=str(source), loaded=len(weights), fresh=fresh, renamed=renamed)
    if fresh and warn:
        by = f" (method {method!r})" if method else ""
        warnings.warn(f"--init-from {source}: loaded {len(weights)} tensors; {len(fresh)} keys not in the source "
                      f"keep their initial values{by}: {_listing(fresh)}", stacklevel=3)
    return report
