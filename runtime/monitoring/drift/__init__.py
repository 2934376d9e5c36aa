"""Drift monitor: live traffic binned against a model's reference profile, judged per window.

The hot path (`observe`, called after each executed batch) only bins the batch with the
histogram kernel, adding into the open window's counts; memory is counts, never rows.
Windows close at `window_samples` rows or `window_seconds`, whichever comes first, and
`tick` (off the hot path) turns closed windows into per-feature PSI, Jensen-Shannon and
binned KS distances plus a chi-squared distance on predicted classes, and decides the
model's warn and alert state. Distances, not p-values: p-values call everything drift at
large samples, while a distance keeps its meaning whatever the window size.
"""

from __future__ import annotations

from kernels import compiled
from runtime.monitoring.drift.config import ALERT, OK, WARN, DriftSettings
from runtime.monitoring.drift.metric import MetricFamily, metric_families
from runtime.monitoring.drift.monitor import BUFFER_BYTES, DriftMonitor
from runtime.monitoring.drift.noise import NoiseFloors, _psi_noise_ratio, chi2_quantile
from runtime.monitoring.drift.reference import (
    ENABLED_KEY,
    REFERENCE_KEY,
    from_samples,
    monitor_for,
    predicted_classes,
)
from runtime.monitoring.drift.score import (
    STATISTICS,
    Array,
    class_distance,
    js_distance,
    ks_binned,
    psi,
    shares,
)
from runtime.monitoring.drift.window import WORST_FEATURES, WindowResult

__all__ = [
    "ALERT",
    "BUFFER_BYTES",
    "ENABLED_KEY",
    "OK",
    "REFERENCE_KEY",
    "STATISTICS",
    "WARN",
    "WORST_FEATURES",
    "Array",
    "DriftMonitor",
    "DriftSettings",
    "MetricFamily",
    "NoiseFloors",
    "WindowResult",
    "_psi_noise_ratio",
    "chi2_quantile",
    "class_distance",
    "compiled",
    "from_samples",
    "js_distance",
    "ks_binned",
    "metric_families",
    "monitor_for",
    "predicted_classes",
    "psi",
    "shares",
]
