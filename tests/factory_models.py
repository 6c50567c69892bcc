"""Model factories for tests/test_external_models.py, named as ``--model factory_models:NAME``
(pytest puts tests/ on sys.path, as for robust_toys)."""

from __future__ import annotations

from typing import Any

from torch import nn

NOT_CALLABLE = 5


def tiny_cnn(num_classes: int, in_channels: int, width: int = 4) -> nn.Module:
    """A small conv net: conv -> BN -> ReLU -> global average pool -> linear."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


class TinyMLP(nn.Module):
    """A class used as the factory (``factory_models:TinyMLP``); takes ``image_size`` too."""

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Any) -> Any:
        return self.fc2(self.fc1(x.flatten(1)).relu())


def kwargs_only(**kw: Any) -> nn.Module:
    """Takes no named dataset keys, so ``num_classes`` must come through ``model_args``."""
    return tiny_cnn(kw.get("num_classes", 1000), 1)


def not_a_module(num_classes: int) -> list[int]:
    return [num_classes]


def raises(num_classes: int) -> nn.Module:
    raise RuntimeError("factory failed on purpose")


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

    def forward(self, x: Any) -> Any:
        return (x + self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))).relu()


def tiny_resnet(num_classes: int, in_channels: int, width: int = 8, blocks: int = 2) -> nn.Module:
    """A small residual network (stem conv-BN-ReLU, ``blocks`` basic blocks, pool, linear): its
    residual stream is one mask group when masked through the graph."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *[_Block(width) for _ in range(blocks)], nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )
