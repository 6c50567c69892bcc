"""Property-based fuzzing of every input parser: suite YAML, train config YAML (``--config`` and a
run's saved ``config.yaml``), command-line flag values, safetensors weights, checkpoint
``state.pt`` files, IDX files and CIFAR batches (the restricted unpickler).

The property is the same everywhere: an input either parses, or it raises the project's named
error for bad input (``ValueError`` / ``UserError`` and their subclasses; argparse's exit 2 for
a flag value) whose message names the bad value, the key at fault or the file. Any other
exception is a traceback the user should never see, and fails the test with the input that
caused it (hypothesis shrinks it).

Each parser has a fast test in the default run (a few hundred inputs in all) and a
``@pytest.mark.slow`` twin of ``SLOW_EXAMPLES`` inputs (``pytest -m slow tests/test_fuzz.py``;
bench/RESULTS.md records a full run).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gzip
import io
import json
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import robustprune.cli as cli
from robustprune.compare import load_suite, parse_suite, plan_suite
from robustprune.config import TrainConfig, load_train_config
from robustprune.data import DataError
from robustprune.data.formats import (
    IDX_IMAGES,
    IDX_LABELS,
    encode_idx,
    parse_idx,
    read_cifar_batch,
    read_idx_images,
    read_idx_labels,
)
from robustprune.train.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from robustprune.utils import UserError

#: inputs per parser in the slow run (the issue asks for at least 10,000); ROBUSTPRUNE_FUZZ_EXAMPLES overrides
SLOW_EXAMPLES = int(os.environ.get("ROBUSTPRUNE_FUZZ_EXAMPLES", "10000"))
FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])
#: the command-line parsers cost ~10-80 ms an input (jsonargparse), so their default subset is smaller
FAST_CLI = settings(FAST, max_examples=25)
SLOW = settings(FAST, max_examples=SLOW_EXAMPLES)

NAMED_ERRORS = (ValueError, UserError)


def assert_names(exc: BaseException, names: list[str]) -> None:
    """The error's message names at least one of ``names`` (the key, the value or the file at fault)."""
    msg = str(exc)
    assert any(n and n in msg for n in names), f"{type(exc).__name__}: {msg!r} names none of {names[:8]}"


def spellings(value: Any) -> list[str]:
    """How a message may name ``value``: its repr and str, and those of what it holds."""
    out = [repr(value), str(value)] + ([str(value).lower(), "null"] if isinstance(value, bool | None) else [])
    if isinstance(value, str):
        out.append(json.dumps(value))
    if isinstance(value, dict):
        for k, v in value.items():
            out += spellings(k) + spellings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            out += spellings(v)
    return [s for s in out if s]


# ---------------------------------------------------------------- value strategies

NAMES = ["standard", "at", "anp-vs", "trades", "hydra", "at-bnn", "lenet5-caffe", "linear", "mnist", "cifar10",
         "pgd", "fgsm", "transfer", "autoattack", "deepfool", "cw", "none", "sap", "bnn-sample", "sap:pct=100",
         "sap:pct=50,mode=fast", "sap:mode=slow", "sap:pct=", "sap:pct=[", "sap:=1", "sap:pct=1,pct=2",
         "bnn-sample:x=1", "", " ", "..", "../../x", "/abs/path", "a/b", "a\\b", "x\n", "auto", "cpu", "cuda",
         "cuda:7", "nan", "inf", "-1", "0", "1e309", "~", "null", "{beta: [}", "[1, 2", "{a: 1}", "\x00", "é"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0, max_value=1),
    st.sampled_from(NAMES), st.text(max_size=12),
)
#: what a YAML file can hold (safe_load: scalars, lists, mappings)
yaml_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=8), st.integers()),
                                            inner, max_size=4)),
    max_leaves=10,
)


def corrupt(data: bytes, draw: Callable[[Any], Any]) -> bytes:
    """``data`` with a few random edits: flipped bytes, a cut, an insertion or a splice."""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1:]
        elif kind == "cut":
            data = data[:pos]
        elif kind == "insert":
            data = data[:pos] + draw(st.binary(max_size=16)) + data[pos:]
        else:
            data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos + 8:]
    return data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory (under pytest's temporary root) the examples of this module overwrite their files in."""
    return tmp_path_factory.mktemp("fuzz")


# ---------------------------------------------------------------- suite YAML

BASE_SUITE: dict[str, Any] = {
    "name": "fuzz", "seeds": [0],
    "defaults": {"model": "lenet5-caffe", "dataset": "mnist", "epochs": 1, "limit_train": 64},
    "runs": [{"id": "std", "method": "standard"},
             {"id": "avs", "method": "anp-vs", "init_from": "std", "method_args": {"beta": 4.0}},
             {"id": "at", "method": "at", "seeds": [1], "report": False},
             {"id": "at-sap", "model_of": "at", "eval": {"defense": {"name": "sap", "pct": 100}, "attacks": ["pgd"]}}],
    "eval": {"attacks": ["pgd", "transfer"], "eps": 0.3, "steps": 5, "source": "at"},
}
TRAIN_KEYS = [f for f in TrainConfig.__dataclass_fields__]
EVAL_KEYS = ["attacks", "eps", "steps", "step_size", "restarts", "eot", "defense", "limit", "batch_size",
             "passes", "seed", "source"]
RUN_KEYS = ["id", "seeds", "source", "report", "init_from", "eval", "model_of", "method_args"]


@st.composite
def suite_mutations(draw: Callable[[Any], Any]) -> tuple[Any, list[str]]:
    """A valid suite with one to three fields replaced: (data, how the messages may name them)."""
    data = copy.deepcopy(BASE_SUITE)
    names: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "defaults", "run", "eval", "run-eval", "method_args", "whole"]))
        value = draw(yaml_values)
        if where == "whole":
            return value, ["suite"]
        if where == "top":
            key, target = draw(st.sampled_from(["name", "seeds", "defaults", "runs", "eval", "sedes"])), data
        elif where == "defaults" and isinstance(data.get("defaults"), dict):
            key, target = draw(st.sampled_from(TRAIN_KEYS + ["bogus"])), data["defaults"]
        elif where == "eval" and isinstance(data.get("eval"), dict):
            key, target = draw(st.sampled_from(EVAL_KEYS)), data["eval"]
        elif isinstance(data.get("runs"), list) and data["runs"] and all(isinstance(r, dict) for r in data["runs"]):
            run = data["runs"][draw(st.integers(0, len(data["runs"]) - 1))]
            names.append(repr(run.get("id")))
            if where == "run-eval":
                run.setdefault("eval", {})
                target = run["eval"] if isinstance(run["eval"], dict) else run
                key = draw(st.sampled_from(EVAL_KEYS))
            elif where == "method_args" and isinstance(run.get("method_args", {}), dict):
                target = run.setdefault("method_args", {})
                key = draw(st.sampled_from(["beta", "lam", "sparsity", "mask_lr", "adv_weight", "rho", "x"]))
            else:
                key, target = draw(st.sampled_from(RUN_KEYS + TRAIN_KEYS)), run
        else:
            continue
        target[key] = value
        names += [key, key.replace("_", "-"), *spellings(value)]
    return data, names


def check_suite(data: Any, names: list[str]) -> None:
    """Parses or names the fault; a suite that parses places every run and card inside its directory."""
    try:
        suite = parse_suite(data, where="suite")
    except ValueError as e:
        assert_names(e, names + ["suite"] if not names else names)
        return
    root = "/suite-dir"
    for task in plan_suite(suite, root):
        for path in (task.spec.out, Path(root) / "cards" / f"{task.spec.key}.json"):
            assert os.path.normpath(path).startswith(root + os.sep) and ".." not in path.parts, path


def test_fuzz_suite_base_parses() -> None:
    assert [r.id for r in parse_suite(copy.deepcopy(BASE_SUITE)).runs] == ["std", "avs", "at", "at-sap"]


@FAST
@given(suite_mutations())
def test_fuzz_suite(case: tuple[Any, list[str]]) -> None:
    check_suite(*case)


@pytest.mark.slow
@SLOW
@given(suite_mutations())
def test_fuzz_suite_slow(case: tuple[Any, list[str]]) -> None:
    check_suite(*case)


@st.composite
def suite_texts(draw: Callable[[Any], Any]) -> bytes:
    """What a suite file may hold: a mutated suite as YAML, edited bytes of one, or any text."""
    kind = draw(st.sampled_from(["yaml", "bytes", "text"]))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    text = yaml.safe_dump(draw(suite_mutations())[0], allow_unicode=True).encode()
    return corrupt(text, draw) if kind == "bytes" else text


def check_suite_file(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        load_suite(path)
    except ValueError as e:
        assert_names(e, [str(path)])


@FAST
@given(suite_texts())
def test_fuzz_suite_file(scratch: Path, content: bytes) -> None:
    check_suite_file(scratch / "suite.yaml", content)


@pytest.mark.slow
@SLOW
@given(suite_texts())
def test_fuzz_suite_file_slow(scratch: Path, content: bytes) -> None:
    check_suite_file(scratch / "suite.yaml", content)


# ---------------------------------------------------------------- command line


@contextlib.contextmanager
def fast_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``cli.main`` with one parser built once (building it costs more than parsing), and ``fit``
    replaced by the checks a training run makes before it reads data: everything a flag or a
    ``--config`` value reaches, without training."""
    from robustprune.data import dataset_info
    from robustprune.defenses import build_method
    from robustprune.models import MODELS
    from robustprune.train.run import method_context
    from robustprune.utils import resolve_device

    def checks_before_data(cfg: TrainConfig) -> Path:
        cfg.validate()
        dataset_info(cfg.dataset)
        resolve_device(cfg.device)
        MODELS.get(cfg.model)
        build_method(cfg.method, ctx=method_context(cfg, train_size=1), **cfg.method_args)
        return Path(cfg.out)

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr("robustprune.train.fit", checks_before_data)
    yield


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``main(argv)``: (exit status, stderr). argparse's own exit is the status of a bad flag; any
    other exception escapes (the fuzzing failure). Torch's thread count is restored (--threads)."""
    threads = torch.get_num_threads()
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    finally:
        torch.set_num_threads(threads)
    return code, err.getvalue()


def flag_value(draw: Callable[[Any], Any]) -> str:
    return draw(st.one_of(
        st.sampled_from(NAMES), st.integers(-5, 2 ** 70).map(str), st.floats().map(repr), st.text(max_size=12),
        st.lists(st.sampled_from(["pgd", "fgsm", "transfer", "cw", "bogus", ""]), max_size=3).map(",".join),
        st.lists(st.floats(allow_nan=True).map(repr), max_size=3).map(",".join),
        yaml_values.map(lambda v: json.dumps(v, default=str)),
    ))


#: commands whose inputs are flags and paths (train has its own tests; list takes none)
CLI_COMMANDS = ["eval", "audit", "curve", "surface", "calibration", "sweep-sparsity", "compact", "compare", "report",
                "import", "export"]


#: the parser builder of each command in CLI_COMMANDS
SUBPARSERS = {"eval": cli._eval_parser, "audit": cli._audit_parser, "curve": cli._curve_parser,
              "surface": cli._surface_parser, "calibration": cli._calibration_parser,
              "sweep-sparsity": cli._sweep_parser, "compact": cli._compact_parser, "compare": cli._compare_parser,
              "report": cli._report_parser, "import": cli._import_parser,
              "export": cli._export_parser}


@functools.cache
def command_flags(command: str) -> list[str]:
    """The ``--flags`` of a subcommand, read from its parser."""
    sub = SUBPARSERS[command]()
    return sorted(o for a in sub._actions for o in a.option_strings if o.startswith("--") and o not in ("--help",))


@st.composite
def cli_argvs(draw: Callable[[Any], Any], where: Path) -> tuple[list[str], list[str]]:
    """argv of one command on a run directory that does not exist, with random flag values."""
    command = draw(st.sampled_from(CLI_COMMANDS))
    argv = [command, str(where / "no-such-run")]
    if command == "import":  # no run argument: the weights file that does not exist, and the required flags
        argv = [command, "--weights", str(where / "no-such-run"), "--model", "lenet5-caffe", "--dataset", "mnist"]
    if command in ("sweep-sparsity",):
        argv += ["--rounds", draw(st.sampled_from(["1", "0", "-1", "x"]))]
    fmt = draw(st.sampled_from(["apb", "robustbench", "onnx"]))
    if command == "export":
        argv += ["--format", fmt]
    if command not in ("report",):
        argv += ["--out", str(where / "out")]
    names = ["rounds"] if command == "sweep-sparsity" else [fmt] if command == "export" else []
    flags = command_flags(command)
    for flag in draw(st.lists(st.sampled_from(flags), max_size=4)) if flags else []:
        value = flag_value(draw)
        argv += [flag, value] if not draw(st.booleans()) or not flag.startswith("--no-") else [flag]
        names += [flag.lstrip("-").replace("-", "_"), flag, value, repr(value), value.strip(),
                  f"unrecognized arguments: {value}"] + value.split(",")
    return argv, names + ["no-such-run"]


def check_cli(argv: list[str], names: list[str]) -> None:
    code, err = run_cli(argv)
    assert code in (0, 2), (code, err)
    if code == 2:
        assert_names(RuntimeError(err), names)


@FAST_CLI
@given(data=st.data())
def test_fuzz_cli_flags(monkeypatch: pytest.MonkeyPatch, scratch: Path, data: st.DataObject) -> None:
    with fast_cli(monkeypatch):
        check_cli(*data.draw(cli_argvs(scratch)))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_fuzz_cli_flags_slow(monkeypatch: pytest.MonkeyPatch, scratch: Path, data: st.DataObject) -> None:
    with fast_cli(monkeypatch):
        check_cli(*data.draw(cli_argvs(scratch)))


def test_fuzz_cli_reaches_the_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The flag fuzzing is worth something only if valid flags get past the parser: here they
    reach the run loader, which names the missing run."""
    with fast_cli(monkeypatch):
        code, err = run_cli(["eval", str(tmp_path / "no-such-run"), "--eps", "0.1", "--defense", "sap:pct=50"])
    assert code == 2 and "no-such-run" in err and "config.yaml" in err


@pytest.mark.parametrize("command", ["calibration", "eval"])
def test_fuzz_found_defense_value_named_with_its_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      command: str) -> None:
    """Found by the 10,000-input run: ``calibration --defense sap:mode=slow`` said only "SAP mode
    must be one of ('exact', 'fast'), got 'slow'"; the message now quotes the spec as written."""
    with fast_cli(monkeypatch):
        code, err = run_cli([command, str(tmp_path / "no-such-run"), "--out", str(tmp_path / "out"),
                             "--defense", "sap:mode=slow"])
    assert code == 2 and "'sap:mode=slow'" in err and "'exact', 'fast'" in err


# ---------------------------------------------------------------- train config YAML

BASE_CONFIG: dict[str, Any] = {"method": "anp-vs", "model": "lenet5-caffe", "dataset": "mnist", "epochs": 2,
                               "method_args": {"beta": 2.0}, "milestones": [0.5], "adv_eps": 0.3}


@st.composite
def config_mutations(draw: Callable[[Any], Any]) -> tuple[Any, list[str]]:
    data = dict(BASE_CONFIG)
    names: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        value = draw(yaml_values)
        if draw(st.integers(0, 9)) == 0:
            return value, spellings(value)
        key = draw(st.sampled_from(TRAIN_KEYS + ["bogus", "method_args.beta"]))
        if key == "method_args.beta":
            data["method_args"] = {"beta": value}
            key = "method_args"
        data[key] = value
        names += [key, key.replace("_", "-"), *spellings(value)]
    return data, names


def check_train_config(path: Path, data: Any, names: list[str], extra: list[str]) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    path.write_text(text)
    names = names + [text.strip(), text.splitlines()[0] if text.strip() else text]
    code, err = run_cli(["train", "--config", str(path), "--out", str(path.parent / "run"), *extra])
    assert code in (0, 2), (code, err)
    if code == 2:
        assert_names(RuntimeError(err), names + [str(path)] + extra)


@FAST_CLI
@given(case=config_mutations(), extra=st.lists(st.sampled_from(["--epochs", "--lr", "--method-args", "--device"]),
                                            max_size=1, unique=True).map(lambda f: [v for x in f for v in (x, "1")]))
def test_fuzz_train_config(monkeypatch: pytest.MonkeyPatch, scratch: Path, case: tuple[Any, list[str]],
                           extra: list[str]) -> None:
    with fast_cli(monkeypatch):
        check_train_config(scratch / "train.yaml", *case, extra)


@pytest.mark.slow
@SLOW
@given(case=config_mutations())
def test_fuzz_train_config_slow(monkeypatch: pytest.MonkeyPatch, scratch: Path, case: tuple[Any, list[str]]) -> None:
    with fast_cli(monkeypatch):
        check_train_config(scratch / "train.yaml", *case, [])


@st.composite
def saved_configs(draw: Callable[[Any], Any]) -> bytes:
    """A run's ``config.yaml``: a mutated config, edited bytes of one, or any text."""
    data, _ = draw(config_mutations())
    text = yaml.safe_dump(data, allow_unicode=True).encode()
    return draw(st.one_of(st.just(text), st.builds(lambda: corrupt(text, draw)),
                          st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass"))))


def check_saved_config(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        load_train_config(path)
    except ValueError as e:
        assert_names(e, [str(path)])


@FAST
@given(saved_configs())
def test_fuzz_saved_config(scratch: Path, content: bytes) -> None:
    check_saved_config(scratch / "config.yaml", content)


@pytest.mark.slow
@SLOW
@given(saved_configs())
def test_fuzz_saved_config_slow(scratch: Path, content: bytes) -> None:
    check_saved_config(scratch / "config.yaml", content)


# ---------------------------------------------------------------- safetensors and state.pt


@pytest.fixture(scope="module")
def checkpoint_files(scratch: Path) -> dict[str, bytes]:
    """The bytes of a real checkpoint (a small model, its Adam state and schedule)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = {"epoch": 1, "global_step": 3, "wall_s": 0.5, "history": [{"epoch": 1, "loss": 0.1}],
             "optimizers": [opt.state_dict()], "schedulers": [sched.state_dict()], "method": {}}
    path = save_checkpoint(scratch / "real-run", 1, model, state)
    return {"weights": (path / "model.safetensors").read_bytes(), "state": (path / "state.pt").read_bytes()}


SAFETENSORS_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                      "U16", "U32", "U64", "C64", "X", ""]


@st.composite
def safetensors_bytes(draw: Callable[[Any], Any], real: bytes) -> bytes:
    """A safetensors file: edited bytes of a real one, a random header over random data, or any bytes."""
    kind = draw(st.sampled_from(["edit", "header", "random"]))
    if kind == "edit":
        return corrupt(real, draw)
    if kind == "random":
        return draw(st.binary(max_size=64))
    entry = st.fixed_dictionaries({"dtype": st.sampled_from(SAFETENSORS_DTYPES),
                                   "shape": st.lists(st.integers(-1, 2 ** 33), max_size=3),
                                   "data_offsets": st.lists(st.integers(-1, 2 ** 33), max_size=3)})
    header = draw(st.dictionaries(st.text(max_size=6), st.one_of(entry, yaml_values), max_size=3))
    blob = json.dumps(header).encode()
    size = draw(st.one_of(st.just(len(blob)), st.integers(0, 2 ** 64 - 1)))
    return struct.pack("<Q", size) + blob + draw(st.binary(max_size=64))


def check_weights(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        weights = load_weights(path)
    except CheckpointError as e:
        assert_names(e, [str(path)])
    else:
        assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items())


@FAST
@given(data=st.data())
def test_fuzz_safetensors(scratch: Path, checkpoint_files: dict[str, bytes], data: st.DataObject) -> None:
    check_weights(scratch / "w.safetensors", data.draw(safetensors_bytes(checkpoint_files["weights"])))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_fuzz_safetensors_slow(scratch: Path, checkpoint_files: dict[str, bytes], data: st.DataObject) -> None:
    check_weights(scratch / "w.safetensors", data.draw(safetensors_bytes(checkpoint_files["weights"])))


tensors = st.builds(lambda shape, dt: torch.zeros(shape, dtype=dt), st.lists(st.integers(0, 3), max_size=2),
                    st.sampled_from([torch.float32, torch.int64, torch.bool]))
state_values = st.recursive(st.one_of(scalars, tensors),
                            lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.one_of(st.text(max_size=6), st.integers()),
                                                                    inner, max_size=3)), max_leaves=8)


@st.composite
def state_bytes(draw: Callable[[Any], Any], real: bytes) -> bytes:
    """A ``state.pt``: edited bytes of a real one, a real-shaped state with fields replaced, or junk."""
    kind = draw(st.sampled_from(["edit", "fields", "random"]))
    if kind == "edit":
        return corrupt(real, draw)
    if kind == "random":
        return draw(st.binary(max_size=64))
    state = torch.load(io.BytesIO(real), weights_only=True)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(["epoch", "global_step", "wall_s", "history", "optimizers", "schedulers", "method"]))
        if draw(st.booleans()):
            state.pop(key, None)
        else:
            state[key] = draw(state_values)
    if draw(st.integers(0, 9)) == 0:
        state = draw(state_values)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def check_state(run: Path, weights: bytes, content: bytes) -> None:
    ckpt = run / "checkpoints" / "epoch-0001"
    ckpt.mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "LATEST").write_text("epoch-0001\n")
    (ckpt / "model.safetensors").write_bytes(weights)
    (ckpt / "state.pt").write_bytes(content)
    try:
        got = load_checkpoint(run)
    except CheckpointError as e:
        assert_names(e, [str(ckpt / "state.pt")])
    else:
        assert isinstance(got.epoch, int) and isinstance(got.state["optimizers"], list)


@FAST
@given(data=st.data())
def test_fuzz_checkpoint_state(scratch: Path, checkpoint_files: dict[str, bytes], data: st.DataObject) -> None:
    check_state(scratch / "state-run", checkpoint_files["weights"], data.draw(state_bytes(checkpoint_files["state"])))


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_fuzz_checkpoint_state_slow(scratch: Path, checkpoint_files: dict[str, bytes], data: st.DataObject) -> None:
    check_state(scratch / "state-run", checkpoint_files["weights"], data.draw(state_bytes(checkpoint_files["state"])))


# ---------------------------------------------------------------- IDX


@st.composite
def idx_bytes(draw: Callable[[Any], Any]) -> tuple[bytes, int]:
    """(file content, the magic the reader expects): headers with random magic and dimensions
    (overflowing products included) over payloads of any length, edited real files, random bytes."""
    magic = draw(st.sampled_from([IDX_IMAGES, IDX_LABELS]))
    kind = draw(st.sampled_from(["header", "edit", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=64)), magic
    if kind == "edit":
        arr = np.zeros((2, 28, 28) if magic == IDX_IMAGES else (3,), dtype=np.uint8)
        return corrupt(encode_idx(arr), draw), magic
    found = draw(st.one_of(st.just(magic), st.integers(0, 2 ** 32 - 1)))
    ndim = found & 0xFF if draw(st.booleans()) else magic & 0xFF
    big = st.sampled_from([0, 1, 2, 28, 2 ** 16, 2 ** 31, 2 ** 32 - 1])
    dims = draw(st.lists(st.one_of(st.integers(0, 30), big), min_size=ndim, max_size=ndim)) if ndim < 6 else []
    head = struct.pack(">I", found) + b"".join(struct.pack(">I", d) for d in dims)
    n = int(np.prod(dims, dtype=object)) if dims else 0
    payload = draw(st.one_of(st.just(n if n < 4096 else 0), st.integers(0, 64)))
    return head + bytes(payload), magic


def check_idx(path: Path, case: tuple[bytes, int], gz: bool) -> None:
    content, magic = case
    try:
        arr = parse_idx(content, magic=magic, source="fuzz.idx")
    except DataError as e:
        assert_names(e, ["fuzz.idx"])
    else:
        assert arr.dtype == np.uint8 and arr.ndim == magic & 0xFF
    file = path.with_suffix(".gz") if gz else path
    file.write_bytes(gzip.compress(content) if gz else content)
    try:
        if magic == IDX_IMAGES:
            read_idx_images(file, image_size=28)
        else:
            read_idx_labels(file, num_classes=10)
    except DataError as e:
        assert_names(e, [str(file)])


@FAST
@given(idx_bytes(), st.booleans())
def test_fuzz_idx(scratch: Path, case: tuple[bytes, int], gz: bool) -> None:
    check_idx(scratch / "f-idx", case, gz)


@pytest.mark.slow
@SLOW
@given(idx_bytes(), st.booleans())
def test_fuzz_idx_slow(scratch: Path, case: tuple[bytes, int], gz: bool) -> None:
    check_idx(scratch / "f-idx", case, gz)


def test_suite_file_with_an_out_of_range_escape_is_named(scratch: Path) -> None:
    """PyYAML raises a bare ValueError (chr() range) for this escape; found by the slow fuzz run."""
    path = scratch / "escape.yaml"
    path.write_bytes(b'"\\r\\U10010000": null\n')
    with pytest.raises(ValueError, match="not valid YAML") as e:
        load_suite(path)
    assert str(path) in str(e.value)


def test_idx_overflowing_header_is_refused() -> None:
    """Dimensions whose product overflows 64 bits (2^31 * 2^31 * 4 = 2^64) once wrapped to 0 and let
    a 16-byte file pass the size check."""
    head = struct.pack(">4I", IDX_IMAGES, 2 ** 31, 2 ** 31, 4)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(head, magic=IDX_IMAGES, source="x.idx")


def test_idx_empty_array_of_impossible_shape_is_refused() -> None:
    """Zero images of 2^32-1 x 2^32-1 pixels: the size check passes (0 bytes of data) but numpy
    refuses the shape (found by the 10,000-input run)."""
    head = struct.pack(">4I", IDX_IMAGES, 0, 2 ** 32 - 1, 2 ** 32 - 1)
    with pytest.raises(DataError, match=r"x\.idx: IDX dimensions \(0, 4294967295, 4294967295\)"):
        parse_idx(head, magic=IDX_IMAGES, source="x.idx")


# ---------------------------------------------------------------- CIFAR batches

arrays = st.builds(lambda shape, dt: np.zeros(shape, dtype=dt),
                   st.sampled_from([(2, 3072), (3,), (2,), (2, 5), ()]),
                   st.sampled_from([np.uint8, np.int64, np.float32, np.int8, object]))
pickle_values = st.recursive(st.one_of(scalars, st.binary(max_size=8), arrays),
                             lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                                                     st.dictionaries(st.sampled_from(["data", "labels", b"data",
                                                                                      b"labels", "x", 1]),
                                                                     inner, max_size=3)), max_leaves=8)


@st.composite
def cifar_bytes(draw: Callable[[Any], Any]) -> bytes:
    """A CIFAR batch: a valid one edited, a pickle of random containers and arrays, or junk."""
    kind = draw(st.sampled_from(["edit", "pickle", "random"]))
    protocol = draw(st.integers(0, pickle.HIGHEST_PROTOCOL))
    valid = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [1, 2]}
    if kind == "edit":
        return corrupt(pickle.dumps(valid, protocol=protocol), draw)
    if kind == "random":
        return draw(st.binary(max_size=64))
    value = draw(pickle_values)
    if isinstance(value, dict) and draw(st.booleans()):
        value = {**valid, **value}
    return pickle.dumps(value, protocol=protocol)


def check_cifar(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    try:
        data, labels = read_cifar_batch(path, label_key="labels", num_classes=10)
    except DataError as e:
        assert_names(e, [str(path)])
    else:
        assert data.dtype == np.uint8 and data.shape[1:] == (3, 32, 32) and labels.shape == (data.shape[0],)


@FAST
@given(cifar_bytes())
def test_fuzz_cifar(scratch: Path, content: bytes) -> None:
    check_cifar(scratch / "data_batch_1", content)


@pytest.mark.slow
@SLOW
@given(cifar_bytes())
def test_fuzz_cifar_slow(scratch: Path, content: bytes) -> None:
    check_cifar(scratch / "data_batch_1", content)


def test_fuzz_cli_module_flags_known() -> None:
    """The flag lists the CLI fuzzing draws from are the parsers' own (not empty, so it fuzzes something)."""
    assert {"--defense", "--eps", "--steps", "--attack"} <= set(command_flags("eval"))
    assert all(command_flags(c) for c in CLI_COMMANDS if c != "report")


def test_fuzz_cli_covers_every_command() -> None:
    """Every subcommand is fuzzed: the flag fuzzing's commands, plus train (its own tests) and list
    (no inputs), are the program's (``import`` was once left out)."""
    parser = cli.build_parser()
    commands = {name for a in parser._actions if a.dest == "command" for name in a.choices}  # type: ignore[union-attr]
    assert commands == set(CLI_COMMANDS) | {"train", "list"} and set(SUBPARSERS) == set(CLI_COMMANDS)


def test_fuzz_import_reaches_the_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Valid import flags get past the parser to the importer, which names the missing weights file."""
    with fast_cli(monkeypatch):
        code, err = run_cli(["import", "--weights", str(tmp_path / "no-such-run"), "--model", "lenet5-caffe",
                             "--dataset", "mnist", "--out", str(tmp_path / "out")])
    assert code == 2 and "no-such-run" in err
