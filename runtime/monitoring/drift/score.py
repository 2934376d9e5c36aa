"""The drift scores between binned shares: PSI, Jensen-Shannon and binned KS distances per
feature, and the chi-squared distance between predicted-class shares."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

STATISTICS = ("psi", "js", "ks")


def shares(counts: NDArray[Any]) -> Array:
    """Counts -> proportions along the last axis; NaN where a row has no counts at all."""
    c = np.asarray(counts, np.float64)
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(c / total, np.float64)


def psi(p: Array, q: Array, epsilon: float = 1e-4) -> Array:
    """Population stability index sum((p - q) ln(p / q)) along the last axis, both sides
    smoothed by adding `epsilon` to every share and renormalising."""
    k = p.shape[-1]
    ps = (p + epsilon) / (1.0 + k * epsilon)
    qs = (q + epsilon) / (1.0 + k * epsilon)
    return np.asarray(np.sum((ps - qs) * np.log(ps / qs), axis=-1), np.float64)


def _plogp_over(a: Array, b: Array) -> Array:
    """a log2(a / b), 0 where a is 0; b is the mixture, so b > 0 wherever a > 0."""
    safe_a = np.where(a > 0, a, 1.0)
    safe_b = np.where(b > 0, b, 1.0)
    return np.where(a > 0, a * np.log2(safe_a / safe_b), 0.0)


def js_distance(p: Array, q: Array) -> Array:
    """Jensen-Shannon distance, base 2 (the square root of the divergence), in [0, 1]."""
    m = 0.5 * (p + q)
    divergence = 0.5 * np.sum(_plogp_over(p, m) + _plogp_over(q, m), axis=-1)
    return np.asarray(np.sqrt(np.clip(divergence, 0.0, 1.0)), np.float64)


def ks_binned(p: Array, q: Array) -> Array:
    """Kolmogorov-Smirnov statistic on the bins: max |CDF_p - CDF_q| along the last axis."""
    return np.asarray(np.max(np.abs(np.cumsum(p - q, axis=-1)), axis=-1), np.float64)


def class_distance(p: Array, q: Array) -> float:
    """Chi-squared distance 0.5 * sum((p - q)^2 / (p + q)) over classes, in [0, 1]:
    symmetric, finite when a class is missing on one side, about PSI / 4 for close shares."""
    total = p + q
    terms = np.where(total > 0, (p - q) ** 2 / np.where(total > 0, total, 1.0), 0.0)
    return float(0.5 * np.sum(terms))
