"""``robustprune import``: a run directory made from an existing trained network, with no training.

The run is what ``train`` would have written had it trained the network itself, so every job
(``eval``, ``audit``, ``curve``, ``compact``, ``export``, ...) and every method's ``--init-from``
accept it:

- ``config.yaml``: the config that rebuilds the network (model, model args, dataset, and the
  method that describes its training, ``standard`` unless said). Its ``epochs`` is the config's
  default (a config cannot say 0): run.json's ``epochs_done`` (0) is the count;
- ``model.safetensors``: the weights, read and fitted to the model as ``--init-from`` does
  (:mod:`robustprune.train.warmstart`: run directories, ``.safetensors``, ``.pt``/``.pth`` read
  with ``torch.load(weights_only=True)``, nested checkpoints, ``module.`` prefixes, rename rules).
  Every key of the model must come from the file, except the dataset's normalisation in front of
  an outside model (``normalize.mean``/``std``: a warning and ``init.fresh`` name them); anything missing,
  unexpected or of another shape is an :class:`ImportRunError` naming the keys;
- ``run.json``: ``status: complete``, ``epochs_done: 0``, an empty history, and ``imported``: where
  the weights came from (the file's absolute path, size and SHA-256, the date of the import).

The directory is written under a temporary name and renamed when complete; ``out`` must not exist.

>>> import_run(model="torchvision:resnet18", weights="resnet18_cifar10.pt", dataset="cifar10", out="runs/r18")
>>> load_run("runs/r18").model                        # eval, audit, compact, --init-from: as any run
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from robustprune.config import TrainConfig, save_yaml, to_dict
from robustprune.defenses import build_method
from robustprune.models import Normalize
from robustprune.records import SCHEMA, CodeVersion, run_record, write_run_record
from robustprune.registry import METHODS
from robustprune.train.checkpoint import save_weights
from robustprune.train.loop import saved_config
from robustprune.train.run import build_model_for, method_context, train_code_parts
from robustprune.train.warmstart import InitFromError, KeyRules, warm_start
from robustprune.utils import file_sha256, provenance


class ImportRunError(InitFromError):
    """Weights that cannot become a run: unreadable, or not fitting the model (names the keys)."""


def _weights_file(weights: Path) -> Path:
    """The file that holds the weights (a run directory's ``model.safetensors``)."""
    return weights / "model.safetensors" if weights.is_dir() else weights


def import_run(*, model: str, weights: str | Path, dataset: str, out: str | Path,
               model_args: dict[str, Any] | None = None, method: str = "standard",
               prefix: str | None = None) -> Path:
    """Make the run directory ``out`` from the trained weights ``weights`` of ``model`` on
    ``dataset`` (see the module docstring); returns ``out``.

    ``method`` names how the network was trained (``standard``, ``at``, ``trades``, ...: the run's
    record and a benchmark export's "pretraining" say so); a method whose model holds parts of its
    own (masks, scores) needs them in the file. ``prefix`` holds rename rules as
    ``--init-prefix`` does (``OLD=NEW``, comma-separated); ``!PREFIX`` rules, which would leave
    layers at random values, are refused. Bad values raise ``ValueError`` naming them; weights
    that do not fit raise :class:`ImportRunError` naming the keys."""
    out, source = Path(out), Path(weights)
    if out.exists():
        raise ValueError(f"output directory {out} already exists; choose another --out or remove it")
    METHODS.get(method)  # an unknown name raises ValueError naming the known ones
    if KeyRules.parse(prefix).keep:
        raise ValueError(f"--weights-prefix {prefix!r}: an imported run keeps no layer at random values, so "
                         "'!PREFIX' rules are refused (train with --init-from to start some layers fresh)")
    cfg = TrainConfig(method=method, model=model, model_args=dict(model_args or {}), dataset=dataset, out=str(out))
    cfg.validate()
    info_method = build_method(cfg.method, ctx=method_context(cfg, train_size=1), **cfg.method_args)
    net = info_method.prepare(build_model_for(cfg))
    own = set(net.state_dict())
    normalize = {f"{n}.{b}" if n else b for n, m in net.named_modules() if isinstance(m, Normalize)
                 for b in ("mean", "std")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the fresh keys are checked below
            report = warm_start(net, source, base_keys=own, prefix=prefix, warn=False)
    except InitFromError as e:
        text = str(e).replace("--init-from", "--weights").replace("--init-prefix", "--weights-prefix")
        raise ImportRunError(text) from e
    if set(report.fresh) - normalize:  # only a ``!`` rule could leave these; refused above
        raise ImportRunError(f"--weights {source}: missing {sorted(set(report.fresh) - normalize)}")
    if report.fresh:
        warnings.warn(f"--weights {source}: the file has no {', '.join(report.fresh)}; the run feeds the network "
                      f"{cfg.dataset}'s normalisation (as training would): the weights must have been trained on "
                      "inputs normalised that way (else include those two tensors in the file)", stacklevel=2)
    file = _weights_file(source).resolve()
    imported = {"weights": str(file), "bytes": file.stat().st_size, "sha256": file_sha256(file),
                "model": model, "model_args": dict(cfg.model_args), "dataset": cfg.dataset, "method": method,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    record = run_record({
        "schema": SCHEMA, "code": CodeVersion.installed(train_code_parts(cfg)).to_dict(), "status": "complete",
        "config": to_dict(saved_config(cfg)), "epochs_done": 0, "history": [], "train_size": 0, "wall_s": 0.0,
        "method_info": info_method.card_fields(), "init": report.as_dict(), "imported": imported,
        "world_size": 1, **provenance("cpu"),
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.import-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_yaml(to_dict(saved_config(cfg)), tmp / "config.yaml")
        save_weights(net, tmp / "model.safetensors")
        write_run_record(tmp / "run.json", record)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
