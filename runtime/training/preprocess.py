"""Preprocess: per-feature mean and std from the training split, applied as the server does.

The model never contains this step: the server runs it as the `standardize` pre kernel with
the arrays saved in `<version>/pipeline.npz`, and training calls that same kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

import kernels

ARRAYS_FILENAME = "pipeline.npz"


@dataclass(frozen=True, slots=True)
class Standardizer:
    """Float32 mean and std, shape [F]; std is never 0."""

    mean: NDArray[np.float32]
    std: NDArray[np.float32]

    def apply(self, features: ArrayLike) -> NDArray[np.float32]:
        """(x - mean) / std in float32, with the server's standardize kernel."""
        return kernels.standardize(features, self.mean, self.std)

    def save(self, path: Path) -> None:
        """Write `mean` and `std` as float32 arrays to an .npz (no pickles)."""
        with open(path, "wb") as f:
            np.savez(f, mean=self.mean, std=self.std)


def fit(features: ArrayLike) -> Standardizer:
    """Column mean and population std of [N, F]; constant columns get std 1."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be [N, F] with N > 0, got shape {x.shape}")
    mean = x.mean(axis=0).astype(np.float32)
    std = x.std(axis=0).astype(np.float32)
    # Constant columns (digits' always-blank corner pixels) would divide by zero; with std 1
    # they standardize to 0 - 0 = 0, as a blank pixel should.
    std = np.where(std > 0, std, np.float32(1)).astype(np.float32)
    return Standardizer(mean, std)


def load(path: Path) -> Standardizer:
    """Read arrays written by `Standardizer.save`."""
    with np.load(path, allow_pickle=False) as data:
        return Standardizer(
            np.asarray(data["mean"], np.float32), np.asarray(data["std"], np.float32)
        )
