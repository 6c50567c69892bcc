"""Guo et al. (NeurIPS 2018), "Sparse DNNs with improved adversarial robustness": progressive
magnitude pruning and an L1 penalty on hidden activations."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.defenses.base import Method, MethodContext, PruningTaxonomy, Reference, accuracy, mixed_ce
from robustprune.registry import METHODS
from robustprune.sparsity.magnitude import (
    apply_masks,
    install_weight_masks,
    layer_sparsities,
    prune_by_magnitude,
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

    >>> method = MagnitudePruning(ctx=ctx, rho=1 / 3, epochs_per_round=2, adversarial=True)
    """

    name: ClassVar[str] = "magnitude"
    needs_init: ClassVar[bool] = True
    reference: ClassVar[Reference | None] = Reference(
        "Sparse DNNs with Improved Adversarial Robustness",
        ("Yiwen Guo", "Chao Zhang", "Changshui Zhang", "Yurong Chen"), "NeurIPS 2018", 2018, "https://arxiv.org/abs/1810.09619")

    @classmethod
    def taxonomy(cls, method_args: dict[str, Any]) -> PruningTaxonomy | None:
        """After training, iterative, unstructured, per layer or global (``scope``), lowest magnitude;
        retrained with the AT loss when ``adversarial``, else natural training."""
        return PruningTaxonomy(pipeline="after", structure="unstructured",
                               locality="global" if method_args.get("scope") == "global" else "local",
                               criterion="Lowest Weight Magnitude LWM", iterative=True,
                               finetuning="at" if method_args.get("adversarial") else "nt")

    def __init__(self, *, ctx: MethodContext, rho: float = 1 / 3, epochs_per_round: int = 1,
                 max_rounds: int | None = None, scope: str = "layer", keep_first_last: bool = False,
                 adversarial: bool = False, adv_weight: float = 2.0) -> None:
        super().__init__(ctx=ctx)
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
            prune_by_magnitude(model, fraction=self.rho, scope=self.scope)  # type: ignore[arg-type]
            self.rounds_done += 1

    def after_step(self, model: nn.Module, step: int) -> None:
        apply_masks(model)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        sp = layer_sparsities(model)
        return {"prune_rounds": self.rounds_done, "layer_sparsity": sp}

    def state_dict(self) -> dict[str, Any]:
        return {"rounds_done": self.rounds_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds_done = int(state.get("rounds_done", 0))


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
