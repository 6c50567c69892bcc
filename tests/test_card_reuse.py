"""When `compare` reuses a run's evaluation card and when it makes it again, seen through the public
runner: a card is reused while nothing it was computed from has changed, and re-made when the run's
weights, or its transfer source's weights, are newer than the card."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import robustprune.compare.runner as runner_mod
from robustprune.compare import parse_suite, run_suite


def one_row_suite(data: Path) -> dict[str, Any]:
    """A standard row attacked by PGD and by transfer from an independently trained AT source."""
    return {
        "name": "reuse",
        "seeds": [0],
        "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 1, "limit_train": 64,
                     "batch_size": 32, "adv_steps": 1, "adv_step_size": 0.3, "data_dir": str(data)},
        "runs": [
            {"id": "standard", "method": "standard"},
            {"id": "src", "method": "at", "seeds": [7], "report": False},
        ],
        "eval": {"attacks": ["pgd", "transfer"], "eps": 0.3, "steps": 1, "step_size": 0.3, "limit": 16,
                 "source": "src"},
    }


def rewrite_weights_later(run_dir: Path, card: Path) -> None:
    """Give ``run_dir`` other weights and make ``card`` older than them (as a retraining after the
    evaluation would), without timestamps in the future."""
    weights = run_dir / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 0.5
    save_file(state, str(weights))
    earlier = weights.stat().st_mtime_ns - 5_000_000_000  # the card 5 s older: no file-system rounding ties them
    os.utime(card, ns=(earlier, earlier))


def test_card_is_reused_until_the_weights_it_was_computed_from_are_newer(
        tiny_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    suite = parse_suite(one_row_suite(tiny_mnist))
    out = tmp_path / "suite"
    calls: list[str] = []
    orig = runner_mod.evaluate_run

    def counting(run: Path, **kw: Any) -> Any:
        calls.append(Path(run).name)
        return orig(run, **kw)

    monkeypatch.setattr(runner_mod, "evaluate_run", counting)
    run_suite(suite, out, progress=False, report=False)
    assert calls == ["standard-s0"]
    cards = list((out / "runs" / "standard-s0" / "eval").glob("suite-*.json"))
    assert len(cards) == 1
    card = cards[0]
    assert "clean_acc" in json.loads(card.read_text())

    # nothing changed: the card is reused, not re-made
    run_suite(suite, out, progress=False, report=False)
    assert calls == ["standard-s0"]

    # the row's own weights are newer than its card: evaluated again, on the new weights
    rewrite_weights_later(out / "runs" / "standard-s0", card)
    run_suite(suite, out, progress=False, report=False)
    assert calls == ["standard-s0", "standard-s0"]
    assert card.stat().st_mtime_ns >= (out / "runs" / "standard-s0" / "model.safetensors").stat().st_mtime_ns

    # the transfer source's weights are newer than the card: evaluated again too
    rewrite_weights_later(out / "runs" / "src-s7", card)
    run_suite(suite, out, progress=False, report=False)
    assert calls == ["standard-s0"] * 3

    # and reused again once the card is up to date
    run_suite(suite, out, progress=False, report=False)
    assert calls == ["standard-s0"] * 3
