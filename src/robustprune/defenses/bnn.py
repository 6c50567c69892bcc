"""Adversarially trained Bayesian network (AT-BNN; the ANP-VS table's "AT BNN", after Adv-BNN,
Liu et al. ICLR 2019).

Every conv/linear weight becomes mean-field Gaussian, ``w = μ + softplus(ρ)·ε``, ``ε ~ N(0, I)``,
installed by ``prepare()`` as a ``torch.nn.utils.parametrize`` parametrisation (so ``load_run``
rebuilds it; μ is the layer's ``parametrizations.weight.original``, ρ its ``...weight.0.rho``).
Biases and BatchNorm stay deterministic (the reference's VGG also has a Bayesian BN; not here).

A training-mode forward samples fresh weights; eval mode uses the means μ (deterministic, the
reference's test forward) unless sampling is switched on (:func:`set_sampling`; the test-time
defense ``bnn-sample``: ``robustprune eval RUN --defense bnn-sample``) — then the model is random
at test time and must be attacked with EOT.

Loss ``[CE(x) + 2·CE(x_adv)] / 3 + KL(q ‖ p) / (100·N)`` with the Gaussian prior ``N(0, σ_p²)``
and no weight decay (as the reference). The training attack is the run's PGD on the eval-mode
(mean-weight) model.
Defaults by architecture (the model class's ``bnn_prior``): LeNet ρ₀ = −3, σ_p = 1.0; VGG/ResNet
ρ₀ = −5, σ_p = 0.1. Memory: two numbers (μ, ρ) per weight, so the card reports ``memory_factor`` 2.

>>> method = ATBNN(ctx=ctx)                 # ρ₀ and σ_p from the architecture
>>> model = method.prepare(build_model("lenet5-caffe"))        # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from robustprune.defenses.base import Method, MethodContext, ParamGroup, accuracy, mixed_ce
from robustprune.defenses.testtime import TestTimeDefense
from robustprune.models import model_quirk
from robustprune.registry import METHODS, TEST_TIME

#: (ρ₀, σ_p) of a model whose class declares no ``bnn_prior`` quirk (the LeNet values)
DEFAULT_PRIOR = (-3.0, 1.0)


class GaussianWeight(nn.Module):
    """Parametrisation ``μ -> μ + softplus(ρ)·ε`` (training, or ``sample=True``), else ``μ``.

    >>> layer = nn.Linear(4, 3)
    >>> parametrize.register_parametrization(layer, "weight", GaussianWeight(layer.weight, rho_init=-3.0))
    """

    def __init__(self, mu: Tensor, *, rho_init: float) -> None:
        super().__init__()
        self.rho = nn.Parameter(torch.full_like(mu.detach(), float(rho_init)))
        self.sample = False

    def sigma(self) -> Tensor:
        return F.softplus(self.rho)

    def forward(self, mu: Tensor) -> Tensor:
        if self.training or self.sample:
            return mu + self.sigma() * torch.randn_like(mu)
        return mu


def gaussian_kl(mu: Tensor, sigma: Tensor, prior_sigma: float) -> Tensor:
    """``Σ KL(N(μ, σ²) ‖ N(0, σ_p²)) = Σ [log(σ_p/σ) + (σ² + μ²)/(2σ_p²) − ½]`` (a 0-d tensor)."""
    if not prior_sigma > 0:
        raise ValueError(f"prior_sigma must be > 0, got {prior_sigma!r}")
    return (math.log(prior_sigma) - torch.log(sigma) + (sigma**2 + mu**2) / (2 * prior_sigma**2) - 0.5).sum()


def bayes_layers(model: nn.Module) -> list[tuple[nn.Module, GaussianWeight]]:
    """Every (layer, parametrisation) pair of a model prepared by :func:`install_gaussian`."""
    out = []
    for m in model.modules():
        plist = getattr(getattr(m, "parametrizations", None), "weight", None)
        if plist is not None:
            out += [(m, p) for p in plist if isinstance(p, GaussianWeight)]
    return out


def install_gaussian(model: nn.Module, *, rho_init: float) -> nn.Module:
    """Make every ``nn.Conv2d`` / ``nn.Linear`` weight mean-field Gaussian (μ = current weight)."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    if not layers:
        raise ValueError(f"model {type(model).__name__} has no conv or linear layer to make Bayesian")
    for m in layers:
        parametrize.register_parametrization(m, "weight", GaussianWeight(m.weight, rho_init=rho_init))
    return model


def set_sampling(model: nn.Module, sample: bool) -> int:
    """Keep sampling weights in eval mode (``True``) or use the means (``False``); returns how many
    layers were switched. Raises ``ValueError`` for a model without Gaussian weights."""
    pairs = bayes_layers(model)
    if not pairs:
        raise ValueError(f"model {type(model).__name__} has no Gaussian weights (not an at-bnn run)")
    for _, p in pairs:
        p.sample = bool(sample)
    return len(pairs)


def _mean(layer: nn.Module) -> Tensor:
    """μ of a Gaussian weight: ``layer.parametrizations.weight.original``."""
    plist = cast(nn.Module, layer.parametrizations).weight
    return cast(parametrize.ParametrizationList, plist).original


def model_kl(model: nn.Module, prior_sigma: float) -> Tensor:
    """KL of all Gaussian weights of ``model`` against ``N(0, σ_p²)``."""
    terms = [gaussian_kl(_mean(m), p.sigma(), prior_sigma) for m, p in bayes_layers(model)]
    return torch.stack(terms).sum()


@METHODS.register("at-bnn")
class ATBNN(Method):
    """AT-BNN: ``[CE + 2·CE_adv]/3 + KL/(kl_scale·N)`` on mean-field Gaussian weights.

    Args: ``rho_init``/``prior_sigma`` (default by architecture, see the module docstring),
    ``kl_scale`` 100 (the reference's 1/(N·100)), ``adv_weight`` 2, ``eval_sample`` False (keep
    sampling weights in eval mode; the run is then stochastic), ``kl_n`` "dataset" (N is the whole
    training split, as for the BBD methods; "train": the examples this run trains on). The
    effective KL weight is on the run's card.

    >>> method = ATBNN(ctx=ctx, rho_init=-3.0, prior_sigma=1.0)
    """

    name: ClassVar[str] = "at-bnn"
    memory_factor: ClassVar[float] = 2.0

    def __init__(self, *, ctx: MethodContext, rho_init: float | None = None, prior_sigma: float | None = None,
                 kl_scale: float = 100.0, adv_weight: float = 2.0, eval_sample: bool = False,
                 kl_n: str = "dataset") -> None:
        super().__init__(ctx=ctx)
        self.kl_n, self.kl_size = kl_n, ctx.prior_size(kl_n)
        if prior_sigma is not None and not prior_sigma > 0:
            raise ValueError(f"prior_sigma must be > 0, got {prior_sigma!r}")
        if not kl_scale > 0:
            raise ValueError(f"kl_scale must be > 0, got {kl_scale!r}")
        if adv_weight < 0:
            raise ValueError(f"adv_weight must be >= 0, got {adv_weight}")
        self.rho_init, self.prior_sigma = rho_init, prior_sigma
        self.kl_scale, self.adv_weight, self.eval_sample = kl_scale, adv_weight, eval_sample
        self.stochastic = eval_sample  # this run is random at test time
        self.attack = ctx.train_attack()

    def param_groups(self, model: nn.Module) -> list[ParamGroup]:
        """One group without weight decay: the KL is the regulariser (the reference's AT-BNN loss
        has no L2 term; decaying ρ would also inflate σ)."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [ParamGroup("weights", params, lr=self.ctx.lr, weight_decay=0.0)]

    def prepare(self, model: nn.Module) -> nn.Module:
        rho0, sigma_p = model_quirk(model, "bnn_prior") or DEFAULT_PRIOR
        self.rho_init = rho0 if self.rho_init is None else self.rho_init
        self.prior_sigma = sigma_p if self.prior_sigma is None else self.prior_sigma
        install_gaussian(model, rho_init=self.rho_init)
        set_sampling(model, self.eval_sample)
        return model

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.prior_sigma is None:
            raise RuntimeError("at-bnn: prepare(model) must run before loss()")
        x_adv = self.attack(model, x, y)
        logits, logits_adv = model(x), model(x_adv)
        kl = model_kl(model, self.prior_sigma) / (self.kl_scale * self.kl_size)
        loss = mixed_ce(logits, logits_adv, y, adv_weight=self.adv_weight) + kl
        logs = {"loss": loss.detach(), "acc": accuracy(logits, y), "adv_acc": accuracy(logits_adv, y),
                "kl": kl.detach()}
        return {"weights": loss}, logs

    def card_fields(self) -> dict[str, Any]:
        return {**super().card_fields(), "kl_n": self.kl_n, "kl_size": self.kl_size,
                "train_size": self.ctx.train_size, "kl_weight": 1.0 / (self.kl_scale * self.kl_size)}

    def eval_fields(self, model: nn.Module) -> dict[str, Any]:
        return {"memory_factor": self.memory_factor}


@TEST_TIME.register("bnn-sample")
class BNNSample(TestTimeDefense):
    """Keep an at-bnn run sampling its weights in eval mode (random at test time; attack with EOT).

    >>> BNNSample().row_label("at-bnn")
    'at-bnn (sampled weights)'
    """

    name: ClassVar[str] = "bnn-sample"

    def check(self, method: Method) -> None:
        if not isinstance(method, ATBNN):
            raise ValueError(f"bnn-sample samples the weights of an at-bnn run; method is {method.name!r}")

    def wrap(self, model: nn.Module, method: Method) -> nn.Module:
        self.check(method)
        set_sampling(model, True)
        return model

    def label(self) -> str:
        return "sampled weights"

    def row_label(self, method: str) -> str:
        return f"{method} (sampled weights)"

    def tag(self) -> str:
        return "-bnnsample"

    def card_fields(self) -> dict[str, Any]:
        return {"bnn_sample": True, **super().card_fields()}
