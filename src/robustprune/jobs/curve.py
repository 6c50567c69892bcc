"""``robustprune curve``: robust accuracy as a function of ε, the standard picture that nothing is masked.

For an honestly evaluated model the curve starts at the clean accuracy, falls monotonically and
reaches ~0 % well before ε = 1 (Carlini et al. 2019, "On evaluating adversarial robustness"). Each
point is PGD with random start and the step size scaled with ε (``2.5·ε/steps``, Madry et al.'s
heuristic), with EOT for models that are random in eval mode.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustprune.attacks import PGD, is_stochastic, seeded_generator
from robustprune.config import EvalConfig, eval_config
from robustprune.data import TensorLoader, check_eps, dataset_info, load_split
from robustprune.eval.evaluate import evaluate
from robustprune.reports.audit_plots import plot_curve
from robustprune.train import load_run
from robustprune.utils import atomic_write_json, keeps_global_rng, provenance, resolve_device

#: default sweep, as multiples of the dataset's ε (capped at 1)
SWEEP_FACTORS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def default_sweep(eps: float) -> list[float]:
    """``[0, ε/4, ε/2, 3ε/4, ε, 1.5ε, 2ε]`` capped at 1 (duplicates dropped)."""
    return sorted({min(1.0, round(f * eps, 6)) for f in SWEEP_FACTORS})


def check_eps_list(eps_list: list[float]) -> list[float]:
    """``ValueError`` naming the bad value unless every ε passes :func:`~robustprune.data.check_eps`."""
    if not eps_list:
        raise ValueError("eps list is empty")
    return [check_eps(e, what="every eps") for e in eps_list]


def sweep_attack(eps: float, *, steps: int = 40, eot: int = 1, restarts: int = 1,
                 generator: torch.Generator | None = None) -> PGD:
    """PGD at ``eps`` with step ``2.5·eps/steps`` (random start from ``generator``; EOT when ``eot > 1``)."""
    return PGD(eps=eps, steps=steps, step_size=2.5 * eps / steps, eot=eot, restarts=restarts, generator=generator)


def robust_curve(model: nn.Module, loader: TensorLoader, eps_list: list[float], *, steps: int = 40,
                 eot: int | None = None, restarts: int = 1, passes: int = 10, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Robust accuracy (%) of ``model`` at each ε of ``eps_list`` (L∞ PGD, see module doc).

    ``eot=None`` uses 10 gradient samples when the model is random in eval mode, else 1. Every
    point's random starts come from a generator seeded with ``seed``; for a model random at test
    time, from the global RNG seeded with ``seed`` (wrap the call in ``keeps_global_rng``).

    >>> robust_curve(model, loader, [0, 0.1, 0.2, 0.3])["points"]     # doctest: +SKIP
    [{'eps': 0.0, 'robust_acc': 99.1, ...}, ...]
    """
    eps_list = check_eps_list(eps_list)
    x0, _ = next(iter(loader))
    stochastic = is_stochastic(model, x0)
    if eot is None:
        eot = 10 if stochastic else 1
    gen = None if stochastic else seeded_generator(seed, x0.device)
    points = []
    for eps in tqdm(eps_list, desc="eps sweep", disable=not progress, leave=False, dynamic_ncols=True):
        if gen is not None:
            gen.manual_seed(seed)
        else:  # a model random at test time (SAP, sampled BNN) draws from the global RNG, and so does
            torch.manual_seed(seed)  # the attack, as it always did: its numbers stay the same
        t0 = time.perf_counter()
        pgd = sweep_attack(eps, steps=steps, eot=eot, restarts=restarts, generator=gen)
        res = evaluate(model, loader, [("pgd", pgd)], vulnerability=False, passes=passes, progress=False)
        points.append({"eps": eps, "robust_acc": res.attacks[0].summary()["robust_acc"],
                       "wall_s": time.perf_counter() - t0})
        clean = res.clean_acc
    attack = {"name": "pgd", "norm": "linf", "steps": steps, "step_size": "2.5*eps/steps", "eot": eot,
              "restarts": restarts, "random_start": True}
    return {"kind": "curve", "n": res.total, "clean_acc": clean, "stochastic": res.stochastic, "attack": attack,
            "points": points}


def run_test_points(run_dir: str | Path, *, limit: int | None, data_dir: str | None,
                    device: str | torch.device) -> tuple[Any, Tensor, Tensor, torch.device]:
    """``(loaded run, test images, test labels, device)``: the first ``limit`` test points of a run."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    dev = resolve_device(device)
    run = load_run(run_dir, device=dev)
    images, labels = load_split(run.cfg.dataset, "test", data_dir=data_dir or run.cfg.data_dir)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return run, images, labels, dev


@keeps_global_rng
def curve_run(run_dir: str | Path, config: EvalConfig | None = None, *, out: str | Path,
              eps_list: list[float] | None = None, data_dir: str | None = None, device: str = "auto",
              progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Sweep ε for run ``run_dir``; write ``curve.json`` and ``curve.png`` into ``out``.

    ``config`` with ``settings`` replacing its fields gives ``steps``, ``eot``, ``limit``,
    ``batch_size``, ``passes`` and ``seed``; the sweep's ε values are ``eps_list`` (default:
    :func:`default_sweep` of the dataset's ε) and each point's step is ``2.5·ε/steps``.

    >>> curve_run("runs/at", out="runs/at/curve", eps_list=[0, 0.1, 0.2, 0.3, 0.4])   # doctest: +SKIP
    """
    cfg = eval_config(config, **settings)
    steps, eot, limit, batch_size, passes, seed = cfg.steps, cfg.eot, cfg.limit, cfg.batch_size, cfg.passes, cfg.seed
    if eps_list is not None:
        check_eps_list(eps_list)
    run, images, labels, dev = run_test_points(run_dir, limit=limit, data_dir=data_dir, device=device)
    info = dataset_info(run.cfg.dataset)
    eps_list = default_sweep(info.default_eps) if eps_list is None else eps_list
    loader = TensorLoader(images, labels, batch_size=batch_size, device=dev)
    t0 = time.perf_counter()
    curve = robust_curve(run.model, loader, eps_list, steps=steps, eot=eot, passes=passes, seed=seed,
                         progress=progress)
    curve |= {"run": str(run_dir), "method": run.cfg.method, "model": run.cfg.model, "dataset": run.cfg.dataset,
              "default_eps": info.default_eps, "seed": seed, **provenance(dev), "wall_s": time.perf_counter() - t0}
    out = Path(out)
    atomic_write_json(out / "curve.json", curve)
    plot_curve(curve, out / "curve.png")
    return curve
