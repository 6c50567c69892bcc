"""Mask slots found from the traced graph of networks robustprune did not write (torchvision's
resnet18, a WideResNet-style network), the methods and metrics on them, and their compaction."""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from conftest import TINY
from robustprune.cli import main
from robustprune.defenses import MethodContext, build_method
from robustprune.jobs.compact import compact_run
from robustprune.metrics import sparsity_summary, vulnerability
from robustprune.metrics.measured import count_params, measured_cost
from robustprune.models import base_parameters, mask_parameters, mask_slots
from robustprune.models.graph import GraphNet, GraphSlot
from robustprune.registry import MODELS
from robustprune.sparsity import install_bbd
from robustprune.sparsity.compact import compact_model
from robustprune.sparsity.graph_compact import apply_graph_spec, graph_spec
from robustprune.sparsity.magnitude import masked_layers
from robustprune.train import load_run
from robustprune.train.loop import step

CIFAR = (3, 32, 32)
CTX = MethodContext(dataset="cifar10", train_size=1000, num_classes=10, adv_eps=8 / 255, adv_steps=1,
                    adv_step_size=2 / 255, lr=1e-3, weight_decay=1e-4, total_steps=10)


class PreActBlock(nn.Module):
    """WideResNet's pre-activation block: BN-ReLU-conv-BN-ReLU-dropout-conv plus the shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(0.1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        h = self.conv2(self.drop(F.relu(self.bn2(self.conv1(a)))))
        return h + (x if self.short is None else self.short(a))


class TinyWRN(nn.Module):
    """WRN-style network (Zagoruyko & Komodakis 2016): stem, three stages of pre-activation blocks
    (widths 16k, 32k, 64k), BN-ReLU, global pool, linear."""

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, k: int = 1, per_stage: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks, cin = [], 16
        for i, w in enumerate((16 * k, 32 * k, 64 * k)):
            for j in range(per_stage):
                blocks.append(PreActBlock(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def _graph_wrn(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, **_: object) -> nn.Module:
    return GraphNet(TinyWRN(num_classes=num_classes, in_channels=in_channels),
                    input_shape=(in_channels, image_size, image_size))


def resnet18() -> GraphNet:
    torch.manual_seed(0)
    return GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=CIFAR)


def wrn() -> GraphNet:
    torch.manual_seed(0)
    return GraphNet(TinyWRN(k=2, per_stage=2), input_shape=CIFAR)


def trained_pruned(build: object, method: str) -> tuple[GraphNet, GraphNet]:
    """``build()`` with ``method``'s masks, one SGD step on random data (BN statistics and masks
    move), then half of every group's units pruned: (masked model in eval mode, its compaction)."""
    m = build_method(method, ctx=CTX)
    model = m.prepare(build())  # type: ignore[operator]
    groups = m.param_groups(model)
    opts = [torch.optim.SGD(g.params, lr=0.05) for g in groups]
    step(m, model, groups, opts, *data())  # type: ignore[arg-type]
    prune_half(model)
    model.eval()
    small = compact_model(model)
    assert isinstance(small, GraphNet)
    return model, small


@functools.cache
def resnet18_round_trip() -> tuple[GraphNet, GraphNet]:
    """resnet18 through ``bp``: installed masks, a step, half pruned, compacted (shared; do not modify)."""
    return trained_pruned(resnet18, "bp")


@functools.cache
def resnet18_groups() -> GraphNet:
    """One traced resnet18 (shared; do not modify)."""
    return resnet18()


def data(n: int = 4, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *CIFAR, generator=g), torch.randint(0, 10, (n,), generator=g)


def prune_half(model: nn.Module, seed: int = 0) -> None:
    """Put a random half of every slot's units under the BBD threshold (a' = -10: E[π] ≈ 5e-5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, slot in mask_slots(model):
            assert slot.mask is not None
            slot.mask.a_uc[torch.randperm(slot.units, generator=gen)[: slot.units // 2]] = -10.0


# --------------------------------------------------------------------------------- groups
def test_resnet18_groups_follow_the_residual_structure() -> None:
    model = resnet18_groups()
    slots = mask_slots(model)
    assert [s.units for _, s in slots] == [64, 64, 64, 128, 128, 128, 256, 256, 256, 512, 512, 512]
    sites = [s.sites for _, s in slots if isinstance(s, GraphSlot)]
    assert sites[0] == ("bn1", "layer1.0.bn2", "layer1.1.bn2")  # stem + layer1's residual stream
    assert sites[1] == ("layer1.0.bn1",) and sites[2] == ("layer1.1.bn1",)  # inner channels
    assert sites[4] == ("layer2.0.bn2", "layer2.0.downsample.1", "layer2.1.bn2")
    assert model.groups[4].producers == ("layer2.0.conv2", "layer2.0.downsample.0", "layer2.1.conv2")
    assert all("fc" not in s for group in sites for s in group)  # the logits are never masked
    assert model.skipped == [] and model.latent_count == 20
    assert all(g.kind == "conv" for g in model.groups)


def test_preactivation_residual_groups_are_skipped_with_the_reason() -> None:
    net = TinyWRN(k=2, per_stage=2)
    rng = torch.get_rng_state()
    model = GraphNet(net, input_shape=CIFAR)
    assert torch.equal(rng, torch.get_rng_state())  # tracing draws nothing from the global RNG
    masked = [g.producers for g in model.groups]
    # the blocks' inner channels, and the stem, whose only reader is the first block's BN (the
    # first block's 1x1 shortcut reads the activated BN output, so the mask there is exact)
    assert masked == [("stem",), *((f"blocks.{i}.conv1",) for i in range(6))]
    assert model.groups[0].sites == ("blocks.0.bn1",)
    # the three residual streams: a BN reads each after the addition, so they stay unmasked
    assert sorted(p for p, _ in model.skipped) == [
        (f"blocks.{i}.conv2", f"blocks.{i}.short", f"blocks.{i + 1}.conv2") for i in (0, 2, 4)]
    assert all("does not directly follow a producer" in reason for _, reason in model.skipped)


def test_concatenated_and_depthwise_channels_group_correctly() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
            self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
            self.bn = nn.BatchNorm2d(10)
            self.fc = nn.Linear(10 * 8 * 8, 5)

        def forward(self, x: Tensor) -> Tensor:
            h = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
            return self.fc(F.relu(self.bn(self.dw(h))).flatten(1))

    torch.manual_seed(0)
    model = GraphNet(Net(), input_shape=(3, 8, 8))
    # the depthwise conv follows its input channels, so it joins the concatenated producers'
    # groups, but only with part of its channels: those groups are skipped, nothing is masked wrongly
    assert all(len(g.producers) >= 1 for g in model.groups)
    for g in model.groups:
        assert "dw" not in g.producers or g.units == 10
    assert model.skipped, "a partial group must be reported"


# --------------------------------------------------------------------------------- methods and metrics
@pytest.mark.parametrize(("method", "build"), [("anp-vs", resnet18), ("bp", wrn), ("anp", wrn)],
                         ids=["anp-vs-resnet18", "bp-wrn", "anp-wrn"])
def test_bbd_methods_train_on_graph_models(method: str, build: object) -> None:
    m = build_method(method, ctx=CTX)
    model = m.prepare(build())  # type: ignore[operator]
    groups = m.param_groups(model)
    opts = [torch.optim.Adam(g.params, lr=g.lr, weight_decay=g.weight_decay) for g in groups]
    masks = [p.detach().clone() for p in mask_parameters(model)]
    weights = [p.detach().clone() for p in base_parameters(model)]
    logs = step(m, model, groups, opts, *data())  # type: ignore[arg-type]
    assert torch.isfinite(logs["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(masks, mask_parameters(model), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(weights, base_parameters(model), strict=True))
    assert len(masks) == 2 * len(model.groups)  # a' and b' of one BBD mask per group


def test_residual_group_shares_one_mask_sample_per_pass() -> None:
    model = install_bbd(resnet18())
    model.train()
    seen: list[Tensor] = []
    slot = mask_slots(model)[0][1]
    assert isinstance(slot, GraphSlot) and len(slot.sites) == 3
    hooks = [model.net.get_submodule(s).register_forward_hook(lambda m, a, o: seen.append(o.detach()))
             for s in slot.sites]
    x, _ = data(2)
    _, feats = model(x, features=True)
    for h in hooks:
        h.remove()
    # the hooks registered after the mask see the masked outputs; each unit is zero at every site
    # or at none, for the same example (one drawn multiplier for the whole group)
    zero = [(o.abs().flatten(2).amax(2) == 0) for o in seen]
    assert len(feats) == model.latent_count and all(torch.equal(zero[0], z) for z in zero[1:])
    assert slot._z is None  # the sample does not outlive the forward pass


def test_metrics_on_graph_masks() -> None:
    model, small = resnet18_round_trip()
    summary = sparsity_summary(model)
    assert summary["unit_sparsity"] == pytest.approx(50.0)
    assert summary["total_units"] == [s.units for _, s in mask_slots(model)]
    assert summary["active_units"] == [s.units // 2 for _, s in mask_slots(model)]
    x, _ = data(2)
    with torch.no_grad():
        _, clean = model(x, features=True)
        _, noisy = model((x + 0.03 * torch.randn_like(x)).clamp(0, 1), features=True)
        _, same = model(x, features=True)
    assert vulnerability(clean, same).item() == 0.0
    assert vulnerability(clean, noisy).item() > 0
    cost = measured_cost(model, small, CIFAR, batch_sizes=(2,), repeats=1, warmup=0)
    assert cost["flops_original"] > 2.5 * cost["flops_compact"] > 0  # FlopCounterMode on both networks
    assert cost["params_original"] > 3 * cost["params_compact"]


@pytest.mark.parametrize("method", ["magnitude", "admm", "hydra"])
def test_weight_pruning_methods_on_a_graph_model(method: str) -> None:
    kw = {"magnitude": {}, "admm": {"sparsity": 0.5, "prune_epoch": 1}, "hydra": {"sparsity": 0.5}}[method]
    m = build_method(method, ctx=CTX, **kw)  # type: ignore[arg-type]
    model = m.prepare(wrn())
    groups = m.param_groups(model)
    opts = [torch.optim.Adam(g.params, lr=g.lr) for g in groups]
    m.on_epoch_start(model, 0)
    logs = step(m, model, groups, opts, *data())  # type: ignore[arg-type]
    assert torch.isfinite(logs["loss"])
    m.on_epoch_end(model, 0)
    m.on_epoch_start(model, 1)  # magnitude: a pruning round; admm: the hard prune; hydra: the mask fixed
    assert masked_layers(model), "weight masks on the wrapped network's layers"
    if method != "magnitude" or any(int(lay.weight_mask.sum()) < lay.weight_mask.numel()  # type: ignore[operator]
                                    for _, lay in masked_layers(model)):
        assert sparsity_summary(model)["weight_sparsity"] > 0
    _, feats = model(data()[0], features=True)
    assert len(feats) == model.latent_count  # the hooks survived HYDRA's layer swap


# --------------------------------------------------------------------------------- compaction
@pytest.mark.parametrize("case", ["resnet18-bp", "wrn-anp-vs"])
def test_round_trip_train_prune_compact(case: str) -> None:
    build = resnet18 if case.startswith("resnet18") else wrn
    model, small = resnet18_round_trip() if build is resnet18 else trained_pruned(wrn, "anp-vs")
    assert type(small.net) is type(model.net)  # the same classes, narrower layers
    assert count_params(small) < 0.6 * count_params(model)
    x, _ = data(6, seed=5)
    with torch.no_grad():
        want, got = model(x), small(x)
        assert want.abs().max() > 1e-3
        assert (want - got).abs().max().item() <= 1e-5
        _, f_want = model(x, features=True)
        _, f_got = small(x, features=True)
    assert max((a - b).abs().max().item() for a, b in zip(f_want, f_got, strict=True)) <= 1e-5
    # the artefact: widths + kept units rebuild the network from its dense architecture
    spec = json.loads(json.dumps(graph_spec(small)))
    rebuilt = apply_graph_spec(build(), spec)
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), got)
        _, f_re = rebuilt(x, features=True)  # its latent maps too, read as the compacted copy reads them
    assert len(f_re) == len(f_got) and all(torch.equal(a, b) for a, b in zip(f_re, f_got, strict=True))
    assert rebuilt.own_latents is False and rebuilt.latent_count == small.latent_count == len(f_got)
    assert all(torch.equal(a.kept, b.kept) for a, b in zip(rebuilt.slots, small.slots, strict=True))


def test_compaction_leaves_the_source_alone_and_copies_are_independent() -> None:
    model = install_bbd(wrn())
    prune_half(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in mask_parameters(twin):
            p.fill_(-10.0)  # the copy prunes everything; the original must not notice
    model.eval()
    twin.eval()
    x, _ = data(2)
    with torch.no_grad():
        before = model(x)
        compact_model(model)
        assert torch.equal(model(x), before) and not torch.equal(twin(x), before)
    assert sparsity_summary(model)["unit_sparsity"] == pytest.approx(50.0)


def _error(call: Callable[[], object]) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def test_bad_graph_descriptions_name_the_problem() -> None:
    with pytest.raises(ValueError, match="input_shape"):
        GraphNet(nn.Linear(3, 2), input_shape=(0,))
    with pytest.raises(ValueError, match="nope"):
        GraphNet(torchvision.models.resnet18(num_classes=10), input_shape=CIFAR, ignore=["nope"])
    spec = graph_spec(wrn())
    with pytest.raises(ValueError, match="warp"):
        apply_graph_spec(wrn(), {**spec, "layers": {"warp": {"type": "conv"}}})
    bad = json.loads(json.dumps(spec))
    bad["kept"][0] = [999]
    with pytest.raises(ValueError, match="slot 0"):
        apply_graph_spec(wrn(), bad)
    # each message whole: what is wrong, where, and the value
    net_type = type(wrn().net).__name__
    with pytest.raises(ValueError, match=f"^compact description names layer 'warp', which {net_type} lacks$"):
        apply_graph_spec(wrn(), {**spec, "layers": {"warp": {"type": "conv"}}})
    conv = next(n for n, w in spec["layers"].items() if w["type"] == "conv")
    with pytest.raises(ValueError, match=f"^compact description: layer '{conv}' must be a mapping, got 5$"):
        apply_graph_spec(wrn(), {**spec, "layers": {conv: 5}})
    with pytest.raises(ValueError, match=f"^compact description: layer '{conv}' is a Conv2d, the description says "
                                         "'linear'$"):
        apply_graph_spec(wrn(), {**spec, "layers": {conv: {"type": "linear"}}})
    units = int(re.search(r"below (\d+)", _error(lambda: apply_graph_spec(wrn(), bad))).group(1))
    for kept in ([], 5, [True], [-1], [units]):  # none kept, not a list, a bool, below 0, one past the last
        bad = json.loads(json.dumps(spec))
        bad["kept"][0] = kept
        with pytest.raises(ValueError, match=r"^compact description: slot 0 kept units must be indices below \d+, "
                                             f"got {re.escape(repr(kept))}$"):
            apply_graph_spec(wrn(), bad)
    bad = json.loads(json.dumps(spec))
    bad["layers"][conv]["out"] += 1  # the layers after it still expect the old width
    with pytest.raises(ValueError, match="^compact description does not give a consistent network: .+"):
        apply_graph_spec(wrn(), bad)
    n = len(spec["kept"])
    with pytest.raises(ValueError, match=f"^compact description has {n - 1} slots, the model {n}$"):
        apply_graph_spec(wrn(), {**spec, "kept": spec["kept"][:-1]})


def test_the_graph_description_format_names_its_layer_types_and_groups() -> None:
    """compact.json's ``graph``: the layer types are a file format (a run written by one version is
    rebuilt by another), and the slot groups travel with it."""
    model = wrn()
    spec = graph_spec(model)
    assert set(spec) == {"layers", "kept", "groups"} and spec["groups"] == model.describe()["groups"]
    first = dict(model.net.named_modules())
    types = {name: w["type"] for name, w in spec["layers"].items()}
    assert set(types.values()) == {"conv", "linear", "bn"}
    kinds = {nn.Conv2d: "conv", nn.Linear: "linear", nn.BatchNorm2d: "bn"}
    assert all(types[n] == kinds[type(first[n])] for n in types)
    conv = next(n for n, t in types.items() if t == "conv")
    assert set(spec["layers"][conv]) == {"type", "in", "out", "groups"}
    for bad in ({"layers": {}}, {"kept": []}, {"layers": [], "kept": []}, {"layers": {}, "kept": {}}, []):
        with pytest.raises(ValueError, match="^compact description: 'graph' must hold 'layers' \\(a mapping\\) and "
                                             "'kept' \\(a list\\)$"):
            apply_graph_spec(wrn(), bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- run directories
@pytest.mark.slow
def test_graph_run_compacts_and_evaluates(tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # a model name for this test only (naming networks from elsewhere is the --model resolution's job)
    monkeypatch.setitem(MODELS._items, "test-graph-wrn", _graph_wrn)
    run, out = tmp_path / "run", tmp_path / "small"
    assert main(["train", "--method", "bp", "--model", "test-graph-wrn", "--dataset", "mnist", "--epochs", "1",
                 "--out", str(run), "--data-dir", str(tiny_mnist), *TINY]) == 0
    src = load_run(run)
    prune_half(src.model)
    from robustprune.train.checkpoint import save_weights

    save_weights(src.model, run / "model.safetensors")
    assert main(["compact", str(run), "--out", str(out), "--no-measure"]) == 0
    assert "slots.0" in capsys.readouterr().out
    info = json.loads((out / "compact.json").read_text())
    assert info["kind"] == "graph" and "layers" not in info and info["max_abs_diff"] <= 1e-5
    dst = load_run(out)
    assert isinstance(dst.model, GraphNet) and count_params(dst.model) < count_params(src.model)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert (load_run(run).model(x) - dst.model(x)).abs().max().item() <= 1e-5
    card = tmp_path / "card.json"
    assert main(["eval", str(out), "--attack", "pgd", "--steps", "2", "--limit", "16", "--data-dir", str(tiny_mnist),
                 "--out", str(card), "--no-progress"]) == 0
    got = json.loads(card.read_text())
    assert got["compact"]["compacted"] is True and got["compact"]["kind"] == "graph"
    assert "graph" not in got["compact"]  # the rebuild description stays in compact.json
    again = compact_run(run, out=tmp_path / "measured", repeats=1, batch_sizes=(2,))
    assert json.loads((again / "compact.json").read_text())["measured"]["flops_speedup"] > 1


# --------------------------------------------------------------------------------- the registered models
def without_hand_slots(model: nn.Module) -> nn.Module:
    """``model`` with every hand-placed MaskSlot replaced by an identity (for the graph to place)."""
    for name, _ in mask_slots(model):
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return model


def train_few_steps(model: nn.Module, method: str, ctx: MethodContext, shape: tuple[int, ...],
                    steps: int = 3, batch: int = 8) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``steps`` training steps of ``method`` on fixed random batches (the masks' noise and dropout
    from a fixed global seed), then eval-mode logits, latent maps and every parameter (weights,
    then masks, in order)."""
    m = build_method(method, ctx=ctx)
    m.prepare(model)
    groups = m.param_groups(model)
    opts = [torch.optim.Adam(g.params, lr=g.lr, weight_decay=g.weight_decay) for g in groups]
    torch.manual_seed(7)  # the masks' noise and dropout: drawn in the same order by both models
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        step(m, model, groups, opts, torch.rand(batch, *shape, generator=g),  # type: ignore[arg-type]
             torch.randint(0, 10, (batch,), generator=g))
    model.eval()
    with torch.no_grad():
        logits, feats = model(torch.rand(4, *shape, generator=g), features=True)
        params = [p.detach().clone() for p in (*base_parameters(model), *mask_parameters(model))]
    return logits, list(feats), params


def assert_same_training(hand: nn.Module, graph: nn.Module, method: str, ctx: MethodContext,
                         shape: tuple[int, ...], **kw: int) -> None:
    want_logits, want_feats, want_params = train_few_steps(hand, method, ctx, shape, **kw)
    got_logits, got_feats, got_params = train_few_steps(graph, method, ctx, shape, **kw)
    assert torch.equal(want_logits, got_logits)
    assert len(want_feats) == len(got_feats) and all(torch.equal(a, b) for a, b in zip(want_feats, got_feats,
                                                                                          strict=True))
    assert len(want_params) == len(got_params)
    assert all(torch.equal(a, b) for a, b in zip(want_params, got_params, strict=True))


MNIST_CTX = MethodContext(dataset="mnist", train_size=1000, num_classes=10, adv_eps=0.3, adv_steps=1,
                          adv_step_size=0.1, lr=1e-2, weight_decay=1e-4, total_steps=10)


def test_graph_slots_train_exactly_like_lenet300_hand_slots() -> None:
    """LeNet-300-100's hand slots sit right after fc1 and fc2, where the graph puts its sites: the
    same units in the same order, and a few ``bp`` steps give identical parameters and logits."""
    from robustprune.models import build_model

    torch.manual_seed(0)
    hand = build_model("lenet-300-100")
    graph = GraphNet(without_hand_slots(copy.deepcopy(hand)), input_shape=(1, 28, 28))
    assert [s.units for _, s in mask_slots(graph)] == [s.units for _, s in mask_slots(hand)] == [300, 100]
    assert [g.sites for g in graph.groups] == [("fc1",), ("fc2",)]
    with pytest.raises(ValueError, match="mask1"):
        GraphNet(build_model("lenet-300-100"), input_shape=(1, 28, 28))  # no double masks
    assert_same_training(hand, graph, "bp", MNIST_CTX, (1, 28, 28))


@pytest.mark.parametrize("name", ["lenet-300-100", "lenet5-caffe", "vgg16"])
def test_anpvs_placement_finds_the_hand_slots(name: str) -> None:
    """With ``placement="anp-vs"`` the graph puts a mask where each registered model's hand slot is:
    the same units, in the same order, at the same place (conv outputs before their batch norm,
    linear layers' inputs), and the network keeps its own latent maps."""
    from robustprune.models import build_model

    model = build_model(name)
    hand = [(n, s.units) for n, s in mask_slots(model)]
    shape = CIFAR if name == "vgg16" else (1, 28, 28)
    graph = GraphNet(without_hand_slots(model), input_shape=shape, placement="anp-vs")
    got = [(g.side, g.sites, g.units) for g in graph.groups]
    if name == "lenet-300-100":  # masks on fc2's and fc3's inputs: after fc1's and fc2's ReLU
        want = [("in", ("fc2",), 300), ("in", ("fc3",), 100)]
    elif name == "lenet5-caffe":
        want = [("out", ("conv1",), 20), ("out", ("conv2",), 50), ("in", ("fc1",), 800), ("in", ("fc2",), 500)]
    else:
        want = [*(("out", (f"blocks.{i}.conv",), u) for i, (_, u) in enumerate(hand[:13])),
                ("in", ("fc1",), 512), ("in", ("fc2",), 512)]
    assert got == want and [u for *_, u in got] == [u for _, u in hand]
    assert graph.own_latents and graph.latent_count == type(model).latent_count
    assert graph.skipped == []
    assert all(not g.removable for g in graph.groups if g.side == "in")
    with pytest.raises(ValueError, match="placement 'paper'"):
        GraphNet(without_hand_slots(build_model(name)), input_shape=shape, placement="paper")  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "method"), [("lenet5-caffe", "bp"), ("lenet5-caffe", "anp-vs"),
                                              ("vgg16", "bp"), ("vgg16", "anp-vs")])
def test_anpvs_placement_trains_exactly_like_the_hand_slots(name: str, method: str) -> None:
    """The registered models through the automatic mechanism: a few steps of ``bp`` (masks and KL)
    and of ``anp-vs`` (adversarial examples, the vulnerability term on the latent maps) give
    bit-identical parameters, logits and latent maps to the same model with its hand slots."""
    from robustprune.models import build_model

    torch.manual_seed(0)
    hand = build_model(name)
    shape = CIFAR if name == "vgg16" else (1, 28, 28)
    graph = GraphNet(without_hand_slots(copy.deepcopy(hand)), input_shape=shape, placement="anp-vs")
    if name == "vgg16":  # two steps of batch 4 (VGG-16 is the slow one); BN's batch statistics need > 1
        assert_same_training(hand, graph, method, CTX, shape, steps=2, batch=4)
    else:
        assert_same_training(hand, graph, method, MNIST_CTX, shape)


def test_resnet18_hand_slots_are_the_inner_groups_of_the_default_placement() -> None:
    """The registered resnet18 masks only its blocks' inner channels (after bn1), leaving the residual
    streams whole: the default placement with the streams' producers ignored finds exactly those
    slots, and two ``bp`` steps train bit-identically."""
    from robustprune.models import build_model

    torch.manual_seed(0)
    hand = build_model("resnet18")
    stream = ["conv1", *(n for n, _ in hand.named_modules() if n.endswith((".conv2", ".shortcut.0")))]
    graph = GraphNet(without_hand_slots(copy.deepcopy(hand)), input_shape=CIFAR, ignore=stream)
    assert [(g.sites, g.units) for g in graph.groups] == [((f"blocks.{i}.bn1",), s.units)
                                                          for i, (_, s) in enumerate(mask_slots(hand))]
    assert graph.skipped == [] and graph.own_latents and graph.latent_count == 8
    assert_same_training(hand, graph, "bp", CTX, CIFAR, steps=2, batch=4)


@pytest.mark.parametrize("name", ["lenet5-caffe", "vgg16"])
def test_graph_groups_match_the_output_side_hand_slots(name: str) -> None:
    """With the default placement the graph finds the hand slots that mask a layer's outputs, in the
    same order, but masks after a batch norm (so pruned units can be removed) and leaves linear
    layers' inputs alone (LeNet5's 800-way mask3, VGG's mask_fc1 are not output units)."""
    from robustprune.models import build_model

    model = build_model(name, **({"in_channels": 1, "image_size": 28} if name == "lenet5-caffe" else {}))
    hand = {n: s.units for n, s in mask_slots(model)}
    shape = (1, 28, 28) if name == "lenet5-caffe" else CIFAR
    graph = GraphNet(without_hand_slots(model), input_shape=shape)
    found = [(g.producers, g.units) for g in graph.groups]
    if name == "lenet5-caffe":
        assert found == [(("conv1",), hand["mask1"]), (("conv2",), hand["mask2"]), (("fc1",), hand["mask4"])]
        assert hand["mask3"] == 800  # the flattened inputs of fc1: no output group
    else:
        blocks = [((f"blocks.{i}.conv",), hand[f"blocks.{i}.mask"]) for i in range(13)]
        assert found == [*blocks, (("fc1",), hand["mask_fc2"])]
        assert [g.sites for g in graph.groups][:2] == [("blocks.0.bn",), ("blocks.1.bn",)]
    assert graph.skipped == [] and all(g.removable and g.side == "out" for g in graph.groups)


def test_anpvs_placement_compacts_exactly() -> None:
    """Compacting an ``anp-vs``-placed LeNet5-Caffe folds every mask (the input-side ones into the
    linear layers' columns) and removes the pruned units of the groups masked without a batch norm
    after them: logits within 1e-5, conv channels gone, fc1 keeps its input width."""
    from robustprune.models import build_model

    torch.manual_seed(0)
    graph = GraphNet(without_hand_slots(build_model("lenet5-caffe")), input_shape=(1, 28, 28), placement="anp-vs")
    install_bbd(graph)
    prune_half(graph)
    graph.eval()
    small = compact_model(graph)
    assert isinstance(small, GraphNet)
    x = torch.rand(8, 1, 28, 28)
    graph.own_latents = False  # compare the sites' latent maps (the compacted copy reads those)
    with torch.no_grad():
        (want, want_maps), (got, got_maps) = graph(x, features=True), small(x, features=True)
    assert (want - got).abs().max().item() <= 1e-5
    assert [m.shape for m in want_maps] == [m.shape for m in got_maps]  # scattered back to full width
    assert all((a - b).abs().max().item() <= 1e-4 for a, b in zip(want_maps, got_maps, strict=True))
    rebuilt = apply_graph_spec(GraphNet(without_hand_slots(build_model("lenet5-caffe")), input_shape=(1, 28, 28),
                                        placement="anp-vs"), graph_spec(small))
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), got)
    net = small.net
    assert net.conv1.out_channels < 20 and net.conv2.out_channels < 50
    assert net.fc1.in_features == net.conv2.out_channels * 16  # only the pruned channels' columns left
    assert net.fc2.in_features == 500  # input-side groups are folded, not removed


@pytest.mark.slow
def test_graph_compaction_exports_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from robustprune.sparsity.compact import export_onnx

    _, small = trained_pruned(wrn, "bp")
    assert export_onnx(small, tmp_path / "m.onnx", CIFAR) <= 1e-5
    assert (tmp_path / "m.onnx").stat().st_size > 0
