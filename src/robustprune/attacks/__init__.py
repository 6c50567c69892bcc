"""Adversarial attacks: ``attack(model, x, y) -> x_adv`` with the invariants of :class:`Attack`.

Registered in ``ATTACKS``: ``"fgsm"``, ``"rfgsm"``, ``"pgd"``, ``"eot-pgd"``. ``TransferAttack``
needs a source model and is built directly; so is ``AutoAttack`` (optional extra ``eval``, needs
>= 4 classes). Minimum-norm attacks are another type (:class:`MinNormAttack`, returning norms and a
success mask): ``DeepFool``, ``CarliniWagnerL2`` (L2) and ``FMN`` (L∞, L2, L1).

>>> attack = build_attack("pgd", eps=0.3, steps=40, step_size=0.01)
"""

from __future__ import annotations

from typing import Any

from robustprune.attacks.autoattack import AutoAttack
from robustprune.attacks.base import (
    Attack,
    LossFn,
    cross_entropy_loss,
    is_stochastic,
    model_mode,
    project,
    seeded_generator,
)
from robustprune.attacks.cw import CarliniWagnerL2
from robustprune.attacks.deepfool import DeepFool
from robustprune.attacks.fmn import FMN
from robustprune.attacks.minnorm import MinNormAttack, MinNormResult
from robustprune.attacks.pgd import EOTPGD, FGSM, PGD, RFGSM
from robustprune.attacks.transfer import TransferAttack
from robustprune.registry import ATTACKS

__all__ = [
    "ATTACKS", "EOTPGD", "FGSM", "PGD", "RFGSM", "Attack", "AutoAttack", "CarliniWagnerL2", "DeepFool", "FMN", "LossFn",
    "MinNormAttack", "MinNormResult", "TransferAttack", "build_attack", "cross_entropy_loss", "is_stochastic",
    "model_mode", "project", "seeded_generator",
]


def build_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name with its class's keyword arguments, e.g.
    ``build_attack("eot-pgd", eps=0.3, eot=10)``. Unknown names raise ``ValueError``; unknown
    keyword arguments raise ``TypeError`` naming them."""
    return ATTACKS.create(name, **params)
