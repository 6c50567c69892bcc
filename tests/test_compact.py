"""Compaction: the compact network computes the masked model's eval logits with the pruned units
physically gone, and compacted run directories work like any run."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from conftest import TINY
from robustprune.cli import main
from robustprune.jobs.compact import compact_run
from robustprune.metrics.measured import count_params, measured_cost
from robustprune.models import build_model, mask_slots
from robustprune.sparsity import install_bbd
from robustprune.sparsity.compact import compact_model
from robustprune.sparsity.compact_net import BiasMapConv2d, CompactNet, read_compact, read_compact_info
from robustprune.sparsity.fold import bn_affine
from robustprune.train import CheckpointError, load_run
from robustprune.train.checkpoint import load_weights, save_weights

SHAPES = {"lenet-300-100": (1, 28, 28), "lenet5-caffe": (1, 28, 28), "vgg16": (3, 32, 32), "resnet18": (3, 32, 32)}


def random_masked(name: str, seed: int = 0) -> nn.Module:
    """A model with BBD masks of which about a third fall under the threshold, random BN
    statistics and affine parameters (so pruned channels before BN have nonzero constants), and
    logits of order 1."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = install_bbd(build_model(name))
    with torch.no_grad():
        for _, slot in mask_slots(model):  # a' < -6.9 gives E[π] < 1e-3 (pruned)
            slot.mask.a_uc.copy_(torch.rand(slot.units, generator=gen) * 15 - 12)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
        model.eval()
        peak = model(torch.rand(2, *SHAPES[name], generator=gen)).abs().max()
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(5.0 / peak)  # logits of order 5
        last.bias.mul_(5.0 / peak)
    return model


@functools.cache
def masked_and_compact(name: str) -> tuple[nn.Module, CompactNet]:
    """One random masked model per architecture and its compact network (shared; do not modify)."""
    model = random_masked(name, seed=3)
    return model, compact_model(model, check=False)  # the tests check equivalence themselves


def logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet5-caffe", "vgg16", "resnet18"])
def test_compact_logits_equal_masked_logits(name: str) -> None:
    model, net = masked_and_compact(name)
    active = [s.mask.active() for _, s in mask_slots(model)]
    frac = 1 - torch.cat(active).float().mean().item()
    assert 0.15 < frac < 0.6, frac  # a good fraction of units is really pruned
    x = torch.rand(3, *SHAPES[name], generator=torch.Generator().manual_seed(1))
    want, got = logits(model, x), logits(net, x)
    assert want.abs().max() > 2  # logits large enough for the tolerance to mean something
    assert (want - got).abs().max().item() <= 1e-5
    assert count_params(net) < count_params(model)


def test_vgg_pruned_channel_with_nonzero_bn_constant_needs_its_bias_map() -> None:
    model, net = masked_and_compact("vgg16")
    consts = [bn_affine(b.bn)[1].clamp_min(0)[~b.mask.mask.active()] for b in model.blocks[:-1]]
    assert any((c > 0).any() for c in consts)  # the case a zero-padding-blind fold gets wrong
    net = copy.deepcopy(net)
    maps = [m for m in net.modules() if isinstance(m, BiasMapConv2d) and m.bias_map is not None]
    assert maps
    bmap = maps[0].bias_map
    assert not torch.allclose(bmap[:, 0, 0], bmap[:, 1, 1])  # border differs from interior
    x = torch.rand(2, 3, 32, 32)
    want = logits(model, x)
    with torch.no_grad():  # folding the constant as a plain bias (interior value) breaks equivalence
        for m in maps:
            m.bias_map.copy_(m.bias_map[:, 1:2, 1:2].expand_as(m.bias_map))
    assert (logits(net, x) - want).abs().max().item() > 1e-3


def test_lenet300_parameter_count_from_active_units() -> None:
    model = random_masked("lenet-300-100")
    n1, n2 = model.mask1.mask.n_active(), model.mask2.mask.n_active()
    assert n1 < 300 and n2 < 100
    assert count_params(compact_model(model)) == 785 * n1 + (n1 + 1) * n2 + (n2 + 1) * 10


def test_lenet5_800_way_mask_is_intersected_with_conv2_channels() -> None:
    model = random_masked("lenet5-caffe", seed=2)
    with torch.no_grad():  # channel 0: active in mask2 but all its 16 fc1 inputs pruned -> dead
        model.mask2.mask.a_uc[0] = 3.0
        model.mask3.mask.a_uc[:16] = -20.0
    a1, a2 = model.mask1.mask.active(), model.mask2.mask.active()
    a3, a4 = model.mask3.mask.active().view(50, 16), model.mask4.mask.active()
    c1, c4 = int(a1.sum()), int(a4.sum())
    live = a2 & a3.any(1)
    c2, f = int(live.sum()), int((a3 & live[:, None]).sum())
    assert c2 < int(a2.sum())
    net = compact_model(model)
    assert count_params(net) == 26 * c1 + (25 * c1 + 1) * c2 + (f + 1) * c4 + (c4 + 1) * 10
    flops = 2 * (25 * c1 * 576 + 25 * c1 * c2 * 64 + f * c4 + c4 * 10)
    cost = measured_cost(model, net, (1, 28, 28), batch_sizes=(2,), warmup=0, repeats=1)
    assert cost["flops_original"] == 4_586_000 and cost["flops_compact"] == flops
    assert cost["params_original"] == 431_080 and cost["params_compact"] == count_params(net)
    assert cost["flops_speedup"] == pytest.approx(4_586_000 / flops)
    for key in ("latency_ms_b2_original", "latency_ms_b2_compact", "speedup_b2", "threads", "bytes_compact"):
        assert cost[key] > 0


def test_vgg_parameter_count_from_active_units() -> None:
    model, net = masked_and_compact("vgg16")
    widths = [int(b.mask.mask.active().sum()) for b in model.blocks]
    widths[-1] = int((model.blocks[-1].mask.mask.active() & model.mask_fc1.mask.active()).sum())
    n2 = int(model.mask_fc2.mask.active().sum())
    cins = [3, *widths[:-1]]
    expect = sum(9 * ci * co + co for ci, co in zip(cins, widths, strict=True))
    expect += widths[-1] * n2 + n2 + 2 * n2 + n2 * 10 + 10
    assert count_params(net) == expect


def test_features_scatter_back_to_full_width() -> None:
    model = random_masked("lenet5-caffe")
    net = compact_model(model)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        _, want = model(x, features=True)
        _, got = net(x, features=True)
    assert net.latent_count == model.latent_count == len(got)
    assert [g.shape for g in got] == [w.shape for w in want]
    for w, g in zip(want[:2], got[:2], strict=True):  # conv maps: removed channels are exactly 0
        assert torch.allclose(w, g, atol=1e-6)
    kept = model.mask4.mask.active()
    assert torch.allclose(want[2][:, kept], got[2][:, kept], atol=1e-6)
    assert (got[2][:, ~kept] == 0).all()  # fc1 outputs dropped by mask4 are no longer computed


@pytest.mark.parametrize("masks", ["none", "all-active"])
def test_nothing_pruned_keeps_the_widths(masks: str) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-caffe")
    if masks == "all-active":
        install_bbd(model)
    model.eval()
    net = compact_model(model)
    dense = count_params(model) - sum(p.numel() for _, s in mask_slots(model) if s.mask for p in s.mask.parameters())
    assert count_params(net) == dense == 431_080
    x = torch.rand(2, 1, 28, 28)
    assert (logits(model, x) - logits(net, x)).abs().max() <= 1e-5


def test_a_layer_with_every_unit_pruned_stays_exact() -> None:
    model = random_masked("lenet5-caffe", seed=5)
    with torch.no_grad():
        model.mask2.mask.a_uc.fill_(-20.0)
        model.mask4.mask.a_uc.fill_(-20.0)
    net = compact_model(model)
    assert net.layers[4].out_channels == 1  # one zero-scaled channel rather than a zero-width layer
    x = torch.rand(2, 1, 28, 28)
    assert (logits(model, x) - logits(net, x)).abs().max() <= 1e-5


def test_unknown_architecture_and_contract_breaking_mask() -> None:
    with pytest.raises(ValueError, match="Sequential"):
        compact_model(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))

    class Liar(nn.Module):  # multiplies by 2 but reports scale 1
        units = 300

        def active(self) -> Tensor:
            return torch.ones(300, dtype=torch.bool)

        def eval_scale(self) -> Tensor:
            return torch.ones(300)

        def n_active(self) -> int:
            return 300

        def forward(self, x: Tensor) -> Tensor:
            return 2 * x

    model = build_model("lenet-300-100").eval()
    model.mask1.mask = Liar()
    with pytest.raises(RuntimeError, match="differs"):
        compact_model(model)


# --------------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir, tiny finished ANP-VS run whose saved masks prune about half of every layer's units);
    trained once per module, tests copy it."""
    from conftest import make_digits, write_idx

    root = tmp_path_factory.mktemp("compact")
    data = root / "data"
    for split, n, seed in (("train", 64, 0), ("t10k", 32, 1)):
        images, labels = make_digits(n, seed)
        write_idx(data / "MNIST" / "raw" / f"{split}-images-idx3-ubyte", images)
        write_idx(data / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte", labels)
    std, anp = root / "std", root / "anp"
    common = ["--model", "lenet5-caffe", "--dataset", "mnist", "--epochs", "1", "--data-dir", str(data), *TINY]
    assert main(["train", "--method", "standard", "--out", str(std), *common]) == 0
    assert main(["train", "--method", "anp-vs", "--init-from", str(std), "--out", str(anp), *common]) == 0
    weights = load_weights(anp / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    for key in [k for k in weights if k.endswith("a_uc")]:
        weights[key] = torch.where(torch.rand(weights[key].shape, generator=gen) < 0.5, -20.0, 1.0)
    save_weights(weights, anp / "model.safetensors")
    return data, anp


@pytest.fixture
def pruned_run(trained_run: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_run[1], tmp_path / "anp"))


@pytest.fixture
def tiny_data(trained_run: tuple[Path, Path]) -> Path:
    return trained_run[0]


def test_cli_compact_then_eval(pruned_run: Path, tiny_data: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compact"
    assert main(["compact", str(pruned_run), "--out", str(out), "--no-measure"]) == 0
    assert "mask2" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"config.yaml", "model.safetensors", "compact.json"}
    src, dst = load_run(pruned_run), load_run(out)
    assert isinstance(dst.model, CompactNet) and dst.compact is not None and dst.cfg.method == "anp-vs"
    x = torch.rand(5, 1, 28, 28)
    assert (logits(src.model, x) - logits(dst.model, x)).abs().max() <= 1e-5
    card_path = tmp_path / "card.json"
    assert main(["eval", str(out), "--attack", "pgd", "--steps", "2", "--limit", "16", "--data-dir", str(tiny_data),
                 "--out", str(card_path), "--no-progress"]) == 0
    card = json.loads(card_path.read_text())
    assert card["method"] == "anp-vs" and card["compact"]["compacted"] is True
    assert card["sparsity"]["unit_sparsity"] > 20  # the masked source's sparsity, not the compact net's 0
    assert card["compact"]["widths"]["mask2"]["active"] < 50


def test_compact_run_records_measured_cost(pruned_run: Path, tmp_path: Path) -> None:
    out = compact_run(pruned_run, out=tmp_path / "c", repeats=2, batch_sizes=(1, 8))
    info = json.loads((out / "compact.json").read_text())
    m = info["measured"]
    assert m["params_compact"] == info["params"] < m["params_original"]
    assert m["flops_speedup"] > 1 and m["batch_sizes"] == [1, 8] and m["threads"] >= 1
    assert info["max_abs_diff"] <= 1e-5 and info["source_cost"]["paper"]["flops_speedup"] > 1


def test_compact_bad_input_leaves_nothing(pruned_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    assert main(["compact", str(missing), "--out", str(tmp_path / "o1")]) == 2
    assert "nope" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    with pytest.raises(CheckpointError, match="nope"):
        compact_run(missing, out=tmp_path / "o1")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="taken"):
        compact_run(pruned_run, out=tmp_path / "taken", measure=False)

    def boom(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("robustprune.jobs.compact.save_weights", boom)
    before = set(tmp_path.iterdir())
    with pytest.raises(OSError, match="disk full"):
        compact_run(pruned_run, out=tmp_path / "o2", measure=False)
    assert set(tmp_path.iterdir()) == before  # neither the output nor its temporary directory


def test_corrupt_compact_description_is_named(pruned_run: Path, tmp_path: Path) -> None:
    out = compact_run(pruned_run, out=tmp_path / "c", measure=False)
    info = json.loads((out / "compact.json").read_text())
    named = re.escape(str(out / "compact.json"))
    # a description without "kind" is a layer list (the first format); a graph one is not
    (out / "compact.json").write_text(json.dumps({k: v for k, v in info.items() if k != "kind"}))
    assert isinstance(read_compact(out)[0], CompactNet) and read_compact_info(out).get("kind") is None
    (out / "compact.json").write_text(json.dumps({**info, "kind": "graph"}))
    with pytest.raises(ValueError, match=named + " describes a 'graph' compaction, not a layer list"):
        read_compact(out)
    info["layers"][0]["op"] = "warp"
    (out / "compact.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=named + ": .*warp"):
        read_compact(out)
    with pytest.raises(ValueError, match="warp"):
        load_run(out)
    (out / "compact.json").write_text("{not json")
    with pytest.raises(ValueError, match="compact.json"):
        load_run(out)
    assert main(["compact", str(pruned_run), "--out", str(tmp_path / "again"), "--no-measure"]) == 0
    with pytest.raises(ValueError, match="already compacted"):
        compact_run(tmp_path / "again", out=tmp_path / "twice", measure=False)


def test_onnx_export_matches(pruned_run: Path, tmp_path: Path) -> None:
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(mod)
    import onnxruntime

    out = compact_run(pruned_run, out=tmp_path / "c", onnx=True, measure=False)
    info = json.loads((out / "compact.json").read_text())
    assert info["onnx"]["max_abs_diff_onnxruntime"] <= 1e-5
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(7, 1, 28, 28)
    got = session.run(None, {"x": x.numpy()})[0]
    want = logits(load_run(pruned_run).model, x).numpy()
    assert abs(got - want).max() <= 1e-5


def test_the_cards_compact_summary_leaves_out_what_the_card_holds_and_the_rebuild_plan() -> None:
    from robustprune.sparsity.compact import compact_summary

    held = ("layers", "graph", "format", "version", "source_cost", "method", "model", "dataset")
    info = {k: f"<{k}>" for k in held} | {"params": 123, "units_kept": [4, 2]}
    assert compact_summary(info) == {"compacted": True, "params": 123, "units_kept": [4, 2]}


def test_latent_gates_follow_the_fold_plan() -> None:
    """Which mask gates each latent map: the producing layer's ``mask`` or ``drop``, a ``mask`` step,
    none after an input, a normalisation, a residual block or a pooling, nor before any layer."""
    from robustprune.sparsity.fold import latent_gates

    class Planned(nn.Module):
        fold_plan = [
            {"op": "feature"},
            {"op": "input"}, {"op": "conv", "mask": "m1"}, {"op": "feature"},
            {"op": "normalize"}, {"op": "feature"},
            {"op": "linear", "drop": "m2"}, {"op": "feature"},
            {"op": "resblock"}, {"op": "feature"},
            {"op": "conv", "mask": "m3"}, {"op": "avgpool"}, {"op": "feature"},
            {"op": "conv", "mask": "m4"}, {"op": "input"}, {"op": "feature"},
            {"op": "mask", "mask": "m5"}, {"op": "feature"},
        ]

    assert latent_gates(Planned()) == [None, "m1", None, "m2", None, None, None, "m5"]
    assert latent_gates(nn.Linear(2, 2)) is None


def test_graph_compaction_makes_empty_parameters_like_the_source() -> None:
    from robustprune.sparsity.graph_compact import _empty

    assert _empty(None, (3,)) is None
    made = _empty(torch.ones(2, dtype=torch.float64), (3,))
    assert made is not None and made.dtype == torch.float64 and torch.equal(made, torch.zeros(3, dtype=torch.float64))


def test_a_feature_scatters_in_the_inputs_dtype() -> None:
    """Feature maps of a compacted network in float64 (the removed units take ``fill`` in that dtype)."""
    from robustprune.sparsity.compact_net import Feature

    feat = Feature(4, 2)
    feat.fill.copy_(torch.tensor([0.0, 0.0, 7.0, 9.0]))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    out = feat(x)
    assert out.dtype == torch.float64 and torch.equal(out, torch.tensor([[1.0, 2.0, 7.0, 9.0]], dtype=torch.float64))


@pytest.mark.parametrize(("content", "why"), [
    ([1, 2], "is not a robustprune compact description (format must be 'robustprune-compact')"),
    ({"format": "other", "version": 1}, "is not a robustprune compact description"),
    ({"format": "robustprune-compact", "version": 7}, "has compact format version 7; this robustprune reads 1"),
    ({"format": "robustprune-compact"}, "has compact format version None; this robustprune reads 1"),
    ({"format": "robustprune-compact", "version": 1, "kind": "weird"}, "unknown compaction kind 'weird'"),
])
def test_read_compact_info_names_the_file_and_what_is_wrong(tmp_path: Path, content: object, why: str) -> None:
    (tmp_path / "compact.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'compact.json'}") + ".*" + re.escape(why)):
        read_compact_info(tmp_path)
    (tmp_path / "compact.json").write_text(json.dumps({"format": "robustprune-compact", "version": 1, "kind": "graph"}))
    assert read_compact_info(tmp_path)["kind"] == "graph"


def test_onnx_export_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import builtins

    from robustprune.sparsity.compact import export_onnx
    from robustprune.utils import MissingExtraError

    real_import = builtins.__import__

    def no_onnx(name: str, *args: object, **kwargs: object) -> object:  # as where the extra is not installed
        if name == "onnx":
            raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(MissingExtraError, match="^ONNX export needs the optional 'export' extra: "
                                                + re.escape("pip install 'robustprune[export]' (missing: onnx)") + "$"):
        export_onnx(nn.Linear(2, 2), tmp_path / "m.onnx", (2,))
    assert not (tmp_path / "m.onnx").exists()


def test_export_onnx_writes_one_quiet_optimised_file_from_x_to_logits(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """What a user of model.onnx relies on: the weights inside the one file, the input named ``x`` with
    a dynamic batch dimension named ``batch``, the output ``logits``, a graph the exporter optimised
    (Flatten + Linear becomes Reshape + Gemm, no shape arithmetic left), nothing printed, and the
    caller's random stream untouched (the probe inputs come from a generator of its own)."""
    for mod in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(mod)
    import onnx
    import onnxruntime

    from robustprune.sparsity.compact import export_onnx

    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    rng = torch.random.get_rng_state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert export_onnx(net, tmp_path / "m.onnx", (1, 2, 2)) <= 1e-6
    assert not [w for w in caught if "provider" in str(w.message)]  # onnxruntime's CPU provider, by its name
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 2, 2]
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Gemm"]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.rand(n, 1, 2, 2)
        with torch.no_grad():
            want = net(x).numpy()
        assert abs(session.run(["logits"], {"x": x.numpy()})[0] - want).max() <= 1e-6


def test_select_wire_marks_the_units_it_drops_inexact() -> None:
    """A carried unit that ``need`` does not list is dropped: its constant is 0 and no longer exact
    (its true value was not 0, it is just unused downstream); a unit removed earlier keeps both."""
    from robustprune.sparsity.fold import Wire, select_wire

    wire = Wire(torch.tensor([0, 1, 2, 3]), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5], dtype=torch.float64),
                torch.tensor([True, True, True, True, False]))
    new, pos = select_wire(wire, torch.tensor([True, False, True, True, True]))
    assert pos is not None and pos.tolist() == [0, 2, 3] and new.kept.tolist() == [0, 2, 3]
    assert new.const.tolist() == [0.0, 0.0, 0.0, 0.0, 0.5]
    assert new.exact.tolist() == [True, False, True, True, False]
    same, none = select_wire(wire, torch.ones(5, dtype=torch.bool))
    assert same is wire and none is None


@pytest.mark.parametrize("affine", [True, False])
def test_bn_affine_is_the_eval_map_to_float64_precision(affine: bool) -> None:
    bn = nn.BatchNorm2d(3, affine=affine).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.7]))
        if affine:
            bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    s, t = bn_affine(bn)
    assert s.dtype == t.dtype == torch.float64
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        want = copy.deepcopy(bn).double()(x)  # the running variance plus eps in float64 too
    assert (x * s[:, None, None] + t[:, None, None] - want).abs().max().item() <= 1e-12


def test_bn_affine_refuses_a_batch_norm_without_running_statistics() -> None:
    bn = nn.BatchNorm1d(3).eval()
    bn.running_var = None  # one of the two is enough
    with pytest.raises(ValueError, match="^BatchNorm1d without running statistics cannot be folded$"):
        bn_affine(bn)


def test_out_wire_gives_pruned_units_their_constant_and_dropped_ones_zero() -> None:
    """After a layer that keeps units 0 and 2 of 5: units its own mask pruned (1, 4) carry their
    constant exactly; an active unit dropped for a downstream reason (3) carries 0, not exactly."""
    from robustprune.sparsity.fold import out_wire

    pruned_const = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    wire = out_wire(5, torch.tensor([0, 2]), pruned_const, torch.tensor([True, False, True, True, False]))
    assert wire.kept.tolist() == [0, 2]
    assert wire.const.dtype == torch.float64 and wire.const.tolist() == [0.0, 0.2, 0.0, 0.0, 0.5]
    assert wire.exact.tolist() == [True, True, True, False, True]
