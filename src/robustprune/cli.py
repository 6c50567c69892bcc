"""Command line: thin wrappers that parse flags and call library functions with keywords.

``robustprune train|eval|list ...``; ``python -m robustprune`` is the same program.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from robustprune.config import (
    TARGET_SPARSITY_HELP,
    YES_NO,
    EvalConfig,
    TrainConfig,
    add_dataclass_flags,
    eval_config_of,
    with_target_sparsity,
)
from robustprune.utils import UserError

#: the fields of an evaluation config (each command adds the flags of those it uses)
EVAL_FIELDS = tuple(f.name for f in dataclasses.fields(EvalConfig))


class CheckedConfigFile(ActionConfigFile):
    """``--config FILE``, refusing a mapping key that is not a flag's name (``0: null``, ``'1e309': 1``)
    with a message naming it and the file; jsonargparse's own message for some of them names neither."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: str | None = None) -> None:
        try:
            data = yaml.safe_load(Path(values).read_text())
        except (OSError, TypeError, ValueError, yaml.YAMLError):
            data = None  # jsonargparse reports unreadable files and bad YAML itself
        known = {a.dest for a in parser._actions}
        bad = [k for k in data if not isinstance(k, str) or k not in known] if isinstance(data, dict) else []
        if bad:
            raise TypeError(f"--config {values}: keys must be flag names ({', '.join(sorted(known - {'help'}))}), "
                            f"got {bad[0]!r}")
        super().__call__(parser, cfg, values, option_string)


def _train_parser() -> ArgumentParser:
    p = ArgumentParser(description="Train a model with a method; resumable, writes a run directory.")
    p.add_argument("--config", action=CheckedConfigFile, help="YAML experiment file (flags override it)")
    add_dataclass_flags(p, TrainConfig)
    p.add_argument("--target-sparsity", dest="target_sparsity", type=float | None, default=None,
                   help=TARGET_SPARSITY_HELP)
    return p


def _eval_parser() -> ArgumentParser:
    p = ArgumentParser(description="Evaluate a run: clean and robust accuracy, vulnerability; writes a JSON card.")
    p.add_argument("run", type=str, help="run directory")
    p.add_argument("--attack", type=str, default="pgd",
                   help="comma-separated attack names: none, the registered attacks (fgsm, rfgsm, pgd, eot-pgd), "
                        "transfer, autoattack, and the registered minimum-norm attacks (deepfool, cw, fmn: r2 "
                        "instead of accuracy); `robustprune list` names them all")
    add_dataclass_flags(p, EvalConfig, skip=("attacks",))
    p.add_argument("--source", type=str | None, default=None, help="run the transfer attack is crafted on")
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None, help="dataset directory")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=str | None, default=None, help="card path (default RUN/eval/<attack>.json)")
    p.add_argument("--progress", action=YES_NO(), default=True, help="show a progress bar")
    p.add_argument("--json", action=YES_NO(), default=False, help="print the card as JSON instead of a table")
    return p


def _compare_parser() -> ArgumentParser:
    p = ArgumentParser(description="Train, evaluate and compare the runs of a suite file; resumable; writes "
                                   "DIR/table.md, DIR/table.json and plots.")
    p.add_argument("suite", type=str, help="suite YAML file (e.g. configs/suites/mnist_quick.yaml)")
    p.add_argument("--out", type=str, required=True, help="suite directory (runs/, cards/, table, plots)")
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None,
                   help="dataset directory for every run (else the suite's, $ROBUSTPRUNE_DATA, the cache)")
    p.add_argument("--refetch-data", dest="refetch_data", action=YES_NO(), default=False,
                   help="first replace damaged dataset files by downloaded, checked copies (each damaged one "
                        "kept as <name>.damaged); without it a damaged file is an error and is never touched")
    p.add_argument("--device", type=str | None, default=None, help="auto, cpu or cuda for every run")
    p.add_argument("--jobs", type=int, default=1,
                   help="tasks run at once, in worker processes, each after the runs it needs (1: one by one)")
    p.add_argument("--threads", type=int | None, default=None,
                   help="torch threads per task (default: the CPUs shared out over --jobs; torch's for --jobs 1)")
    p.add_argument("--only", type=str | None, default=None,
                   help="comma-separated run ids: train and evaluate only these rows (every seed) and the runs "
                        "they need; the report still shows every row that has a card")
    p.add_argument("--reuse-stale", dest="reuse_stale", action=YES_NO(), default=False,
                   help="keep finished runs and cards made by older code (a method's, an attack's or the evaluation's "
                        "version) instead of making them again; the report marks their rows")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where tasks run: local (worker processes, --jobs) or ray (a Ray cluster: pip install "
                        "'robustprune[ray]'; the suite and data directories on a filesystem every node sees, "
                        "docs/cluster.md)")
    p.add_argument("--address", type=str | None, default=None,
                   help="with --executor ray: the cluster, auto (this node's) or HOST:PORT (default: start a local "
                        "one for this run)")
    p.add_argument("--shard-size", dest="shard_size", type=int | None, default=None,
                   help="split every evaluation into tasks of N test points (a multiple of its batch size), each "
                        "resumed on its own, merged into the run's card (default: the suite's eval.shard_size, "
                        "else one task per evaluation)")
    p.add_argument("--progress", action=YES_NO(), default=True, help="show progress bars")
    return p


def _compact_parser() -> ArgumentParser:
    p = ArgumentParser(description="Remove a pruned run's dead units: write a smaller dense run directory with "
                                   "the same logits, its measured cost, and optionally an ONNX file.")
    p.add_argument("run", type=str, help="run directory of a masked (pruned) run")
    p.add_argument("--out", type=str, required=True, help="new run directory (must not exist)")
    p.add_argument("--onnx", action=YES_NO(), default=False, help="also write model.onnx, checked by onnxruntime")
    p.add_argument("--measure", action=YES_NO(), default=True, help="measure params, FLOPs and CPU latency")
    p.add_argument("--repeats", type=int, default=10, help="timed forward passes per latency measurement")
    return p


def _export_parser() -> ArgumentParser:
    p = ArgumentParser(description="Write a run's results as a benchmark entry, built from its cards: a RobustBench "
                                   "model-info JSON, or an Adversarial Pruning Benchmark entry with per-example "
                                   "minimal distances (CIFAR-10/SVHN ResNet-18/VGG-16 only). See docs/export.md.")
    p.add_argument("run", type=str, help="run directory (evaluated with --attack autoattack)")
    p.add_argument("--format", dest="fmt", type=str, required=True, help="robustbench or apb")
    p.add_argument("--out", type=str | None, default=None, help="output directory (default RUN/export/<format>)")
    p.add_argument("--card", type=str | None, default=None,
                   help="evaluation card with the AutoAttack result (default: found under RUN/eval)")
    p.add_argument("--distances", type=str | None, default=None,
                   help="apb: minimal-distances file (default: the newest RUN/eval/distances-*.json)")
    p.add_argument("--measure-fmn", dest="measure_fmn", type=int | None, default=None,
                   help="apb: first measure FMN-L-inf's minimal distances (100 steps, 3 class-directed passes) "
                        "on the first N test points and write RUN/eval/distances-fmn.json (the benchmark uses 10000)")
    p.add_argument("--meta", type=str | None, default=None,
                   help="YAML/JSON mapping of fields no card knows (venue, download ids, ap_key, ...)")
    p.add_argument("--sparsity-rate", dest="sparsity_rate", type=int | None, default=None,
                   help="apb: the sparsity level (%%) the run stands for (default: the measured one within 1 point)")
    p.add_argument("--allow-partial", dest="allow_partial", action=YES_NO(), default=False,
                   help="accept AutoAttack on fewer than the full 10,000 test points (noted in the entry)")
    return p


def _import_parser() -> ArgumentParser:
    p = ArgumentParser(description="Make a run directory from an existing trained network's weights, with no "
                                   "training, for eval, audit, compact, export and --init-from. See docs/models.md.")
    p.add_argument("--model", type=str, required=True,
                   help="a registered model, torchvision:NAME or package.module:function (as train's --model)")
    p.add_argument("--model-args", dest="model_args", type=dict | None, default=None,
                   help="keyword arguments of the model's builder or factory, e.g. '{width: 3}'")
    p.add_argument("--weights", type=str, required=True,
                   help="the weights: .safetensors, .pt/.pth (a state dict, read with weights_only) or a run directory")
    p.add_argument("--dataset", type=str, required=True, help="the dataset the network was trained on")
    p.add_argument("--out", type=str, required=True, help="new run directory (must not exist)")
    p.add_argument("--method", type=str, default="standard",
                   help="how the network was trained (standard, at, trades, ...): recorded on the run")
    p.add_argument("--weights-prefix", dest="weights_prefix", type=str | None, default=None,
                   help="key rename rules OLD=NEW, comma-separated (as train's --init-prefix; no '!' rules)")
    return p


def _report_parser() -> ArgumentParser:
    p = ArgumentParser(description="Re-render a suite directory's table and plots from its cards.")
    p.add_argument("dir", type=str, help="suite directory written by `robustprune compare`")
    return p


def _run_flags(p: ArgumentParser) -> None:
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None, help="dataset directory")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")


def _data_flags(p: ArgumentParser, *, limit: int | None) -> None:
    p.add_argument("--limit", type=int | None, default=limit, help="use the first N test examples")
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None, help="dataset directory")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts and directions")


def _fmn_flags(p: ArgumentParser) -> None:
    """--fmn / --fmn-steps / --fmn-targets: the FMN-L-inf security curve beside the PGD sweep."""
    from robustprune.attacks.fmn import FMN_STEPS, FMN_TARGETS

    p.add_argument("--fmn", action=YES_NO(), default=True,
                   help="also draw FMN-L-inf's security curve (per-example minimal distances; deterministic models)")
    p.add_argument("--fmn-steps", dest="fmn_steps", type=int, default=FMN_STEPS, help="FMN iterations per pass")
    p.add_argument("--fmn-targets", dest="fmn_targets", type=int | None, default=FMN_TARGETS,
                   help="FMN class-directed passes, one per top-scoring wrong class (null: one untargeted pass)")


def _audit_parser() -> ArgumentParser:
    p = ArgumentParser(description="Attack ladder and gradient-masking checks; writes audit.json, audit.md, "
                                   "curve and loss-surface plots into --out.")
    p.add_argument("run", type=str, help="run directory")
    p.add_argument("--out", type=str, required=True, help="output directory")
    p.add_argument("--source", type=str | None, default=None, help="run the transfer attack is crafted on")
    p.add_argument("--eps-sweep", dest="eps_sweep", type=str | None, default=None,
                   help="comma-separated eps values of the curve (default 0..2*eps)")
    p.add_argument("--autoattack", type=str, default="yes", help="yes (run AutoAttack, the strongest rung) or no")
    _fmn_flags(p)
    p.add_argument("--surface", action=YES_NO(), default=True, help="also draw the loss surface")
    add_dataclass_flags(p, EvalConfig, skip=("attacks", "steps", "restarts", "eot"), defaults={"limit": 1000})
    _run_flags(p)
    p.add_argument("--progress", action=YES_NO(), default=True, help="show progress bars")
    return p


def _curve_parser() -> ArgumentParser:
    p = ArgumentParser(description="Robust accuracy vs eps (PGD, step 2.5*eps/steps) and FMN's security curve; "
                                   "writes curve.json, curve.png.")
    p.add_argument("run", type=str, help="run directory")
    p.add_argument("--out", type=str, required=True, help="output directory")
    p.add_argument("--eps", type=str | None, default=None, help="comma-separated eps values (default 0..2*eps)")
    add_dataclass_flags(p, EvalConfig, skip=("attacks", "eps", "step_size", "restarts", "defense"))
    _fmn_flags(p)
    _run_flags(p)
    p.add_argument("--progress", action=YES_NO(), default=True, help="show progress bars")
    return p


def _surface_parser() -> ArgumentParser:
    p = ArgumentParser(description="Loss surface around test points along the adversarial and a random "
                                   "direction; writes surface.json, surface.png.")
    p.add_argument("run", type=str, help="run directory")
    p.add_argument("--out", type=str, required=True, help="output directory")
    p.add_argument("--points", type=int, default=4, help="correctly classified test points to draw")
    p.add_argument("--eps", type=float | None, default=None, help="threat-model radius (default: dataset's)")
    p.add_argument("--span", type=float, default=1.0, help="grid half-width in units of eps")
    p.add_argument("--resolution", type=int, default=21, help="grid points per axis")
    p.add_argument("--samples", type=int | None, default=None, help="passes per grid point (default 10 if random)")
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None, help="dataset directory")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the random direction")
    return p


def _calibration_parser() -> ArgumentParser:
    p = ArgumentParser(description="Confidence vs accuracy of runs (and their SAP wrappers): reliability diagrams "
                                   "and ECE; writes calibration.json, calibration.png into --out.")
    p.add_argument("runs", type=str, nargs="+", help="run directories")
    p.add_argument("--out", type=str, required=True, help="output directory")
    p.add_argument("--defense", type=str | None, default=None,
                   help="also evaluate each run wrapped in this test-time defense, e.g. sap:pct=100")
    p.add_argument("--bins", type=int, default=10, help="equal-width confidence bins")
    p.add_argument("--passes", type=int, default=10, help="forward passes averaged for a stochastic model")
    _data_flags(p, limit=1000)
    return p


def _sweep_parser() -> ArgumentParser:
    p = ArgumentParser(description="Guo et al.'s sparsity study: prune ρ of the remaining weights per round, retrain, "
                                   "measure FGSM/R+FGSM accuracy and DeepFool/C&W r2; writes sweep.json, sweep.png.")
    p.add_argument("run", type=str, help="trained run to start from")
    p.add_argument("--rounds", type=int, required=True, help="pruning rounds")
    p.add_argument("--out", type=str | None, default=None, help="output directory (default RUN/sparsity-sweep)")
    p.add_argument("--rho", type=float, default=1 / 3, help="fraction of the remaining weights removed per round")
    p.add_argument("--epochs-per-round", dest="epochs_per_round", type=int, default=1, help="retraining epochs")
    p.add_argument("--adversarial", action=YES_NO(), default=False, help="retrain with the AT loss")
    p.add_argument("--scope", type=str, default="layer", help="layer (uniform per layer) or global")
    p.add_argument("--keep-first-last", dest="keep_first_last", action=YES_NO(), default=False,
                   help="keep the first and last layer dense")
    add_dataclass_flags(p, EvalConfig, skip=tuple(f for f in EVAL_FIELDS if f not in ("eps", "limit")),
                        defaults={"limit": 1000})
    p.add_argument("--limit-train", dest="limit_train", type=int | None, default=None,
                   help="retrain on the first N training examples (default: the run's)")
    p.add_argument("--deepfool-steps", dest="deepfool_steps", type=int, default=50, help="DeepFool iterations")
    p.add_argument("--cw-steps", dest="cw_steps", type=int, default=100, help="C&W Adam steps per search round")
    p.add_argument("--cw-search", dest="cw_search", type=int, default=5, help="C&W binary-search rounds")
    p.add_argument("--cw-const", dest="cw_const", type=float, default=0.1, help="C&W initial constant c")
    p.add_argument("--cw-lr", dest="cw_lr", type=float, default=0.01, help="C&W Adam learning rate")
    p.add_argument("--control", action=YES_NO(), default=False,
                   help="also train and measure a dense run per round with the same training (separates "
                        "sparsity from extra epochs; about doubles the cost)")
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None, help="dataset directory")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    p.add_argument("--progress", action=YES_NO(), default=True, help="show progress bars")
    return p


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="robustprune", description="Adversarially robust sparse neural networks.")
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand("train", _train_parser(), help="train a run")
    sub.add_subcommand("eval", _eval_parser(), help="evaluate a run under attacks")
    sub.add_subcommand("compare", _compare_parser(), help="train, evaluate and tabulate a suite of runs")
    sub.add_subcommand("report", _report_parser(), help="re-render a suite's table and plots from its cards")
    sub.add_subcommand("import", _import_parser(), help="a run directory from a trained network's weights")
    sub.add_subcommand("compact", _compact_parser(), help="physically remove pruned units from a run")
    sub.add_subcommand("export", _export_parser(), help="a run as a RobustBench or Adversarial Pruning Benchmark entry")
    sub.add_subcommand("audit", _audit_parser(), help="attack ladder + gradient-masking checks for a run")
    sub.add_subcommand("curve", _curve_parser(), help="robust accuracy vs eps for a run")
    sub.add_subcommand("surface", _surface_parser(), help="loss surface around test points of a run")
    sub.add_subcommand("calibration", _calibration_parser(), help="reliability diagrams + ECE of runs (and SAP)")
    sub.add_subcommand("sweep-sparsity", _sweep_parser(), help="robustness vs weight sparsity (Guo et al. 2018)")
    sub.add_subcommand("list", ArgumentParser(description="List registered names."), help="list models, methods, ...")
    return parser


def train_config(ns: Namespace) -> TrainConfig:
    """The ``TrainConfig`` that ``train``'s parsed options say (``--target-sparsity`` into ``method_args``)."""
    kw = {k: v for k, v in vars(ns).items() if k not in ("config", "__default_config__", "target_sparsity")}
    if isinstance(kw["method_args"], dict):  # else TrainConfig.validate names the bad --method-args
        kw["method_args"] = with_target_sparsity(kw["method_args"], ns.target_sparsity)
    return TrainConfig(**kw)


def cmd_train(ns: Namespace) -> int:
    from robustprune.train import fit

    out = fit(train_config(ns))
    print(f"run finished: {out}")
    return 0


def _at_least_one(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def cmd_eval(ns: Namespace) -> int:
    import torch

    from robustprune.eval import evaluate_run, format_table

    _at_least_one("--threads", ns.threads)
    if ns.threads is not None:
        torch.set_num_threads(ns.threads)
    cfg = eval_config_of(ns, attacks=[a.strip() for a in ns.attack.split(",") if a.strip()])
    card = evaluate_run(ns.run, cfg, source=ns.source, data_dir=ns.data_dir, device=ns.device, out=ns.out,
                        progress=ns.progress)
    print(json.dumps(card, indent=2) if ns.json else format_table(card))
    print(f"card: {card['card_path']}", file=sys.stderr)
    return 0


def cmd_list(_: Any) -> int:
    import robustprune.attacks  # noqa: F401
    import robustprune.defenses  # noqa: F401
    import robustprune.models  # noqa: F401
    from robustprune.data import dataset_names
    from robustprune.registry import ATTACKS, METHODS, MINNORM, MODELS, TEST_TIME

    for kind, names in (("models", MODELS.names()), ("methods", METHODS.names()),
                        ("test-time defenses", TEST_TIME.names()),
                        ("attacks", [*ATTACKS.names(), "transfer", "autoattack"]),
                        ("minimum-norm attacks", MINNORM.names()), ("datasets", dataset_names())):
        print(f"{kind}: {', '.join(names)}")
    print("outside models: torchvision:NAME (torchvision's classification models), package.module:function (an "
          "importable factory), both with --model-args (docs/models.md)")
    return 0


def cmd_compare(ns: Namespace) -> int:
    from robustprune.compare import load_suite, run_suite

    _at_least_one("--jobs", ns.jobs)
    _at_least_one("--threads", ns.threads)
    _at_least_one("--shard-size", ns.shard_size)
    if ns.address is not None and ns.executor != "ray":
        raise ValueError(f"--address {ns.address} is for --executor ray (got --executor {ns.executor})")
    only = None if ns.only is None else [r.strip() for r in ns.only.split(",") if r.strip()]
    written = run_suite(load_suite(ns.suite), ns.out, data_dir=ns.data_dir, device=ns.device, progress=ns.progress,
                        jobs=ns.jobs, threads=ns.threads, refetch_data=ns.refetch_data, only=only,
                        reuse_stale=ns.reuse_stale, shard_size=ns.shard_size, executor=ns.executor,
                        address=ns.address)
    print(written[0].read_text())
    print("written: " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0


def cmd_report(ns: Namespace) -> int:
    from robustprune.reports import render_report

    written = render_report(ns.dir)
    print(written[0].read_text())
    print("written: " + ", ".join(str(w) for w in written), file=sys.stderr)
    return 0


def cmd_import(ns: Namespace) -> int:
    from robustprune.train.importer import import_run

    out = import_run(model=ns.model, model_args=ns.model_args, weights=ns.weights, dataset=ns.dataset, out=ns.out,
                     method=ns.method, prefix=ns.weights_prefix)
    print(f"imported {ns.weights} as run {out}")
    return 0


def cmd_compact(ns: Namespace) -> int:
    from robustprune.jobs.compact import compact_run, format_compact

    out = compact_run(ns.run, out=ns.out, onnx=ns.onnx, measure=ns.measure, repeats=ns.repeats)
    print(format_compact(out))
    return 0


def cmd_export(ns: Namespace) -> int:
    from robustprune.jobs.export import export_run, measure_distances

    distances = ns.distances
    if ns.measure_fmn is not None:
        from robustprune.jobs.curve import fmn_attack

        if ns.measure_fmn < 1:
            raise ValueError(f"--measure-fmn must be a number of test points >= 1, got {ns.measure_fmn}")
        distances = str(measure_distances(ns.run, fmn_attack(norm="linf"), limit=ns.measure_fmn))
        print(f"FMN-L-inf distances on {ns.measure_fmn} test points: {distances}", file=sys.stderr)
    res = export_run(ns.run, fmt=ns.fmt, out=ns.out, card=ns.card, distances=distances, meta=ns.meta,
                     sparsity_rate=ns.sparsity_rate, allow_partial=ns.allow_partial)
    shown = {k: v for k, v in res["entry"].items() if k != "distances"}
    print(json.dumps(shown, indent=2))
    if res["to_fill"]:
        print(f"to fill in by hand: {', '.join(res['to_fill'])}", file=sys.stderr)
    print("written: " + ", ".join(res["paths"]), file=sys.stderr)
    return 0


def _floats(text: str | None) -> list[float] | None:
    """``"0,0.1,0.3"`` -> ``[0.0, 0.1, 0.3]``; a bad item raises ``ValueError`` naming it."""
    if text is None:
        return None
    out = []
    for item in text.split(","):
        try:
            out.append(float(item))
        except ValueError:
            raise ValueError(f"not a number in the eps list: {item.strip()!r}") from None
    return out


def cmd_audit(ns: Namespace) -> int:
    from robustprune.jobs.audit import AuditConfig, audit_run
    from robustprune.reports.audit_report import render_audit_markdown

    eps_sweep = _floats(ns.eps_sweep)
    cfg = AuditConfig(eval=eval_config_of(ns), eps_sweep=None if eps_sweep is None else tuple(eps_sweep),
                      autoattack=ns.autoattack, fmn=ns.fmn, fmn_steps=ns.fmn_steps, fmn_targets=ns.fmn_targets,
                      surface=ns.surface)
    card = audit_run(ns.run, cfg, out=ns.out, source=ns.source, data_dir=ns.data_dir, device=ns.device,
                     progress=ns.progress)
    print(render_audit_markdown(card, surface=ns.surface))
    print(f"written: {ns.out}/audit.json, audit.md, curve.json, curve.png"
          + (", surface.json, surface.png" if ns.surface else ""), file=sys.stderr)
    return 0


def cmd_curve(ns: Namespace) -> int:
    from robustprune.jobs.curve import CurveConfig, curve_run

    eps_list = _floats(ns.eps)
    cfg = CurveConfig(eval=eval_config_of(ns, skip=("eps",)), eps_list=None if eps_list is None else tuple(eps_list),
                      fmn=ns.fmn, fmn_steps=ns.fmn_steps, fmn_targets=ns.fmn_targets)
    curve = curve_run(ns.run, cfg, out=ns.out, data_dir=ns.data_dir, device=ns.device, progress=ns.progress)
    sec = curve["security"].get("points")
    print("| eps | PGD robust accuracy % |" + (" FMN security % |" if sec else "")
          + "\n|---|---|" + ("---|" if sec else ""))
    for i, p in enumerate(curve["points"]):
        print(f"| {p['eps']:g} | {p['robust_acc']:.2f} |" + (f" {sec[i]['robust_acc']:.2f} |" if sec else ""))
    if not sec:
        print(f"security curve skipped: {curve['security']['skipped']}", file=sys.stderr)
    print(f"written: {ns.out}/curve.json, curve.png", file=sys.stderr)
    return 0


def cmd_surface(ns: Namespace) -> int:
    from robustprune.jobs.surface import SurfaceConfig, surface_run

    cfg = SurfaceConfig(points=ns.points, eps=ns.eps, span=ns.span, resolution=ns.resolution, samples=ns.samples,
                        seed=ns.seed)
    surface_run(ns.run, cfg, out=ns.out, data_dir=ns.data_dir, device=ns.device)
    print(f"written: {ns.out}/surface.json, surface.png", file=sys.stderr)
    return 0


def cmd_calibration(ns: Namespace) -> int:
    from robustprune.jobs.calibration import CalibrationConfig, calibration_run

    cfg = CalibrationConfig(defense=ns.defense, limit=ns.limit, bins=ns.bins, passes=ns.passes, seed=ns.seed)
    data = calibration_run(ns.runs, cfg, out=ns.out, data_dir=ns.data_dir, device=ns.device)
    print("| model | accuracy % | mean confidence % | ECE % |\n|---|---|---|---|")
    print("\n".join(f"| {m['label']} | {100 * m['accuracy']:.2f} | {100 * m['mean_confidence']:.2f} | "
                    f"{100 * m['ece']:.2f} |" for m in data["models"]))
    print(f"written: {ns.out}/calibration.json, calibration.png", file=sys.stderr)
    return 0


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def cmd_sweep_sparsity(ns: Namespace) -> int:
    from robustprune.jobs.sweep import SweepConfig, sweep_sparsity

    own = {k: ns[k] for k in ("rounds", "rho", "epochs_per_round", "adversarial", "scope", "keep_first_last",
                              "limit_train", "deepfool_steps", "cw_steps", "cw_search", "cw_const", "cw_lr", "control")}
    res = sweep_sparsity(ns.run, SweepConfig(eval=eval_config_of(ns), **own), out=ns.out, data_dir=ns.data_dir,
                         device=ns.device, progress=ns.progress)

    def cells(p: dict[str, Any]) -> str:
        return (f"{p['clean_acc']:.2f} | {p['fgsm_acc']:.2f} | {p['rfgsm_acc']:.2f} | {_num(p['deepfool_r2'])} | "
                f"{_num(p['cw_r2'])}")

    dense = res.get("control")
    cols = ["round", "weight sparsity %", "clean %", "FGSM %", "R+FGSM %", "DeepFool r2", "C&W r2"]
    cols += [f"{c} (dense)" for c in cols[2:]] if dense else []
    print(f"| {' | '.join(cols)} |\n|{'---|' * len(cols)}")
    for i, p in enumerate(res["points"]):
        extra = f" {cells(dense[i])} |" if dense else ""
        print(f"| {p['round']} | {p['weight_sparsity']:.1f} | {cells(p)} |{extra}")
    return 0


COMMANDS = {"calibration": cmd_calibration,
            "train": cmd_train, "eval": cmd_eval, "compare": cmd_compare, "report": cmd_report, "list": cmd_list,
            "compact": cmd_compact, "export": cmd_export, "audit": cmd_audit, "curve": cmd_curve,
            "surface": cmd_surface, "sweep-sparsity": cmd_sweep_sparsity, "import": cmd_import}


def misspelled_flag(argv: Sequence[str]) -> str | None:
    """What is wrong with the first flag of ``argv`` that is spelled the way no flag is, saying the
    spelling to use, or ``None``: flags are spelled with hyphens (``--no-progress``), and a test-time
    defense is named as data (``--defense NAME:option=VALUE``), never by flags of its own."""
    for arg in argv:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if not flag.startswith("--"):
            continue
        if "_" in flag:
            return f"{flag} is not a flag: flags are spelled with hyphens, {flag.replace('_', '-')}"
        if flag != "--defense":
            from robustprune.defenses import spelled_as_setting

            hint = spelled_as_setting(flag)
            if hint is not None:
                return f"{flag} is not a flag: name the test-time defense as data, --defense {hint}"
    return None


def _user_error(e: BaseException) -> bool:
    """Errors in what the user asked for: bad values (``ValueError``), missing files, unreadable
    runs and data, missing extras, and a suite task that failed on one of those."""
    from robustprune.compare.parallel import TaskFailed

    if isinstance(e, TaskFailed) and e.__cause__ is not None:
        return _user_error(e.__cause__)
    return isinstance(e, ValueError | FileNotFoundError | UserError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. User errors (see :func:`_user_error`) print one line and return 2; any
    other exception is a bug and propagates with its type and traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    wrong = misspelled_flag(argv)
    if wrong is not None:
        print(f"robustprune: error: {wrong}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args[args.command])
    except Exception as e:
        if not _user_error(e):
            raise
        print(f"robustprune {args.command}: error: {e}", file=sys.stderr)
        return 2
