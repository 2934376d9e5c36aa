"""The drift monitors' Prometheus families as plain data: one series per feature and
statistic, never per bin."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.monitoring.drift.monitor import DriftMonitor


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One Prometheus family as plain data; metrics.py turns it into prometheus_client's."""

    name: str
    documentation: str
    kind: str  # "gauge" or "counter" (a counter's name is given without `_total`)
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def metric_families(monitors: Iterable[DriftMonitor]) -> list[MetricFamily]:
    """The drift families over all monitors, ready for a prometheus_client collector."""
    model = ("model", "version")
    families = {
        "score": MetricFamily("conveyor_drift_score",
                              "Drift distance of a feature in the last judged window",
                              "gauge", (*model, "feature", "statistic")),
        "class": MetricFamily("conveyor_drift_class_distance",
                              "Chi-squared distance of predicted-class shares, last judged window",
                              "gauge", model),
        "alert": MetricFamily("conveyor_drift_alert", "1 while the model is in drift alert",
                              "gauge", model),
        "warn": MetricFamily("conveyor_drift_warn",
                             "1 when the last judged window reached a warn threshold",
                             "gauge", model),
        "windows": MetricFamily("conveyor_drift_windows", "Drift windows judged",
                                "counter", model),
        "rows": MetricFamily("conveyor_drift_window_rows",
                             "Rows in the last judged window (the sample behind the scores)",
                             "gauge", model),
    }  # fmt: skip
    for monitor in monitors:
        monitor._samples(families)
    return list(families.values())
