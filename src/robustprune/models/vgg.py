"""VGG-16 for CIFAR with batch norm (the ANP-VS variant)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.accounting import PaperCost, conv_flops, conv_memory, dense_flops, dense_memory, pool_flops
from robustprune.models.base import MaskSlot, ModelInfo, Normalize
from robustprune.registry import MODELS

WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = frozenset({1, 3, 6, 9, 12})  # 0-based block indices followed by 2x2 max-pool
DROPOUT = {0: 0.3, 2: 0.4, 4: 0.4, 5: 0.4, 7: 0.4, 8: 0.4, 10: 0.4, 11: 0.4}


def _block_fold_steps(i: int) -> tuple[dict, ...]:
    """Block ``i`` in VGG16's fold plan: the mask before BN; the last block's channels are also
    dropped where ``mask_fc1`` (one position per channel) prunes them."""
    conv = {"op": "conv", "layer": f"blocks.{i}.conv", "mask": f"blocks.{i}.mask", "bn": f"blocks.{i}.bn"}
    if i == len(WIDTHS) - 1:
        conv["reader"] = "mask_fc1"
    pool = ({"op": "maxpool", "kernel": 2},) if i in POOL_AFTER else ()
    return (conv, {"op": "relu"}, {"op": "feature"}, *pool)


class VGGBlock(nn.Module):
    """conv 3×3 → mask slot → BN → ReLU, then max-pool or dropout."""

    def __init__(self, cin: int, cout: int, *, pool: bool, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.mask = MaskSlot(cout, "conv")
        self.bn = nn.BatchNorm2d(cout)
        self.pool = pool
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.bn(self.mask(self.conv(x))))
        out = F.max_pool2d(h, 2) if self.pool else self.drop(h)
        return out, h


class VGG16(nn.Module):
    """VGG-16 (13 conv blocks, head fc 512→512→classes) for 32×32 inputs.

    Mask slots: one per conv block plus the inputs of both fc layers (5248 units). Latent maps
    (15): post-ReLU outputs of the 13 blocks, fc1's pre-BN output and its post-ReLU output.

    >>> model = VGG16(num_classes=10)
    """

    latent_count = 15
    #: CAS on the last stage's three post-ReLU conv block outputs
    cas_placements = (("blocks.10", 512, False), ("blocks.11", 512, False), ("blocks.12", 512, False))
    #: AT-BNN's (ρ₀, σ_p) for the large CIFAR networks
    bnn_prior = (-5.0, 0.1)
    #: ANP-VS initialises VGG-16's conv masks at a' = 2 (E[π] ≈ 0.68)
    bbd_conv_init = 2.0
    #: compaction (``sparsity.fold``): mask_fc2 (after fc1's BN and ReLU) drops fc1 outputs and
    #: scales fc2's inputs; fc1's pre-BN output and its post-ReLU output are latent maps
    fold_plan = (
        {"op": "normalize", "layer": "normalize", "image": 32},
        *(step for i in range(len(WIDTHS)) for step in _block_fold_steps(i)),
        {"op": "flatten"}, {"op": "mask", "mask": "mask_fc1"},
        {"op": "linear", "layer": "fc1", "drop": "mask_fc2"}, {"op": "feature"},
        {"op": "bn", "layer": "bn_fc1"}, {"op": "relu"}, {"op": "feature"},
        {"op": "linear", "layer": "fc2"},
    )

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        dropout: bool = True,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        blocks, cin = [], in_channels
        for i, w in enumerate(WIDTHS):
            blocks.append(VGGBlock(cin, w, pool=i in POOL_AFTER, dropout=DROPOUT.get(i, 0.0) if dropout else 0.0))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.head_drop = nn.Dropout(0.5) if dropout else nn.Identity()
        self.mask_fc1 = MaskSlot(512, "fc")
        self.fc1 = nn.Linear(512, 512)
        self.bn_fc1 = nn.BatchNorm1d(512)
        self.mask_fc2 = MaskSlot(512, "fc")
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        feats: list[Tensor] = []
        h = self.normalize(x)
        for block in self.blocks:
            h, f = block(h)
            if features:
                feats.append(f)
        h = self.mask_fc1(self.head_drop(h.flatten(1)))
        z = self.fc1(h)
        a = F.relu(self.bn_fc1(z))
        logits = self.fc2(self.mask_fc2(self.head_drop(a)))
        if features:
            feats += [z, a]
            return logits, feats
        return logits


def vgg16_paper_counts(u: Sequence[int], c_in: int, classes: int, size: int, compat_bug: bool) -> tuple[int, int]:
    """The paper's memory and FLOPs of VGG-16 with 15 unit counts (13 conv blocks, fc1 and fc2
    inputs); ``compat_bug`` counts the dense layers 13 times, as the reference code did."""
    channels = [c_in, *u[:13]]
    memory = flops = 0
    h = size
    for i in range(13):
        memory += conv_memory(h, channels[i], channels[i + 1], 3, padding=1, bn=True)
        flops += conv_flops(h, channels[i], channels[i + 1], 3, padding=1)
        if i in POOL_AFTER:
            flops += pool_flops(h, channels[i + 1])
            h //= 2
    n14, n15 = u[13], u[14]
    memory += (13 if compat_bug else 1) * (dense_memory(n14, n15, bn=True) + dense_memory(n15, classes))
    flops += dense_flops(n14, n15) + dense_flops(n15, classes)
    return memory, flops


@MODELS.register("vgg16", info=ModelInfo(display_name="VGG-16", shape=(3, 32), apb_code="V16",
                                         paper_cost=PaperCost(15, (3, 10, 32), vgg16_paper_counts)))
def vgg16(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    dropout: bool = True,
    **_: object,
) -> nn.Module:
    if image_size != 32:
        raise ValueError(f"vgg16 expects 32x32 inputs, got image_size={image_size}")
    kw = {} if mean is None or std is None else {"mean": mean, "std": std}
    return VGG16(num_classes=num_classes, in_channels=in_channels, dropout=dropout, **kw)
