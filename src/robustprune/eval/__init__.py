"""Evaluation: ``evaluate()``, ``evaluate_run()`` and the result card."""

from robustprune.eval.card import build_eval_attack, evaluate_run, format_table
from robustprune.eval.evaluate import AttackResult, EvalResult, evaluate, is_stochastic

__all__ = [
    "AttackResult", "EvalResult", "build_eval_attack", "evaluate", "evaluate_run", "format_table", "is_stochastic",
]
