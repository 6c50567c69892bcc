"""metrics/measured.py by hand on networks small enough to count: parameters, bytes, FLOPs, which
calls the latency median is over, and every key of the record that compaction cards carry. Written
where mutation testing (bench/mutation.py) found changes that the compaction tests let through."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from robustprune.metrics import measured
from robustprune.metrics.measured import (
    count_flops,
    count_params,
    measured_cost,
    model_bytes,
    paired_latency_ms,
    strip_masks,
)
from robustprune.models import build_model
from robustprune.models.base import mask_slots
from robustprune.sparsity import install_bbd


def _net(width: int) -> nn.Module:
    """Flatten, Linear(4, width), BatchNorm1d(width), Linear(width, 2): a 1x2x2 input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(4, width), nn.BatchNorm1d(width), nn.Linear(width, 2))


def test_params_bytes_and_flops_by_hand() -> None:
    net = _net(3)
    params = (4 * 3 + 3) + (3 + 3) + (3 * 2 + 2)  # linear, BN weight and bias, linear
    assert count_params(net) == params == 29
    # BN buffers: running mean and var (float32), num_batches_tracked (int64)
    assert model_bytes(net) == 4 * (params + 3 + 3) + 8
    assert model_bytes(net.double()) == 8 * (params + 3 + 3) + 8
    assert count_flops(_net(3), (1, 2, 2)) == 2 * (4 * 3 + 3 * 2)  # 2 FLOPs per multiply-add, one example


def test_count_flops_runs_the_model_in_eval_mode_and_restores_its_mode() -> None:
    net = _net(3).train()
    count_flops(net, (1, 2, 2))  # one example: BatchNorm1d in train mode would refuse a batch of 1
    assert net.training and net[2].num_batches_tracked.item() == 0


def test_strip_masks_removes_every_mask_from_a_copy_only() -> None:
    model = install_bbd(build_model("lenet5-caffe"))
    dense = strip_masks(model)
    assert all(slot.mask is None for _, slot in mask_slots(dense))
    assert all(slot.mask is not None for _, slot in mask_slots(model))
    assert count_params(dense) == 431_080


def test_paired_latency_is_the_median_of_the_timed_calls_after_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two models are called in alternation; the first ``warmup`` rounds are not counted."""
    a, b = nn.Identity(), nn.Identity()
    calls: list[nn.Module] = []
    # rounds: (1, 2) (3, 4) warm-up, then (5, 6) (7, 8) (9, 100)
    times = iter([1, 2, 3, 4, 5, 6, 7, 8, 9, 100])
    monkeypatch.setattr(measured, "_timed", lambda m, x: (calls.append(m), float(next(times)))[1])
    assert paired_latency_ms([a, b], torch.zeros(1), warmup=2, repeats=3) == [7.0, 8.0]
    assert calls == [a, b] * 5
    calls.clear()
    times = iter([10, 20])
    assert paired_latency_ms([a, b], torch.zeros(1), warmup=0, repeats=1) == [10.0, 20.0]


@pytest.mark.parametrize(("warmup", "repeats"), [(-1, 1), (0, 0)])
def test_paired_latency_names_a_bad_count(warmup: int, repeats: int) -> None:
    with pytest.raises(ValueError, match=rf"^need warmup >= 0 and repeats >= 1, got warmup={warmup}, "
                                         rf"repeats={repeats}$"):
        paired_latency_ms([nn.Identity()], torch.zeros(1), warmup=warmup, repeats=repeats)


def test_paired_latency_defaults_are_three_warmup_rounds_and_ten_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(measured, "_timed", lambda m, x: (calls.append(1), 1.0)[1])
    paired_latency_ms([nn.Identity()], torch.zeros(1))
    assert len(calls) == 13


def test_timed_is_milliseconds_of_one_forward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The clock is read just before and just after the call: 0.25 s between them is 250 ms."""
    clock = iter([10.0, 10.25])
    calls: list[torch.Tensor] = []

    class Record(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x)
            return x

    monkeypatch.setattr(measured, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    x = torch.zeros(1)
    assert measured._timed(Record(), x) == 250.0 and calls == [x]


def test_measured_cost_record_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    original, compact = _net(6), _net(3)
    seen: list[tuple[int, ...]] = []

    def fake_latency(models: list[nn.Module], x: torch.Tensor, *, warmup: int, repeats: int) -> list[float]:
        assert models[0] is original and models[1] is compact and (warmup, repeats) == (1, 2)
        assert x.min() >= 0 and x.max() <= 1
        seen.append(tuple(x.shape))
        return [4.0 * x.shape[0], 1.0 * x.shape[0]]

    monkeypatch.setattr(measured, "paired_latency_ms", fake_latency)
    out = measured_cost(original, compact, (1, 2, 2), batch_sizes=(1, 3), warmup=1, repeats=2, strip=False)
    assert seen == [(1, 1, 2, 2), (3, 1, 2, 2)]
    assert out["params_original"] == count_params(original) == 4 * 6 + 6 + 12 + 6 * 2 + 2
    assert out["params_compact"] == 29 and out["params_ratio"] == pytest.approx(count_params(original) / 29)
    assert out["bytes_original"] == model_bytes(original) and out["bytes_compact"] == model_bytes(compact)
    assert out["flops_original"] == 2 * (4 * 6 + 6 * 2) and out["flops_compact"] == 2 * (4 * 3 + 3 * 2)
    assert out["flops_speedup"] == pytest.approx(2.0)
    for b in (1, 3):
        assert out[f"latency_ms_b{b}_original"] == 4.0 * b and out[f"latency_ms_b{b}_compact"] == 1.0 * b
        assert out[f"speedup_b{b}"] == pytest.approx(4.0)
    assert out["threads"] == torch.get_num_threads() and out["device"] == "cpu"
    assert out["batch_sizes"] == [1, 3] and out["warmup"] == 1 and out["repeats"] == 2


def test_measured_cost_strips_the_originals_masks_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measured, "paired_latency_ms", lambda models, x, **kw: [1.0, 1.0])
    model = install_bbd(build_model("lenet5-caffe"))
    with_masks = count_params(model)
    small = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    out = measured_cost(model, small, (1, 28, 28), batch_sizes=(1,))
    assert out["params_original"] == 431_080 < with_masks
    assert measured_cost(model, small, (1, 28, 28), batch_sizes=(1,), strip=False)["params_original"] == with_masks


def test_measured_cost_defaults_time_batches_of_1_and_256_with_seeded_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs: list[torch.Tensor] = []

    def fake_latency(models: list[nn.Module], x: torch.Tensor, *, warmup: int, repeats: int) -> list[float]:
        inputs.append(x.clone())
        assert (warmup, repeats) == (3, 10)
        return [2.0, 1.0]

    monkeypatch.setattr(measured, "paired_latency_ms", fake_latency)
    out = measured_cost(_net(3), _net(3), (1, 2, 2))
    assert out["batch_sizes"] == [1, 256] and out["speedup_b1"] == out["speedup_b256"] == 2.0
    assert [len(x) for x in inputs] == [1, 256]
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(inputs[0], torch.rand(1, 1, 2, 2, generator=gen))
    measured_cost(_net(3), _net(3), (1, 2, 2), batch_sizes=(2,), seed=5)
    assert torch.equal(inputs[-1], torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("bad", [(0,), (True,), (2.0,), (1, -4)])
def test_measured_cost_names_bad_batch_sizes(bad: tuple[object, ...]) -> None:
    with pytest.raises(ValueError, match=r"^batch_sizes must be positive ints, got \["):
        measured_cost(_net(3), _net(3), (1, 2, 2), batch_sizes=bad)  # type: ignore[arg-type]


def test_a_network_without_parameters_is_measured_on_the_cpu_with_ratios_over_at_least_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A compacted network can lose every weight (all units pruned): the ratios divide by
    max(count, 1), and a parameter-free network runs on the CPU."""
    monkeypatch.setattr(measured, "paired_latency_ms", lambda models, x, **kw: [2.0, 1.0])
    empty = nn.Flatten()
    assert count_flops(empty, (1, 2, 2)) == 0 and count_params(empty) == 0
    out = measured_cost(_net(3), empty, (1, 2, 2), batch_sizes=(1,))
    assert out["params_compact"] == 0 and out["params_ratio"] == 29.0
    assert out["flops_compact"] == 0 and out["flops_speedup"] == 36.0
    both = measured_cost(nn.Flatten(), nn.Identity(), (1, 2, 2), batch_sizes=(1,))
    assert both["device"] == "cpu" and both["params_original"] == 0 and both["flops_speedup"] == 0.0
