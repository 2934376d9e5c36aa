"""Ingest: scikit-learn's bundled datasets (no download) and a seeded stratified split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

LOADERS: dict[str, Callable[[], Any]] = {
    "digits": load_digits,
    "breast_cancer": load_breast_cancer,
}
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class Dataset:
    """A whole dataset: raw float32 features [N, F] and integer labels [N]."""

    name: str
    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Split:
    """One part of a dataset: raw features [n, F] and labels [n]."""

    features: NDArray[np.float32]
    labels: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, slots=True)
class Splits:
    train: Split
    validation: Split
    test: Split

    def sizes(self) -> dict[str, int]:
        return {
            "train": len(self.train),
            "validation": len(self.validation),
            "test": len(self.test),
        }


def load(name: str) -> Dataset:
    """One of LOADERS' datasets as float32 features and int64 labels."""
    if name not in LOADERS:
        raise ValueError(f"unknown dataset '{name}'; known: {sorted(LOADERS)}")
    bunch = LOADERS[name]()
    return Dataset(
        name,
        np.ascontiguousarray(bunch.data, np.float32),
        np.asarray(bunch.target, np.int64),
        tuple(str(f) for f in bunch.feature_names),
        tuple(str(c) for c in bunch.target_names),
    )


def split(dataset: Dataset, seed: int) -> Splits:
    """Stratified train / validation / test parts (60/20/20); the same seed, the same parts."""
    x, y = dataset.features, dataset.labels
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest,
        y_rest,
        test_size=VALIDATION_FRACTION / (1 - TEST_FRACTION),
        stratify=y_rest,
        random_state=seed,
    )
    return Splits(Split(x_train, y_train), Split(x_val, y_val), Split(x_test, y_test))
