"""ResNet-18 for CIFAR (3×3 stem, no initial max-pool; He et al. 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.base import MaskSlot, ModelInfo, Normalize
from robustprune.registry import MODELS

#: (output channels, stride) of the eight residual blocks
STAGES = ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual; a mask slot on the inner channels (prunable without
    touching the residual path)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.mask = MaskSlot(cout, "conv")
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.mask(self.bn1(self.conv1(x))))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant. Latent maps: the outputs of the 8 residual blocks.

    >>> model = ResNet18(num_classes=10)
    """

    latent_count = 8
    #: CAS on both post-ReLU block outputs of the last stage
    cas_placements = (("blocks.6", 512, False), ("blocks.7", 512, False))
    #: AT-BNN's (ρ₀, σ_p) for the large CIFAR networks
    bnn_prior = (-5.0, 0.1)
    #: compaction (``sparsity.fold``): BN folded into its conv; each block's mask prunes only its
    #: inner channels (after bn1), so the residual widths stay
    fold_plan = (
        {"op": "normalize", "layer": "normalize", "image": 32},
        {"op": "conv", "layer": "conv1", "bn": "bn1"}, {"op": "relu"},
        *(step for i in range(len(STAGES)) for step in (
            {"op": "resblock", "conv1": f"blocks.{i}.conv1", "bn1": f"blocks.{i}.bn1", "mask": f"blocks.{i}.mask",
             "conv2": f"blocks.{i}.conv2", "bn2": f"blocks.{i}.bn2", "shortcut": f"blocks.{i}.shortcut"},
            {"op": "feature"})),
        {"op": "avgpool"}, {"op": "linear", "layer": "fc"},
    )

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        blocks, cin = [], 64
        for cout, stride in STAGES:
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        h = F.relu(self.bn1(self.conv1(self.normalize(x))))
        feats: list[Tensor] = []
        for block in self.blocks:
            h = block(h)
            if features:
                feats.append(h)
        logits = self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))
        return (logits, feats) if features else logits


@MODELS.register("resnet18", info=ModelInfo(display_name="ResNet-18", shape=(3, 32), apb_code="R18"))
def resnet18(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **_: object,
) -> nn.Module:
    kw = {} if mean is None or std is None else {"mean": mean, "std": std}
    return ResNet18(num_classes=num_classes, in_channels=in_channels, **kw)
