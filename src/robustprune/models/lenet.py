"""LeNet-300-100 and LeNet5-Caffe (the MNIST networks of ANP-VS and Guo et al.)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from robustprune.models.accounting import (
    PaperCost,
    conv_flops,
    conv_memory,
    conv_out,
    dense_flops,
    dense_memory,
    pool_flops,
)
from robustprune.models.base import MaskSlot, ModelInfo
from robustprune.registry import MODELS


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10 network (LeCun et al. 1998).

    Mask slots on the 300 and 100 hidden neurons (input pixels are never masked). Latent maps:
    the two post-ReLU hidden layers.

    >>> model = LeNet300100(num_classes=10, in_features=784)
    """

    latent_count = 2
    #: CAS after the last hidden layer (its 100 units, pre-activation: rectified first)
    cas_placements = (("mask2", 100, True),)
    #: compaction (``sparsity.fold``): each mask sits right after its layer, before the latent map
    fold_plan = (
        {"op": "input", "features": "fc1"}, {"op": "flatten"},
        {"op": "linear", "layer": "fc1", "mask": "mask1"}, {"op": "relu"}, {"op": "feature"},
        {"op": "linear", "layer": "fc2", "mask": "mask2"}, {"op": "relu"}, {"op": "feature"},
        {"op": "linear", "layer": "fc3"},
    )

    def __init__(self, *, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.mask1 = MaskSlot(300, "fc")
        self.fc2 = nn.Linear(300, 100)
        self.mask2 = MaskSlot(100, "fc")
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        h1 = F.relu(self.mask1(self.fc1(x.flatten(1))))
        h2 = F.relu(self.mask2(self.fc2(h1)))
        logits = self.fc3(h2)
        return (logits, [h1, h2]) if features else logits


class LeNet5Caffe(nn.Module):
    """LeNet5-Caffe: conv 1→20 5×5, pool, conv 20→50 5×5, pool, fc 800→500, fc 500→10.

    Mask slots (ANP-VS's placement): conv1's 20 channels, conv2's 50 channels, the 800 flattened inputs of
    fc1 and fc1's 500 outputs — 1370 units. Latent maps: post-ReLU conv1, conv2 and fc1 outputs.

    >>> model = LeNet5Caffe(num_classes=10, in_channels=1, image_size=28)
    """

    latent_count = 3
    #: CAS after fc1, the 500 units of the last hidden layer (the analogue of the CAS paper's last
    #: stage); fc1's output is pre-activation, so the module rectifies first (the model's own ReLU
    #: that follows then clips negatively weighted units to zero). After conv2 was tried first: the
    #: GAP'd 50 conv2 channels give a weak auxiliary classifier (~30% after 100 steps) and, because
    #: eval-mode gating by the auxiliary prediction fixes the final prediction (label leakage
    #: through the gating row), the network was no better than its auxiliary head (a 100-step
    #: diagnostic, 2026-11-23; see bench/RESULTS.md).
    cas_placements = (("fc1", 500, True),)
    #: compaction (``sparsity.fold``): the image side is inferred from mask3's width; conv2's
    #: channels whose flattened positions mask3 all prunes are dropped; mask4 (after fc1's ReLU)
    #: drops fc1 outputs and scales fc2's inputs
    fold_plan = (
        {"op": "input", "channels": "conv1"},
        {"op": "conv", "layer": "conv1", "mask": "mask1"}, {"op": "relu"}, {"op": "feature"},
        {"op": "maxpool", "kernel": 2},
        {"op": "conv", "layer": "conv2", "mask": "mask2", "reader": "mask3"}, {"op": "relu"}, {"op": "feature"},
        {"op": "maxpool", "kernel": 2}, {"op": "flatten"}, {"op": "mask", "mask": "mask3", "select": True},
        {"op": "linear", "layer": "fc1", "drop": "mask4"}, {"op": "relu"}, {"op": "feature"},
        {"op": "linear", "layer": "fc2"},
    )

    def __init__(self, *, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"image_size={image_size} is too small for LeNet5-Caffe (needs >= 16)")
        flat = 50 * side * side
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.mask1 = MaskSlot(20, "conv")
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.mask2 = MaskSlot(50, "conv")
        self.mask3 = MaskSlot(flat, "fc")
        self.fc1 = nn.Linear(flat, 500)
        self.mask4 = MaskSlot(500, "fc")
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor, features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        h1 = F.relu(self.mask1(self.conv1(x)))
        h2 = F.relu(self.mask2(self.conv2(F.max_pool2d(h1, 2))))
        flat = self.mask3(F.max_pool2d(h2, 2).flatten(1))
        h3 = F.relu(self.fc1(flat))
        logits = self.fc2(self.mask4(h3))
        return (logits, [h1, h2, h3]) if features else logits


def lenet5_sizes(image_size: int) -> tuple[int, int, int]:
    """LeNet5-Caffe's map sizes: after conv1, after the first pool, after conv2."""
    s1 = conv_out(image_size, 5, 0)
    p1 = s1 // 2
    return s1, p1, conv_out(p1, 5, 0)


def lenet5_paper_counts(u: Sequence[int], c_in: int, classes: int, size: int, _: bool) -> tuple[int, int]:
    """The paper's memory and FLOPs of LeNet5-Caffe with unit counts [conv1, conv2, fc1 in, fc1 out]."""
    n1, n2, n3, n4 = u
    s1, p1, s2 = lenet5_sizes(size)
    memory = (
        conv_memory(size, c_in, n1, 5) + conv_memory(p1, n1, n2, 5)
        + dense_memory(n3, n4) + dense_memory(n4, classes)
    )
    flops = (
        conv_flops(size, c_in, n1, 5) + pool_flops(s1, n1)
        + conv_flops(p1, n1, n2, 5) + pool_flops(s2, n2)
        + dense_flops(n3, n4) + dense_flops(n4, classes, activation=False)
    )
    return memory, flops


def lenet300_paper_counts(u: Sequence[int], c_in: int, classes: int, size: int, _: bool) -> tuple[int, int]:
    """The paper's memory and FLOPs of LeNet-300-100 with unit counts [hidden 1, hidden 2]."""
    n1, n2 = u
    n0 = c_in * size * size
    memory = dense_memory(n0, n1) + dense_memory(n1, n2) + dense_memory(n2, classes)
    flops = dense_flops(n0, n1) + dense_flops(n1, n2) + dense_flops(n2, classes, activation=False)
    return memory, flops


@MODELS.register("lenet-300-100", info=ModelInfo(
    display_name="LeNet-300-100", shape=(1, 28), paper_cost=PaperCost(2, (1, 10, 28), lenet300_paper_counts)))
def lenet_300_100(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, **_: object) -> nn.Module:
    return LeNet300100(num_classes=num_classes, in_features=in_channels * image_size * image_size)


@MODELS.register("lenet5-caffe", info=ModelInfo(
    display_name="LeNet5-Caffe", shape=(1, 28), paper_cost=PaperCost(4, (1, 10, 28), lenet5_paper_counts)))
def lenet5_caffe(*, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, **_: object) -> nn.Module:
    return LeNet5Caffe(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
