"""--init-from a plain state dict (train/warmstart.py): file types, key rules, named errors,
and a method's added parts starting fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from robustprune.config import TrainConfig
from robustprune.defenses import build_method
from robustprune.models import build_model
from robustprune.train.run import build_model_for, init_from, method_context
from robustprune.train.warmstart import InitFromError, KeyRules, read_state_dict, warm_start


class NotATensor:
    """Pickled into a .pt file to check that weights_only loading refuses it."""

    def __init__(self) -> None:
        self.payload = "anything"


def lenet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model_for(TrainConfig())


def plain_state(seed: int = 1) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in lenet(seed).state_dict().items()}


def same_as(model: nn.Module, state: dict[str, Tensor]) -> bool:
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items())


def test_safetensors_with_module_prefix_is_stripped(tmp_path: Path) -> None:
    state = plain_state()
    save_file({f"module.{k}": v for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    model = lenet(0)
    report = warm_start(model, tmp_path / "w.safetensors")
    assert same_as(model, state) and report.fresh == [] and report.loaded == len(state)
    assert report.renamed["module.conv1.weight"] == "conv1.weight"


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_checkpoint_nesting_is_unwrapped(tmp_path: Path, suffix: str) -> None:
    state = plain_state()
    path = tmp_path / f"ckpt{suffix}"
    torch.save({"epoch": 3, "model": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
                "optimizer": {"lr": 0.1}}, path)
    model = lenet(0)
    init_from(model, path)
    assert same_as(model, state)


def test_prefix_rules_rename_keys(tmp_path: Path) -> None:
    state = plain_state()
    path = tmp_path / "w.pth"
    torch.save({f"backbone.{k}": v for k, v in state.items()}, path)
    with pytest.raises(InitFromError, match=r"unexpected \[backbone\..*no key matched.*--init-prefix"):
        warm_start(lenet(0), path)
    model = lenet(0)
    warm_start(model, path, prefix="backbone.=")
    assert same_as(model, state)


def test_pickled_object_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "extra": NotATensor()}, path)
    with pytest.raises(InitFromError, match=r"evil.pt: refused.*weights_only.*NotATensor"):
        read_state_dict(path)


def test_non_state_dicts_are_named(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(InitFromError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"epoch": 3, "weights_here": {"a": 1}}, tmp_path / "odd.pt")
    with pytest.raises(InitFromError, match=r"non-tensor entries: \[epoch, weights_here\]"):
        read_state_dict(tmp_path / "odd.pt")
    torch.save({"state_dict": {}}, tmp_path / "empty.pt")
    with pytest.raises(InitFromError, match=r"empty.pt\['state_dict'\]: an empty mapping"):
        read_state_dict(tmp_path / "empty.pt")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(InitFromError, match=r"unknown file type '.npz'"):
        read_state_dict(tmp_path / "w.npz")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(InitFromError, match="bad.pt: cannot read it with torch.load"):
        read_state_dict(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        read_state_dict(tmp_path / "nowhere.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InitFromError, match="without model.safetensors"):
        read_state_dict(tmp_path / "empty")


def test_unmatched_keys_are_named(tmp_path: Path) -> None:
    state = plain_state()
    del state["conv2.bias"]
    state["head.weight"] = torch.zeros(3)
    state["fc2.weight"] = torch.zeros(7, 500)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(InitFromError) as info:
        warm_start(lenet(0), tmp_path / "w.pt")
    msg = str(info.value)
    assert "unexpected [head.weight]" in msg and "missing [conv2.bias]" in msg
    assert "shape mismatch [fc2.weight [7, 500] vs model [10, 500]]" in msg


def test_keep_rule_leaves_a_head_of_another_size_fresh(tmp_path: Path) -> None:
    state = plain_state()
    state["fc2.weight"], state["fc2.bias"] = torch.zeros(7, 500), torch.zeros(7)
    torch.save(state, tmp_path / "w.pt")
    model = lenet(0)
    head = model.fc2.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"2 keys not in the source keep their initial values: \[fc2.bias, fc2"):
        report = warm_start(model, tmp_path / "w.pt", prefix="!fc2.")
    assert torch.equal(model.fc2.weight, head) and report.fresh == ["fc2.bias", "fc2.weight"]
    assert same_as(model, {k: v for k, v in state.items() if not k.startswith("fc2.")})


@pytest.mark.parametrize("bad", ["foo", "=x", "!", "!a=b", "a=b=c"])
def test_bad_prefix_rules_are_named(bad: str) -> None:
    with pytest.raises(InitFromError, match=f"rule {bad!r}"):
        KeyRules.parse(f"module.=,{bad}")


def prepared(method: str) -> tuple[nn.Module, set[str]]:
    cfg = TrainConfig(method=method)
    bare = lenet(0)
    base = set(bare.state_dict())
    return build_method(method, ctx=method_context(cfg, train_size=64)).prepare(bare), base


def test_cas_warm_start_from_a_plain_backbone_keeps_only_the_heads_fresh(tmp_path: Path) -> None:
    state = plain_state()
    torch.save(state, tmp_path / "backbone.pt")
    model, base = prepared("at+cas")
    heads = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("cas.")}
    assert heads
    with pytest.warns(UserWarning, match=r"keep their initial values \(method 'at\+cas'\): \[cas.0.fc.bias, "
                                         r"cas.0.fc.weight\]"):
        report = init_from(model, tmp_path / "backbone.pt", base_keys=base, method="at+cas")
    assert report.fresh == sorted(heads) and same_as(model, state) and same_as(model, heads)


def test_bnn_warm_start_fills_the_means_and_keeps_rho_fresh(tmp_path: Path) -> None:
    state = plain_state()
    save_file(state, str(tmp_path / "backbone.safetensors"))
    model, base = prepared("at-bnn")
    with pytest.warns(UserWarning, match=r"keep their initial values.*conv1.parametrizations.weight.0.rho"):
        report = init_from(model, tmp_path / "backbone.safetensors", base_keys=base, method="at-bnn")
    layers = ("conv1", "conv2", "fc1", "fc2")
    assert report.fresh == sorted(f"{n}.parametrizations.weight.0.rho" for n in layers)
    own = model.state_dict()
    for n in layers:
        assert torch.equal(own[f"{n}.parametrizations.weight.original"], state[f"{n}.weight"])
        assert torch.all(own[f"{n}.parametrizations.weight.0.rho"] == -3.0)
    assert torch.equal(own["conv1.bias"], state["conv1.bias"])


def test_external_model_takes_the_bare_models_state_dict(tmp_path: Path) -> None:
    from factory_models import tiny_cnn

    torch.manual_seed(5)
    net = tiny_cnn(10, 1, width=3)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "net.pth")
    model = build_model("factory_models:tiny_cnn", model_args={"width": 3}, num_classes=10, in_channels=1,
                        image_size=28, mean=(0.5,), std=(0.25,))
    with pytest.warns(UserWarning, match=r"\[normalize.mean, normalize.std\]"):
        report = warm_start(model, tmp_path / "net.pth")
    assert same_as(model, {f"net.{k}": v for k, v in net.state_dict().items()})
    assert report.renamed["0.weight"] == "net.0.weight" and float(model.normalize.mean.flatten()[0]) == 0.5


def test_trainer_records_fresh_keys_in_run_json(tiny_mnist: Path, tmp_path: Path) -> None:
    """An at+cas run started from a plain .pt: the warning and run.json's ``init`` name what started
    fresh (the Trainer is built and finished without training steps, to stay fast)."""
    from robustprune.train.loop import Trainer

    torch.save({f"module.{k}": v for k, v in plain_state().items()}, tmp_path / "plain.pt")
    cfg = TrainConfig(method="at+cas", init_from=str(tmp_path / "plain.pt"), out=str(tmp_path / "cas"),
                      data_dir=str(tiny_mnist), limit_train=64, progress=False)
    with pytest.warns(UserWarning, match=r"cas.0.fc.weight"):
        tr = Trainer(cfg)
    tr.out.mkdir()
    tr.finish()
    init = json.loads((tr.out / "run.json").read_text())["init"]
    assert init["fresh"] == ["cas.0.fc.bias", "cas.0.fc.weight"] and init["loaded"] == len(plain_state())
    assert init["source"] == str(tmp_path / "plain.pt")
    assert init["renamed_examples"]["module.conv1.weight"] == "conv1.weight"


def test_keep_rule_on_an_external_model_names_the_wrapped_layer(tmp_path: Path) -> None:
    """A 1000-class torchvision-style head into a 10-class wrapped model: ``!5.`` keeps the head."""
    from factory_models import tiny_cnn

    torch.save(tiny_cnn(1000, 1, width=3).state_dict(), tmp_path / "big.pt")
    model = build_model("factory_models:tiny_cnn", model_args={"width": 3}, num_classes=10, in_channels=1,
                        image_size=28, mean=(0.5,), std=(0.25,))
    with pytest.raises(InitFromError, match=r"shape mismatch \[net.5.bias \[1000\] vs model \[10\]"):
        warm_start(model, tmp_path / "big.pt")
    with pytest.warns(UserWarning, match=r"\[net.5.bias, net.5.weight, normalize.mean, normalize.std\]"):
        report = warm_start(model, tmp_path / "big.pt", prefix="!5.")
    assert report.loaded == 7


def test_a_gain_the_new_masks_lack_says_which_mask_init_to_use(tmp_path: Path) -> None:
    """A source trained with ``mask_init: function-preserving`` has mask gains; a paper-init run
    has none to take them: the error says to start the masks function-preserving, which works."""
    from robustprune.train.checkpoint import save_weights

    def masked(**args: object) -> nn.Module:
        ctx = method_context(TrainConfig(method="anp-vs"), train_size=64)
        return build_method("anp-vs", ctx=ctx, **args).prepare(build_model("lenet5-caffe"))

    source = masked(mask_init="function-preserving")
    save_weights(source, tmp_path / "fp.safetensors")
    base = set(build_model("lenet5-caffe").state_dict())
    with pytest.raises(InitFromError, match=r"unexpected \[.*gain.*the source's masks carry a gain .*add "
                                            r"mask_init: function-preserving to --method-args"):
        warm_start(masked(), tmp_path / "fp.safetensors", base_keys=base, warn=False)
    target = masked(mask_init="function-preserving")
    warm_start(target, tmp_path / "fp.safetensors", base_keys=base, warn=False)  # the advice works
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), source.eval()(x))
