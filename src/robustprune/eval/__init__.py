"""Evaluation: ``evaluate()``, ``evaluate_run()`` and the result card."""

from robustprune.eval.card import build_eval_attack, evaluate_run, evaluate_shard, format_table, merge_run_shards
from robustprune.eval.evaluate import AttackResult, EvalResult, evaluate, is_stochastic

__all__ = [
    "AttackResult", "EvalResult", "build_eval_attack", "evaluate", "evaluate_run", "evaluate_shard", "format_table",
    "is_stochastic", "merge_run_shards",
]
