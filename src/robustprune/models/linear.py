"""Multinomial logistic regression: the linear model of Guo et al.'s sparsity study."""

from __future__ import annotations

from torch import Tensor, nn

from robustprune.models.base import ModelInfo
from robustprune.registry import MODELS


class Linear(nn.Module):
    """``logits = W·flatten(x) + b`` (multinomial logistic regression; 2 classes on a digit pair
    such as ``mnist-1v7``).

    No hidden layer: no mask slots, ``latent_count = 0`` and ``features=True`` returns an empty list.

    >>> model = Linear(num_classes=10, in_features=784)
    """

    latent_count = 0

    def __init__(self, *, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        if num_classes < 2 or in_features < 1:
            raise ValueError(f"linear model needs num_classes >= 2 and in_features >= 1, got {num_classes}, "
                             f"{in_features}")
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        logits = self.fc(x.flatten(1))
        return (logits, []) if features else logits


@MODELS.register("linear", info=ModelInfo(display_name="Linear", shape=(1, 28)))
def linear(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, **_: object) -> nn.Module:
    return Linear(num_classes=num_classes, in_features=in_channels * image_size * image_size)
