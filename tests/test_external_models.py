"""--model torchvision:NAME and package.module:function with --model-args (models/external.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from conftest import TINY
from robustprune.config import TrainConfig
from robustprune.models import ExternalModel, ModelSpecError, build_model, mask_slots, resolve_model
from robustprune.train.run import build_model_for

MNIST = {"num_classes": 10, "in_channels": 1, "image_size": 28, "mean": (0.1307,), "std": (0.3081,)}


def test_factory_gets_dataset_keys_and_model_args() -> None:
    model = build_model("factory_models:tiny_cnn", model_args={"width": 3}, **MNIST)
    assert isinstance(model, ExternalModel)
    conv = model.net[0]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (1, 3)
    assert model.net[-1].out_features == 10
    assert torch.equal(model.normalize.mean.flatten(), torch.tensor([0.1307]))
    logits, feats = model(torch.rand(4, 1, 28, 28), features=True)
    # the graph finds the conv's 3 output channels (its mask site is the BN after it)
    assert logits.shape == (4, 10) and model.latent_count == len(feats) == 1
    assert [slot.units for _, slot in mask_slots(model)] == [3] and feats[0].shape == (4, 3, 28, 28)


def test_class_factory_gets_image_size() -> None:
    model = build_model("factory_models:TinyMLP", model_args={"hidden": 5}, **MNIST)
    assert model.net.fc1.in_features == 784 and model.net.fc1.out_features == 5


def test_normalisation_comes_first() -> None:
    model = build_model("factory_models:tiny_cnn", **MNIST)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), model.net((x - 0.1307) / 0.3081))


def test_torchvision_resnet18_takes_cifar_input() -> None:
    cfg = TrainConfig(model="torchvision:resnet18", dataset="cifar10")
    model = build_model_for(cfg)
    import torchvision

    assert isinstance(model, ExternalModel) and isinstance(model.net, torchvision.models.ResNet)
    assert model.net.fc.out_features == 10
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_plain_name_stays_the_registered_model() -> None:
    assert resolve_model("resnet18").kind == "registered"
    assert resolve_model("torchvision:resnet18").kind == "torchvision"
    assert resolve_model("factory_models:tiny_cnn").kind == "factory"


def test_registered_model_takes_its_own_model_args() -> None:
    model = build_model("vgg16", model_args={"dropout": False}, num_classes=10)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize(("name", "args", "match"), [
    ("resnet50", {}, r"unknown model 'resnet50'.*did you mean torchvision:resnet50"),
    ("lenet7", {}, r"unknown model 'lenet7'; known: .*lenet5-caffe"),
    ("torchvision:resnet", {}, r"'resnet' is not one of torchvision's classification models.*close: .*resnet18"),
    ("no_such_pkg.models:net", {}, r"cannot import module 'no_such_pkg.models'"),
    ("factory_models:missing", {}, r"'factory_models' has no attribute 'missing'.*tiny_cnn"),
    ("factory_models:NOT_CALLABLE", {}, r"'factory_models:NOT_CALLABLE' is a int, not a callable"),
    ("factory_models:not_a_module", {}, r"returned a list, not a torch.nn.Module"),
    ("factory_models:raises", {}, r"'factory_models:raises'.*RuntimeError: factory failed on purpose"),
    ("factory_models:kwargs_only", {}, r"shape \[2, 1000\].*expected \[2, 10\].*pass it in model_args"),
    ("factory_models:tiny_cnn", {"depht": 3}, r"model_args \{'depht': 3\} do not fit factory .*'depht'"),
    ("factory_models:", {}, r"not of the form package.module:function"),
    ("vgg16", {"depht": 3}, r"model 'vgg16' takes no model_args \['depht'\]; it takes: dropout"),
    ("vgg16", {"num_classes": 3}, r"model_args \['num_classes'\].*come from the dataset"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, r"model_args 'weights' \('DEFAULT'\) is not accepted"),
    ("torchvision:resnet18", {}, r"cannot take the dataset's input of shape \[2, 1, 28, 28\]"),
])
def test_bad_models_are_named(name: str, args: dict, match: str) -> None:
    with pytest.raises(ModelSpecError, match=match):
        build_model(name, model_args=args, **MNIST)


def test_kwargs_factory_with_num_classes_in_model_args() -> None:
    model = build_model("factory_models:kwargs_only", model_args={"num_classes": 10}, **MNIST)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_config_rejects_non_mapping_model_args() -> None:
    with pytest.raises(ValueError, match=r"model_args .*\[1, 2\]"):
        TrainConfig(model_args=[1, 2]).validate()  # type: ignore[arg-type]


def test_factory_model_round_trips_through_a_run(tiny_mnist: Path, tmp_path: Path) -> None:
    """train one step on a factory model -> config.yaml records it -> load_run and eval rebuild it."""
    from robustprune.cli import main
    from robustprune.train.checkpoint import load_weights
    from robustprune.train.run import load_run

    out = tmp_path / "ext"
    assert main(["train", "--model", "factory_models:tiny_cnn", "--model-args", "{width: 3}", "--dataset", "mnist",
                 "--epochs", "1", "--out", str(out), "--data-dir", str(tiny_mnist),
                 *TINY[:2], "--batch-size", "64", "--no-progress"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"] == "factory_models:tiny_cnn" and saved["model_args"] == {"width": 3}
    assert json.loads((out / "run.json").read_text())["config"]["model_args"] == {"width": 3}
    run = load_run(out)
    assert isinstance(run.model, ExternalModel) and run.model.net[0].out_channels == 3
    weights = load_weights(out / "model.safetensors")
    assert all(torch.equal(v, weights[k]) for k, v in run.model.state_dict().items())
    card_path = tmp_path / "card.json"
    assert main(["eval", str(out), "--attack", "pgd", "--steps", "2", "--limit", "16", "--data-dir", str(tiny_mnist),
                 "--out", str(card_path), "--no-progress", "--json"]) == 0
    card = json.loads(card_path.read_text())
    assert card["model"] == "factory_models:tiny_cnn" and card["n"] == 16
    assert card["config"]["model_args"] == {"width": 3}
    assert card["attacks"][0]["name"] == "pgd" and len(card["attacks"][0]["vulnerability"]["per_layer"]) == 1


def test_cli_names_a_bad_model(tiny_mnist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustprune.cli import main

    rc = main(["train", "--model", "factory_models:tiny_cnn", "--model-args", "{depht: 3}", "--out",
               str(tmp_path / "bad"), "--data-dir", str(tiny_mnist), *TINY])
    assert rc == 2 and "depht" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_suite_checks_model_and_model_args() -> None:
    from robustprune.compare.suite import parse_suite

    suite = {"runs": [{"id": "ext", "method": "standard", "model": "factory_models:tiny_cnn",
                       "model_args": {"width": 2}}], "eval": {"attacks": ["pgd"]}}
    assert parse_suite(suite).runs[0].config(0, out="-").model_args == {"width": 2}
    suite["runs"][0]["model_args"] = {"depht": 2}
    with pytest.raises(ValueError, match=r"run 'ext'.*depht"):
        parse_suite(suite)
    suite["runs"][0]["model"] = "factory_models:nothing"
    with pytest.raises(ValueError, match=r"run 'ext'.*no attribute 'nothing'"):
        parse_suite(suite)


@pytest.mark.parametrize("name", ["linear", "factory_models:tiny_cnn"])
def test_vulnerability_is_measured_where_a_model_has_latent_maps(name: str) -> None:
    """latent_count = 0 (the linear model): attacked, no vulnerability; a wrapped outside model
    gets latent maps from its traced graph, so its vulnerability is measured."""
    from robustprune.attacks import PGD
    from robustprune.eval.evaluate import evaluate

    model = build_model(name, **MNIST)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    res = evaluate(model, [(x, y)], [("pgd", PGD(eps=0.1, steps=2, step_size=0.05))], progress=False)  # type: ignore[arg-type]
    assert res.total == 8 and res.attacks[0].total == 8
    assert (res.attacks[0].vulnerability is None) == (name == "linear")


def test_config_file_names_model_and_model_args() -> None:
    """configs/cifar10_torchvision_resnet18_at.yaml through the CLI parser builds its model."""
    from robustprune.cli import build_parser, train_config

    path = Path(__file__).parents[1] / "configs" / "cifar10_torchvision_resnet18_at.yaml"
    ns = build_parser().parse_args(["train", "--config", str(path)])
    cfg = train_config(ns.train)
    assert (cfg.model, cfg.model_args) == ("torchvision:resnet18", {"zero_init_residual": True})
    model = build_model_for(cfg)
    assert torch.count_nonzero(model.net.layer1[0].bn2.weight) == 0  # zero_init_residual reached torchvision
