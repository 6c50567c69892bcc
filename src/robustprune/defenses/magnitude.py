"""Guo et al. (NeurIPS 2018), "Sparse DNNs with improved adversarial robustness": progressive
magnitude pruning and an L1 penalty on hidden activations."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.defenses.base import (
    Method,
    MethodContext,
    PruningTaxonomy,
    Reference,
    accuracy,
    check_target,
    cut_rule,
    mixed_ce,
)
from robustprune.registry import METHODS
from robustprune.sparsity.magnitude import (
    apply_masks,
    cut_record,
    exact_masks,
    install_weight_masks,
    layer_sparsities,
    mask_of,
    masked_layers,
    prune_by_magnitude,
    set_masks,
    sparsity_mask,
    weight_of,
)


def robust_or_clean_loss(method: Method, model: nn.Module, x: Tensor, y: Tensor, *, adversarial: bool,
                         adv_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """CE(x), or the AT loss [CE(x) + w·CE(x_adv)]/(1 + w) with PGD from the run's context."""
    logits = model(x)
    if not adversarial:
        loss = F.cross_entropy(logits, y)
        return loss, {"loss": loss.detach(), "acc": accuracy(logits, y)}
    logits_adv = model(method.ctx.train_attack()(model, x, y))
    loss = mixed_ce(logits, logits_adv, y, adv_weight=adv_weight)
    return loss, {"loss": loss.detach(), "acc": accuracy(logits, y), "adv_acc": accuracy(logits_adv, y)}


@METHODS.register("magnitude")
class MagnitudePruning(Method):
    """Progressive magnitude pruning with retraining (Guo et al. 2018).

    At the start of every round of ``epochs_per_round`` epochs, remove the fraction ``rho``
    (default 1/3) of each prunable layer's *remaining* weights with the smallest |w|
    (``scope="layer"``, the paper's uniform ratio; ``"global"`` ranks all layers together), then
    retrain with the mask fixed; after t rounds a layer is 1 − (1 − ρ)^t sparse. ``max_rounds``
    stops pruning (later epochs only fine-tune). ``keep_first_last`` keeps the first and the last
    layer dense (the paper's CIFAR-10 setting). Loss: CE, or with ``adversarial=True`` the AT loss
    [CE(x) + w·CE(x_adv)]/(1 + w) (``adv_weight`` w = 2). Start it from a trained run
    (``--init-from``, standard or AT); the masks are buffers saved with the weights.

    ``target_sparsity`` S (with ``max_rounds`` R, default 1) replaces ``rho``: round t prunes every
    prunable layer to 1 − (1 − S)^(t/R), and round R prunes exactly round(S·N) of all N units, each
    layer its largest-remainder share (``sparsity.magnitude.layer_quotas``: within one unit of S·n,
    at least one unit kept), so later epochs fine-tune at S to the unit; ``structure="filter"`` (only
    with a target) prunes whole filters / output rows by L2 norm instead of weights. The card's
    ``sparsity_cut`` records the sparsity asked and reached after the last round.

    >>> method = MagnitudePruning(ctx=ctx, rho=1 / 3, epochs_per_round=2, adversarial=True)
    >>> method = MagnitudePruning(ctx=ctx, target_sparsity=0.75, structure="filter", max_rounds=3)
    """

    name: ClassVar[str] = "magnitude"
    #: 2: a ``target_sparsity`` run's last round prunes an exact total (largest-remainder shares),
    #: not each layer rounded on its own
    code_version: ClassVar[int] = 2
    needs_init: ClassVar[bool] = True
    reference: ClassVar[Reference | None] = Reference(
        "Sparse DNNs with Improved Adversarial Robustness",
        ("Yiwen Guo", "Chao Zhang", "Changshui Zhang", "Yurong Chen"), "NeurIPS 2018", 2018, "https://arxiv.org/abs/1810.09619")

    @classmethod
    def taxonomy(cls, method_args: dict[str, Any]) -> PruningTaxonomy | None:
        """After training, iterative, unstructured, per layer or global (``scope``), lowest magnitude;
        retrained with the AT loss when ``adversarial``, else natural training."""
        return PruningTaxonomy(pipeline="after",
                               structure="filters" if method_args.get("structure") == "filter" else "unstructured",
                               locality="global" if method_args.get("scope") == "global" else "local",
                               criterion="Lowest Weight Magnitude LWM", iterative=True,
                               finetuning="at" if method_args.get("adversarial") else "nt")

    def __init__(self, *, ctx: MethodContext, rho: float = 1 / 3, epochs_per_round: int = 1,
                 max_rounds: int | None = None, scope: str = "layer", keep_first_last: bool = False,
                 adversarial: bool = False, adv_weight: float = 2.0, target_sparsity: float | None = None,
                 structure: str = "irregular") -> None:
        super().__init__(ctx=ctx)
        if structure not in ("irregular", "filter"):
            raise ValueError(f"structure must be 'irregular' or 'filter', got {structure!r}")
        if check_target(target_sparsity) is not None:
            if scope != "layer":
                raise ValueError(f"target_sparsity prunes every layer to the target: scope must be 'layer', "
                                 f"got {scope!r}")
            max_rounds = 1 if max_rounds is None else max_rounds
            if max_rounds < 1:
                raise ValueError(f"target_sparsity needs max_rounds >= 1 (rounds to reach it), got {max_rounds}")
        elif structure == "filter":
            raise ValueError("structure 'filter' comes with a target_sparsity (the fraction of filters to prune)")
        self.target_sparsity, self.structure = target_sparsity, structure
        self.cut: dict[str, Any] | None = None
        if not 0.0 < rho < 1.0:
            raise ValueError(f"rho must be in (0, 1), got {rho}")
        if epochs_per_round < 1:
            raise ValueError(f"epochs_per_round must be >= 1, got {epochs_per_round}")
        if max_rounds is not None and max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {max_rounds}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        if adv_weight < 0:
            raise ValueError(f"adv_weight must be >= 0, got {adv_weight}")
        self.rho, self.epochs_per_round, self.max_rounds = rho, epochs_per_round, max_rounds
        self.scope, self.keep_first_last = scope, keep_first_last
        self.adversarial, self.adv_weight = adversarial, adv_weight
        self.rounds_done = 0

    def prepare(self, model: nn.Module) -> nn.Module:
        install_weight_masks(model, keep_first_last=self.keep_first_last)
        return model

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        loss, logs = robust_or_clean_loss(self, model, x, y, adversarial=self.adversarial, adv_weight=self.adv_weight)
        return {"weights": loss}, logs

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        due = epoch % self.epochs_per_round == 0 and epoch // self.epochs_per_round >= self.rounds_done
        if due and (self.max_rounds is None or self.rounds_done < self.max_rounds):
            if self.target_sparsity is None:
                prune_by_magnitude(model, fraction=self.rho, scope=self.scope)  # type: ignore[arg-type]
            else:
                self.prune_toward_target(model)
            self.rounds_done += 1

    @torch.no_grad()
    def prune_toward_target(self, model: nn.Module) -> None:
        """Round t = ``rounds_done`` + 1 of R: every masked layer to 1 − (1 − S)^(t/R) of its weights
        (or filters) by magnitude; after the last round, the card's ``sparsity_cut``."""
        assert self.target_sparsity is not None and self.max_rounds is not None
        t = self.rounds_done + 1
        level = 1.0 - (1.0 - self.target_sparsity) ** (t / self.max_rounds)
        alive = [weight_of(m) * mask_of(m) for _, m in masked_layers(model)]
        if t < self.max_rounds:
            masks = [sparsity_mask(w, sparsity=level, structure=self.structure) for w in alive]
        else:  # the last round: the exact total, each layer its share
            masks = exact_masks(alive, self.target_sparsity, structure=self.structure)
        masks = [mk * mask_of(m) for mk, (_, m) in zip(masks, masked_layers(model), strict=True)]
        set_masks(model, masks)
        if t == self.max_rounds:
            self.cut = cut_record(masks, asked=self.target_sparsity, structure=self.structure,
                                  rule=cut_rule(self.target_sparsity))

    def card_fields(self) -> dict[str, Any]:
        out = super().card_fields()
        if self.target_sparsity is not None:
            out.update({"target_sparsity": self.target_sparsity, "structure": self.structure,
                        "sparsity_cut": self.cut})
        return out

    def after_step(self, model: nn.Module, step: int) -> None:
        apply_masks(model)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        sp = layer_sparsities(model)
        return {"prune_rounds": self.rounds_done, "layer_sparsity": sp}

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_done": self.rounds_done, "cut": self.cut}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds_done = int(state.get("rounds_done", 0))
        self.cut = state.get("cut")


def zero_fraction(t: Tensor) -> Tensor:
    """Detached fraction of exactly-zero entries."""
    return (t.detach() == 0).float().mean()


@METHODS.register("l1-activation")
class L1Activation(Method):
    """Activation sparsity (Guo et al. 2018): CE + λ·Σ_l mean|h_l| over the model's latent maps
    (``model(x, features=True)``), λ = ``lam`` (default 1e-3); ``adversarial=True`` uses the AT
    loss instead of CE. Logs ``act_zero``, the fraction of exactly-zero activations feeding the
    last layer (the last latent map), and ``act_l1``; ``metrics.unstructured.activation_zero_fraction``
    measures the same on test data (the sparsity sweep records it per round).

    >>> method = L1Activation(ctx=ctx, lam=1e-3)
    """

    name: ClassVar[str] = "l1-activation"

    def __init__(self, *, ctx: MethodContext, lam: float = 1e-3, adversarial: bool = False,
                 adv_weight: float = 2.0) -> None:
        super().__init__(ctx=ctx)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.lam, self.adversarial, self.adv_weight = lam, adversarial, adv_weight
        self.attack = ctx.train_attack() if adversarial else None

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        logits, feats = model(x, features=True)
        if not feats:
            raise ValueError(f"model {type(model).__name__} has no hidden activations (latent_count = 0)")
        l1 = torch.stack([f.abs().mean() for f in feats]).sum()
        ce = F.cross_entropy(logits, y)
        logs = {"acc": accuracy(logits, y)}
        if self.attack is not None:
            logits_adv = model(self.attack(model, x, y))
            ce = mixed_ce(logits, logits_adv, y, adv_weight=self.adv_weight)
            logs["adv_acc"] = accuracy(logits_adv, y)
        loss = ce + self.lam * l1
        logs |= {"loss": loss.detach(), "act_l1": l1.detach(), "act_zero": zero_fraction(feats[-1])}
        return {"weights": loss}, logs
