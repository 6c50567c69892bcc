"""Suites: parsing errors are named, the runner trains in dependency order, reuses and resumes runs,
and the table's mean ± std over seeds is computed from cards."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

import robustprune.train as train_mod
from robustprune.cli import main
from robustprune.compare import load_suite, parse_suite, plan_suite, run_suite
from robustprune.compare.plan import only_rows
from robustprune.reports import render_markdown, summarize
from robustprune.reports.table import mean_std

SUITES = Path(__file__).resolve().parents[1] / "configs" / "suites"
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_suite(data: Path, **eval_kw: Any) -> dict[str, Any]:
    """standard -> anp-vs (init_from), at as the independent transfer source; tiny budgets."""
    return {
        "name": "tiny",
        "seeds": [0],
        "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 1, "limit_train": 64,
                     "batch_size": 32, "adv_steps": 2, "adv_step_size": 0.1, "data_dir": str(data)},
        "runs": [
            {"id": "standard", "method": "standard"},
            {"id": "anp-vs", "method": "anp-vs", "init_from": "standard", "method_args": {"beta": 4.0}},
            {"id": "at", "method": "at", "seeds": [7], "report": False},
        ],
        "eval": {"attacks": ["pgd", "transfer"], "eps": 0.3, "steps": 2, "step_size": 0.1, "limit": 32,
                 "source": "at", **eval_kw},
    }


# ---------------------------------------------------------------- parsing


def _mutate(data: dict[str, Any], change: str) -> None:
    runs = data["runs"]
    if change == "top-key":
        data["sedes"] = [0]
    elif change == "run-key":
        runs[0]["epoch"] = 3
    elif change == "method":
        runs[0]["method"] = "anp-vz"
    elif change == "model":
        data["defaults"]["model"] = "lenet7"
    elif change == "missing-init":
        runs[1]["init_from"] = "nowhere"
    elif change == "missing-source":
        data["eval"]["source"] = "ghost"
    elif change == "cycle":
        runs[0]["init_from"] = "anp-vs"
    elif change == "self-source":
        runs[0]["source"] = "standard"
    elif change == "copy-source":
        runs.append({"id": "at2", "method": "at", "seeds": [7]})
    elif change == "seed-missing":
        runs[1]["seeds"] = [0, 1]
    elif change == "wrong-type":
        runs[0]["epochs"] = "two"
    elif change == "bad-value":
        runs[0]["epochs"] = 0
    elif change == "attack":
        data["eval"]["attacks"] = ["pgd", "deepfog"]
    elif change == "eval-key":
        data["eval"]["stepz"] = 3
    elif change == "duplicate":
        runs.append({"id": "standard", "method": "standard"})
    elif change == "no-source":
        data["eval"].pop("source")
    elif change == "method-arg":
        runs[1]["method_args"] = {"betta": 4.0}


@pytest.mark.parametrize(("change", "needle"), [
    ("top-key", "sedes"), ("run-key", "epoch"), ("method", "anp-vz"), ("model", "lenet7"),
    ("missing-init", "nowhere"), ("missing-source", "ghost"), ("cycle", "standard -> anp-vs -> standard"),
    ("self-source", "independently"), ("copy-source", "independently"), ("seed-missing", r"lacks seeds \[1\]"),
    ("wrong-type", "'two'"), ("bad-value", "epochs must be >= 1"), ("attack", "deepfog"), ("eval-key", "stepz"),
    ("duplicate", "repeated run ids"), ("no-source", "needs a source"), ("method-arg", "betta"),
])
def test_bad_suites_are_named(change: str, needle: str, tmp_path: Path) -> None:
    data = tiny_suite(tmp_path)
    parse_suite(copy.deepcopy(data))  # the unmodified suite is valid
    _mutate(data, change)
    with pytest.raises(ValueError, match=needle):
        parse_suite(data)


def test_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("runs: [\n  - id: a\n")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_suite(path)


def test_plan_orders_dependencies_and_pairs_sources(tmp_path: Path) -> None:
    data = tiny_suite(tmp_path)
    data["runs"].reverse()  # dependents listed before what they depend on
    data["runs"][-1]["seeds"] = [0, 1]
    data["runs"][1]["seeds"] = [0, 1]
    data["runs"][0]["seeds"] = [7, 8]
    tasks = plan_suite(parse_suite(data), tmp_path / "out")
    names = [t.name for t in tasks]
    assert names.index("train:standard-s1") < names.index("train:anp-vs-s1")
    ev = {t.spec.key: t for t in tasks if t.kind == "evaluate"}
    assert set(ev) == {"standard-s0", "standard-s1", "anp-vs-s0", "anp-vs-s1"}  # the source is not reported
    assert ev["anp-vs-s1"].spec.source_key == "at-s8"  # i-th target seed <- i-th source seed
    assert ev["anp-vs-s1"].needs == ("train:anp-vs-s1", "train:at-s8")
    assert ev["anp-vs-s1"].spec.cfg.init_from == str(tmp_path / "out" / "runs" / "standard-s1")


def test_shipped_suites_parse() -> None:
    for name in ("mnist_quick", "mnist_table_small", "mnist_table_paper"):
        suite = load_suite(SUITES / f"{name}.yaml")
        assert suite.eval.steps == 40 and suite.eval.eps == 0.3 and suite.eval.step_size == 0.01
    small = load_suite(SUITES / "mnist_table_small.yaml")
    methods = {r.train["method"] for r in small.runs if r.report}
    assert methods == {"standard", "bp", "at", "pretrained-at", "trades", "anp", "anp-vs", "anp-vs-fast", "admm",
                       "hydra"}
    trainers = [r for r in small.runs if r.train["method"] != "standard"]
    assert len({(r.train["adv_steps"], r.train["adv_step_size"], r.train["epochs"]) for r in trainers}) == 1
    assert small.eval.limit is None


def test_every_shipped_suite_parses_and_the_medium_table_is_autoattack_led() -> None:
    for path in sorted(SUITES.glob("*.yaml")):
        load_suite(path)
    medium = load_suite(SUITES / "mnist_table_medium.yaml")
    assert medium.eval.attacks[0] == "autoattack" and medium.eval.limit >= 1000
    robust = [r for r in medium.runs if r.train["method"] not in ("standard", "bp")]
    assert {r.train["adv_step_size"] for r in robust} == {0.04, 0.1}  # one attack per protocol
    assert {r.train["adv_steps"] for r in robust} == {5}
    claims = {"at-strong", "at-more-strong", "anp-vs-fast-b12-from-at-strong", "anp-vs-fast-from-at-strong",
              "anp-vs-fast-novs-from-at-strong"}
    assert {r.id: r.seeds for r in medium.runs if r.id in claims} == dict.fromkeys(claims, (0, 1))


# ---------------------------------------------------------------- the runner


def test_only_keeps_the_rows_and_the_trainings_they_need(tmp_path: Path) -> None:
    suite = parse_suite(tiny_suite(tmp_path))
    tasks = plan_suite(suite, tmp_path / "out")
    kept = [t.name for t in only_rows(tasks, suite, ["anp-vs"])]
    # anp-vs starts from standard and is attacked by transfer from at: both trainings, not standard's evaluation
    assert kept == [t.name for t in tasks if t.name in
                    {"train:standard-s0", "train:anp-vs-s0", "train:at-s7", "evaluate:anp-vs-s0"}]
    assert len(kept) == 4
    with pytest.raises(ValueError, match=r"'ghost' is not a run of suite 'tiny'.*standard, anp-vs, at"):
        only_rows(tasks, suite, ["anp-vs", "ghost"])


def test_only_runs_one_row_then_the_rest_reuses_it(tiny_mnist: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(yaml.safe_dump(tiny_suite(tiny_mnist)))
    out = tmp_path / "suite"
    assert main(["compare", str(suite_file), "--out", str(tmp_path / "never"), "--only", "standard,ghost"]) == 2
    assert "'ghost' is not a run" in capsys.readouterr().err and not (tmp_path / "never").exists()
    assert main(["compare", str(suite_file), "--out", str(out), "--only", "standard", "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["at-s7", "standard-s0"]
    assert sorted(p.name for p in (out / "cards").iterdir()) == ["standard-s0.json"]
    assert [r["run_id"] for r in json.loads((out / "table.json").read_text())["rows"]] == ["standard"]
    standard = _mtimes(out / "runs" / "standard-s0", "run.json")
    assert main(["compare", str(suite_file), "--out", str(out), "--no-progress"]) == 0
    assert _mtimes(out / "runs" / "standard-s0", "run.json") == standard  # reused, not retrained
    assert [r["run_id"] for r in json.loads((out / "table.json").read_text())["rows"]] == ["standard", "anp-vs"]


def _mtimes(root: Path, pattern: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob(pattern))}


def test_runner_trains_evaluates_reports_then_reuses(tiny_mnist: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "suite"
    suite = parse_suite(tiny_suite(tiny_mnist))
    written = run_suite(suite, out, progress=True)
    assert "train standard-s0: trained" in capsys.readouterr().err
    names = {p.name for p in written}
    assert names == {"table.md", "table.json", "vulnerability.png", "robust_vs_memory.png"}
    for png in ("vulnerability.png", "robust_vs_memory.png"):
        assert (out / png).read_bytes().startswith(PNG)
    for key in ("standard-s0", "anp-vs-s0", "at-s7"):
        assert json.loads((out / "runs" / key / "run.json").read_text())["status"] == "complete"
    assert sorted(p.name for p in (out / "cards").iterdir()) == ["anp-vs-s0.json", "standard-s0.json"]
    card = json.loads((out / "cards" / "anp-vs-s0.json").read_text())
    assert card["source"] == "at-s7" and card["eval"]["source"].endswith("at-s7")
    assert card["init_from"] == "standard-s0" and card["eval"]["config"]["init_from"].endswith("standard-s0")
    table = json.loads((out / "table.json").read_text())
    assert [r["run_id"] for r in table["rows"]] == ["standard", "anp-vs"]
    anp = table["rows"][1]["metrics"]
    assert anp["clean"]["values"] == [card["eval"]["clean_acc"]]
    assert anp["memory_pct"]["mean"] is not None and anp["black_box"]["mean"] is not None
    text = (out / "table.md").read_text()
    assert "| anp-vs | anp-vs | PGD-2 of 0.1 (ε 0.3) | 1 |" in text and "| standard | standard | — | 1 |" in text
    info = card["train"]["method_info"]  # the effective prior weight and the training protocol on the card
    assert info["kl_weight"] == pytest.approx(info["beta"] / 60_000) and info["train_attack"]["steps"] == 2

    # second invocation: nothing is trained or evaluated again
    runs_before, cards_before = _mtimes(out / "runs", "run.json"), _mtimes(out / "runs", "suite-*.json")

    def fail(*a: Any, **k: Any) -> None:
        raise AssertionError("should have been reused")

    monkeypatch.setattr("robustprune.compare.runner.fit", fail)
    monkeypatch.setattr("robustprune.compare.runner.evaluate_run", fail)
    run_suite(suite, out, progress=False)
    assert _mtimes(out / "runs", "run.json") == runs_before
    assert _mtimes(out / "runs", "suite-*.json") == cards_before

    # `robustprune report DIR` re-renders from the cards alone
    (out / "table.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "| standard | standard | — | 1 |" in (out / "table.md").read_text()


def test_changed_eval_settings_reevaluate_and_changed_config_is_refused(tiny_mnist: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_suite(tiny_mnist, attacks=["pgd"])
    data["runs"] = data["runs"][:1]
    data["eval"].pop("source")
    out = tmp_path / "suite"
    run_suite(parse_suite(data), out, progress=False)
    data["eval"]["limit"] = 16
    calls: list[Any] = []
    import robustprune.compare.runner as runner_mod

    orig = runner_mod.evaluate_run
    monkeypatch.setattr(runner_mod, "evaluate_run", lambda *a, **k: calls.append(k) or orig(*a, **k))
    run_suite(parse_suite(data), out, progress=False)
    assert [c["limit"] for c in calls] == [16]
    assert len(list((out / "runs" / "standard-s0" / "eval").glob("suite-*.json"))) == 2
    assert json.loads((out / "table.json").read_text())["rows"][0]["metrics"]["clean"]["n"] == 1
    data["defaults"]["epochs"] = 2
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2"):
        run_suite(parse_suite(data), out, progress=False)


def test_a_second_runner_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from robustprune.compare.runner import LOCK, suite_lock

    (tmp_path / LOCK).write_text(f"{os.getppid()}\n")  # a live process holds the directory
    with pytest.raises(ValueError, match=f"in use by another robustprune compare \\(pid {os.getppid()}\\)"):
        with suite_lock(tmp_path):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(dead.stdout)  # a runner that died without cleaning up
    with suite_lock(tmp_path):
        assert (tmp_path / LOCK).read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / LOCK).exists()


def test_interrupted_run_is_resumed_not_restarted(tiny_mnist: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = tiny_suite(tiny_mnist, attacks=["pgd"])
    data["runs"] = data["runs"][:1]
    data["defaults"]["epochs"] = 2
    data["eval"].pop("source")
    suite, out = parse_suite(data), tmp_path / "suite"
    from robustprune.defenses.standard import Standard

    orig_fit = train_mod.fit
    epochs: list[int] = []
    kill = {"on": True}

    def end_of_epoch(self: Standard, model: Any, epoch: int) -> dict[str, Any]:
        if kill["on"] and epoch == 1:  # killed at the end of the second epoch, before its checkpoint
            raise KeyboardInterrupt("killed")
        epochs.append(epoch)
        return {}

    monkeypatch.setattr(Standard, "on_epoch_end", end_of_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, progress=False)
    run_dir = out / "runs" / "standard-s0"
    assert not (run_dir / "model.safetensors").exists() and (run_dir / "checkpoints" / "LATEST").is_file()
    first = train_mod.load_checkpoint(run_dir).state["history"][0]

    kill["on"] = False
    resumes: list[bool] = []
    monkeypatch.setattr("robustprune.compare.runner.fit", lambda cfg: resumes.append(cfg.resume) or orig_fit(cfg))
    run_suite(suite, out, progress=False)
    assert resumes == [True]
    assert epochs == [0, 1]  # epoch 0 once (before the kill), then only epoch 1
    history = json.loads((run_dir / "run.json").read_text())["history"]
    assert len(history) == 2 and history[0] == first


# ---------------------------------------------------------------- the table from hand-made cards


def _card(run_id: str, seed: int, clean: float, pgd: float, transfer: float, mem: float, order: int = 0,
          wall: float = 120.0) -> dict[str, Any]:
    attack = {"name": "pgd", "params": {"name": "pgd", "eps": 0.3, "steps": 40, "step_size": 0.01},
              "robust_acc": pgd, "vulnerability": {"mean": 0.1 + seed, "per_layer": [0.1], "per_unit": [[0.0, 0.2]]}}
    transfer_atk = {"name": "transfer", "params": {"transfer": True, "eps": 0.3}, "robust_acc": transfer,
                    "vulnerability": {"mean": 0.05, "per_layer": [0.05], "per_unit": [[0.0, 0.1]]}}
    return {
        "kind": "suite-run", "suite": "hand", "run_id": run_id, "seed": seed, "order": order, "method": run_id,
        "model": "lenet5-caffe", "dataset": "mnist", "source": "src-s9",
        "train": {"wall_s": wall, "epochs": 2, "epoch_time_s": [50.0, 70.0], "device": "cpu"},
        "eval": {"n": 100, "clean_acc": clean, "attacks": [attack, transfer_atk], "total_wall_s": 30.0,
                 "sparsity": {"unit_sparsity": 80.0 + seed, "paper": {"memory_pct": mem, "flops_speedup": 10.0}},
                 "warnings": []},
    }


def test_mean_std_over_seeds_from_cards(tmp_path: Path) -> None:
    cards = [_card("anp-vs", 1, 99.0, 90.0, 95.0, 6.0, order=1), _card("anp-vs", 0, 97.0, 92.0, 94.0, 8.0, order=1),
             _card("at", 0, 99.5, 88.0, 94.5, 100.0, order=0, wall=600.0)]
    summary = summarize(cards)
    assert [r["run_id"] for r in summary["rows"]] == ["at", "anp-vs"]  # suite order, not file order
    anp = summary["rows"][1]["metrics"]
    assert anp["clean"]["mean"] == pytest.approx(98.0) and anp["clean"]["std"] == pytest.approx(math.sqrt(2))
    assert anp["white_box"]["values"] == [92.0, 90.0]  # seed order
    assert anp["vuln_white_box"]["mean"] == pytest.approx(0.6) and anp["unit_sparsity"]["mean"] == 80.5
    assert anp["min_per_epoch"]["mean"] == pytest.approx(1.0) and anp["train_min"]["mean"] == pytest.approx(2.0)
    assert summary["rows"][0]["metrics"]["clean"]["std"] is None
    md = render_markdown(summary)
    assert "| anp-vs | anp-vs | 2 | 98.00 ± 1.41 | 91.00 ± 1.41 | 94.50 ± 0.71 |" in md
    assert "| at | at | 1 | 99.50 | 88.00 | 94.50 |" in md
    assert "PGD-40, ε 0.3, step 0.01, n 100" in md
    assert anp["measured_params"]["mean"] is None  # no compaction measured in these cards


def test_measured_compaction_columns() -> None:
    card = _card("anp-vs", 0, 97.0, 92.0, 94.0, 8.0)
    card["eval"]["measured"] = {"params_compact": 12000, "flops_speedup": 3.5, "speedup_b256": 2.0}
    row = summarize([card])["rows"][0]["metrics"]
    assert (row["measured_params"]["mean"], row["measured_flops"]["mean"], row["latency_speedup"]["mean"]) == (
        12000, 3.5, 2.0)
    assert "| 12000 | 3.50 | 2.00 |" in render_markdown(summarize([card]))


def test_plots_from_hand_made_cards(tmp_path: Path) -> None:
    from robustprune.reports.plots import plot_robust_vs_memory, plot_vulnerability, pooled_units

    cards = [_card("anp-vs", 0, 97.0, 92.0, 94.0, 8.0), _card("anp-vs", 1, 99.0, 90.0, 95.0, 6.0)]
    assert pooled_units(cards) == [("anp-vs", [[0.0, 0.2, 0.0, 0.2]])]  # white-box units, seeds pooled
    for plot, name in ((plot_vulnerability, "v.png"), (plot_robust_vs_memory, "m.png")):
        assert plot(cards, tmp_path / name) == tmp_path / name
        assert (tmp_path / name).read_bytes().startswith(PNG)
    for c in cards:
        del c["eval"]["sparsity"]["paper"]
        c["eval"]["attacks"][0].pop("vulnerability")
    assert plot_vulnerability(cards, tmp_path / "none.png") is None
    assert plot_robust_vs_memory(cards, tmp_path / "none2.png") is None
    assert not (tmp_path / "none.png").exists()


def test_robust_vs_memory_plots_the_strongest_white_box_attack(tmp_path: Path) -> None:
    from robustprune.reports.plots import plot_robust_vs_memory, robust_vs_memory_points

    at = [_card("at", s, 99.0, 90.0 + s, 94.0, 100.0) for s in (0, 1)]
    for card, aa in zip(at, (70.0, 74.0), strict=True):  # AutoAttack finds less than PGD-40's 90 / 91
        card["eval"]["attacks"].append({"name": "autoattack", "params": {"name": "autoattack", "eps": 0.3},
                                        "robust_acc": aa})
    pgd_only = _card("bp", 0, 99.0, 1.0, 50.0, 90.0, order=1)
    points = {p["run_id"]: p for p in robust_vs_memory_points([*at, pgd_only])}
    assert points["at"]["white_box_key"] == "worst_white_box"
    assert points["at"]["white_box"] == (pytest.approx(72.0), pytest.approx(math.sqrt(8)))  # not PGD's 90.5
    assert points["at"]["black_box"] == (94.0, 0.0) and points["at"]["memory"] == (100.0, 0.0)
    assert points["bp"]["white_box_key"] == "white_box" and points["bp"]["white_box"] == (1.0, 0.0)
    assert plot_robust_vs_memory([*at, pgd_only], tmp_path / "m.png") == tmp_path / "m.png"


def test_mean_std_edge_cases() -> None:
    assert mean_std([]) == {"mean": None, "std": None, "n": 0, "values": []}
    assert mean_std([2.0, 4.0, 6.0])["std"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no cards"):
        summarize([])


def test_report_and_compare_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no cards" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"runs": [{"id": "a", "method": "anp-vz"}], "eval": {"attacks": ["pgd"]}}))
    assert main(["compare", str(bad), "--out", str(tmp_path / "never")]) == 2
    assert "anp-vz" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_table_header_names_autoattack_when_the_cards_have_it() -> None:
    from robustprune.reports.table import attack_description

    pgd = {"name": "pgd", "robust_acc": 40.0, "params": {"name": "pgd", "steps": 40, "eps": 0.3, "step_size": 0.01}}
    aa = {"name": "autoattack", "robust_acc": 10.0, "params": {"name": "autoattack", "eps": 0.3}}
    assert attack_description([{"eval": {"n": 500, "attacks": [pgd]}}]) == "PGD-40, ε 0.3, step 0.01, n 500"
    assert attack_description([{"eval": {"n": 500, "attacks": [aa, pgd]}}]) == (
        "AutoAttack (standard version) and PGD-40, ε 0.3, step 0.01, n 500")
