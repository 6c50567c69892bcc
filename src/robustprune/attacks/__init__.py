"""Adversarial attacks: ``attack(model, x, y) -> x_adv`` with the invariants of :class:`Attack`.

Registered in ``ATTACKS``: ``"fgsm"``, ``"rfgsm"``, ``"pgd"``, ``"eot-pgd"``. ``TransferAttack``
needs a source model and is built directly; so is ``AutoAttack`` (needs >= 4 classes).
Minimum-norm attacks are another type (:class:`MinNormAttack`, returning norms and a success
mask), registered in ``MINNORM``: ``"deepfool"``, ``"cw"`` (C&W-L2) and ``"fmn"`` (L∞, L2, L1).
Importing this package imports every module in it (:func:`robustprune.registry.discover`), so a
new ``attacks/<name>.py`` registers itself.

>>> attack = build_attack("pgd", eps=0.3, steps=40, step_size=0.01)
>>> deepfool = build_minnorm("deepfool", steps=50)
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
from robustprune.registry import ATTACKS, MINNORM, discover

discover(__name__)  # every attack module registers itself

__all__ = [
    "ATTACKS", "EOTPGD", "FGSM", "PGD", "RFGSM", "Attack", "AutoAttack", "CarliniWagnerL2", "DeepFool", "FMN", "LossFn",
    "MINNORM", "MinNormAttack", "MinNormResult", "TransferAttack", "build_attack", "build_minnorm",
    "cross_entropy_loss", "is_stochastic",
    "model_mode", "project", "seeded_generator",
]


def build_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack by name with its class's keyword arguments, e.g.
    ``build_attack("eot-pgd", eps=0.3, eot=10)``. Unknown names raise ``ValueError``; unknown
    keyword arguments raise ``TypeError`` naming them."""
    return ATTACKS.create(name, **params)


def build_minnorm(name: str, **params: Any) -> MinNormAttack:
    """Build a registered minimum-norm attack by name (``build_minnorm("fmn", norm="l2")``); unknown
    names raise ``ValueError``."""
    return MINNORM.create(name, **params)
