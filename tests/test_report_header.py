"""The table's "Evaluation:" header describes every row's evaluation, not only the first card's."""

from __future__ import annotations

from robustprune.reports.table import attack_description

PGD = {"name": "pgd", "robust_acc": 40.0, "params": {"name": "pgd", "steps": 2, "eps": 0.3, "step_size": 0.01}}
AA = {"name": "autoattack", "robust_acc": 10.0, "params": {"name": "autoattack", "eps": 0.3}}


def card(run_id: str, n: int, attacks: list[dict]) -> dict:
    return {"run_id": run_id, "eval": {"n": n, "attacks": attacks}}


def test_rows_evaluated_alike_share_one_description() -> None:
    cards = [card("at", 8, [PGD]), card("at", 8, [PGD]), card("standard", 8, [PGD])]
    assert attack_description(cards) == "PGD-2, ε 0.3, step 0.01, n 8"


def test_rows_evaluated_differently_are_each_described_with_their_rows() -> None:
    """A model_of row with AutoAttack on 4 points sorted first must not relabel the PGD rows on 8."""
    cards = [card("anp-vs-aa", 4, [PGD, AA]), card("anp-vs", 8, [PGD]), card("at", 8, [PGD])]
    assert attack_description(cards) == (
        "AutoAttack (standard version) and PGD-2, ε 0.3, step 0.01, n 4 (anp-vs-aa); "
        "PGD-2, ε 0.3, step 0.01, n 8 (anp-vs, at)")


def test_an_autoattack_only_evaluation_is_described_without_steps() -> None:
    """AutoAttack has no steps or step size: a suite evaluated with it alone gets a header, not a crash."""
    aa = {**AA, "params": {**AA["params"], "version": "standard"}}
    assert attack_description([card("at", 8, [aa])]) == "AutoAttack (standard version), ε 0.3, n 8"
    assert attack_description([card("at", 8, [PGD, aa])]) == (
        "AutoAttack (standard version) and PGD-2, ε 0.3, step 0.01, n 8")
