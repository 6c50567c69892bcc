"""``robustprune import`` (train/importer.py): a run directory from trained weights, without
training, that load_run, the jobs and ``--init-from`` accept."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from robustprune.config import TrainConfig
from robustprune.train import fit, load_run
from robustprune.train.importer import ImportRunError, import_run
from robustprune.train.run import build_model_for

MNIST_SHAPE = (1, 28, 28)


def trained(cfg: TrainConfig, seed: int = 3) -> nn.Module:
    """A model of ``cfg`` with weights no fresh build has: another seed, moved batch-norm statistics."""
    torch.manual_seed(seed)
    model = build_model_for(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None
                m.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


def logits(model: nn.Module, shape: tuple[int, ...] = MNIST_SHAPE) -> Tensor:
    x = torch.rand((4, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def test_registered_models_state_dict_becomes_a_run(tmp_path: Path) -> None:
    cfg = TrainConfig(model="lenet5-caffe", dataset="mnist")
    src = trained(cfg)
    weights = tmp_path / "lenet.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, weights)
    run = import_run(model="lenet5-caffe", weights=weights, dataset="mnist", out=tmp_path / "run", method="at")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "model.safetensors", "run.json"]
    loaded = load_run(run)
    assert loaded.complete and loaded.cfg.method == "at" and torch.equal(logits(loaded.model), logits(src))
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["epochs_done"] == 0 and record["history"] == []
    imported = record["imported"]
    assert imported["weights"] == str(weights.resolve()) and imported["bytes"] == weights.stat().st_size
    assert imported["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["init"]["fresh"] == [] and record["init"]["renamed_examples"]["module.conv1.weight"] == "conv1.weight"
    assert not list(tmp_path.glob(".run.import-*"))  # the temporary directory was renamed


def test_torchvision_models_state_dict_becomes_a_run(tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.2, 0.2)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    with pytest.warns(UserWarning, match="has no normalize.mean, normalize.std; the run feeds the network cifar10"):
        run = import_run(model="torchvision:resnet18", weights=tmp_path / "r18.safetensors", dataset="cifar10",
                         out=tmp_path / "run")
    loaded = load_run(run)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    with torch.no_grad():  # the run puts the dataset's normalisation in front of the network
        assert torch.allclose(loaded.model(x), net.eval()((x - mean) / std), atol=1e-5)
    assert json.loads((run / "run.json").read_text())["init"]["fresh"] == ["normalize.mean", "normalize.std"]


def test_user_factorys_weights_become_a_run_every_job_accepts(tiny_mnist: Path, tmp_path: Path) -> None:
    """A ``package.module:function`` network imported, then evaluated through the CLI and pruned
    with ``--init-from`` the imported run."""
    from factory_models import tiny_cnn
    from robustprune.cli import main

    torch.manual_seed(2)
    net = tiny_cnn(10, 1, width=3)
    torch.save(net.state_dict(), tmp_path / "net.pth")
    with pytest.warns(UserWarning, match="normalize"):
        run = import_run(model="factory_models:tiny_cnn", model_args={"width": 3}, weights=tmp_path / "net.pth",
                         dataset="mnist", out=tmp_path / "run")
    assert torch.equal(load_run(run).model.net[0].weight, net[0].weight)
    assert main(["eval", str(run), "--attack", "none", "--limit", "16", "--data-dir", str(tiny_mnist),
                 "--no-progress", "--json"]) == 0
    assert list((run / "eval").glob("*.json"))
    with pytest.warns(UserWarning, match=r"keep their initial values \(method .bp.\): \[slots.0.mask.a_uc"):
        pruned = fit(TrainConfig(method="bp", model="factory_models:tiny_cnn", model_args={"width": 3},
                                 dataset="mnist", init_from=str(run), out=str(tmp_path / "bp"),
                                 data_dir=str(tiny_mnist), limit_train=32, batch_size=32, progress=False,
                                 tensorboard=False))
    init = json.loads((pruned / "run.json").read_text())["init"]
    assert init["source"] == str(run) and init["loaded"] == len(load_run(run).model.state_dict())


def test_weights_that_do_not_fit_are_named(tmp_path: Path) -> None:
    state = trained(TrainConfig()).state_dict()
    state["fc3.weight"] = state.pop("fc2.weight")
    state["fc1.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ImportRunError) as info:
        import_run(model="lenet5-caffe", weights=tmp_path / "bad.pt", dataset="mnist", out=tmp_path / "run")
    msg = str(info.value)
    assert msg.startswith(f"--weights {tmp_path / 'bad.pt'}: weights do not fit this model")
    assert "unexpected [fc3.weight]" in msg and "missing [fc2.weight]" in msg
    assert "shape mismatch [fc1.weight [3, 3] vs model [500, 800]]" in msg and "--init-" not in msg
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    src = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained(TrainConfig()).state_dict().items()}, str(src))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="output directory .*taken already exists"):
        import_run(model="lenet5-caffe", weights=src, dataset="mnist", out=tmp_path / "taken")
    with pytest.raises(ValueError, match="unknown method 'tarin'"):
        import_run(model="lenet5-caffe", weights=src, dataset="mnist", out=tmp_path / "a", method="tarin")
    with pytest.raises(ValueError, match=r"--weights-prefix '!fc2\.': .*rules are refused"):
        import_run(model="lenet5-caffe", weights=src, dataset="mnist", out=tmp_path / "b", prefix="!fc2.")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        import_run(model="lenet5-caffe", weights=tmp_path / "nowhere.pt", dataset="mnist", out=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown dataset 'mnits'"):
        import_run(model="lenet5-caffe", weights=src, dataset="mnits", out=tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken", "w.safetensors"]


def test_cli_import_then_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from factory_models import tiny_cnn
    from robustprune.cli import main

    torch.manual_seed(4)
    net = tiny_cnn(10, 1, width=3)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    flags = ["--model", "factory_models:tiny_cnn", "--model-args", "{width: 3}", "--dataset", "mnist"]
    with pytest.warns(UserWarning, match="normalize"):
        assert main(["import", *flags, "--weights", str(tmp_path / "net.pt"), "--out", str(tmp_path / "run")]) == 0
    assert f"as run {tmp_path / 'run'}" in capsys.readouterr().out
    assert torch.equal(load_run(tmp_path / "run").model.net[5].weight, net[5].weight)
    torch.save({"head.weight": torch.zeros(1)}, tmp_path / "other.pt")
    assert main(["import", *flags, "--weights", str(tmp_path / "other.pt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "robustprune import: error: --weights" in err and "unexpected [net.head.weight]" in err
    assert "--weights-prefix OLD=NEW" in err


def test_training_into_an_imported_run_is_refused(tmp_path: Path) -> None:
    src = trained(TrainConfig(model="lenet5-caffe", dataset="mnist"))
    weights = tmp_path / "lenet.pt"
    torch.save(src.state_dict(), weights)
    run = import_run(model="lenet5-caffe", weights=weights, dataset="mnist", out=tmp_path / "run", method="at")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"holds a run imported by `robustprune import` \(from .*lenet.pt\); "
                                             r"training into it would overwrite it: choose another --out"):
            fit(TrainConfig(method="standard", out=str(run), resume=resume, data_dir=str(tmp_path / "no-data"),
                            progress=False, tensorboard=False))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing was touched
