"""TRADES (Zhang et al., ICML 2019): CE(f(x), y) + β·KL(p(x) ‖ p(x̃))."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import PGD
from robustprune.defenses.base import Method, MethodContext, Reference, accuracy
from robustprune.models import model_mode
from robustprune.registry import METHODS


@METHODS.register("trades")
class TRADES(Method):
    """TRADES: natural CE plus β times the KL between clean and adversarial predictions.

    The inner maximisation (eval-mode model) starts from x + 0.001·N(0, I) and takes the run's
    ``adv_steps`` signed steps of ``adv_step_size`` on the summed KL(p(x) ‖ p(x̃)), projected onto
    the ε-ball and [0, 1]. The outer loss keeps the gradient through both p(x) and p(x̃), as the
    reference does. Default β = 6 (the paper's 1/λ).

    >>> method = TRADES(ctx=ctx, beta=6.0)
    """

    name: ClassVar[str] = "trades"
    training: ClassVar[str | None] = "trades"
    reference: ClassVar[Reference | None] = Reference(
        "Theoretically Principled Trade-off between Robustness and Accuracy",
        ("Hongyang Zhang", "Yaodong Yu", "Jiantao Jiao", "Eric P. Xing", "Laurent El Ghaoui", "Michael I. Jordan"),
        "ICML 2019", 2019, "https://arxiv.org/abs/1901.08573")

    def __init__(self, *, ctx: MethodContext, beta: float = 6.0, start_std: float = 0.001) -> None:
        super().__init__(ctx=ctx)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.start_std = min(start_std, ctx.adv_eps)

    def attack_for(self, p_clean: Tensor) -> PGD:
        def kl_to_clean(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
            return F.kl_div(F.log_softmax(model(x_adv), 1), p_clean, reduction="none").sum(1)

        return PGD(eps=self.ctx.adv_eps, steps=self.ctx.adv_steps, step_size=self.ctx.adv_step_size,
                   random_start="normal", start_radius=self.start_std, loss=kl_to_clean)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        with model_mode(model), torch.no_grad():
            p_clean = F.softmax(model(x), 1)
        x_adv = self.attack_for(p_clean)(model, x, y)
        logits = model(x)
        logits_adv = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        loss = F.cross_entropy(logits, y) + self.beta * kl
        logs = {"loss": loss.detach(), "acc": accuracy(logits, y), "adv_acc": accuracy(logits_adv, y),
                "kl": kl.detach()}
        return {"weights": loss}, logs
