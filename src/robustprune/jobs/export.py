"""``robustprune export``: a run's results as an entry of a public benchmark.

Two formats, each built from the run's cards only (``config.yaml``, the evaluation cards under
``RUN/eval/``, a minimal-distances file), never by re-measuring:

- ``robustbench``: a RobustBench model-info JSON (``model_info/<dataset>/Linf/<name>.json``:
  ``link``, ``name``, ``authors``, ``additional_data``, ``number_forward_passes``, ``dataset``,
  ``venue``, ``architecture``, ``eps``, ``clean_acc``, ``reported``, ``autoattack_acc``,
  ``footnote``, ``unreliable``), for CIFAR-10 and CIFAR-100 runs;
- ``apb``: an entry of Piras et al.'s Adversarial Pruning Benchmark (what its "New AP method"
  issue asks for: the taxonomy JSON entry, the model key, clean and AutoAttack accuracy, the
  minimum-norm robust accuracy, the model's and the distances' download ids, normalisation and
  architecture notes) plus the per-example minimal L∞ distances (``<key>.pickle``, the list the
  benchmark's security-curve code reads) and the issue's body (``<key>.issue.md``), for CIFAR-10
  runs of the architectures the benchmark takes (``ModelInfo.apb_code``: ResNet-18, VGG-16; its
  SVHN models need a data set robustprune does not load).

Which field comes from which card is tabulated in docs/export.md. Fields no card can know (a
paper's venue, download ids) come from ``meta`` (a YAML/JSON mapping) or are written as ``null``
and listed in the result's ``to_fill``.

The minimal distances are read from a *distances file* (:func:`read_distances`; by default the
newest ``RUN/eval/distances-*.json``), written by :func:`write_distances` from any
minimum-norm attack with ``norm == "linf"`` (:func:`measure_distances`). The benchmark itself uses
FMN; the attack that produced the distances is named in the file and in the entry.

>>> export_run("runs/hydra-r18", fmt="robustbench")                       # doctest: +SKIP
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from robustprune.config import load_train_config
from robustprune.models import model_info
from robustprune.records import AttackEntry, EvalCard, RecordError, read_eval_card
from robustprune.registry import METHODS
from robustprune.utils import UserError, atomic_write, atomic_write_json, provenance

__all__ = ["APB_EPS", "FORMATS", "ExportError", "MinimalDistances", "export_run", "measure_distances",
           "read_distances", "write_distances"]

FORMATS = ("robustbench", "apb")
#: test points of the benchmarks' AutoAttack evaluation (the whole CIFAR-10 test set)
FULL_TEST = 10000
#: ε of both benchmarks' L∞ evaluation on CIFAR-10 (the APB's AutoAttack uses 0.031, its curves 8/255)
APB_EPS = 8 / 255
EPS_TOL = 1e-3
#: RobustBench's L∞ leaderboards that a run of this package can be on: dataset -> ε
ROBUSTBENCH_LINF = {"cifar10": 8 / 255, "cifar100": 8 / 255}
#: the APB's data sets that robustprune loads (our name -> the key's spelling); its architectures
#: are the models whose registry entry has an ``apb_code`` (``models.model_info``)
APB_DATASETS = {"cifar10": "CIFAR10"}
#: the sparsities (%) the APB takes: unstructured (US) and structured (S)
APB_LEVELS = {"US": (90, 95, 99), "S": (50, 75, 90)}
APB_LEVEL_TOL = 1.0
#: how the taxonomy's training labels read in the APB's entries
APB_TRAINING = {"at": "Adversarial Training (AT) PGD", "trades": "Adversarial Training (AT) TRADES",
                "nt": "Natural Training (NT)", None: "Not Specified"}
APB_PIPELINE = {"after": "A-Methods Pruning After Training", "before": "B-Methods Pruning Before Training",
                "during": "D-Methods Pruning During Training"}
APB_STRUCTURE = {"unstructured": "Unstructured (US)", "filters": "Structured (S) filters",
                 "channels": "Structured (S) channels"}
APB_LOCALITY = {"local": "Local Pruning (L)", "global": "Global Pruning (G)", None: "Not Specified"}
DISTANCES_KIND = "minimal-distances"


class ExportError(UserError):
    """A run cannot be exported in the asked format; the message says why and what would fix it."""


# ---------------------------------------------------------------------------------------- distances


@dataclass
class MinimalDistances:
    """Per-example minimal adversarial distances of a run: the seam where a minimum-norm attack
    (FMN for the APB) plugs in.

    ``distances[i]`` is test point i's distance (in ``norm``) to the nearest adversarial example the
    attack found: 0 when already misclassified, ``inf`` (``null`` in the file) when none was found.
    ``attack`` is the attack's ``params()`` (its ``name`` says which attack it was).
    """

    attack: dict[str, Any]
    norm: str
    distances: list[float]
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def robust_acc(self, eps: float) -> float:
        """% of points whose distance exceeds ``eps``."""
        if not self.distances:
            return math.nan
        return 100.0 * sum(d > eps for d in self.distances) / len(self.distances)


def write_distances(path: str | Path, md: MinimalDistances) -> Path:
    """Write ``md`` as a distances file (JSON; ``inf`` as ``null``), atomically."""
    record = {"kind": DISTANCES_KIND, "version": 1, "attack": md.attack, "norm": md.norm, "dataset": md.dataset,
              "n": len(md.distances), "distances": [None if math.isinf(d) else d for d in md.distances], **md.extra}
    atomic_write_json(Path(path), record)
    return Path(path)


def read_distances(path: str | Path) -> MinimalDistances:
    """Read a distances file; a file of another kind, or a bad entry, raises ``ExportError`` naming it."""
    import json

    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"distances file {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"distances file {path} is not readable JSON: {e}") from None
    if not isinstance(rec, dict) or rec.get("kind") != DISTANCES_KIND:
        kind = rec.get("kind") if isinstance(rec, dict) else None
        raise ExportError(f"{path} is not a minimal-distances file (kind {kind!r}, expected {DISTANCES_KIND!r})")
    dist = rec.get("distances")
    attack = rec.get("attack")
    if not isinstance(dist, list) or not isinstance(attack, dict) or "name" not in attack:
        raise ExportError(f"{path}: needs a 'distances' list and an 'attack' mapping with a 'name'")
    out = []
    for i, d in enumerate(dist):
        if d is None:
            out.append(math.inf)
        elif isinstance(d, int | float) and not isinstance(d, bool) and d >= 0 and not math.isnan(d):
            out.append(float(d))
        else:
            raise ExportError(f"{path}: distance {i} is {d!r}; expected a number >= 0 or null (none found)")
    known = ("kind", "version", "attack", "norm", "dataset", "n", "distances")
    extra = {k: v for k, v in rec.items() if k not in known}
    return MinimalDistances(attack=attack, norm=str(rec.get("norm", attack.get("norm", ""))), distances=out,
                            dataset=str(rec.get("dataset", "")), extra=extra)


def find_distances(run_dir: Path) -> Path | None:
    """The newest ``RUN/eval/distances-*.json``, or ``None``."""
    files = sorted((run_dir / "eval").glob("distances-*.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def measure_distances(run_dir: str | Path, attack: Any, *, limit: int | None = None, batch_size: int = 128,
                      data_dir: str | None = None, device: str = "auto", out: str | Path | None = None,
                      progress: bool = True) -> Path:
    """Run the minimum-norm ``attack`` (a :class:`~robustprune.attacks.minnorm.MinNormAttack`) on the
    first ``limit`` test points of run ``run_dir`` and write their distances (default
    ``RUN/eval/distances-<attack>.json``)."""
    from robustprune.eval.context import EvalContext
    from robustprune.metrics.minnorm import minimal_distances

    ctx = EvalContext.open(run_dir, limit=limit, data_dir=data_dir, device=device)
    run, dev = ctx.run, ctx.device
    if run.method.stochastic:
        raise ExportError(f"method {run.cfg.method!r} is random at test time; minimal distances need a "
                          "deterministic model")
    t0 = time.perf_counter()
    found = minimal_distances(run.model, ctx.loader(batch_size), attack, progress=progress)
    d = [math.inf if v is None else float(v) for v in found["distances"]]  # None: no adversarial example found
    name = attack.params()["name"]
    md = MinimalDistances(attack=attack.params(), norm=attack.norm, distances=d, dataset=run.cfg.dataset,
                          extra={"run": str(run_dir), "limit": limit, "wall_s": time.perf_counter() - t0,
                                 **provenance(dev), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return write_distances(Path(out) if out else Path(run_dir) / "eval" / f"distances-{name}.json", md)


# ---------------------------------------------------------------------------------------- the cards


@dataclass
class RunCards:
    """What the exports read: the run's config, the AutoAttack evaluation card (a typed record,
    :mod:`robustprune.records`) and its AutoAttack entry."""

    run_dir: Path
    cfg: Any
    card: EvalCard
    card_path: Path
    aa: AttackEntry


def _read_card(path: Path) -> EvalCard | None:
    """The evaluation card at ``path`` (any schema the records read), ``None`` when it is not one."""
    try:
        return read_eval_card(path)
    except RecordError:
        return None


def autoattack_entry(card: EvalCard | None) -> AttackEntry | None:
    """The ``autoattack`` entry of an evaluation card of the undefended model, or ``None``."""
    if card is None or card.test_time:
        return None
    return card.attack("autoattack")


def load_cards(run_dir: str | Path, card: str | Path | None = None) -> RunCards:
    """The run's config and its AutoAttack card: ``card`` if given, else the evaluation card under
    ``RUN/eval/`` with an AutoAttack result on the most test points (the newest among equals).
    Evaluations under a test-time defense are not the run's model and are skipped."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.yaml)")
    cfg = load_train_config(run / "config.yaml")
    if card is not None:
        path = Path(card)
        data = _read_card(path)
        if data is None:
            raise FileNotFoundError(f"evaluation card {path} does not exist or is not JSON (an evaluation card)")
        entry = autoattack_entry(data)
        if entry is None:
            raise ExportError(f"card {path} holds no AutoAttack result of the undefended model; evaluate with "
                              f"`robustprune eval {run} --attack autoattack`")
        return RunCards(run, cfg, data, path, entry)
    found = []
    for path in sorted((run / "eval").glob("*.json")):
        data = _read_card(path)
        entry = autoattack_entry(data)
        if data is not None and entry is not None:
            found.append((entry.n or 0, path.stat().st_mtime, path, data, entry))
    if not found:
        raise ExportError(f"no AutoAttack result in {run / 'eval'}: both benchmarks rank by AutoAttack; run "
                          f"`robustprune eval {run} --attack autoattack` first (or pass --card)")
    _, _, path, data, entry = max(found, key=lambda t: (t[0], t[1]))
    return RunCards(run, cfg, data, path, entry)


def _eps_text(eps: float) -> str:
    """``8/255`` for multiples of 1/255 (how RobustBench writes ε), else the number."""
    frac = Fraction(eps).limit_denominator(255)
    if frac.denominator == 255 and abs(float(frac) - eps) < 1e-9:
        return f"{frac.numerator}/255"
    if abs(eps * 255 - round(eps * 255)) < 1e-6 and round(eps * 255) > 0:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def _check_autoattack(rc: RunCards, *, eps: float, allow_partial: bool, what: str) -> tuple[float, float, str]:
    """(clean %, AutoAttack %, version) of the card, refused when its ε or size is not the benchmark's."""
    params = rc.aa.params
    card_eps = params.get("eps")
    if not isinstance(card_eps, int | float) or abs(card_eps - eps) > EPS_TOL:
        raise ExportError(f"{what} evaluates L∞ ε = {_eps_text(eps)}; the AutoAttack card {rc.card_path} used "
                          f"eps {card_eps!r}")
    versions = (rc.aa.breakdown or {}).get("versions") or [params.get("version")]
    version = "+".join(str(v) for v in versions)
    n = _points(rc)
    if n < FULL_TEST and not allow_partial:
        raise ExportError(f"{what} evaluates AutoAttack on the full test set ({FULL_TEST:,} points); card "
                          f"{rc.card_path} has {n:,} (evaluate without --limit, or pass --allow-partial to "
                          "export it with the count in the footnote)")
    if rc.card.clean_acc is None:
        raise ExportError(f"card {rc.card_path} has no clean accuracy; evaluate the run again")
    return float(rc.card.clean_acc), float(rc.aa.robust_acc), version


def _points(rc: RunCards) -> int:
    """How many test points AutoAttack ran on (the entry's count, else the card's)."""
    return int(rc.aa.n if rc.aa.n is not None else rc.card.n or 0)


def _arch_name(model: str) -> str:
    """How benchmarks write the architecture (``ModelInfo.display_name``), else its own name."""
    try:
        return model_info(model).display_name or model
    except ValueError:
        return model


def _apb_code(model: str) -> str | None:
    """The architecture's code in the APB's model keys (``ModelInfo.apb_code``), ``None`` if it has none."""
    try:
        return model_info(model).apb_code
    except ValueError:
        return None


def _method_cls(name: str) -> Any:
    import robustprune.defenses  # noqa: F401  (registers methods)

    return METHODS.get(name)


def _read_meta(meta: str | Path | Mapping[str, Any] | None, allowed: tuple[str, ...]) -> dict[str, Any]:
    if meta is None:
        return {}
    if isinstance(meta, Mapping):
        data: Any = dict(meta)
    else:
        path = Path(meta)
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"meta file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ExportError(f"meta file {path} is not YAML/JSON: {e}") from None
    if not isinstance(data, dict):
        raise ExportError(f"meta must be a mapping of field names to values, got {type(data).__name__}")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ExportError(f"unknown meta fields {unknown}; this format takes: {', '.join(allowed)}")
    return data


def _sparsity(card: EvalCard) -> dict[str, Any]:
    return card.sparsity.to_dict() if card.sparsity is not None else {}


# ---------------------------------------------------------------------------------------- RobustBench

RB_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
             "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "footnote", "unreliable")
RB_META = (*RB_FIELDS, "model_name")


def robustbench_entry(rc: RunCards, *, meta: dict[str, Any], allow_partial: bool = False) -> tuple[str, dict[str, Any]]:
    """(model name, RobustBench model-info dict) of the run; see docs/export.md for each field's card."""
    cfg = rc.cfg
    if cfg.dataset not in ROBUSTBENCH_LINF:
        raise ExportError(f"RobustBench's leaderboards are CIFAR-10, CIFAR-100 and ImageNet; run {rc.run_dir} is "
                          f"trained on {cfg.dataset!r}")
    eps = ROBUSTBENCH_LINF[cfg.dataset]
    clean, robust, version = _check_autoattack(rc, eps=eps, allow_partial=allow_partial, what="RobustBench")
    ref = _method_cls(cfg.method).reference
    sp = _sparsity(rc.card)
    notes = [f"robustprune method {cfg.method!r}"]
    if sp.get("weight_sparsity"):
        notes.append(f"{sp['weight_sparsity']:.1f} % of weights zero")
    if sp.get("unit_sparsity"):
        notes.append(f"{sp['unit_sparsity']:.1f} % of units pruned")
    n = _points(rc)
    if n < FULL_TEST:
        notes.append(f"AutoAttack on the first {n:,} test points only")
    if version != "standard":
        notes.append(f"AutoAttack version {version}")
    entry: dict[str, Any] = {
        "link": ref.link if ref else None,
        "name": ref.title if ref else None,
        "authors": ", ".join(ref.authors) if ref else None,
        "additional_data": False,
        "number_forward_passes": int(rc.card.passes or 1) if rc.card.stochastic else 1,
        "dataset": cfg.dataset,
        "venue": ref.venue if ref else None,
        "architecture": _arch_name(cfg.model),
        "eps": _eps_text(eps),
        "clean_acc": f"{clean:.2f}",
        "reported": None,
        "autoattack_acc": f"{robust:.2f}",
        "footnote": "; ".join(notes) + ".",
        "unreliable": False,
    }
    name = meta.pop("model_name", None) or (f"{ref.key}_{rc.run_dir.name}" if ref else rc.run_dir.name)
    entry.update(meta)
    return str(name), entry


# ---------------------------------------------------------------------------------------- APB

APB_TAXONOMY_META = ("link_to_paper", "ap_key", "Type of Pipeline:", "Pruning structure", "Pruning locality",
                     "Pruning criterion", "A: Pretraining ", "A: Finetuning", "A: OneShot (1S) vs Iterative (IT)",
                     "B: Pruning step ", "B: Training step ", "B: OneShot (1S) vs Iterative (IT)",
                     "D: Training step ")
APB_META = ("ap_key", "link_to_paper", "taxonomy", "model_gdrive", "distances_gdrive", "sparsity_rate",
            "base_model_compliant", "architecture_notes")


def apb_taxonomy(method: str, method_args: dict[str, Any], *, pretraining: str | None) -> dict[str, Any]:
    """The APB taxonomy JSON entry of ``method`` (keys and labels as in the benchmark's taxonomy.json)."""
    cls = _method_cls(method)
    tax = cls.taxonomy(method_args)
    if tax is None:
        raise ExportError(f"method {method!r} does not prune; the Adversarial Pruning Benchmark takes pruned networks")
    ref = cls.reference
    short = cls.apb_name or method.upper().replace("-", "")  # its key is ``<short>_<reference key>``
    key = f"{short}_{ref.key}" if ref else short
    out: dict[str, Any] = {"link_to_paper": ref.link if ref else None, "ap_key": key,
                           "Type of Pipeline:": APB_PIPELINE[tax.pipeline]}
    shot = None if tax.iterative is None else ("IT" if tax.iterative else "1S")
    if tax.pipeline == "after":
        out["A: Pretraining "] = APB_TRAINING[tax.pretraining or pretraining]
        out["A: Finetuning"] = APB_TRAINING[tax.finetuning]
        out["A: OneShot (1S) vs Iterative (IT)"] = shot
    elif tax.pipeline == "before":
        out["B: Pruning step "] = APB_TRAINING[tax.pretraining]
        out["B: Training step "] = APB_TRAINING[tax.finetuning]
        out["B: OneShot (1S) vs Iterative (IT)"] = shot
    else:
        out["D: Training step "] = APB_TRAINING[tax.finetuning]
    out["Pruning structure"] = APB_STRUCTURE[tax.structure]
    out["Pruning locality"] = APB_LOCALITY[tax.locality]
    out["Pruning criterion"] = tax.criterion
    return out


def _pretraining(cfg: Any) -> str | None:
    """The training label of the run this one started from (``init_from``), when its config is readable."""
    if not cfg.init_from:
        return None
    src = Path(cfg.init_from)
    src = src.parent if src.suffix == ".safetensors" else src
    try:
        method = load_train_config(src / "config.yaml").method
    except (OSError, ValueError, UserError):
        return None
    try:
        return _method_cls(method).training
    except ValueError:  # a method this version does not know
        return None


def _apb_level(structure: str, sp: dict[str, Any], given: Any) -> tuple[str, float]:
    st = "US" if structure == "unstructured" else "S"
    measured = sp.get("weight_sparsity" if st == "US" else "unit_sparsity")
    levels = APB_LEVELS[st]
    if given is not None:
        if int(given) not in levels:
            raise ExportError(f"sparsity_rate {given!r} is not one the APB takes for {st} pruning: {levels}")
        return str(int(given)), float(measured or 0.0)
    if not isinstance(measured, int | float):
        raise ExportError("the AutoAttack card records no sparsity; pass --sparsity-rate")
    near = [lv for lv in levels if abs(measured - lv) <= APB_LEVEL_TOL]
    if not near:
        what = "weights zero" if st == "US" else "units pruned"
        raise ExportError(f"the APB takes {st} sparsities {', '.join(map(str, levels))} %; this run has "
                          f"{measured:.2f} % {what} (pass --sparsity-rate to name the level it stands for)")
    return str(near[0]), float(measured)


def apb_entry(rc: RunCards, md: MinimalDistances | None, *, meta: dict[str, Any],
              allow_partial: bool = False) -> dict[str, Any]:
    """The APB entry of the run (see the module docstring and docs/export.md)."""
    cfg = rc.cfg
    if cfg.dataset not in APB_DATASETS:
        raise ExportError(f"the Adversarial Pruning Benchmark takes CIFAR-10 and SVHN networks only (robustprune "
                          f"loads CIFAR-10 of the two); run {rc.run_dir} is trained on {cfg.dataset!r}")
    arch_code = _apb_code(cfg.model)
    if arch_code is None:
        raise ExportError(f"the Adversarial Pruning Benchmark takes ResNet-18 and VGG-16 only; run {rc.run_dir} "
                          f"is a {cfg.model!r}")
    taxonomy = apb_taxonomy(cfg.method, dict(cfg.method_args or {}), pretraining=_pretraining(cfg))
    for k in ("ap_key", "link_to_paper"):
        if k in meta:
            taxonomy[k] = meta.pop(k)
    tax_meta = meta.pop("taxonomy", None) or {}
    bad = sorted(set(tax_meta) - set(APB_TAXONOMY_META))
    if bad:
        raise ExportError(f"unknown taxonomy fields {bad}; the APB's are: {', '.join(APB_TAXONOMY_META)}")
    taxonomy.update(tax_meta)
    clean, robust, version = _check_autoattack(rc, eps=APB_EPS, allow_partial=allow_partial,
                                               what="The Adversarial Pruning Benchmark")
    if version != "standard":
        raise ExportError(f"the APB runs AutoAttack's standard version; card {rc.card_path} ran {version!r}")
    if md is None:
        raise ExportError("the APB entry needs per-example minimal L∞ distances (its security curve): write a "
                          f"distances file under {rc.run_dir / 'eval'} with a minimum-norm L∞ attack (the benchmark "
                          "uses FMN) or pass --distances FILE")
    if md.norm != "linf":
        raise ExportError(f"the APB's distances are L∞; the distances file holds {md.norm!r} distances "
                          f"(attack {md.attack.get('name')!r})")
    if md.dataset and md.dataset != cfg.dataset:
        raise ExportError(f"the distances file is of dataset {md.dataset!r}, the run of {cfg.dataset!r}")
    tax = _method_cls(cfg.method).taxonomy(dict(cfg.method_args or {}))
    rate, measured = _apb_level(tax.structure, _sparsity(rc.card), meta.pop("sparsity_rate", None))
    st = "US" if tax.structure == "unstructured" else "S"
    key = f"{taxonomy['ap_key']}_{arch_code}_{APB_DATASETS[cfg.dataset]}_{st}_{rate}"
    entry: dict[str, Any] = {
        "format": "apb",
        "json_entry": taxonomy,
        "model_key": key,
        "model_gdrive": [None, ".safetensors"],
        "distances_gdrive": [None, ".pickle"],
        "clean_accuracy": round(clean, 2),
        "robust_accuracy_aa": round(robust, 2),
        "robust_accuracy_hofmn": round(md.robust_acc(APB_EPS), 2),
        "minnorm_attack": md.attack,
        "normalization": False,
        "base_model_compliant": None,
        "architecture_notes": (f"robustprune's {cfg.model} with the input normalisation inside the model (it "
                               "takes [0, 1] pixels); weights in safetensors, loaded with robustprune.train.load_run; "
                               "loading into the APB's base model was not checked"),
        "details": {
            "run": str(rc.run_dir), "method": cfg.method, "model": cfg.model, "dataset": cfg.dataset,
            "structure": tax.structure, "sparsity_measured": measured, "sparsity_rate": rate,
            "autoattack": {"card": str(rc.card_path), "n": _points(rc), "eps": rc.aa.params["eps"],
                           "version": version},
            "distances": {"n": len(md.distances), "norm": md.norm, "eps": APB_EPS,
                          "not_found": sum(math.isinf(d) for d in md.distances)},
        },
        "distances": [None if math.isinf(d) else d for d in md.distances],
    }
    entry.update(meta)
    return entry


def apb_issue(entry: dict[str, Any]) -> str:
    """The entry as the body of the benchmark's "New AP method" issue (its template's sections)."""
    import json

    key = entry["model_key"]

    def gdrive(field: str) -> str:
        gid, ext = entry[field]
        return f'"{key}" : ["{gid or "your_gdrive_link_id"}", "{ext}"]'

    att = entry["minnorm_attack"]
    d = entry["details"]
    return "\n".join([
        "# Loading Section", "", "## JSON Entry", "```json", json.dumps(entry["json_entry"], indent=2), "```", "",
        f"## Evaluation Results of Model {key}", "",
        f"_Model GDrive:_ {gdrive('model_gdrive')}", f"_Distances GDrive:_ {gdrive('distances_gdrive')}", "",
        f"_Clean Accuracy:_ {entry['clean_accuracy']:.2f}",
        f"_Robust Accuracy (AA):_ {entry['robust_accuracy_aa']:.2f}",
        f"_Robust Accuracy (HO-FMN):_ {entry['robust_accuracy_hofmn']:.2f} (minimum-norm attack "
        f"{att.get('name')!r}, {d['distances']['n']:,} points; AutoAttack on {d['autoattack']['n']:,})", "",
        "## Architecture details and normalization",
        f"Normalization needed: {'yes' if entry['normalization'] else 'no'}. {entry['architecture_notes']}.", "",
    ])


# ---------------------------------------------------------------------------------------- the job


def _write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def export_run(run_dir: str | Path, *, fmt: str, out: str | Path | None = None, card: str | Path | None = None,
               distances: str | Path | None = None, meta: str | Path | Mapping[str, Any] | None = None,
               sparsity_rate: int | None = None, allow_partial: bool = False) -> dict[str, Any]:
    """Export run ``run_dir`` as a ``fmt`` entry (``robustbench`` or ``apb``) under ``out``
    (default ``RUN/export/<fmt>``); returns ``{"paths": [...], "entry": {...}, "to_fill": [...]}``.

    ``card``: the evaluation card with the AutoAttack result (default: found under ``RUN/eval``);
    ``distances``: the minimal-distances file (APB; default the newest ``RUN/eval/distances-*.json``);
    ``meta``: a YAML/JSON file or mapping of fields no card knows; ``sparsity_rate``: the APB level
    (%) the run stands for (default: the measured sparsity's, within 1 point); ``allow_partial``: accept an
    AutoAttack result on fewer than the full 10,000 test points (said in the entry).
    Refusals (wrong data set, architecture, ε, no AutoAttack or distances) raise :class:`ExportError`
    before anything is written.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    rc = load_cards(run_dir, card)
    base = Path(out) if out is not None else rc.run_dir / "export" / fmt
    if fmt == "robustbench":
        name, entry = robustbench_entry(rc, meta=_read_meta(meta, RB_META), allow_partial=allow_partial)
        path = base / "model_info" / rc.cfg.dataset / "Linf" / f"{name}.json"
        atomic_write_json(path, entry)
        to_fill = [k for k in RB_FIELDS if entry.get(k) is None]
        return {"paths": [str(path)], "entry": entry, "to_fill": to_fill}
    dpath = Path(distances) if distances is not None else find_distances(rc.run_dir)
    md = read_distances(dpath) if dpath is not None else None
    apb_meta = _read_meta(meta, APB_META)
    if sparsity_rate is not None:
        apb_meta["sparsity_rate"] = sparsity_rate
    entry = apb_entry(rc, md, meta=apb_meta, allow_partial=allow_partial)
    key = entry["model_key"]
    base.mkdir(parents=True, exist_ok=True)
    pkl = base / f"{key}.pickle"
    _write_bytes(pkl, pickle.dumps(list(md.distances) if md else []))
    path = base / f"{key}.json"
    atomic_write_json(path, entry)
    issue = base / f"{key}.issue.md"
    _write_bytes(issue, apb_issue(entry).encode())
    to_fill = [f for f in ("model_gdrive", "distances_gdrive") if entry[f][0] is None]
    to_fill += [f"json_entry.{k}" for k, v in entry["json_entry"].items() if v is None]
    return {"paths": [str(path), str(pkl), str(issue)], "entry": entry, "to_fill": to_fill}
