"""Channel-wise Activation Suppressing (CAS; Bai et al., ICLR 2021): modules and methods.

A CAS module sits after a late block: ``g = GAP(f)``, auxiliary logits ``a = M g + b``, and the
channels are reweighted ``f̃ = f · M[c*, :]`` with ``c* = y`` (the true label) in training and
``c* = argmax a`` in eval mode (raw weight row, no squashing). Training loss
``CE(z, y) + β · mean_s CE(a_s, y)`` (β = 2); the training attack maximises the same total loss
against the eval-mode model (so gating uses the predicted labels, as the reference's
``reg_attack.py`` does) — *including* the main CE (the reference's pre-057fc63 pitfall).

The true label reaches the modules through :func:`cas_labels` (a context manager that sets
``module.labels`` on every CAS module and always clears it); a training-mode forward without
labels gates by the prediction. Modules are attached by :func:`install_cas` with forward hooks on
the placement's target modules (state-dict keys of the base model unchanged; the modules live in
``model.cas``), which ``Method.prepare`` calls, so ``load_run`` rebuilds them.

>>> model = install_cas(build_model("lenet5-caffe"), num_classes=10)
>>> with cas_labels(model, y):                                    # doctest: +SKIP
...     logits = model(x)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.attacks import PGD, Attack
from robustprune.defenses.base import Method, MethodContext, accuracy
from robustprune.models import model_mode, model_quirk
from robustprune.registry import METHODS


class CASModule(nn.Module):
    """One CAS block: GAP → auxiliary linear classifier → channel reweighting by a weight row.

    Args: channels C, num_classes K, ``rectify`` (apply ReLU to the input first, for a target whose
    output is pre-activation). ``labels`` (set by :func:`cas_labels`) selects the row in training
    mode; ``last_logits`` holds the auxiliary logits of the latest forward.

    >>> cas = CASModule(512, 10)
    """

    def __init__(self, channels: int, num_classes: int, *, rectify: bool = False) -> None:
        super().__init__()
        if channels < 1 or num_classes < 2:
            raise ValueError(f"CAS needs channels >= 1 and num_classes >= 2, got {channels}, {num_classes}")
        self.fc = nn.Linear(channels, num_classes)
        self.rectify = rectify
        self.labels: Tensor | None = None
        self.last_logits: Tensor | None = None
        self.last_rows: Tensor | None = None

    def forward(self, f: Tensor) -> Tensor:
        if self.rectify:
            f = F.relu(f)
        g = f.mean(dim=(2, 3)) if f.dim() == 4 else f
        logits = self.fc(g)
        if self.training and self.labels is not None:
            rows = self.labels
        else:
            rows = logits.detach().argmax(1)
        self.last_logits, self.last_rows = logits, rows
        w = self.fc.weight[rows]
        return f * w.view(*w.shape, *([1] * (f.dim() - 2)))

    def hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        """Forward hook: reweight the target's output (the first element of a tuple output)."""
        if isinstance(output, tuple):
            return (self(output[0]), *output[1:])
        return self(output)


def cas_modules(model: nn.Module) -> list[CASModule]:
    """The installed CAS modules, in placement order."""
    return [m for m in model.modules() if isinstance(m, CASModule)]


def placements(model: nn.Module) -> tuple[tuple[str, int, bool], ...]:
    """Where ``model``'s class puts CAS modules (its ``cas_placements`` quirk: target module,
    channels, apply ReLU first); ``ValueError`` for a model that declares none."""
    found = model_quirk(model, "cas_placements")
    if not found:
        raise ValueError(f"no CAS placement for model class {type(model).__name__!r} (its class declares no "
                         "cas_placements)")
    return tuple(found)


def install_cas(model: nn.Module, *, num_classes: int) -> nn.Module:
    """Attach CAS modules where the model's class places them (LeNet5-Caffe: after fc1; VGG-16:
    the last stage's three convs; ResNet-18: both blocks of the last stage); raises ``ValueError``
    for a model without a placement."""
    targets = placements(model)
    if cas_modules(model):
        raise ValueError("model already has CAS modules installed")
    named = dict(model.named_modules())
    ref = next(model.parameters())
    mods = nn.ModuleList()
    for target, channels, rectify in targets:
        cas = CASModule(channels, num_classes, rectify=rectify).to(device=ref.device)
        named[target].register_forward_hook(cas.hook)
        mods.append(cas)
    model.cas = mods
    return model


@contextmanager
def cas_labels(model: nn.Module, y: Tensor) -> Iterator[None]:
    """Give every CAS module the true labels ``y`` for the forwards inside the block."""
    mods = cas_modules(model)
    for m in mods:
        m.labels = y
    try:
        yield
    finally:
        for m in mods:
            m.labels = None


def aux_logits(model: nn.Module) -> list[Tensor]:
    """The auxiliary logits of the latest forward, one per CAS module."""
    out = [m.last_logits for m in cas_modules(model)]
    if any(a is None for a in out):
        raise RuntimeError("CAS modules have no auxiliary logits yet: run a forward first")
    return out  # type: ignore[return-value]


def cas_total(logits: Tensor, aux: list[Tensor], y: Tensor, *, beta: float) -> Tensor:
    """Per-example ``CE(z, y) + β · mean_s CE(a_s, y)`` [B]."""
    ce = F.cross_entropy(logits, y, reduction="none")
    if not aux:
        return ce
    return ce + beta * torch.stack([F.cross_entropy(a, y, reduction="none") for a in aux]).mean(0)


class CASLoss:
    """The attack objective ``(model, x, y) -> [B]``: CAS total loss of the model's own forward
    (eval mode: gating by the predicted labels). ``__name__`` goes into the attack's card entry.

    >>> PGD(eps=0.3, loss=CASLoss(beta=2.0))                       # doctest: +SKIP
    """

    def __init__(self, *, beta: float = 2.0) -> None:
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = beta
        self.__name__ = f"cas_total(beta={beta:g})"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        logits = model(x)
        return cas_total(logits, aux_logits(model), y, beta=self.beta)


# ---- training methods ---------------------------------------------------------------------------


def _cas_forward(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Training forward with the true labels gating the CAS modules: (logits, aux logits)."""
    with cas_labels(model, y):
        logits = model(x)
        return logits, aux_logits(model)


@METHODS.register("at+cas")
class ATCAS(Method):
    """PGD adversarial training with CAS modules (Bai et al. 2021).

    Loss ``[T(x) + w·T(x_adv)] / (1 + w)`` with ``T = CE + β·mean aux CE`` (w = 2 as the ANP-VS
    table's AT; ``pure=True`` trains on ``T(x_adv)`` only, the CAS paper's form), β = 2. The
    training attack is the run's PGD maximising the same total loss on the eval-mode model.

    >>> method = ATCAS(ctx=ctx, beta=2.0)
    """

    name: ClassVar[str] = "at+cas"

    def __init__(self, *, ctx: MethodContext, beta: float = 2.0, adv_weight: float = 2.0, pure: bool = False) -> None:
        super().__init__(ctx=ctx)
        if adv_weight < 0:
            raise ValueError(f"adv_weight must be >= 0, got {adv_weight}")
        self.objective = CASLoss(beta=beta)
        self.beta, self.adv_weight, self.pure = beta, adv_weight, pure
        self.attack = PGD(eps=ctx.adv_eps, steps=ctx.adv_steps, step_size=ctx.adv_step_size, random_start=True,
                          loss=self.objective)

    def prepare(self, model: nn.Module) -> nn.Module:
        return install_cas(model, num_classes=self.ctx.num_classes)

    def eval_attacks(self, model: nn.Module, attacks: list[tuple[str, Attack]]) -> list[tuple[str, Attack]]:
        """A ``[cas-total]`` twin of every PGD-family attack, with this run's ``beta``."""
        return cas_objective_attacks(model, attacks, beta=self.beta)

    def eval_fields(self, model: nn.Module) -> dict[str, Any]:
        return cas_eval_fields(model)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        x_adv = self.attack(model, x, y)
        logits_adv, aux_adv = _cas_forward(model, x_adv, y)
        adv = cas_total(logits_adv, aux_adv, y, beta=self.beta).mean()
        logs = {"adv_acc": accuracy(logits_adv, y), "aux_adv_acc": accuracy(aux_adv[-1], y)}
        if self.pure:
            loss = adv
        else:
            logits, aux = _cas_forward(model, x, y)
            loss = (cas_total(logits, aux, y, beta=self.beta).mean() + self.adv_weight * adv) / (1 + self.adv_weight)
            logs["acc"] = accuracy(logits, y)
        return {"weights": loss}, {"loss": loss.detach(), **logs}


def _kl(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """Per-example KL(p_clean ‖ softmax(logits_adv)) [B]."""
    return F.kl_div(F.log_softmax(logits_adv, 1), p_clean, reduction="none").sum(1)


@METHODS.register("trades+cas")
class TRADESCAS(Method):
    """TRADES with CAS modules (the CAS repo's ``trades_reg.py``).

    Loss ``CE(z) + c·mean CE(a_s)`` on clean inputs (true-label gating) plus
    ``β·[KL(z) + c·mean KL(a_s)]`` between clean and adversarial outputs; the inner maximisation
    (eval-mode model, start ``x + 0.001·N(0, I)``) ascends the same KL sum. Defaults β = 6 (this
    toolkit's TRADES; the CAS script uses 4), c = ``cr_beta`` = 2.

    >>> method = TRADESCAS(ctx=ctx, beta=6.0, cr_beta=2.0)
    """

    name: ClassVar[str] = "trades+cas"

    def __init__(self, *, ctx: MethodContext, beta: float = 6.0, cr_beta: float = 2.0) -> None:
        super().__init__(ctx=ctx)
        if beta < 0 or cr_beta < 0:
            raise ValueError(f"beta and cr_beta must be >= 0, got beta={beta}, cr_beta={cr_beta}")
        self.beta, self.cr_beta = beta, cr_beta

    def prepare(self, model: nn.Module) -> nn.Module:
        return install_cas(model, num_classes=self.ctx.num_classes)

    def eval_attacks(self, model: nn.Module, attacks: list[tuple[str, Attack]]) -> list[tuple[str, Attack]]:
        """A ``[cas-total]`` twin of every PGD-family attack. Its auxiliary weight is ``cr_beta``, the
        one in this run's CAS total loss; ``beta`` weighs TRADES' KL term, not the auxiliary CE."""
        return cas_objective_attacks(model, attacks, beta=self.cr_beta)

    def eval_fields(self, model: nn.Module) -> dict[str, Any]:
        return cas_eval_fields(model)

    def _robust(self, logits_adv: Tensor, aux_adv: list[Tensor], p: Tensor, p_aux: list[Tensor]) -> Tensor:
        aux = torch.stack([_kl(a, q) for a, q in zip(aux_adv, p_aux, strict=True)]).mean(0)
        return _kl(logits_adv, p) + self.cr_beta * aux

    def loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        with model_mode(model), torch.no_grad():
            p_clean = F.softmax(model(x), 1)
            p_aux = [F.softmax(a, 1) for a in aux_logits(model)]

        def objective(m: nn.Module, xa: Tensor, ya: Tensor) -> Tensor:
            return self._robust(m(xa), aux_logits(m), p_clean, p_aux)

        attack = PGD(eps=self.ctx.adv_eps, steps=self.ctx.adv_steps, step_size=self.ctx.adv_step_size,
                     random_start="normal", start_radius=min(0.001, self.ctx.adv_eps), loss=objective)
        x_adv = attack(model, x, y)
        logits, aux = _cas_forward(model, x, y)
        logits_adv, aux_adv = _cas_forward(model, x_adv, y)
        natural = cas_total(logits, aux, y, beta=self.cr_beta).mean()
        robust = self._robust(logits_adv, aux_adv, F.softmax(logits, 1), [F.softmax(a, 1) for a in aux]).mean()
        loss = natural + self.beta * robust
        logs = {"loss": loss.detach(), "acc": accuracy(logits, y), "adv_acc": accuracy(logits_adv, y),
                "kl": robust.detach()}
        return {"weights": loss}, logs


def cas_objective_attacks(model: nn.Module, named: list[tuple[str, Any]], *, beta: float) -> list[tuple[str, Any]]:
    """For a model with CAS modules: a copy of every gradient attack (PGD family, not transfer)
    that maximises the CAS total loss (auxiliary CE weighted by ``beta``) instead of the final CE,
    named ``"<name>[cas-total]"``, so the card shows both objectives side by side. Empty for a
    model without CAS."""
    if not cas_modules(model):
        return []
    out = []
    for name, atk in named:
        if isinstance(atk, PGD):
            twin = copy.copy(atk)
            twin.loss_fn = CASLoss(beta=beta)
            out.append((f"{name}[cas-total]", twin))
    return out


#: what an evaluation card of a CAS model says about the objectives its attacks maximise
ATTACK_OBJECTIVE = ("PGD/FGSM/EOT-PGD maximise the final-logit cross-entropy, their '[cas-total]' twins CE + "
                    "beta * mean auxiliary CE (beta: the auxiliary weight the model trained with); AutoAttack its "
                    "own CE/DLR losses on the final logits; CAS modules gate by their own predicted label (eval "
                    "mode), as deployed")


def cas_eval_fields(model: nn.Module) -> dict[str, Any]:
    """``attack_objective`` for a model with CAS modules, else nothing."""
    return {"attack_objective": ATTACK_OBJECTIVE} if cas_modules(model) else {}


# ---- analysis -----------------------------------------------------------------------------------


def _channel_layer(model: nn.Module) -> tuple[nn.Module, bool, str]:
    name, _, rectify = placements(model)[-1]
    return dict(model.named_modules())[name], rectify, name


def channel_magnitudes(model: nn.Module, images: Tensor, labels: Tensor, *, attack: Attack,
                       batch_size: int = 256) -> dict[str, Any]:
    """Mean |activation| per channel at the last CAS placement (after CAS when installed), for
    natural and ``attack``-ed inputs; channels sorted by natural magnitude (descending). Adversarial
    examples activate more (and more uniform) channels in plain AT; CAS suppresses the redundant
    ones (Bai et al. 2021, Fig. 1/3). ``robustprune.reports.cas_channels.plot_channels`` draws it.

    >>> data = channel_magnitudes(model, x, y, attack=PGD(eps=0.3, steps=40, step_size=0.01))  # doctest: +SKIP
    """
    target, rectify, name = _channel_layer(model)
    grabbed: list[Tensor] = []

    def grab(_m: nn.Module, _i: Any, out: Any) -> None:
        h = out[0] if isinstance(out, tuple) else out
        h = F.relu(h) if rectify else h
        grabbed.append(h.detach().abs().mean(dim=(2, 3)) if h.dim() == 4 else h.detach().abs())

    sums: dict[str, float | Tensor] = {"natural": 0.0, "adversarial": 0.0}
    with model_mode(model):
        for i in range(0, len(images), batch_size):
            x, y = images[i:i + batch_size], labels[i:i + batch_size]
            x_adv = attack(model, x, y)
            handle = target.register_forward_hook(grab)
            try:
                with torch.no_grad():
                    for key, inp in (("natural", x), ("adversarial", x_adv)):
                        grabbed.clear()
                        model(inp)
                        sums[key] = sums[key] + grabbed[-1].sum(0)
            finally:
                handle.remove()
    nat, adv = cast(Tensor, sums["natural"]) / len(images), cast(Tensor, sums["adversarial"]) / len(images)
    order = torch.argsort(nat, descending=True)
    return {"layer": name, "n": len(images), "attack": attack.params(), "order": order.tolist(),
            "natural": nat[order].tolist(), "adversarial": adv[order].tolist()}
