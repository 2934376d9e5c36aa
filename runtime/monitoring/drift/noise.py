"""Noise floors: per feature, the distances that sampling noise alone reaches in a window
without drift, which raise the thresholds for small windows (noise_alpha)."""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from runtime.monitoring.drift.score import Array, psi
from runtime.monitoring.profile import ReferenceProfile


@dataclass(frozen=True, slots=True)
class NoiseFloors:
    """Per feature, the PSI and JS distance that sampling noise alone reaches in a window of
    this size with probability noise_alpha / features; and the class distance's."""

    psi: Array
    js: Array
    classes: float


def chi2_quantile(p: float, df: NDArray[Any]) -> Array:
    """The p-quantile of chi-squared with df degrees of freedom, by Wilson and Hilferty's
    cube-root normal approximation: within 4% of the exact value up to p = 0.999; at
    p = 1 - 1e-5, 2% high for 9 degrees of freedom and 11% for 1. Written here so that the
    server does not need scipy for one formula."""
    k = np.maximum(np.asarray(df, np.float64), 1.0)
    z = NormalDist().inv_cdf(p)
    return np.asarray(k * np.maximum(1 - 2 / (9 * k) + z * np.sqrt(2 / (9 * k)), 0.0) ** 3)


def _psi_noise_ratio(profile: ReferenceProfile, df: NDArray[Any], rows: int) -> Array:
    """Per feature, how much larger PSI's mean noise is than the chi-squared approximation's
    df (1/n + 1/N), at least 1: simulated at n = `rows` (the smallest judged window), 400
    draws of a window and of a reference from the profile's shares, made Jeffreys-smoothed
    so that bins the reference left empty can still fill, as unseen values do in traffic.

    PSI's log form and its epsilon put its noise above the approximation: 1.12x for
    Gaussian features, up to 6.9x for digit pixels whose rare values the profile missed. A
    fixed seed keeps the floors the same at every load; 20-40 ms for 64 features."""
    if not profile.rows:
        return np.ones(profile.features)
    rng = np.random.default_rng(0)
    q = profile.proportions
    n_ref = profile.rows
    smoothed = (n_ref * q + 0.5) / (n_ref + 0.5 * q.shape[1])
    smoothed /= smoothed.sum(axis=1, keepdims=True)
    ratio = np.ones(profile.features)
    for f in range(profile.features):
        window = rng.multinomial(rows, smoothed[f], size=400) / rows
        reference = rng.multinomial(n_ref, smoothed[f], size=400) / n_ref
        mean = float(psi(window, reference).mean())
        ratio[f] = max(1.0, mean / (df[f] * (1 / rows + 1 / n_ref)))
    return ratio
