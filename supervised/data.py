"""Datasets for supervised jobs, with splits that are the same for the same seed.

`digits` is scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes): it ships with
the package, so the demo needs no download.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset


@dataclass
class ImageSplits:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    in_channels: int
    num_classes: int


def _split_indices(labels: np.ndarray, val: float, test: float, seed: int):
    """Stratified train/val/test indices; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = round(len(index) * val), round(len(index) * test)
        parts["val"] += index[:n_val].tolist()
        parts["test"] += index[n_val:n_val + n_test].tolist()
        parts["train"] += index[n_val + n_test:].tolist()
    return {name: np.sort(np.array(idx)) for name, idx in parts.items()}


def load_digits(val_fraction: float, test_fraction: float, seed: int) -> ImageSplits:
    """Digits as (N, 1, 8, 8) float tensors, standardised with the training split's stats."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = bunch.target.astype(np.int64)
    split = _split_indices(labels, val_fraction, test_fraction, seed)
    mean, std = images[split["train"]].mean(), images[split["train"]].std()
    images = (images - mean) / std

    def subset(name: str) -> TensorDataset:
        return TensorDataset(torch.from_numpy(images[split[name]]),
                             torch.from_numpy(labels[split[name]]))

    return ImageSplits(subset("train"), subset("val"), subset("test"), 1, 10)


DATASETS = {"digits": load_digits}


def load_dataset(data_spec, seed: int) -> ImageSplits:
    return DATASETS[data_spec.name](data_spec.val_fraction, data_spec.test_fraction, seed)
