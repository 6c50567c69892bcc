"""The contract every training method follows: a loss plus optional hooks (STYLE example 4).

``Method.loss(model, x, y)`` returns one loss per parameter group and detached logs; it has no
hidden side effects (it never zeroes an optimiser or leaves the model's mode changed). Methods that
act between steps override ``after_step`` / ``on_epoch_end``; the one training loop calls them.

What a method's runs need at test time is part of the contract too, so evaluation never guesses
a method's attributes: ``eval_attacks`` adds attacks on the method's own objective (CAS's total
loss) beside the named ones, ``eval_fields`` says what an evaluation card records about the method
(AT-BNN's memory factor). Wrappers applied at test time only (SAP) are
:class:`~robustprune.defenses.testtime.TestTimeDefense` classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import PGD, Attack

#: how N of a prior's KL/N is chosen (``MethodContext.prior_size``)
PRIOR_SIZE_RULES = ("dataset", "train")


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about its run: data set size, classes and the training attack."""

    dataset: str
    train_size: int
    num_classes: int
    adv_eps: float
    adv_steps: int
    adv_step_size: float
    lr: float = 1e-3
    weight_decay: float = 1e-4
    total_steps: int = 1
    #: size of the data set's whole training split (MNIST 60,000), whatever subset this run trains
    #: on; None means ``train_size``. Priors weighted per example use it (``prior_size``).
    dataset_size: int | None = None

    def prior_size(self, rule: str) -> int:
        """N of a prior's KL/N. ``"dataset"``: the whole training split, so the weight per example
        is the paper's whatever subset a run trains on; ``"train"``: this run's examples (the ELBO
        of that subset; on a 20k MNIST subset the prior is 3x stronger per example)."""
        if rule not in PRIOR_SIZE_RULES:
            raise ValueError(f"kl_n must be one of {', '.join(PRIOR_SIZE_RULES)}, got {rule!r}")
        if rule == "train" or self.dataset_size is None:
            return self.train_size
        return self.dataset_size

    def attack_info(self) -> dict[str, Any]:
        """The training attack as data: the protocol a robust row was trained under. ``travel`` is
        how far its steps can carry it from the random start, in units of ε (the paper's MNIST
        PGD-20 of 0.01 travels 0.67 ε; PGD-5 of 0.1 travels 1.67 ε and sits on the boundary)."""
        travel = self.adv_steps * self.adv_step_size / self.adv_eps if self.adv_eps > 0 else 0.0
        return {"name": "pgd", "eps": self.adv_eps, "steps": self.adv_steps, "step_size": self.adv_step_size,
                "travel_eps": travel, "label": f"PGD-{self.adv_steps} of {self.adv_step_size:g} (ε {self.adv_eps:g})"}

    def train_attack(self) -> PGD:
        """PGD with random start against the eval-mode model (the training attack of every
        adversarial method here)."""
        return PGD(eps=self.adv_eps, steps=self.adv_steps, step_size=self.adv_step_size, random_start=True)


@dataclass(frozen=True)
class Reference:
    """The paper a method follows, as benchmark entries cite it (RobustBench's ``name``, ``authors``,
    ``venue``, ``link``; the APB's ``link_to_paper`` and key)."""

    title: str
    authors: tuple[str, ...]
    venue: str
    year: int
    link: str

    @property
    def key(self) -> str:
        """``<FirstAuthorSurname><Year><FirstTitleWord>``, the naming both benchmarks use (``Sehwag2020Hydra``)."""
        surname = self.authors[0].split()[-1]
        word = "".join(c for c in self.title.split()[0] if c.isalnum())
        return f"{surname}{self.year}{word.capitalize()}"


@dataclass(frozen=True)
class PruningTaxonomy:
    """Where a pruning method sits in Piras et al.'s (2024) taxonomy of adversarial pruning.

    ``pipeline``: when it prunes, ``"after"``, ``"before"`` or ``"during"`` training;
    ``pretraining``/``finetuning`` (after), or the pruning and training steps (before), or the one
    training step (during): ``"at"`` (adversarial, PGD), ``"trades"``, ``"nt"`` (natural), ``None``
    (not specified, e.g. whatever the ``--init-from`` run did); ``iterative``: pruned in rounds
    (``False``: one shot; ``None`` for during-training methods); ``structure``: ``"unstructured"``
    (weights), ``"filters"`` or ``"channels"``; ``locality``: ``"local"`` (per layer) or
    ``"global"``; ``criterion``: the taxonomy's label (``"Least Importance Score (LIS)"``).
    """

    pipeline: str
    structure: str
    locality: str | None
    criterion: str
    pretraining: str | None = None
    finetuning: str | None = None
    iterative: bool | None = None


@dataclass
class ParamGroup:
    """Parameters stepped by one optimiser on the loss of the same name."""

    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: plain cross-entropy on all parameters with one optimiser.

    Subclasses set ``name`` and override ``loss`` (and, when needed, ``prepare``,
    ``param_groups``, ``after_step``, ``observe``, ``frozen_groups``, ``on_epoch_end``,
    ``card_fields``, ``eval_attacks``, ``eval_fields``, ``state_dict``).
    """

    name: ClassVar[str] = "standard"
    #: the method needs ``--init-from`` a finished run (ANP-VS starts from a standard model)
    needs_init: ClassVar[bool] = False
    #: eval-mode outputs are random (evaluate with EOT and averaged passes)
    stochastic: bool = False
    #: the paper the method follows (benchmark exports cite it); None: none recorded
    reference: ClassVar[Reference | None] = None
    #: the version of the method's training code: bump it in the change that alters what it trains
    #: (its loss, its hooks, the training attack it uses), and ``compare`` trains its finished runs
    #: again (``robustprune.records``; ``train.run.train_code_parts``)
    code_version: ClassVar[int] = 1
    #: what kind of training its model has had, in the taxonomy's words (``"nt"`` natural, ``"at"``
    #: adversarial PGD, ``"trades"``): a run started ``--init-from`` this method's run is pruned from
    #: such a model (the benchmark's "pretraining"); None: not one of those
    training: ClassVar[str | None] = None
    #: the method's short name in the Adversarial Pruning Benchmark's keys where it is not its own name
    #: upper-cased without hyphens (``admm`` -> ``RADMM``); None: that one
    apb_name: ClassVar[str | None] = None

    @classmethod
    def taxonomy(cls, method_args: dict[str, Any]) -> PruningTaxonomy | None:
        """The method's place in the adversarial-pruning taxonomy when trained with ``method_args``
        (a run's ``method_args``); ``None`` for a method that does not prune (the default)."""
        return None

    def __init__(self, *, ctx: MethodContext) -> None:
        self.ctx = ctx
        self.stop_training = False

    def prepare(self, model: nn.Module) -> nn.Module:
        """Change the architecture before weights are loaded (install masks...). Default: none."""
        return model

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        params = [p for p in model.parameters() if p.requires_grad]
        return [ParamGroup("weights", params, lr=self.ctx.lr, weight_decay=self.ctx.weight_decay)]

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        return {"weights": loss}, {"loss": loss.detach(), "acc": accuracy(logits, y)}

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called before every epoch (0-based), after a resume too (pruning rounds start here)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimiser step."""

    def observe(self, logs: dict[str, Tensor]) -> None:
        """Called after every optimiser step with that step's logs (``loss``'s second value)."""

    def frozen_groups(self) -> frozenset[str]:
        """Parameter groups that must not move at the next step. The loop neither computes their
        gradient nor steps their optimiser, so a frozen Adam's moments and step count stay untouched
        (a zero loss would still count the steps and distort the first real ones). Default: none."""
        return frozenset()

    @property
    def uses_train_attack(self) -> bool:
        """Whether training crafts examples with the run's training attack (``ctx.adv_*``)."""
        return isinstance(getattr(self, "attack", None), PGD) or hasattr(self, "attack_for")

    def card_fields(self) -> dict[str, Any]:
        """Effective hyper-parameters worth a line on the run's card (``run.json["method_info"]``):
        by default the training attack, when the method uses one."""
        return {"train_attack": self.ctx.attack_info()} if self.uses_train_attack else {}

    def eval_attacks(self, model: nn.Module, attacks: list[tuple[str, Attack]]) -> list[tuple[str, Attack]]:
        """Evaluation attacks to run beside ``attacks`` (named ``(name, attack)`` pairs) on ``model``,
        this method's loaded model: attacks on the method's own objective. Default: none."""
        return []

    def eval_fields(self, model: nn.Module) -> dict[str, Any]:
        """Fields an evaluation card of ``model`` (this method's loaded model) records about the
        method, e.g. ``memory_factor`` or ``attack_objective``. Default: none."""
        return {}

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        """Called after every epoch; returns logs for the run history."""
        return {}

    def monitor(self, model: nn.Module) -> dict[str, float]:
        """Scalars about ``model`` worth a training curve, named ``metric/layer`` (the mask-learning
        methods: each layer's keep-rate and KL); written to TensorBoard every few steps, so keep
        it cheap. Default: none."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (resume)."""


def check_target(target: Any, *, sparsity: Any = None) -> float | None:
    """A method's ``target_sparsity`` argument (``None``: no target) as a float, or ``ValueError``
    naming it: a fraction in [0, 1), not given beside a per-layer ``sparsity``."""
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 <= target < 1:
        raise ValueError(f"target_sparsity must be a fraction in [0, 1), got {target!r}")
    if sparsity is not None:
        raise ValueError(f"give target_sparsity ({target!r}: an exact total) or sparsity ({sparsity!r}: each "
                         "layer's ratio), not both")
    return float(target)


def cut_rule(target: float | None) -> str:
    """The ``rule`` of a per-layer method's ``sparsity_cut``: ``"per layer"`` (each layer to its ratio,
    rounded) or, with a ``target_sparsity``, ``"per layer, exact total"`` (largest-remainder shares)."""
    return "per layer" if target is None else "per layer, exact total"


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Detached batch accuracy as a 0-d float tensor (no host sync)."""
    return (logits.detach().argmax(1) == y).float().mean()


def mixed_ce(logits: Tensor, logits_adv: Tensor, y: Tensor, *, adv_weight: float) -> Tensor:
    """[CE(x) + w·CE(x_adv)] / (1 + w), the ANP-VS table's AT loss (w = 2)."""
    return (F.cross_entropy(logits, y) + adv_weight * F.cross_entropy(logits_adv, y)) / (1.0 + adv_weight)
