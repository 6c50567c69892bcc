"""``target_sparsity``: the mask methods prune exactly the fraction asked of their units, ranked by
keep rate over all layers (sparsity/bbdropout.py ``cut_to_sparsity``; defenses/anpvs.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from robustprune.config import TrainConfig
from robustprune.defenses import build_method
from robustprune.metrics import unit_sparsity
from robustprune.models import build_model, installed_masks
from robustprune.sparsity.bbdropout import BBDropout, SparsityCut, cut_to_sparsity, install_bbd
from robustprune.sparsity.magnitude import layer_quotas
from robustprune.train import fit, load_run
from robustprune.train.run import method_context


def masks_of(model: nn.Module) -> list[BBDropout]:
    return [m for _, m in installed_masks(model) if isinstance(m, BBDropout)]


def learned(name: str = "lenet5-caffe", seed: int = 0, **kw: object) -> nn.Module:
    """A masked model whose keep rates differ per unit, as after learning."""
    torch.manual_seed(seed)
    model = install_bbd(build_model(name, **kw))  # type: ignore[arg-type]
    with torch.no_grad():
        for m in masks_of(model):
            m.a_uc.copy_(2 * torch.randn(m.units))
            m.b_uc.copy_(torch.randn(m.units))
    return model


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_the_cut_prunes_exactly_the_fraction_asked_lowest_keep_rates_first(sparsity: float) -> None:
    model = learned()
    before = [m.expected_keep().detach().clone() for m in masks_of(model)]
    cut = cut_to_sparsity(model, sparsity)
    total = sum(m.units for m in masks_of(model))
    assert cut.units == total == 1370 and cut.pruned == round(sparsity * total) and cut.revived == 0
    assert unit_sparsity(model) == pytest.approx(100 * cut.pruned / total, abs=1e-9)
    kept = torch.cat([m.active() for m in masks_of(model)])
    keep0 = torch.cat(before)
    assert int((~kept).sum()) == cut.pruned
    assert float(keep0[kept].min()) >= float(keep0[~kept].max())  # global ranking (no guard needed here)
    for m, k in zip(masks_of(model), before, strict=True):  # kept units keep their keep rate
        on = m.active()
        assert torch.allclose(m.expected_keep().detach()[on], k[on])
        assert bool((m.eval_scale()[~on] == 0).all())


def test_every_layer_keeps_a_unit() -> None:
    model = learned()
    first = masks_of(model)[0]
    with torch.no_grad():
        first.a_uc.fill_(-5.0)  # conv1's 20 units rank last of all
    cut = cut_to_sparsity(model, 0.9)
    assert first.n_active() == 1 and cut.pruned == round(0.9 * 1370)
    assert sum(m.n_active() for m in masks_of(model)) == 1370 - cut.pruned


def test_units_the_masks_pruned_beyond_the_target_are_revived() -> None:
    model = learned()
    with torch.no_grad():
        for m in masks_of(model):  # the masks pruned 80 % of every layer
            m.a_uc[: int(0.8 * m.units)], m.b_uc[: int(0.8 * m.units)] = -10.0, 50.0
    assert unit_sparsity(model) > 75
    cut = cut_to_sparsity(model, 0.5)
    assert cut.revived > 0 and cut.reached == round(0.5 * 1370) / 1370
    assert unit_sparsity(model) == pytest.approx(100 * cut.reached)
    revived = 0
    for m in masks_of(model):  # a revived unit gets its layer's median kept keep rate
        was_dead, on = torch.arange(m.units) < int(0.8 * m.units), m.active()
        keep = m.expected_keep().detach()
        if bool((was_dead & on).any()):
            median = float(keep[~was_dead & on].median())
            assert torch.allclose(keep[was_dead & on], torch.tensor(median), atol=1e-5)
        revived += int((was_dead & on).sum())
    assert revived == cut.revived


def test_a_residual_network_through_the_graph() -> None:
    model = learned("factory_models:tiny_resnet", num_classes=10, in_channels=1, image_size=28,
                    mean=(0.5,), std=(0.25,))
    cut = cut_to_sparsity(model, 0.75)
    assert cut.units == sum(m.units for m in masks_of(model)) and unit_sparsity(model) == pytest.approx(
        100 * cut.pruned / cut.units)
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 1, 28, 28))).all()


def test_bad_targets_are_named() -> None:
    model = learned()
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            cut_to_sparsity(model, bad)
    with pytest.raises(ValueError, match=r"leaves 1 of 1370 units, fewer than the 4 layers"):
        cut_to_sparsity(model, 1369.4 / 1370)
    with pytest.raises(ValueError, match="no BBDropout masks"):
        cut_to_sparsity(build_model("lenet5-caffe"), 0.5)
    ctx = method_context(TrainConfig(method="anp-vs"), train_size=64)
    with pytest.raises(ValueError, match="give mask_until < 1"):
        build_method("anp-vs", ctx=ctx, target_sparsity=0.5)
    with pytest.raises(ValueError, match="target_sparsity must be a fraction in \\[0, 1\\), got 75"):
        build_method("anp-vs", ctx=ctx, target_sparsity=75, mask_until=0.5)


@pytest.mark.parametrize("method", ["anp-vs-fast", "anp", "bp"])
def test_a_run_cuts_when_its_masks_stop_and_records_asked_and_reached(method: str, tiny_mnist: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="meant to start from a trained model"):
        run = fit(TrainConfig(method=method, method_args={"target_sparsity": 0.75, "mask_until": 0.5}, epochs=2,
                              out=str(tmp_path / "run"), data_dir=str(tiny_mnist), limit_train=64, batch_size=32,
                              adv_steps=1, progress=False, tensorboard=False))
    info = json.loads((run / "run.json").read_text())["method_info"]
    cut = info["sparsity_cut"]
    assert info["target_sparsity"] == 0.75 and cut["asked"] == 0.75 and cut["rule"] == "global"
    assert cut["pruned"] == round(0.75 * 1370) == round(cut["reached"] * cut["units"])
    model = load_run(run).model
    assert unit_sparsity(model) == pytest.approx(100 * cut["reached"])  # the fine-tuning kept the cut
    history = json.loads((run / "run.json").read_text())["history"]
    assert "adv_acc" in history[-1]  # the last epoch fine-tuned adversarially (bp included)


def test_bp_takes_a_target_and_then_fine_tunes_adversarially() -> None:
    ctx = method_context(TrainConfig(method="bp"), train_size=64)
    with pytest.raises(ValueError, match="bp's mask_until 0.5 only comes with a target_sparsity"):
        build_method("bp", ctx=ctx, mask_until=0.5)
    with pytest.raises(ValueError, match="give mask_until < 1"):
        build_method("bp", ctx=ctx, target_sparsity=0.5)
    cls = type(build_method("bp", ctx=ctx))
    assert cls.taxonomy({}).finetuning == "nt"  # type: ignore[union-attr]
    assert cls.taxonomy({"target_sparsity": 0.5, "mask_until": 0.5}).finetuning == "at"  # type: ignore[union-attr]


def test_equal_sparsity_suite_gives_every_pruning_row_the_same_fine_tuning_budget() -> None:
    from robustprune.compare import load_suite

    suite = load_suite(Path(__file__).parents[1] / "configs" / "suites" / "mnist_equal_sparsity.yaml")
    budgets, levels = set(), set()
    for run in suite.runs:
        train = run.train
        args = dict(train.get("method_args") or {})
        build_method(train["method"], ctx=method_context(TrainConfig(**{k: v for k, v in train.items()
                                                                        if k != "init_from"}), train_size=64),
                     **args)  # every row's arguments are valid
        if train["method"] in ("at", "pretrained-at"):  # the source and the dense continuation
            assert "target_sparsity" not in args
            continue
        levels.add(args["target_sparsity"])  # every pruning row asks for an exact count of units
        if train["method"] == "magnitude":
            budgets.add(train["epochs"] - (args["max_rounds"] - 1) * args.get("epochs_per_round", 1))
            assert args["structure"] == "filter" and args["adversarial"] is True
        elif train["method"] == "admm":
            budgets.add(train["epochs"] - args["prune_epoch"])
            assert args["structure"] == "filter"
        elif train["method"] == "hydra":
            budgets.add(train["epochs"] - args["score_epochs"])
            assert args["structure"] == "filter"
        else:
            budgets.add((1 - args["mask_until"]) * train["epochs"])
            assert args["mask_init"] == "function-preserving" and run.init_from == "at"
    assert budgets == {5.0} and levels == {0.5, 0.75, 0.9}


def test_equal_sparsity_plot_reads_a_suite_table(tmp_path: Path) -> None:
    from repo_scripts import load_script

    esp = load_script("bench/equal_sparsity_plot.py")

    def row(run_id: str, aa: list[float], units: list[float]) -> dict[str, object]:
        return {"run_id": run_id, "metrics": {"autoattack": {"values": aa}, "unit_sparsity": {"values": units}}}

    table = {"rows": [row("at", [80.0], [0.0]), row("at-more", [82.0, 84.0], [0.0, 0.0]),
                      row("anp-vs-90", [60.0], [89.96]), row("anp-vs-50", [81.0], [50.0]),
                      row("anp-vs-75", [78.0, 76.0], [75.04, 75.04]), row("admm-filter-75", [70.0], [0.0]),
                      row("bp-75", [], [75.04])]}
    (tmp_path / "table.json").write_text(json.dumps(table))
    assert esp.main([str(tmp_path / "table.json"), "--out", str(tmp_path / "plot")]) == 0
    data = json.loads((tmp_path / "plot.json").read_text())
    assert data["dense"] == {"y": 83.0, "lo": 82.0, "hi": 84.0, "n": 2}
    anpvs = data["lines"]["anp-vs"]
    assert [p["level"] for p in anpvs] == [50, 75, 90] and [p["x"] for p in anpvs] == [50.0, 75.04, 89.96]
    assert anpvs[1]["y"] == 77.0 and anpvs[1]["lo"] == 76.0
    assert data["lines"]["admm-filter"] == [{"level": 75, "x": 75.0, "y": 70.0, "lo": 70.0, "hi": 70.0, "n": 1}]
    assert "bp" not in data["lines"] and (tmp_path / "plot.png").stat().st_size > 0


@pytest.mark.parametrize("structure", ["filter", "irregular"])
def test_admm_records_the_sparsity_asked_and_reached_at_its_hard_prune(structure: str) -> None:
    from robustprune.sparsity.magnitude import prunable_layers, weight_of

    ctx = method_context(TrainConfig(method="admm"), train_size=64)
    method = build_method("admm", ctx=ctx, structure=structure, sparsity=0.75, prune_epoch=0)
    torch.manual_seed(0)
    model = method.prepare(build_model("lenet5-caffe"))
    assert method.card_fields()["sparsity_cut"] is None
    method.on_epoch_start(model, 0)
    cut = method.card_fields()["sparsity_cut"]
    layers = [weight_of(m) for _, m in prunable_layers(model)]
    if structure == "filter":
        rows = [w.shape[0] for w in layers]
        zero_rows = sum(int((w.flatten(1).abs().sum(1) == 0).sum()) for w in layers)
        assert cut["units"] == sum(rows) and cut["pruned"] == zero_rows
        assert cut["pruned"] == sum(r - max(1, round(0.25 * r)) for r in rows)
    else:
        assert cut["units"] == sum(w.numel() for w in layers)
        assert cut["pruned"] == sum(int((w == 0).sum()) for w in layers)
    assert cut["asked"] == 0.75 and cut["rule"] == "per layer" and cut["reached"] == cut["pruned"] / cut["units"]
    assert abs(cut["reached"] - 0.75) < 0.01
    fresh = build_method("admm", ctx=ctx, structure=structure, sparsity=0.75, prune_epoch=0)
    fresh.load_state_dict(method.state_dict())
    assert fresh.card_fields()["sparsity_cut"] == cut


@pytest.mark.parametrize("name", ["lenet5-caffe", "factory_models:tiny_resnet"])
def test_hydra_filter_form_scores_whole_filters_and_records_the_cut(name: str) -> None:
    from robustprune.defenses.hydra import scored_layers

    ctx = method_context(TrainConfig(method="hydra"), train_size=64)
    method = build_method("hydra", ctx=ctx, structure="filter", sparsity=0.75, score_epochs=1)
    torch.manual_seed(0)
    model = method.prepare(build_model(name, num_classes=10, in_channels=1, image_size=28, mean=(0.5,), std=(0.25,))
                           if ":" in name else build_model(name))
    method.on_epoch_start(model, 0)  # the score phase: one score per filter
    layers = scored_layers(model)
    assert all(m.scores.shape == m.weight.shape[:1] for _, m in layers)
    model.train()
    model(torch.rand(4, 1, 28, 28)).square().sum().backward()
    assert all(m.scores.grad is not None and m.scores.grad.abs().sum() > 0 for _, m in layers)
    assert all(m.weight.grad is None for _, m in layers)  # frozen in the score phase
    assert method.card_fields()["sparsity_cut"] is None
    method.on_epoch_start(model, 1)  # the mask is fixed: whole filters, round(0.25 * rows) kept per layer
    cut = method.card_fields()["sparsity_cut"]
    rows = [m.weight.shape[0] for _, m in layers]
    zero_rows = sum(int((m.weight.detach().flatten(1).abs().sum(1) == 0).sum()) for _, m in layers)
    assert cut["units"] == sum(rows) and cut["pruned"] == zero_rows == sum(r - max(1, round(0.25 * r)) for r in rows)
    assert cut["counted"] == "filters" and cut["rule"] == "per layer"
    assert type(method).taxonomy({"structure": "filter"}).structure == "filters"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="structure must be 'irregular' or 'filter', got 'channel'"):
        build_method("hydra", ctx=ctx, structure="channel")


@pytest.mark.parametrize("structure", ["filter", "irregular"])
def test_magnitude_reaches_the_target_in_its_rounds(structure: str) -> None:
    from robustprune.sparsity.magnitude import masked_layers, weight_of

    ctx = method_context(TrainConfig(method="magnitude"), train_size=64)
    method = build_method("magnitude", ctx=ctx, target_sparsity=0.75, structure=structure, max_rounds=2,
                          adversarial=True)
    torch.manual_seed(0)
    model = method.prepare(build_model("lenet5-caffe"))
    layers = [m for _, m in masked_layers(model)]

    def zero(w: torch.Tensor) -> int:
        return int((w.flatten(1).abs().sum(1) == 0).sum()) if structure == "filter" else int((w == 0).sum())

    def size(w: torch.Tensor) -> int:
        return w.shape[0] if structure == "filter" else w.numel()

    method.on_epoch_start(model, 0)  # round 1 of 2: 1 - 0.25 ** 0.5 = 50 %
    assert method.card_fields()["sparsity_cut"] is None
    assert all(zero(weight_of(m)) == size(weight_of(m)) - max(1, round(0.5 * size(weight_of(m)))) for m in layers)
    first = [weight_of(m) == 0 for m in layers]
    method.on_epoch_start(model, 1)  # round 2: 75 % in all, to the unit; what round 1 pruned stays pruned
    sizes = [size(weight_of(m)) for m in layers]
    assert [zero(weight_of(m)) for m in layers] == layer_quotas(sizes, 0.75)
    assert all(bool((weight_of(m)[f] == 0).all()) for m, f in zip(layers, first, strict=True))
    cut = method.card_fields()["sparsity_cut"]
    assert cut["pruned"] == sum(zero(weight_of(m)) for m in layers) == round(0.75 * sum(sizes))
    assert cut["units"] == sum(sizes) and cut["rule"] == "per layer, exact total"
    method.on_epoch_start(model, 2)  # no third round
    assert method.rounds_done == 2


def test_bad_magnitude_targets_are_named() -> None:
    ctx = method_context(TrainConfig(method="magnitude"), train_size=64)
    with pytest.raises(ValueError, match="structure 'filter' comes with a target_sparsity"):
        build_method("magnitude", ctx=ctx, structure="filter")
    with pytest.raises(ValueError, match="scope must be 'layer', got 'global'"):
        build_method("magnitude", ctx=ctx, target_sparsity=0.5, scope="global")
    with pytest.raises(ValueError, match="max_rounds >= 1"):
        build_method("magnitude", ctx=ctx, target_sparsity=0.5, max_rounds=0)


def chain(widths: list[int], inputs: int = 4) -> nn.Module:
    """Linear layers of these output widths, one after the other (the per-layer rules' test model)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(inputs, w), nn.ReLU()]
        inputs = w
    return nn.Sequential(*layers[:-1])


def pruned_per_layer(model: nn.Module, structure: str) -> list[tuple[int, int]]:
    """(units, pruned) of every linear layer: rows whose weights are all 0, or weights that are 0."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            w = (m.weight * getattr(m, "weight_mask", 1)).detach()
            if structure == "filter":
                out.append((w.shape[0], int((w.abs().sum(1) == 0).sum())))
            else:
                out.append((w.numel(), int((w == 0).sum())))
    return out


def test_layer_quotas_largest_remainder() -> None:
    assert layer_quotas([10, 10, 10, 10], 0.75) == [8, 8, 7, 7]  # per-layer rounding: 4 x 8 = 32, not 30
    assert layer_quotas([20, 50, 500, 10], 0.75) == [15, 38, 375, 7] and round(0.75 * 580) == 435
    assert layer_quotas([1, 1, 10], 0.5) == [0, 0, 6]  # a one-unit layer keeps its unit; the others make up
    with pytest.raises(ValueError, match="prunes 4 of 4 units, more than the 2 layers can lose"):
        layer_quotas([2, 2], 0.9)
    with pytest.raises(ValueError, match="got 1.5"):
        layer_quotas([10], 1.5)


def test_layer_quotas_takes_zero_and_names_every_bad_input() -> None:
    assert layer_quotas([4, 4], 0.0) == [0, 0] and layer_quotas([4, 4], 0) == [0, 0]
    for bad in (1.0, -0.1, True, False, "0.5", None):
        with pytest.raises(ValueError, match=re.escape(f"target sparsity must be a fraction in [0, 1), got {bad!r}")):
            layer_quotas([4, 4], bad)  # type: ignore[arg-type]
    for sizes in ([], [3, 0], [-1]):
        with pytest.raises(ValueError, match=re.escape(f"layer sizes must be >= 1, got {sizes}")):
            layer_quotas(sizes, 0.5)


def test_a_sparsity_cut_reads_back_as_the_cards_fields() -> None:
    cut = SparsityCut(asked=0.5, units=8, pruned=4, revived=1)
    assert cut.as_dict() == {"asked": 0.5, "reached": 0.5, "units": 8, "pruned": 4, "revived": 1, "rule": "global"}


@pytest.mark.parametrize(("method", "structure", "widths"), [
    ("hydra", "filter", [10, 10, 10, 10]), ("admm", "filter", [10, 10, 10, 10]),
    ("magnitude", "filter", [10, 10, 10, 10]), ("admm", "irregular", [2, 3, 2, 3]),
    ("hydra", "irregular", [2, 3, 2, 3])])
def test_per_layer_forms_prune_the_exact_total(method: str, structure: str, widths: list[int]) -> None:
    """Each layer rounded on its own would prune 32 of 40 filters (or 20 of 24 weights) at 0.75; the
    target prunes exactly round(0.75 N), each layer within one unit of 0.75 n and keeping one."""
    args: dict[str, object] = {"hydra": {"score_epochs": 1}, "admm": {"prune_epoch": 0},
                               "magnitude": {"max_rounds": 1}}[method]
    ctx = method_context(TrainConfig(method=method), train_size=64)
    m = build_method(method, ctx=ctx, structure=structure, target_sparsity=0.75, **args)
    model = m.prepare(chain(widths))
    for epoch in range(2):
        m.on_epoch_start(model, epoch)
    layers = pruned_per_layer(model, structure)
    total = sum(n for n, _ in layers)
    plain = sum(n - max(1, round(0.25 * n)) for n, _ in layers)
    assert plain != round(0.75 * total)  # the model is one where rounding each layer misses the total
    assert sum(p for _, p in layers) == round(0.75 * total)
    assert all(abs(p - 0.75 * n) <= 1 and p < n for n, p in layers)
    cut = m.card_fields()["sparsity_cut"]
    assert cut["pruned"] == round(0.75 * total) and cut["units"] == total and cut["asked"] == 0.75
    assert cut["reached"] == cut["pruned"] / total and cut["rule"] == "per layer, exact total"
    assert m.card_fields()["target_sparsity"] == 0.75


def test_targets_are_refused_where_they_do_not_apply() -> None:
    ctx = method_context(TrainConfig(), train_size=64)
    for method in ("standard", "at", "trades"):
        with pytest.raises(ValueError, match=rf"method '{method}' does not prune to a target sparsity, got "
                                             r"target_sparsity 0.5; the methods that do: .*anp-vs-fast.*hydra"):
            build_method(method, ctx=ctx, target_sparsity=0.5)
    for method in ("hydra", "admm"):
        with pytest.raises(ValueError, match=r"give target_sparsity \(0.5: an exact total\) or sparsity \(0.75"):
            build_method(method, ctx=ctx, target_sparsity=0.5, sparsity=0.75)
        with pytest.raises(ValueError, match="target_sparsity must be a fraction in \\[0, 1\\), got 1.0"):
            build_method(method, ctx=ctx, target_sparsity=1.0)


def train_argv(tmp_path: Path, *args: str) -> tuple[int, str, list[TrainConfig]]:
    """``robustprune train ARGS`` with ``fit`` replaced by the checks before data: (status, stderr,
    the configs that reached fit)."""
    import contextlib
    import io
    from unittest import mock

    import robustprune.cli as cli

    seen: list[TrainConfig] = []

    def checks(cfg: TrainConfig) -> Path:
        cfg.validate()
        build_method(cfg.method, ctx=method_context(cfg, train_size=1), **cfg.method_args)
        seen.append(cfg)
        return Path(cfg.out)

    err = io.StringIO()
    with mock.patch("robustprune.train.fit", checks), contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["train", "--out", str(tmp_path / "run"), *args])
    return code, err.getvalue(), seen


def test_train_flag_reaches_the_method(tmp_path: Path) -> None:
    code, _, seen = train_argv(tmp_path, "--method", "anp-vs", "--target-sparsity", "0.75",
                               "--method-args", "{mask_until: 0.5, mask_init: function-preserving}")
    assert code == 0 and seen[0].method_args == {"mask_until": 0.5, "mask_init": "function-preserving",
                                                 "target_sparsity": 0.75}
    code, _, seen = train_argv(tmp_path, "--method", "magnitude", "--target-sparsity", "0.5",
                               "--method-args", "{target_sparsity: 0.5}")  # the same value twice is one value
    assert code == 0 and seen[0].method_args == {"target_sparsity": 0.5}
    for argv, message in ((["--method", "at", "--target-sparsity", "0.75"],
                           "method 'at' does not prune to a target sparsity, got target_sparsity 0.75"),
                          (["--method", "magnitude", "--target-sparsity", "1.5"],
                           "target_sparsity must be a fraction in [0, 1), got 1.5"),
                          (["--method", "magnitude", "--target-sparsity", "0.75", "--method-args",
                            "{target_sparsity: 0.5}"],
                           "target_sparsity 0.75 differs from method_args' target_sparsity 0.5")):
        code, err, seen = train_argv(tmp_path, *argv)
        assert code == 2 and message in err and not seen, (argv, err)


def test_suite_field_in_defaults_and_runs() -> None:
    from robustprune.compare import parse_suite

    def suite(defaults: dict[str, object], *runs: dict[str, object]) -> dict[str, object]:
        return {"defaults": {"epochs": 2, **defaults}, "runs": list(runs), "eval": {"attacks": ["pgd"]}}

    s = parse_suite(suite({"target_sparsity": 0.5},
                          {"id": "m50", "method": "magnitude", "method_args": {"max_rounds": 2}},
                          {"id": "m75", "method": "magnitude", "target_sparsity": 0.75},
                          {"id": "h90", "method": "hydra", "target_sparsity": 0.9,
                           "method_args": {"target_sparsity": 0.9, "score_epochs": 1}},
                          {"id": "dense", "method": "standard", "target_sparsity": None}))
    args = {r.id: r.train["method_args"] for r in s.runs}
    assert args == {"m50": {"max_rounds": 2, "target_sparsity": 0.5}, "m75": {"target_sparsity": 0.75},
                    "h90": {"score_epochs": 1, "target_sparsity": 0.9}, "dense": {}}
    assert all("target_sparsity" not in r.train for r in s.runs)  # no TrainConfig field: the method's argument
    for runs, message in (([{"id": "at", "method": "at"}],
                           r"run 'at': method 'at' does not prune to a target sparsity, got target_sparsity 0.5"),
                          ([{"id": "m", "method": "magnitude", "target_sparsity": 75}],
                           r"run 'm': target_sparsity must be a fraction in \[0, 1\), got 75"),
                          ([{"id": "m", "method": "magnitude", "method_args": {"target_sparsity": 0.9}}],
                           r"run 'm': target_sparsity 0.5 differs from method_args' target_sparsity 0.9")):
        with pytest.raises(ValueError, match=message):
            parse_suite(suite({"target_sparsity": 0.5}, *runs))
