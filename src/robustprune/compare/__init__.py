"""Suites: train, evaluate and compare many runs (methods × seeds) with one command.

>>> suite = load_suite("configs/suites/mnist_quick.yaml")
>>> run_suite(suite, "runs/quick")          # trains what is missing, evaluates, writes the report
"""

from robustprune.compare.parallel import TaskFailed, run_tasks_parallel
from robustprune.compare.plan import RunSpec, Task, plan_runs, plan_suite
from robustprune.compare.runner import run_suite, run_task
from robustprune.compare.suite import EvalSpec, RunEntry, Suite, load_suite, parse_suite

__all__ = [
    "EvalSpec", "RunEntry", "RunSpec", "Suite", "Task", "load_suite", "parse_suite", "plan_runs", "plan_suite",
    "run_suite", "run_task", "run_tasks_parallel", "TaskFailed",
]
