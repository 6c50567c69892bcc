"""A batch iterator over in-memory image tensors: seeded shuffling, sharding, CIFAR augmentation."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

CROP_PADDING = 4
#: a CPU dataset up to this size (images + labels) is copied to a CUDA target device once and
#: batched there; MNIST (47 MB as uint8) and CIFAR-10/100 (150 MB) always fit
DEVICE_CACHE_BYTES = 2 * 1024**3


def _generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (distinct tuples, distinct streams)."""
    state = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def augment_batch(
    x: torch.Tensor, generator: torch.Generator, *, padding: int = CROP_PADDING
) -> torch.Tensor:
    """CIFAR augmentation of a batch: zero-pad by ``padding``, random crop back to H x W, random h-flip.

    Offsets and flips are drawn on the CPU from ``generator`` (one crop and one coin per example) and
    applied with one gather on ``x``'s device; works for uint8 and float batches.
    """
    b, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)
    flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [B, H]
    ar = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - ar, ar)  # [B, W], reversed when flipped
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # advanced dims first: [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


class TensorLoader:
    """Batches ``(x, y)`` from image and label tensors: x float32 in [0, 1] on ``device``, y int64.

    uint8 images are divided by 255 one batch at a time, so a whole uint8 dataset can stay in
    memory (or on the GPU) at a quarter of the float size. The shuffling order is a function of
    ``(seed, epoch)`` only, drawn from the loader's own generator (the global RNG is never
    touched); call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``. With
    ``world_size > 1`` each rank takes a disjoint, equal-size shard of the order, padded by
    wrapping around. ``augment=True`` applies the standard CIFAR augmentation (zero-pad 4, random
    crop, random horizontal flip), deterministic given seed, epoch and rank.

    Placement (:func:`data_placement`, the ``placement`` attribute): with a CUDA ``device`` and
    CPU tensors, a dataset of at most ``device_cache_bytes`` (default 2 GiB) is copied to the GPU
    once and batched there (``"resident"``); a larger one is gathered per batch into pinned
    memory and copied with ``non_blocking=True`` (``"pinned"``, when ``pin_memory``). Otherwise
    (CPU device, or no CUDA) batches are gathered and moved as they are (``"direct"``), so
    ``pin_memory=True`` is harmless on a CPU-only machine. Batches are the same in every placement.

    >>> loader = TensorLoader(images, labels, batch_size=128, shuffle=True, seed=0)  # doctest: +SKIP
    >>> for epoch in range(10):  # doctest: +SKIP
    ...     loader.set_epoch(epoch)
    ...     for x, y in loader: ...
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = True,
        device_cache_bytes: int = DEVICE_CACHE_BYTES,
    ) -> None:
        _check_data(images, labels)
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not (_is_int(world_size) and _is_int(rank) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        if not _is_int(device_cache_bytes) or device_cache_bytes < 0:
            raise ValueError(f"device_cache_bytes must be a non-negative int, got {device_cache_bytes!r}")
        self.images = images
        self.labels = labels.long()
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.augment = augment
        self.drop_last = drop_last
        self.device = images.device if device is None else torch.device(device)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        nbytes = images.nelement() * images.element_size() + self.labels.nelement() * 8
        self.placement = data_placement(nbytes, source=images.device, target=self.device, pin_memory=pin_memory,
                                        cache_bytes=int(device_cache_bytes))
        if self.placement == "resident":
            self.images, self.labels = self.images.to(self.device), self.labels.to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffling order (and augmentation) the next iteration uses."""
        if not _is_int(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = int(epoch)

    @property
    def num_samples(self) -> int:
        """How many examples this rank sees per epoch (padded so every rank sees the same number)."""
        return math.ceil(len(self.labels) / self.world_size)

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def indices(self) -> torch.Tensor:
        """This rank's example indices for the current epoch, in iteration order (CPU, int64)."""
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        pad = self.num_samples * self.world_size - n
        if pad:
            order = torch.cat([order, order.repeat(math.ceil(pad / n))[:pad]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.indices()
        gen = _generator(self.seed, self.epoch, 1, self.rank) if self.augment else None
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x, y = self.images[idx.to(self.images.device)], self.labels[idx.to(self.labels.device)]
            if self.placement == "pinned":  # the caching host allocator keeps the pages until the copy ends
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if gen is not None:
                x = augment_batch(x, gen)
            yield (x.float().div_(255) if x.dtype == torch.uint8 else x.float()), y


def data_placement(nbytes: int, *, source: torch.device, target: torch.device, pin_memory: bool,
                   cache_bytes: int = DEVICE_CACHE_BYTES) -> str:
    """How :class:`TensorLoader` moves ``nbytes`` of data from ``source`` to ``target``:
    ``"resident"`` (copied to the CUDA target once), ``"pinned"`` (per-batch pinned host memory
    and asynchronous copies) or ``"direct"`` (plain gathering; CPU targets, data already on the
    target, or no CUDA to pin for)."""
    if target.type != "cuda" or source.type != "cpu":
        return "direct"
    if nbytes <= cache_bytes:
        return "resident"
    return "pinned" if pin_memory and torch.cuda.is_available() else "direct"


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        got = getattr(images, "shape", type(images))
        raise ValueError(f"images must be a [N, C, H, W] tensor, got {got}")
    if not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]:
        got = getattr(labels, "shape", type(labels))
        raise ValueError(f"labels must be a [{len(images)}] tensor, got {got}")
    if len(labels) == 0:
        raise ValueError("images and labels are empty")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if images.dtype.is_floating_point:
        lo, hi = images.min().item(), images.max().item()
        if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
            raise ValueError(f"float images must lie in [0, 1], found [{lo}, {hi}]")
    elif images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0..255) or float in [0, 1], got {images.dtype}")
