"""Standard (non-adversarial) training, PGD adversarial training and fast FGSM training."""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import PGD
from robustprune.defenses.base import Method, MethodContext, Reference, accuracy, mixed_ce
from robustprune.models import model_mode
from robustprune.registry import METHODS


@METHODS.register("standard")
class Standard(Method):
    """Cross-entropy (+ coupled L2 weight decay through the optimiser). the ANP-VS table's ``standard`` row."""

    name: ClassVar[str] = "standard"
    training: ClassVar[str | None] = "nt"


@METHODS.register("at")
class AdversarialTraining(Method):
    """PGD adversarial training (Madry et al. 2018).

    Default loss [CE(x) + 2·CE(x_adv)] / 3 as in the ANP-VS table; ``pure=True`` trains on
    CE(x_adv) only. The attack is PGD with random start against the eval-mode model, with the
    run's ``adv_eps``/``adv_steps``/``adv_step_size``.

    >>> method = AdversarialTraining(ctx=ctx, adv_weight=2.0)
    """

    name: ClassVar[str] = "at"
    training: ClassVar[str | None] = "at"
    reference: ClassVar[Reference | None] = Reference(
        "Towards Deep Learning Models Resistant to Adversarial Attacks",
        ("Aleksander Madry", "Aleksandar Makelov", "Ludwig Schmidt", "Dimitris Tsipras", "Adrian Vladu"),
        "ICLR 2018", 2018, "https://arxiv.org/abs/1706.06083")

    def __init__(self, *, ctx: MethodContext, adv_weight: float = 2.0, pure: bool = False) -> None:
        super().__init__(ctx=ctx)
        if adv_weight < 0:
            raise ValueError(f"adv_weight must be >= 0, got {adv_weight}")
        self.adv_weight = adv_weight
        self.pure = pure
        self.attack = ctx.train_attack()

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        x_adv = self.attack(model, x, y)
        logits_adv = model(x_adv)
        if self.pure:
            loss = F.cross_entropy(logits_adv, y)
            logs = {"loss": loss.detach(), "adv_acc": accuracy(logits_adv, y)}
        else:
            logits = model(x)
            loss = mixed_ce(logits, logits_adv, y, adv_weight=self.adv_weight)
            logs = {"loss": loss.detach(), "acc": accuracy(logits, y), "adv_acc": accuracy(logits_adv, y)}
        return {"weights": loss}, logs


@METHODS.register("fast-at")
class FastAT(Method):
    """FGSM adversarial training with random start (Wong, Rice & Kolter 2020).

    δ₀ ~ U(−ε, ε), one signed step of α = 1.25·ε, projected to the ε-ball; loss CE(x_adv).
    Catastrophic-overfitting check at each epoch end: PGD-``check_steps`` accuracy on a fixed
    training batch; a drop of more than ``check_drop`` (absolute) against the previous epoch is
    logged, and with ``early_stop=True`` training stops and the previous epoch's weights return.
    """

    name: ClassVar[str] = "fast-at"
    reference: ClassVar[Reference | None] = Reference(
        "Fast is better than free: Revisiting adversarial training", ("Eric Wong", "Leslie Rice", "J. Zico Kolter"),
        "ICLR 2020", 2020, "https://arxiv.org/abs/2001.03994")

    def __init__(
        self,
        *,
        ctx: MethodContext,
        alpha_factor: float = 1.25,
        early_stop: bool = True,
        check_steps: int = 5,
        check_drop: float = 0.2,
    ) -> None:
        super().__init__(ctx=ctx)
        if alpha_factor <= 0:
            raise ValueError(f"alpha_factor must be > 0, got {alpha_factor}")
        self.attack = PGD(eps=ctx.adv_eps, steps=1, step_size=alpha_factor * ctx.adv_eps, random_start=True)
        self.check_attack = PGD(
            eps=ctx.adv_eps, steps=check_steps, step_size=max(ctx.adv_eps / 4, 1e-8), random_start=True
        )
        self.early_stop = early_stop
        self.check_drop = check_drop
        self.check_batch: tuple[Tensor, Tensor] | None = None
        self.prev_check: float | None = None
        self.prev_weights: dict[str, Tensor] | None = None

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.check_batch is None:
            self.check_batch = (x.detach().clone(), y.detach().clone())
        logits_adv = model(self.attack(model, x, y))
        loss = F.cross_entropy(logits_adv, y)
        return {"weights": loss}, {"loss": loss.detach(), "adv_acc": accuracy(logits_adv, y)}

    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[str, Any]:
        if self.check_batch is None:
            return {}
        x, y = self.check_batch
        with model_mode(model):
            x_adv = self.check_attack(model, x, y)
            with torch.no_grad():
                acc = (model(x_adv).argmax(1) == y).float().mean().item()
        overfit = self.prev_check is not None and self.prev_check - acc > self.check_drop
        logs: dict[str, Any] = {"check_pgd_acc": acc, "catastrophic_overfitting": overfit}
        if overfit:
            warnings.warn(
                f"fast-at: catastrophic overfitting at epoch {epoch}: PGD accuracy on the check batch fell "
                f"from {self.prev_check:.3f} to {acc:.3f}",
                stacklevel=2,
            )
            if self.early_stop and self.prev_weights is not None:
                model.load_state_dict(self.prev_weights)
                self.stop_training = True
                logs["restored_epoch"] = epoch - 1
                return logs
        self.prev_check = acc
        self.prev_weights = copy.deepcopy(model.state_dict())
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"prev_check": self.prev_check}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prev_check = state.get("prev_check")
