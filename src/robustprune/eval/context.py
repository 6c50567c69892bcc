"""``EvalContext``: what every job that measures a saved run starts from, built in one place.

Loading the run (its method built once), taking the first ``limit`` test points, building the
test-time defense once and wrapping the model in it, choosing the device, and the RNG policy of
the attacks: ``eval``, ``audit``, ``curve``, ``surface``, ``sweep-sparsity``, ``calibration`` and
``export``'s distances all open one instead of doing these steps themselves.

The RNG policy: a model that is deterministic in eval mode has its attacks draw from one
``torch.Generator`` seeded with the evaluation's seed (:meth:`EvalContext.generator`); a model that
is random at test time (SAP, a sampled BNN) draws from the global RNG inside the model, so its
attacks share that stream, seeded with the same seed (:meth:`EvalContext.seed_global`; call it
inside :func:`robustprune.utils.keeps_global_rng`).

>>> ctx = EvalContext.open("runs/at", limit=1000, defense="sap:pct=100", seed=3)   # doctest: +SKIP
>>> loader = ctx.loader(batch_size=256)                                            # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robustprune.attacks import seeded_generator
from robustprune.data import DatasetInfo, TensorLoader, dataset_info, load_split
from robustprune.defenses import TestTimeDefense, resolve_test_time
from robustprune.train.run import LoadedRun, load_run
from robustprune.utils import resolve_device


def check_limit(limit: int | None) -> int | None:
    """``limit`` (a number of test points >= 1, or ``None`` for all), else ``ValueError`` naming it."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1, got {limit!r}")
    return limit


def eval_model(run: Any, test_time: TestTimeDefense | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model to attack (``run.model``, wrapped by the test-time defense when given) and the
    card fields saying so: the method's ``eval_fields`` and the defense's ``card_fields``."""
    model, fields = run.model, dict(run.method.eval_fields(run.model))
    if test_time is not None:
        test_time.check(run.method)
        model = test_time.wrap(model, run.method)
        fields.update(test_time.card_fields())
    return model, fields


@dataclass
class EvalContext:
    """One evaluation task's loaded state (see the module docstring).

    ``run`` is the loaded run (``run.model`` the model as trained, ``run.method`` its method);
    ``model`` is what to attack (wrapped by ``test_time`` when one is given) and ``fields`` the card
    fields the method and the defense add; ``images``/``labels`` the first ``limit`` test points.
    """

    run_dir: Path
    run: LoadedRun
    images: Tensor
    labels: Tensor
    device: torch.device
    seed: int = 0
    test_time: TestTimeDefense | None = None
    model: nn.Module = field(init=False)
    fields: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.model, self.fields = eval_model(self.run, self.test_time)

    @classmethod
    def open(cls, run_dir: str | Path, *, limit: int | None = None, defense: Any = None, seed: int = 0,
             data_dir: str | None = None, device: str | torch.device = "auto") -> EvalContext:
        """Load run ``run_dir`` on ``device`` with its first ``limit`` test points (``data_dir``, else
        the run's), its model wrapped in the test-time ``defense`` (anything
        :meth:`~robustprune.defenses.TestTimeSpec.parse` takes). Bad values raise ``ValueError``
        before the run is read."""
        check_limit(limit)
        test_time = resolve_test_time(defense)
        dev = resolve_device(device)
        run = load_run(run_dir, device=dev)
        images, labels = load_split(run.cfg.dataset, "test", data_dir=data_dir or run.cfg.data_dir)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return cls(Path(run_dir), run, images, labels, dev, seed=seed, test_time=test_time)

    @property
    def info(self) -> DatasetInfo:
        """The run's dataset and its threat model."""
        return dataset_info(self.run.cfg.dataset)

    @property
    def random(self) -> bool:
        """The model to attack is random at test time by declaration (its method or the defense)."""
        return bool(self.run.method.stochastic or (self.test_time is not None and self.test_time.stochastic))

    def loader(self, batch_size: int) -> TensorLoader:
        """The test points in batches of ``batch_size`` on the context's device."""
        return TensorLoader(self.images, self.labels, batch_size=batch_size, device=self.device)

    def generator(self, stochastic: bool | None = None) -> torch.Generator | None:
        """The attacks' random stream: a generator seeded with :attr:`seed` for a deterministic model,
        ``None`` (the global RNG, see :meth:`seed_global`) for one random at test time
        (``stochastic``; default :attr:`random`)."""
        random = self.random if stochastic is None else stochastic
        return None if random else seeded_generator(self.seed, self.device)

    def seed_global(self) -> None:
        """Seed the global RNG with :attr:`seed` (a model random at test time draws from it)."""
        torch.manual_seed(self.seed)

    def describe(self) -> dict[str, Any]:
        """The run as result files name it: ``run``, ``method``, ``model``, ``dataset``."""
        cfg = self.run.cfg
        return {"run": str(self.run_dir), "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset}
