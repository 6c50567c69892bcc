"""Command line: thin wrappers that parse flags and call library functions with keywords.

``robustprune train|eval|list ...``; ``python -m robustprune`` is the same program.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace

from robustprune.config import TrainConfig, add_dataclass_flags


def _train_parser() -> ArgumentParser:
    p = ArgumentParser(description="Train a model with a method; resumable, writes a run directory.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML experiment file (flags override it)")
    add_dataclass_flags(p, TrainConfig)
    return p


def _eval_parser() -> ArgumentParser:
    p = ArgumentParser(description="Evaluate a run: clean and robust accuracy, vulnerability; writes a JSON card.")
    p.add_argument("run", type=str, help="run directory")
    p.add_argument("--attack", type=str, default="pgd",
                   help="none, fgsm, rfgsm, pgd, eot-pgd, transfer; comma-separated for several")
    p.add_argument("--eps", type=float | None, default=None, help="L-inf radius in pixel units (default: dataset's)")
    p.add_argument("--steps", type=int, default=40, help="attack iterations")
    p.add_argument("--step-size", dest="step_size", type=float | None, default=None,
                   help="attack step (default: 0.01 MNIST, 2/255 CIFAR)")
    p.add_argument("--restarts", type=int, default=1, help="random restarts (worst case kept per example)")
    p.add_argument("--eot", type=int | None, default=None, help="gradient samples per step (eot-pgd default 10)")
    p.add_argument("--source", type=str | None, default=None, help="run the transfer attack is crafted on")
    p.add_argument("--limit", type=int | None, default=None, help="evaluate the first N test examples")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--passes", type=int, default=10, help="forward passes averaged for a stochastic model")
    p.add_argument("--data-dir", dest="data_dir", type=str | None, default=None, help="dataset directory")
    p.add_argument("--device", type=str, default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the attacks' random starts")
    p.add_argument("--out", type=str | None, default=None, help="card path (default RUN/eval/<attack>.json)")
    p.add_argument("--progress", action=ActionYesNo, default=True, help="show a progress bar")
    p.add_argument("--json", action=ActionYesNo, default=False, help="print the card as JSON instead of a table")
    return p


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="robustprune", description="Adversarially robust sparse neural networks.")
    sub = parser.add_subcommands(dest="command")
    sub.add_subcommand("train", _train_parser(), help="train a run")
    sub.add_subcommand("eval", _eval_parser(), help="evaluate a run under attacks")
    sub.add_subcommand("list", ArgumentParser(description="List registered names."), help="list models, methods, ...")
    return parser


def cmd_train(ns: Namespace) -> int:
    from robustprune.train import fit

    kw = {k: v for k, v in vars(ns).items() if k not in ("config", "__default_config__")}
    out = fit(TrainConfig(**kw))
    print(f"run finished: {out}")
    return 0


def cmd_eval(ns: Namespace) -> int:
    from robustprune.eval import evaluate_run, format_table

    card = evaluate_run(
        ns.run, attacks=[a.strip() for a in ns.attack.split(",") if a.strip()], eps=ns.eps, steps=ns.steps,
        step_size=ns.step_size, restarts=ns.restarts, eot=ns.eot, source=ns.source, limit=ns.limit,
        batch_size=ns.batch_size, passes=ns.passes, data_dir=ns.data_dir, device=ns.device, seed=ns.seed,
        out=ns.out, progress=ns.progress,
    )
    print(json.dumps(card, indent=2) if ns.json else format_table(card))
    print(f"card: {card['card_path']}", file=sys.stderr)
    return 0


def cmd_list(_: Any) -> int:
    import robustprune.attacks  # noqa: F401
    import robustprune.defenses  # noqa: F401
    import robustprune.models  # noqa: F401
    from robustprune.data import dataset_names
    from robustprune.registry import ATTACKS, METHODS, MODELS

    for kind, names in (("models", MODELS.names()), ("methods", METHODS.names()),
                        ("attacks", ATTACKS.names()), ("datasets", dataset_names())):
        print(f"{kind}: {', '.join(names)}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "list": cmd_list}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return COMMANDS[args.command](args[args.command])
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"robustprune {args.command}: error: {e}", file=sys.stderr)
        return 2
