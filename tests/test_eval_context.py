"""EvalContext: the run, its test prefix, the test-time defense (built once), the device and the RNG policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustprune.defenses.sap import SAPDefense, SAPModel
from robustprune.eval.context import EvalContext
from robustprune.registry import METHODS


def test_a_context_holds_the_test_prefix_and_the_wrapped_model(at_run: Path, tiny_mnist: Path) -> None:
    ctx = EvalContext.open(at_run, limit=5, defense="sap:pct=100,mode=fast", seed=3, data_dir=str(tiny_mnist),
                           device="cpu")
    assert len(ctx.images) == len(ctx.labels) == 5 and ctx.device == torch.device("cpu")
    assert isinstance(ctx.model, SAPModel) and ctx.run.model is not ctx.model and ctx.random
    assert ctx.fields["test_time"]["name"] == "sap" and ctx.describe()["method"] == "at"
    assert ctx.generator() is None  # random at test time: the attacks share the global RNG ...
    ctx.seed_global()
    drawn = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(3))  # ... seeded with the context's seed
    plain = EvalContext.open(at_run, limit=None, seed=3, data_dir=str(tiny_mnist), device="cpu")
    assert plain.model is plain.run.model and not plain.random and len(plain.images) == 64
    gen = plain.generator()
    same = torch.Generator().manual_seed(3)
    assert gen is not None and torch.equal(torch.rand(4, generator=gen), torch.rand(4, generator=same))
    assert len(list(plain.loader(batch_size=16))) == 4


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_a_bad_limit_is_refused_before_the_run_is_read(limit: object) -> None:
    with pytest.raises(ValueError, match=f"limit must be an integer >= 1, got {limit!r}"):
        EvalContext.open("no-such-run", limit=limit)  # type: ignore[arg-type]


def test_evaluation_builds_the_method_and_the_defense_once(at_run: Path, tiny_mnist: Path,
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from robustprune.eval import evaluate_run

    built = {"method": 0, "defense": 0}
    at_cls, sap_init = METHODS.get("at"), SAPDefense.__init__
    at_init = at_cls.__init__

    def count_method(self, *a, **kw):  # type: ignore[no-untyped-def]
        built["method"] += 1
        at_init(self, *a, **kw)

    def count_defense(self, *a, **kw):  # type: ignore[no-untyped-def]
        built["defense"] += 1
        sap_init(self, *a, **kw)

    monkeypatch.setattr(at_cls, "__init__", count_method)
    monkeypatch.setattr(SAPDefense, "__init__", count_defense)
    evaluate_run(at_run, attacks=["fgsm"], defense="sap:pct=100,mode=fast", limit=4, passes=2,
                 data_dir=str(tiny_mnist), out=tmp_path / "card.json", progress=False, measure=False)
    assert built == {"method": 1, "defense": 1}
