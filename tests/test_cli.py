"""The command line: the documented commands work, bad input gets a clear error and no file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustprune.cli import main


def test_train_then_eval_writes_a_card(at_run: Path, tiny_mnist: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    card_path = tmp_path / "card.json"
    rc = main(["eval", str(at_run), "--attack", "none,fgsm,pgd", "--eps", "0.3", "--steps", "3", "--step-size",
               "0.1", "--limit", "40", "--data-dir", str(tiny_mnist), "--out", str(card_path), "--no-progress"])
    assert rc == 0
    card = json.loads(card_path.read_text())
    for key in ("method", "model", "dataset", "train_seed", "config", "robustprune_version", "git_sha", "device",
                "total_wall_s", "clean_acc", "attacks"):
        assert key in card, key
    assert card["n"] == 40
    names = [a["name"] for a in card["attacks"]]
    assert names == ["fgsm", "pgd"]
    pgd = card["attacks"][1]
    assert pgd["params"]["eps"] == 0.3 and pgd["params"]["steps"] == 3
    assert 0 <= pgd["robust_acc"] <= card["clean_acc"]
    assert len(pgd["vulnerability"]["per_layer"]) == 3
    assert "| pgd |" in capsys.readouterr().out


def test_transfer_needs_and_uses_a_source(at_run: Path, tiny_mnist: Path, tmp_path: Path) -> None:
    assert main(["eval", str(at_run), "--attack", "transfer", "--limit", "8", "--data-dir", str(tiny_mnist),
                 "--no-progress"]) == 2
    out = tmp_path / "t.json"
    assert main(["eval", str(at_run), "--attack", "transfer", "--source", str(at_run), "--steps", "2", "--limit", "8",
                 "--data-dir", str(tiny_mnist), "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["attacks"][0]["params"]["transfer"] is True


@pytest.mark.parametrize(
    ("flags", "needle"),
    [(["--eps", "-0.5"], "-0.5"), (["--attack", "deepfog"], "deepfog"), (["--steps", "0"], "steps"),
     (["--limit", "0"], "limit")],
)
def test_eval_bad_input(at_run: Path, tiny_mnist: Path, tmp_path: Path, flags: list[str], needle: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad.json"
    rc = main(["eval", str(at_run), "--data-dir", str(tiny_mnist), "--out", str(out), "--no-progress", *flags])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_eval_missing_and_corrupt_run(at_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    (at_run / "model.safetensors").write_bytes(b"garbage")
    assert main(["eval", str(at_run)]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_config_file_and_flags(tiny_mnist: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("method: standard\nepochs: 3\nbatch_size: 16\nmethod_args: {}\n")
    out = tmp_path / "r"
    rc = main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out), "--data-dir", str(tiny_mnist),
               "--limit-train", "32", "--no-progress"])
    assert rc == 0
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["batch_size"] == 16 and saved["limit_train"] == 32


def test_python_dash_m_works() -> None:
    res = subprocess.run([sys.executable, "-m", "robustprune", "list"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    listed = dict(line.split(": ", 1) for line in res.stdout.splitlines())
    assert "lenet5-caffe" in listed["models"].split(", ") and "at" in listed["methods"].split(", ")
    assert {"sap", "bnn-sample"} <= set(listed["test-time defenses"].split(", "))
    assert "torchvision:NAME" in listed["outside models"]


def test_a_bug_reaches_the_user_with_its_type(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import robustprune.cli as cli

    def bug(_: object) -> int:
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setitem(cli.COMMANDS, "list", bug)
    with pytest.raises(RuntimeError, match="invariant"):
        main(["list"])

    def user_error(_: object) -> int:
        raise ValueError("bad --eps 7")

    monkeypatch.setitem(cli.COMMANDS, "list", user_error)
    assert main(["list"]) == 2
    assert capsys.readouterr().err.strip() == "robustprune list: error: bad --eps 7"
