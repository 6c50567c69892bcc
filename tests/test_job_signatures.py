"""Every job takes its config dataclass, not a long list of keywords (issue 27): no public function of
``robustprune.jobs`` and no evaluation entry point takes more than 8 parameters. A trailing
``**settings`` is not counted: it only replaces fields of the job's config dataclass, checked by name
(``config.job_config``), so an unknown setting is an error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest

import robustprune.jobs
from robustprune.eval import evaluate_run

MAX_PARAMETERS = 8


def job_functions() -> list[tuple[str, Callable[..., Any]]]:
    out: list[tuple[str, Callable[..., Any]]] = [("robustprune.eval.evaluate_run", evaluate_run)]
    for info in pkgutil.iter_modules(robustprune.jobs.__path__):
        module = importlib.import_module(f"robustprune.jobs.{info.name}")
        out += [(f"{module.__name__}.{name}", fn) for name, fn in inspect.getmembers(module, inspect.isfunction)
                if fn.__module__ == module.__name__ and not name.startswith("_")]
    return out


@pytest.mark.parametrize(("name", "fn"), job_functions(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_job_function_takes_more_than_eight_parameters(name: str, fn: Callable[..., Any]) -> None:
    params = [p for p in inspect.signature(fn).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert len(params) <= MAX_PARAMETERS, f"{name} takes {len(params)}: {[p.name for p in params]}"


def test_settings_are_checked_against_the_jobs_config() -> None:
    from robustprune.config import job_config
    from robustprune.jobs.audit import AuditConfig
    from robustprune.jobs.sweep import SweepConfig

    cfg = job_config(AuditConfig(), limit=10, autoattack="no", eps_sweep=[0.1, 0.2])
    assert (cfg.eval.limit, cfg.autoattack, cfg.eps_sweep) == (10, "no", (0.1, 0.2))
    with pytest.raises(ValueError, match=r"unknown settings \['rouns'\] of SweepConfig"):
        job_config(SweepConfig(rounds=2), rouns=3)
    with pytest.raises(ValueError, match="rounds must be >= 1, got None"):
        job_config(SweepConfig())
    with pytest.raises(ValueError, match="autoattack must be one of"):
        job_config(AuditConfig(), autoattack="sometimes")
