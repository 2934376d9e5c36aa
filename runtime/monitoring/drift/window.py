"""Drift windows: the open window's counts, and a closed window's distances and verdict as
the report shows them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from runtime.monitoring.drift.config import ALERT, WARN
from runtime.monitoring.drift.score import STATISTICS, Array

WORST_FEATURES = 5


class _Window:
    """The open window's counts; mutated only under the monitor's lock."""

    __slots__ = ("classes", "closed", "counts", "opened", "rows")

    def __init__(self, features: int, bins: int, classes: int) -> None:
        self.counts = np.zeros((features, bins), np.int64)
        self.classes = np.zeros(classes, np.int64)
        self.rows = 0
        self.opened = 0.0  # clock time of the first row
        self.closed = 0.0


@dataclass(frozen=True, slots=True)
class WindowResult:
    """One closed window's distances and verdict."""

    start_s: float  # epoch seconds
    end_s: float
    rows: int
    judged: bool
    level: int
    psi: Array
    js: Array
    ks: Array
    class_distance: float | None
    psi_floor: Array | None = None  # each feature's PSI noise floor at this window's size

    @property
    def psi_noise(self) -> float:
        """The largest feature's noise floor; 0 with the floor off."""
        return float(self.psi_floor.max()) if self.psi_floor is not None else 0.0

    @property
    def max_psi(self) -> float | None:
        return _finite(np.fmax.reduce(self.psi)) if self.psi.size else None

    def summary(self) -> dict[str, Any]:
        """The ring's view: times, size, worst PSI, class distance and verdict."""
        return {
            "start": _iso(self.start_s),
            "end": _iso(self.end_s),
            "rows": self.rows,
            "judged": self.judged,
            "max_psi": self.max_psi,
            "class_distance": self.class_distance,
            "psi_noise": self.psi_noise,
            "warn": self.judged and self.level >= WARN,
            "alert": self.judged and self.level == ALERT,
        }

    def detail(self, names: tuple[str, ...]) -> dict[str, Any]:
        """The summary plus every feature's distances by name."""
        per_feature = {s: dict(zip(names, map(_finite, getattr(self, s)), strict=True))
                       for s in STATISTICS}  # fmt: skip
        if self.psi_floor is not None:
            per_feature["psi_floor"] = dict(zip(names, self.psi_floor.tolist(), strict=True))
        return {**self.summary(), **per_feature}

    def worst(self, names: tuple[str, ...], k: int = WORST_FEATURES) -> list[dict[str, Any]]:
        """The k features with the largest PSI, largest first."""
        order = np.argsort(-np.nan_to_num(self.psi, nan=-1.0), kind="stable")[:k]
        return [
            {"feature": names[i], **{s: _finite(getattr(self, s)[i]) for s in STATISTICS}}
            for i in order
        ]


def _finite(value: Any) -> float | None:
    """A float for JSON, None for NaN (a feature with no values in the window)."""
    v = float(value)
    return v if math.isfinite(v) else None


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")
