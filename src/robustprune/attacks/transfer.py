"""Black-box transfer: adversarial examples crafted on a source model, evaluated on the target."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from robustprune.attacks.base import Attack


class TransferAttack(Attack):
    """Transfer attack (Papernot et al. 2017; ANP-VS's black-box column).

    ``attack(target, x, y)`` ignores the target's gradients: it runs the inner white-box ``attack``
    on ``source`` (an independently trained model, by default an AT model of the same
    architecture) and returns those examples, to be evaluated on the target. The inner call keeps
    every invariant on the source (mode restored, ``.grad`` untouched), the outer one on the target.
    ``eps``, ``norm`` and ``eval_mode`` are the inner attack's. Not registered: it needs a model.

    >>> blackbox = TransferAttack(source=at_model, attack=PGD(eps=0.3, steps=40, step_size=0.01))  # doctest: +SKIP
    >>> x_adv = blackbox(target_model, x, y)                    # doctest: +SKIP
    """

    name = "transfer"

    def __init__(self, *, source: nn.Module, attack: Attack) -> None:
        if not isinstance(source, nn.Module):
            raise ValueError(f"source must be an nn.Module, got {type(source).__name__}")
        if not isinstance(attack, Attack):
            raise ValueError(f"attack must be an Attack, got {type(attack).__name__}")
        super().__init__(eps=attack.eps, norm=attack.norm, eval_mode=attack.eval_mode)
        self.source = source
        self.attack = attack

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.attack(self.source, x, y)

    def params(self) -> dict[str, Any]:
        inner = self.attack.params()
        return inner | {"name": f"transfer-{inner['name']}", "transfer": True, "inner": inner["name"]}
