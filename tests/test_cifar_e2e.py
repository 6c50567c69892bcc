"""The CIFAR path end to end on the CPU, on a tiny synthetic CIFAR-10/100 in the official python
layout (tests/cifar_fixture.py): the loader, ``compare`` of the paper's rows (standard, AT, ANP-VS
on VGG-16, AT on ResNet-18), AutoAttack through the suite, the table, ``compact``,
``export --format robustbench|apb`` on the pruned and a dense run, and CIFAR-100 through train,
eval and export. Every command goes through ``robustprune.cli.main``.

The budget is tiny (one epoch on 32 images), so the models are barely trained and, with BatchNorm's
running statistics still near their start, close to constant in eval mode: a point such a model
classifies correctly is robust, and AutoAttack would spend its full budget on it (minutes on a CPU;
the evaluation config has no AutoAttack budget). AutoAttack therefore runs on the leading test
points the model gets wrong, which exercises the adapter, its card entry, the table column and the
exports, not the attack's search (tests/test_autoattack.py covers that).
"""

from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cifar_fixture import expected, write_cifar10, write_cifar100
from robustprune.cli import main
from robustprune.data import DataError, load_split

TRAIN, TEST = 300, 100
EPS = 8 / 255
#: the training rows of the suite (cifar10_gpu_smoke.yaml's, on VGG-16 and ResNet-18)
ROWS = ["standard", "at", "anp-vs", "r18-at"]
PRUNED, DENSE = "anp-vs", ["standard", "at", "r18-at"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar-data")
    write_cifar10(root, train=TRAIN, test=TEST)
    write_cifar100(root, train=TRAIN, test=TEST)
    return root


def suite_yaml() -> dict[str, Any]:
    """configs/suites/cifar10_gpu_smoke.yaml's recipe (Adam, step schedule, 8/255 training attack,
    ANP-VS β 2 λ 1e-4 from the standard run, PGD and transfer from an AT source of another seed)
    shrunk to one epoch on 32 images, PGD-1 training, PGD-2 on 8 test points, plus AT on ResNet-18
    (white-box only: the transfer source is a VGG-16)."""
    return {
        "name": "cifar10_cpu_e2e",
        "seeds": [0],
        "defaults": {"model": "vgg16", "dataset": "cifar10", "epochs": 1, "limit_train": 32, "batch_size": 16,
                     "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0001, "schedule": "step",
                     "milestones": [0.5, 0.8], "adv_eps": EPS, "adv_steps": 1, "adv_step_size": EPS},
        "runs": [
            {"id": "standard", "method": "standard"},
            {"id": "at", "method": "at"},
            {"id": "anp-vs", "method": "anp-vs", "init_from": "standard", "method_args": {"beta": 2.0, "lam": 1e-4}},
            {"id": "r18-at", "method": "at", "model": "resnet18", "source": None, "eval": {"attacks": ["pgd"]}},
            {"id": "at-source", "method": "at", "seeds": [100], "report": False},
        ],
        "eval": {"attacks": ["pgd", "transfer"], "eps": EPS, "steps": 2, "step_size": 2 / 255, "limit": 8,
                 "source": "at-source"},
    }


def cli(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def test_loader_reads_both_python_formats(data: Path) -> None:
    """Both layouts load as uint8 NCHW with int64 labels, every batch file in order; CIFAR-100 takes
    the fine labels; the md5s of the real files are not asked of a user's own files."""
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        for split, n, seed in (("train", TRAIN, 0), ("test", TEST, 1)):
            x, y = load_split(name, split, data_dir=data, download=False)
            ex, ey = expected(classes, n, seed)
            assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (n, 3, 32, 32)
            assert np.array_equal(x.numpy(), ex) and np.array_equal(y.numpy(), ey)
        assert int(y.max()) >= 10 or name == "cifar10"  # fine labels, not the 20 coarse ones


def test_loader_names_a_missing_batch(data: Path, tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    for f in (data / "cifar-10-batches-py").iterdir():
        if f.name != "data_batch_3":
            (tmp_path / "cifar-10-batches-py" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(DataError, match="data_batch_3"):
        load_split("cifar10", "train", data_dir=tmp_path, download=False)
    x, _ = load_split("cifar10", "test", data_dir=tmp_path, download=False)  # the other split still loads
    assert len(x) == TEST


# ---------------------------------------------------------------------------------------- end to end


def first_correct(run_dir: Path, data: Path, dataset: str, cap: int = 4) -> int:
    """How many leading test points (up to ``cap``) the run's model gets wrong."""
    from robustprune.train.run import load_run

    model = load_run(run_dir, device="cpu").model.eval()
    x, y = load_split(dataset, "test", data_dir=data, download=False)
    with torch.no_grad():
        wrong = (model(x[:cap].float() / 255).argmax(1) != y[:cap]).tolist()
    return next((i for i, w in enumerate(wrong) if not w), cap)


def pick(runs: Path, ids: list[str], data: Path) -> tuple[str, int]:
    """The first run of ``ids`` with a misclassified leading test point, and how many lead."""
    for run_id in ids:
        k = first_correct(runs / f"{run_id}-s0", data, "cifar10")
        if k:
            return run_id, k
    pytest.fail(f"every run of {ids} classifies test point 0 correctly; AutoAttack would take minutes")


def check_row(row: dict[str, Any]) -> None:
    for key in ("clean", "white_box"):
        vals = row["metrics"][key]["values"]
        assert len(vals) == 1 and all(isinstance(v, float) and 0.0 <= v <= 100.0 for v in vals), (row["run_id"], key)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_cifar10_suite_compact_and_export(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = suite_yaml()
    path, out = tmp_path / "suite.yaml", tmp_path / "suite"
    path.write_text(yaml.safe_dump(suite))
    assert cli("compare", path, "--out", out, "--data-dir", data, "--device", "cpu", "--no-progress") == 0
    table = read_json(out / "table.json")
    rows = {r["run_id"]: r for r in table["rows"]}
    assert sorted(rows) == sorted(ROWS)
    for run_id in ROWS:
        check_row(rows[run_id])
        assert rows[run_id]["dataset"] == "cifar10"
        transfer = rows[run_id]["metrics"]["black_box"]["values"]
        assert transfer == [] if run_id == "r18-at" else (len(transfer) == 1 and 0.0 <= transfer[0] <= 100.0)
    assert rows["anp-vs"]["sources"] == ["at-source-s100"]
    assert rows["r18-at"]["model"] == "resnet18" and rows["anp-vs"]["model"] == "vgg16"
    assert rows["anp-vs"]["metrics"]["unit_sparsity"]["values"][0] >= 0.0

    # AutoAttack through the suite: evaluation rows of a pruned and a dense run (model_of), resumed
    runs = out / "runs"
    pruned, k_pruned = pick(runs, [PRUNED], data)
    dense, k_dense = pick(runs, DENSE, data)
    stamp = {r: (runs / f"{r}-s0" / "model.safetensors").stat().st_mtime_ns for r in ROWS}
    for run_id, k in ((pruned, k_pruned), (dense, k_dense)):
        suite["runs"].append({"id": f"{run_id}-aa", "model_of": run_id, "source": None,
                              "eval": {"attacks": ["pgd", "autoattack"], "limit": k}})
    path.write_text(yaml.safe_dump(suite))
    capsys.readouterr()
    assert cli("compare", path, "--out", out, "--data-dir", data, "--device", "cpu", "--no-progress") == 0
    assert "trained" not in capsys.readouterr().err
    assert stamp == {r: (runs / f"{r}-s0" / "model.safetensors").stat().st_mtime_ns for r in ROWS}
    table = read_json(out / "table.json")
    rows = {r["run_id"]: r for r in table["rows"]}
    assert sorted(rows) == sorted(ROWS + [f"{pruned}-aa", f"{dense}-aa"])
    for run_id in (pruned, dense):
        aa = rows[f"{run_id}-aa"]["metrics"]["autoattack"]["values"]
        assert aa == [0.0]  # the leading points are misclassified: nothing left to attack
        check_row(rows[f"{run_id}-aa"])
    assert "AutoAttack" in (out / "table.md").read_text()
    assert "PGD-2, ε 0.03137, step 0.007843, n 8 (" in table["attack"]  # the rows without AutoAttack

    # compact the pruned run: a run directory whose logits match the masked model's
    compact = tmp_path / "compact"
    assert cli("compact", runs / f"{pruned}-s0", "--out", compact, "--no-measure") == 0
    info = read_json(compact / "compact.json")
    assert info["model"] == rows[pruned]["model"] and info["dataset"] == "cifar10"
    assert info["max_abs_diff"] <= 1e-3 * max(1.0, info["logit_scale"])
    from robustprune.train.run import load_run

    masked = load_run(runs / f"{pruned}-s0", device="cpu").model.eval()
    small = load_run(compact, device="cpu").model.eval()
    x, _ = load_split("cifar10", "test", data_dir=data, download=False)
    with torch.no_grad():
        a, b = masked(x[:16].float() / 255), small(x[:16].float() / 255)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(a.abs().max())))
    assert cli("eval", compact, "--attack", "pgd", "--steps", "1", "--limit", "4", "--data-dir", data,
               "--device", "cpu", "--no-progress", "--out", tmp_path / "compact-card.json") == 0
    card = read_json(tmp_path / "compact-card.json")
    assert card["compact"] is not None and 0.0 <= card["clean_acc"] <= 100.0

    # exports: RobustBench for both runs, the APB for the pruned one (the dense one is refused)
    for run_id in (pruned, dense):
        run = runs / f"{run_id}-s0"
        capsys.readouterr()
        assert cli("export", run, "--format", "robustbench") == 2  # AutoAttack on a few points only
        assert "full test set" in capsys.readouterr().err
        assert cli("export", run, "--format", "robustbench", "--allow-partial") == 0
        [entry_path] = (run / "export" / "robustbench" / "model_info" / "cifar10" / "Linf").glob("*.json")
        entry = read_json(entry_path)
        aa_card = max(((p, read_json(p)) for p in (run / "eval").glob("*.json")),
                      key=lambda pc: any(a["name"] == "autoattack" for a in pc[1].get("attacks", [])))[1]
        assert entry["dataset"] == "cifar10" and entry["eps"] == "8/255"
        assert entry["architecture"] == {"vgg16": "VGG-16", "resnet18": "ResNet-18"}[rows[run_id]["model"]]
        assert entry["clean_acc"] == f"{aa_card['clean_acc']:.2f}" and entry["autoattack_acc"] == "0.00"
        assert f"first {min(k_pruned if run_id == pruned else k_dense, TEST)} test points" in entry["footnote"]
    capsys.readouterr()
    assert cli("export", runs / f"{dense}-s0", "--format", "apb", "--allow-partial") == 2
    assert "does not prune" in capsys.readouterr().err
    # minimal distances by a short FMN (export's --measure-fmn runs the curves' 3 x 100 steps: minutes here)
    from robustprune.jobs.curve import fmn_attack
    from robustprune.jobs.export import measure_distances

    measure_distances(runs / f"{pruned}-s0", fmn_attack(norm="linf", steps=10, targets=None), limit=2, progress=False)
    apb = tmp_path / "apb"
    assert cli("export", runs / f"{pruned}-s0", "--format", "apb", "--allow-partial", "--sparsity-rate", "50",
               "--out", apb) == 0
    [entry_path] = apb.glob("*.json")
    entry = read_json(entry_path)
    assert re.fullmatch(r"ANPVS_\w+_V16_CIFAR10_S_50", entry["model_key"]), entry["model_key"]
    assert entry["json_entry"]["Pruning structure"].startswith("Structured")
    assert entry["details"]["autoattack"]["n"] == k_pruned and entry["details"]["distances"]["n"] == 2
    distances = pickle.loads((apb / f"{entry['model_key']}.pickle").read_bytes())
    assert len(distances) == 2 and all(isinstance(d, float) and (d >= 0 or math.isinf(d)) for d in distances)
    assert entry["model_key"] in (apb / f"{entry['model_key']}.issue.md").read_text()


@pytest.mark.slow
def test_cifar100_train_eval_export(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "c100"
    assert cli("train", "--method", "standard", "--model", "vgg16", "--dataset", "cifar100", "--epochs", "1",
               "--limit-train", "16", "--batch-size", "8", "--out", run, "--data-dir", data, "--device", "cpu",
               "--no-progress") == 0
    assert load_run_classes(run) == 100
    k = first_correct(run, data, "cifar100")
    assert k >= 1, "the tiny CIFAR-100 model classifies test point 0 correctly"
    assert cli("eval", run, "--attack", "pgd,autoattack", "--steps", "2", "--limit", str(k), "--device", "cpu",
               "--no-progress") == 0
    card = read_json(run / "eval" / "pgd+autoattack.json")
    assert card["dataset"] == "cifar100" and card["n"] == k
    assert all(0.0 <= a["robust_acc"] <= card["clean_acc"] for a in card["attacks"])
    assert cli("export", run, "--format", "robustbench", "--allow-partial") == 0
    [entry_path] = (run / "export" / "robustbench" / "model_info" / "cifar100" / "Linf").glob("*.json")
    entry = read_json(entry_path)
    assert entry["dataset"] == "cifar100" and entry["architecture"] == "VGG-16" and entry["eps"] == "8/255"
    capsys.readouterr()
    assert cli("export", run, "--format", "apb", "--allow-partial") == 2
    assert "CIFAR-10 and SVHN networks only" in capsys.readouterr().err


def load_run_classes(run: Path) -> int:
    from robustprune.train.run import load_run

    return int(load_run(run, device="cpu").model(torch.zeros(1, 3, 32, 32)).shape[1])
