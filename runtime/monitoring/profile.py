"""The reference profile a drift monitor compares live traffic with.

A profile holds, for one model input of shape [N, F], per-feature bin edges taken at the
training data's quantiles and the reference proportion of rows in each bin (plus an
underflow and an overflow bin), and, for one output of class scores, the share of each
predicted class. It is counts only: its size does not grow with the training set.

Stored as `drift_profile.npz` in a model's version folder (the training stage writes it),
or built at load from a `.npz` of sample rows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

import kernels

FILENAME = "drift_profile.npz"
DEFAULT_BINS = 10


@dataclass(frozen=True, slots=True)
class ReferenceProfile:
    """Reference bins and proportions for one input, and class shares for one output."""

    input_name: str
    # [F, B+1], strictly increasing per row: bin b of a value is searchsorted(edges, v, "right").
    edges: NDArray[np.float64]
    # [F, B+2], each row sums to 1: underflow, B bins, overflow.
    proportions: NDArray[np.float64]
    feature_names: tuple[str, ...]
    output_name: str = ""
    # [C], sums to 1: the share of rows whose argmax is each class. Empty without an output.
    class_proportions: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    # Rows the profile was built from.
    rows: int = 0

    @property
    def features(self) -> int:
        return int(self.edges.shape[0])


def quantile_edges(samples: NDArray[np.floating], bins: int = DEFAULT_BINS) -> NDArray[np.float64]:
    """Per-column quantile edges [F, bins+1], nudged apart where quantiles tie.

    The overflow bin then holds only values above the training maximum. Features with many
    equal values (a pixel that is almost always 0) have tied quantiles;
    each tied edge is moved one representable step above the one before, so every row stays
    strictly increasing and the tied mass lands in one bin.
    """
    x = np.asarray(samples, np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"profile samples must be [N, F] with N > 0, got shape {x.shape}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    with warnings.catch_warnings():
        # An all-NaN column has no quantiles; it gets edges from 0 below, and its NaNs
        # are never counted, so live NaNs cannot drift it.
        warnings.simplefilter("ignore", RuntimeWarning)
        edges = np.nanquantile(x, np.linspace(0.0, 1.0, bins + 1), axis=0).T.copy()
    edges = np.where(np.isnan(edges), 0.0, edges)
    for b in range(1, bins + 1):
        edges[:, b] = np.maximum(edges[:, b], np.nextafter(edges[:, b - 1], np.inf))
    # The training maximum belongs in the last bin, not the overflow bin.
    edges[:, bins] = np.nextafter(edges[:, bins], np.inf)
    return edges


def build(
    inputs: NDArray[np.floating],
    input_name: str,
    outputs: NDArray[np.floating] | None = None,
    output_name: str = "",
    bins: int = DEFAULT_BINS,
    feature_names: tuple[str, ...] = (),
) -> ReferenceProfile:
    """A profile from training rows [N, F] and, optionally, the model's scores [N, C] on them."""
    x = np.asarray(inputs, np.float64).reshape(len(inputs), -1)
    edges = quantile_edges(x, bins)
    counts = kernels.histogram(x, edges).astype(np.float64)
    proportions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    names = feature_names or tuple(str(i) for i in range(x.shape[1]))
    if len(names) != x.shape[1]:
        raise ValueError(f"{len(names)} feature names for {x.shape[1]} features")
    classes = np.zeros(0)
    if outputs is not None:
        scores = np.asarray(outputs).reshape(len(outputs), -1)
        predicted = np.argmax(scores, axis=1)
        classes = np.bincount(predicted, minlength=scores.shape[1]) / max(len(predicted), 1)
    return ReferenceProfile(
        input_name, edges, proportions, names, output_name, classes.astype(np.float64), len(x)
    )


def save(profile: ReferenceProfile, path: Path) -> None:
    """Write the profile as .npz (no pickles: names are stored as unicode arrays)."""
    with open(path, "wb") as f:
        np.savez(
            f,
            input_name=np.array(profile.input_name),
            edges=profile.edges,
            proportions=profile.proportions,
            feature_names=np.array(profile.feature_names, dtype=str),
            output_name=np.array(profile.output_name),
            class_proportions=profile.class_proportions,
            rows=np.array(profile.rows, np.int64),
        )


def load(path: Path) -> ReferenceProfile:
    """Read a profile written by `save`; ValueError names what is missing or inconsistent."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"input_name", "edges", "proportions"} - set(data.files)
        if missing:
            raise ValueError(f"drift profile '{path}' lacks {sorted(missing)}")
        edges = np.asarray(data["edges"], np.float64)
        proportions = np.asarray(data["proportions"], np.float64)
        if edges.ndim != 2 or proportions.shape != (edges.shape[0], edges.shape[1] + 1):
            raise ValueError(
                f"drift profile '{path}': edges {edges.shape} and proportions "
                f"{proportions.shape} must be [F, B+1] and [F, B+2]"
            )
        if edges.shape[1] > 1 and not np.all(np.diff(edges, axis=1) > 0):
            raise ValueError(f"drift profile '{path}': edges must increase along each row")
        names = (
            tuple(str(n) for n in data["feature_names"])
            if "feature_names" in data.files
            else tuple(str(i) for i in range(edges.shape[0]))
        )
        return ReferenceProfile(
            str(data["input_name"]),
            edges,
            proportions,
            names,
            str(data["output_name"]) if "output_name" in data.files else "",
            np.asarray(data["class_proportions"], np.float64)
            if "class_proportions" in data.files
            else np.zeros(0),
            int(data["rows"]) if "rows" in data.files else 0,
        )
