"""DriftSettings, a model's `drift:` section in conveyor.yaml: how its monitor windows,
samples and judges traffic, and the OK, WARN and ALERT levels a window is judged at."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np

from runtime.monitoring.drift.noise import NoiseFloors
from runtime.monitoring.drift.score import Array

OK: Final = 0
WARN: Final = 1
ALERT: Final = 2


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """How a model's drift monitor windows, samples and judges traffic (`drift:` in conveyor.yaml).

    With the defaults, 20 Gaussian features and windows of 1000 rows, the largest PSI of a
    window without drift stays under 0.05 (0 alerts in 1000 windows), and a 0.5-sigma mean
    shift of one feature gives a PSI of about 0.24 (tests/unit/test_drift.py measures).
    """

    window_samples: int = 1000
    """A window closes when it holds this many rows (at the batch that reaches it)."""
    window_seconds: float = 60.0
    """...or this many seconds after its first row, whichever comes first."""
    every: int = 1
    """Bin every k-th executed batch only; 1 bins all of them."""
    ring: int = 12
    """Closed windows kept for the report; also bounds windows awaiting `tick`."""
    min_samples: int = 300
    """A window closed by time with fewer rows is recorded but not judged: small samples
    inflate every distance (PSI averages about (bins - 1) / rows with no drift at all; the
    largest of 20 features' PSI passes 0.2 in about 1 window in 1000 at 200 rows)."""
    psi_warn: float = 0.1
    """Population stability index at which a feature counts as moving (industry convention)."""
    psi_alert: float = 0.2
    """PSI at which a feature counts as drifted."""
    js_warn: float = 0.13
    """Jensen-Shannon distance (base 2) for warn; for close distributions JS divergence is
    about PSI / (8 ln 2), so 0.13 matches psi_warn."""
    js_alert: float = 0.19
    """JS distance for alert; matches psi_alert the same way."""
    class_warn: float = 0.015
    """Chi-squared distance between predicted-class shares and the reference's for warn."""
    class_alert: float = 0.03
    """Chi-squared class distance for alert. For close distributions it is about PSI / 4,
    so 0.03 is PSI 0.12: tighter than psi_alert because it is one statistic, not the
    largest of many features. With no drift it is about chi2(C - 1) / (4 rows): for 10
    classes it passes 0.03 at 300 rows with probability 4e-5."""
    noise_alpha: float = 0.001
    """How often a window without drift may reach a threshold through sampling noise alone.
    Each feature's thresholds are raised, for the window's rows n and the profile's rows N,
    to the PSI that noise reaches with probability noise_alpha / features: chi-squared,
    PSI ~ chi2(bins - 1) (1/n + 1/N), scaled by how much noisier PSI is than that for the
    feature (simulated at load); likewise JS and the class distance. At 1000 rows against
    20,000 Gaussian rows it stays under the defaults; at 300 rows against the digits' 1,078
    it is about 0.21 for the median pixel, where half of the windows warned before
    (benchmarks/drift_null.py). 1 turns it off."""
    epsilon: float = 1e-4
    """Added to every bin's share (both sides, then renormalised) before PSI's logarithm, so
    a bin empty on one side (the reference's under/overflow bins) gives a finite value."""

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name))
        if self.min_samples > self.window_samples:
            raise ValueError(
                f"drift setting 'min_samples' ({self.min_samples}) must not exceed "
                f"'window_samples' ({self.window_samples})"
            )
        for stat in ("psi", "js", "class"):
            warn, alert = getattr(self, f"{stat}_warn"), getattr(self, f"{stat}_alert")
            if warn > alert:
                raise ValueError(
                    f"drift setting '{stat}_warn' ({warn}) must not exceed '{stat}_alert' ({alert})"
                )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DriftSettings:
        """Defaults overridden by a `drift:` mapping whose keys are field names."""
        data = data or {}
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"unknown drift setting '{key}'; expected one of {sorted(known)}")
        values: dict[str, Any] = {key: _coerce(key, value) for key, value in data.items()}
        if "window_samples" in values and "min_samples" not in values:
            # Small windows judge what they hold rather than refuse to judge at all.
            values["min_samples"] = min(cls().min_samples, values["window_samples"])
        return cls(**values)

    def level(
        self,
        psi: Array,
        js: Array,
        class_distance: float | None,
        floors: NoiseFloors | None = None,
    ) -> int:
        """OK, WARN or ALERT for one judged window.

        ALERT when any feature's PSI or JS distance, or the class distance, reaches its alert
        threshold; WARN likewise. The worst feature decides, not a share of drifted features,
        so a shift confined to 3 of 20 features alerts; no multiplicity correction is needed
        because with no drift the largest of 20 PSIs at 1000 rows stays near 0.04, far below
        0.2. JS thresholds are matched to PSI's, so by default they agree; JS is there for
        those who tune by it (bounded, and free of epsilon).
        """
        f = floors or NoiseFloors(np.zeros_like(psi), np.zeros_like(js), 0.0)
        cls_d = -1.0 if class_distance is None else class_distance
        if _reaches(psi, self.psi_alert, f.psi) or _reaches(js, self.js_alert, f.js):
            return ALERT
        if cls_d >= max(self.class_alert, f.classes):
            return ALERT
        if _reaches(psi, self.psi_warn, f.psi) or _reaches(js, self.js_warn, f.js):
            return WARN
        return WARN if cls_d >= max(self.class_warn, f.classes) else OK


_INT_FIELDS = frozenset({"window_samples", "every", "ring", "min_samples"})
_UNIT_FIELDS = frozenset({"js_warn", "js_alert", "class_warn", "class_alert", "noise_alpha"})


def _check_value(name: str, value: Any) -> None:
    """Positive, and at most 1 for the bounded distances and epsilon."""
    if not value > 0:
        raise ValueError(f"drift setting '{name}' must be > 0, got {value!r}")
    if name in _UNIT_FIELDS and value > 1:
        what = "a probability" if name == "noise_alpha" else "a distance"
        raise ValueError(f"drift setting '{name}' is {what} in (0, 1], got {value!r}")
    if name == "epsilon" and value > 0.01:
        raise ValueError(f"drift setting 'epsilon' must be at most 0.01, got {value!r}")


def _coerce(name: str, value: Any) -> int | float:
    """A YAML value checked for the field's type: whole numbers for counts, numbers otherwise."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    is_number = is_number and math.isfinite(value)
    if name in _INT_FIELDS:
        if not is_number or value != int(value):
            raise ValueError(f"drift setting '{name}' must be a whole number, got {value!r}")
        return int(value)
    if not is_number:
        raise ValueError(f"drift setting '{name}' must be a number, got {value!r}")
    return float(value)


def _reaches(values: Array, threshold: float, floor: Array) -> bool:
    return bool(np.any(values >= np.maximum(threshold, floor)))
