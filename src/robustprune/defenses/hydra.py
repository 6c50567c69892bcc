"""HYDRA: pruning scores learnt under the robust loss (Sehwag et al., NeurIPS 2020)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.defenses.base import (
    Method,
    MethodContext,
    ParamGroup,
    PruningTaxonomy,
    Reference,
    check_target,
    cut_rule,
)
from robustprune.defenses.magnitude import robust_or_clean_loss
from robustprune.registry import METHODS
from robustprune.sparsity.magnitude import (
    MASK_BUFFER,
    apply_masks,
    cut_record,
    layer_quotas,
    mask_keeping,
    prunable_layers,
    sparsity_mask,
    units_of,
)

_Pair = tuple[int, int]  # a Conv2d's kernel_size, stride, padding and dilation


class Scored:
    """Mixin of a conv/linear layer whose forward uses W ⊙ m: in the score phase m = top-k(|scores|)
    with a straight-through gradient to ``scores`` and W (and bias) frozen (detached); after
    :meth:`fix_mask`, m is the ``weight_mask`` buffer and W trains (its pruned entries are 0).
    ``structure="filter"``: one score per filter (output row), m keeps whole filters."""

    weight: Tensor
    bias: Tensor | None

    def init_scored(self, sparsity: float, structure: str = "irregular", keep: int | None = None) -> None:
        """``keep``: the number of units (weights or filters) the layer keeps, in place of
        round((1 − ``sparsity``)·n) (a ``target_sparsity`` run's share of an exact total)."""
        self.sparsity, self.score_phase, self.structure, self.keep = sparsity, True, structure, keep
        shape = self.weight.shape if structure == "irregular" else self.weight.shape[:1]
        self.scores = nn.Parameter(torch.zeros(shape, dtype=self.weight.dtype, device=self.weight.device))
        self.register_buffer(MASK_BUFFER, torch.ones_like(self.weight))  # type: ignore[attr-defined]

    def _rows(self, t: Tensor) -> Tensor:
        """A per-filter tensor [out] broadcast over the weight's other dims."""
        return t.view(-1, *([1] * (self.weight.dim() - 1)))

    @torch.no_grad()
    def init_scores(self) -> None:
        """s = sqrt(6/fan_in)·W/max|W| (HYDRA's scaled init: the first mask is magnitude pruning);
        per filter, the filters' L2 norms in place of |W|."""
        w = self.weight if self.structure == "irregular" else self.weight.flatten(1).norm(dim=1)
        self.scores.copy_(math.sqrt(6.0 / self.weight[0].numel()) * w / w.abs().max().clamp(min=1e-12))

    def _mask(self) -> Tensor:
        scores = self.scores.detach()
        m = (sparsity_mask(scores, sparsity=self.sparsity) if self.keep is None
             else mask_keeping(scores, keep=self.keep))
        return m if self.structure == "irregular" else self._rows(m).expand_as(self.weight)

    def effective(self) -> tuple[Tensor, Tensor | None]:
        if not self.score_phase:
            return self.weight * getattr(self, MASK_BUFFER), self.bias
        through = self.scores - self.scores.detach()  # value m, gradient straight through to the scores
        m = self._mask() + (through if self.structure == "irregular" else self._rows(through))
        bias = None if self.bias is None else self.bias.detach()
        return self.weight.detach() * m, bias

    @torch.no_grad()
    def fix_mask(self) -> None:
        """End of the score phase: the top-k mask becomes the buffer; pruned weights are set to 0."""
        getattr(self, MASK_BUFFER).copy_(self._mask())
        self.weight.mul_(getattr(self, MASK_BUFFER))
        self.score_phase = False


class ScoredLinear(Scored, nn.Linear):  # type: ignore[misc]  # torch types Linear.bias Parameter, not Parameter | None
    def forward(self, x: Tensor) -> Tensor:
        w, b = self.effective()
        return F.linear(x, w, b)


class ScoredConv2d(Scored, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        w, b = self.effective()
        return self._conv_forward(x, w, b)


def _scored_copy(m: nn.Module, sparsity: float, structure: str = "irregular", keep: int | None = None) -> nn.Module:
    if isinstance(m, nn.Linear):
        new: ScoredLinear | ScoredConv2d = ScoredLinear(m.in_features, m.out_features, bias=m.bias is not None)
    elif isinstance(m, nn.Conv2d):  # a Conv2d's sizes are pairs (torch types them tuple[int, ...])
        new = ScoredConv2d(m.in_channels, m.out_channels, cast(_Pair, m.kernel_size), stride=cast(_Pair, m.stride),
                           padding=cast("str | _Pair", m.padding), dilation=cast(_Pair, m.dilation), groups=m.groups,
                           bias=m.bias is not None, padding_mode=m.padding_mode)
    else:
        raise ValueError(f"HYDRA cannot score a {type(m).__name__} layer")
    new.weight, new.bias = m.weight, m.bias
    new._forward_hooks.update(m._forward_hooks)  # a GraphNet's mask site keeps its mask (models.graph)
    new.init_scored(sparsity, structure, keep)
    return new.to(m.weight.device)


def scored_layers(model: nn.Module) -> list[tuple[str, Scored]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Scored)]


@METHODS.register("hydra")
class Hydra(Method):
    """HYDRA: learn which weights to keep under the robust loss, then fine-tune them.

    ``prepare`` turns every conv/linear layer (first and last included, as in HYDRA; or not, with
    ``keep_first_last``) into a scored layer with a ``scores`` parameter and a ``weight_mask``
    buffer, so checkpoints and ``load_run`` rebuild it. Epochs < ``score_epochs``: scores
    (initialised at the first epoch as sqrt(6/fan_in)·W/max|W|) train with lr ``score_lr``
    (default: the run's lr) under the AT loss [CE(x) + w·CE(x_adv)]/(1 + w) (w = ``adv_weight``,
    2), forward with the top-k weights per layer (k = round((1 − ``sparsity``)·n), layer-wise),
    all other parameters frozen. From epoch ``score_epochs``: the mask is fixed, pruned weights
    set to 0, and the weights fine-tune under the same loss. HYDRA's paper used TRADES and
    separate cosine schedules per phase; here the run's one schedule spans both phases.
    ``structure="filter"`` (not in the paper): one score per filter / output row (initialised from
    the filters' L2 norms), and each layer keeps its round((1 − ``sparsity``)·rows) best filters.
    ``target_sparsity`` S (instead of ``sparsity``): exactly round(S·N) of all N scored units
    (weights, or filters) are pruned, each layer its largest-remainder share of that total
    (``sparsity.magnitude.layer_quotas``: within one unit of S·n, at least one unit kept).
    The card's ``sparsity_cut`` records the sparsity asked and reached once the mask is fixed.

    >>> method = Hydra(ctx=ctx, sparsity=0.9, score_epochs=20)
    >>> method = Hydra(ctx=ctx, target_sparsity=0.75, structure="filter", score_epochs=5)
    """

    name: ClassVar[str] = "hydra"
    needs_init: ClassVar[bool] = True
    reference: ClassVar[Reference | None] = Reference(
        "HYDRA: Pruning Adversarially Robust Neural Networks",
        ("Vikash Sehwag", "Shiqi Wang", "Prateek Mittal", "Suman Jana"), "NeurIPS 2020", 2020,
        "https://arxiv.org/abs/2002.10509")

    @classmethod
    def taxonomy(cls, method_args: dict[str, Any]) -> PruningTaxonomy | None:
        """After training (from ``--init-from``), one shot, unstructured (or filters, ``structure``),
        per layer, learned importance scores; score search and fine-tuning under the AT loss."""
        structure = "filters" if method_args.get("structure") == "filter" else "unstructured"
        return PruningTaxonomy(pipeline="after", structure=structure, locality="local",
                               criterion="Least Importance Score (LIS)", finetuning="at", iterative=False)

    def __init__(self, *, ctx: MethodContext, sparsity: float | None = None, score_epochs: int = 1,
                 score_lr: float | None = None, keep_first_last: bool = False, adv_weight: float = 2.0,
                 structure: str = "irregular", target_sparsity: float | None = None) -> None:
        super().__init__(ctx=ctx)
        if structure not in ("irregular", "filter"):
            raise ValueError(f"structure must be 'irregular' or 'filter', got {structure!r}")
        self.structure = structure
        self.target_sparsity = check_target(target_sparsity, sparsity=sparsity)
        sparsity = (0.9 if sparsity is None else sparsity) if target_sparsity is None else target_sparsity
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        if score_epochs < 0:
            raise ValueError(f"score_epochs must be >= 0, got {score_epochs}")
        if score_lr is not None and score_lr <= 0:
            raise ValueError(f"score_lr must be > 0, got {score_lr}")
        self.sparsity, self.score_epochs, self.keep_first_last = sparsity, score_epochs, keep_first_last
        self.score_lr = ctx.lr if score_lr is None else score_lr
        self.adv_weight = adv_weight
        self.scores_ready = False
        #: what fixing the mask pruned (asked vs reached), once it has happened
        self.cut: dict[str, Any] | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        layers = prunable_layers(model, keep_first_last=self.keep_first_last)
        keeps: list[int | None] = [None] * len(layers)
        if self.target_sparsity is not None:
            sizes = [units_of(m.weight, self.structure) for _, m in layers]
            keeps = [n - q for n, q in zip(sizes, layer_quotas(sizes, self.target_sparsity), strict=True)]
        for (name, m), keep in zip(layers, keeps, strict=True):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, _scored_copy(m, self.sparsity, self.structure, keep))
        return model

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        scores = [m.scores for _, m in scored_layers(model)]
        ids = {id(p) for p in scores}
        weights = [p for p in model.parameters() if id(p) not in ids]
        return [ParamGroup("scores", scores, lr=self.score_lr, weight_decay=0.0),
                ParamGroup("weights", weights, lr=self.ctx.lr, weight_decay=self.ctx.weight_decay)]

    def in_score_phase(self, model: nn.Module) -> bool:
        return any(m.score_phase for _, m in scored_layers(model))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        loss, logs = robust_or_clean_loss(self, model, x, y, adversarial=True, adv_weight=self.adv_weight)
        # a loss with no path to a group's parameters leaves their .grad None: the optimiser skips them
        frozen = torch.zeros((), device=loss.device, requires_grad=True)
        if self.in_score_phase(model):
            return {"scores": loss, "weights": frozen}, logs
        return {"scores": frozen, "weights": loss}, logs

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        layers = scored_layers(model)
        if not self.scores_ready:
            for _, m in layers:
                m.init_scores()
            self.scores_ready = True
        if epoch >= self.score_epochs and any(m.score_phase for _, m in layers):
            for _, m in layers:
                if m.score_phase:
                    m.fix_mask()
            self.cut = cut_record([getattr(m, MASK_BUFFER) for _, m in layers], asked=self.sparsity,
                                  structure=self.structure, rule=cut_rule(self.target_sparsity))

    def after_step(self, model: nn.Module, step: int) -> None:
        apply_masks(model)  # a no-op in the score phase (all-ones buffer); keeps pruned weights at 0 after it

    def card_fields(self) -> dict[str, Any]:
        target = {} if self.target_sparsity is None else {"target_sparsity": self.target_sparsity}
        return {**super().card_fields(), **target, "structure": self.structure, "sparsity_cut": self.cut}

    def state_dict(self) -> dict[str, Any]:
        return {"scores_ready": self.scores_ready, "cut": self.cut}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores_ready = bool(state.get("scores_ready", False))
        self.cut = state.get("cut")
