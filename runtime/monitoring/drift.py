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

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from kernels import compiled
from runtime.monitoring import profile as profiles
from runtime.monitoring.profile import ReferenceProfile

log = logging.getLogger(__name__)

Array = NDArray[np.float64]

OK: Final = 0
WARN: Final = 1
ALERT: Final = 2
WORST_FEATURES = 5
BUFFER_BYTES = 64 * 1024
STATISTICS = ("psi", "js", "ks")


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


# ----------------------------------------------------------------------------- statistics


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


# ----------------------------------------------------------------------------- windows


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


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One Prometheus family as plain data; metrics.py turns it into prometheus_client's."""

    name: str
    documentation: str
    kind: str  # "gauge" or "counter" (a counter's name is given without `_total`)
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- the monitor


class DriftMonitor:
    """One model version's drift monitor: `observe` on the hot path, `tick` off it."""

    def __init__(
        self,
        profile: ReferenceProfile,
        settings: DriftSettings,
        model_name: str,
        version: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.profile = profile
        self.settings = settings
        self.model_name = model_name
        self.version = version
        self._clock = clock
        self._wall_offset_s = time.time() - clock()
        self._classes = int(profile.class_proportions.size) if profile.output_name else 0
        self._features = profile.features
        self._noise = self._noise_quantiles(profile, settings.noise_alpha)
        self._batches = itertools.count()
        self._lock = threading.Lock()  # the open window and the pending deque
        self._window = self._new_window()
        # Rows of the open window not yet binned: at most BUFFER_BYTES of float32 (float64
        # for other inputs), and at most 256 rows.
        rows = min(max(BUFFER_BYTES // (4 * profile.features), 1), 256)
        self._buffer = np.empty((rows, profile.features), np.float32)
        self._buffered = 0
        self._pending: deque[_Window] = deque(maxlen=settings.ring)
        self._judge_lock = threading.Lock()  # everything below
        self._ring: deque[WindowResult] = deque(maxlen=settings.ring)
        self._last: WindowResult | None = None
        self.alert = False
        self.warn = False
        self.windows_closed = 0
        self.windows_judged = 0
        self.alerts_raised = 0
        self.batches_skipped = 0
        self.windows_dropped = 0  # closed while `ring` windows already awaited `tick`

    def _noise_quantiles(
        self, profile: ReferenceProfile, alpha: float
    ) -> tuple[Array, float] | None:
        """Per feature chi2 quantile at 1 - alpha / features, and the classes' at 1 - alpha
        (degrees of freedom: the bins, or classes, the reference fills, less one)."""
        if alpha >= 1:
            return None
        filled = np.maximum(np.count_nonzero(profile.proportions > 0, axis=1) - 1, 1)
        per_feature = chi2_quantile(1 - alpha / profile.features, filled)
        per_feature *= _psi_noise_ratio(profile, filled, self.settings.min_samples)
        classes = np.count_nonzero(profile.class_proportions > 0) - 1
        return per_feature, float(chi2_quantile(1 - alpha, np.array([classes]))[0])

    def floors(self, rows: int) -> NoiseFloors | None:
        """The noise floors for a window of `rows` rows against this profile."""
        if self._noise is None or rows <= 0:
            return None
        per_feature, classes = self._noise
        scale = 1 / rows + (1 / self.profile.rows if self.profile.rows else 0.0)
        psi_floor = per_feature * scale
        # For close distributions JS divergence is PSI / (8 ln 2) and the chi-squared class
        # distance PSI / 4 (see the settings).
        js_floor = np.sqrt(psi_floor / (8 * math.log(2)))
        return NoiseFloors(psi_floor, js_floor, classes * scale / 4)

    def _new_window(self) -> _Window:
        edges = self.profile.edges
        return _Window(edges.shape[0], edges.shape[1] + 1, self._classes)

    # -- hot path

    def observe(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Add one executed batch to the open window (every k-th batch when `every` > 1).

        Small batches are copied into a buffer of a few hundred rows and binned together
        when it fills or the window closes: in a loaded server each call of the histogram
        kernel finds its edges and counts out of cache, and cost 18 µs of CPU for a one-row
        batch of 64 features against 4.5 µs in a tight loop. Batches as large as the buffer
        are binned directly, into the window's counts."""
        if next(self._batches) % self.settings.every:
            return
        rows = self._rows(inputs.get(self.profile.input_name))
        if rows is None or not rows.shape[0]:
            return
        n = rows.shape[0]
        scores = self._class_scores(outputs, n) if self._classes else None
        now = self._clock()
        with self._lock:
            window = self._window
            if window.rows and now - window.opened >= self.settings.window_seconds:
                window = self._close(now)  # its time ran out before this batch came
            if not window.rows:
                window.opened = now
            self._bin(rows, window)
            if scores is not None:
                self._add_classes(scores, window.classes)
            window.rows += n
            if window.rows >= self.settings.window_samples:
                self._close(now)

    def _bin(self, rows: np.ndarray, window: _Window) -> None:
        """Buffer the rows, or bin them when they fill the buffer (lock held)."""
        n = rows.shape[0]
        if (rows.dtype.char == "f") != (self._buffer.dtype.char == "f"):
            self._flush(window)
            dtype = np.float32 if rows.dtype.char == "f" else np.float64
            self._buffer = np.empty_like(self._buffer, dtype=dtype)
        if self._buffered + n > len(self._buffer):
            self._flush(window)
        if n >= len(self._buffer):
            compiled.histogram_add(rows, self.profile.edges, window.counts)
            return
        self._buffer[self._buffered : self._buffered + n] = rows
        self._buffered += n

    def _flush(self, window: _Window) -> None:
        if self._buffered:
            buffered = self._buffer[: self._buffered]
            compiled.histogram_add(buffered, self.profile.edges, window.counts)
            self._buffered = 0

    def warm(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Run observe's kernels once on tensors shaped and typed as the model's (zeros), into
        scratch counts: the first batch then pays no compile or cache load (about 0.1 s of
        Numba's own start-up in a fresh process). The window and counters are untouched."""
        x = inputs.get(self.profile.input_name)
        features = self.profile.features
        if x is not None and x.ndim and x.dtype.kind in "biuf" and x.size == len(x) * features:
            counts = np.zeros_like(self._window.counts)
            # One row, and a full buffer (with few features, a different layout); writable,
            # and read-only as raw gRPC and binary HTTP tensors are (a separate Numba
            # signature), since batches as large as the buffer are binned without a copy.
            for n in (1, len(self._buffer)):
                rows = np.zeros((n, features), x.dtype)
                compiled.histogram_add(rows, self.profile.edges, counts)
                rows.flags.writeable = False
                compiled.histogram_add(rows, self.profile.edges, counts)
        scores = self._class_scores(outputs, len(x)) if self._classes and x is not None else None
        if scores is not None:
            self._add_classes(scores, np.zeros_like(self._window.classes))

    def _rows(self, x: np.ndarray | None) -> np.ndarray | None:
        """The profile's input as [N, F], or None (counted, logged once) when it does not fit."""
        fits = x is not None and x.ndim == 2 and x.shape[1] == self._features
        if fits and x.dtype.kind in "biuf":  # type: ignore[union-attr]
            return x  # already [N, F]: no reshape (a third of this method's time)
        if x is None or x.ndim == 0 or x.dtype.kind not in "biuf":
            why = f"no numeric input '{self.profile.input_name}'"
        elif x.size != x.shape[0] * self.profile.features:
            why = f"input of shape {x.shape}, the profile has {self.profile.features} features"
        else:
            return x.reshape(x.shape[0], self.profile.features)
        if not self.batches_skipped:
            log.warning("drift monitor for %s v%s skips batches: %s",
                        self.model_name, self.version, why)  # fmt: skip
        self.batches_skipped += 1
        return None

    def _class_scores(self, outputs: Mapping[str, np.ndarray], rows: int) -> np.ndarray | None:
        """The output as [N, C] scores or [N, 1] integer labels, or None when it is absent or
        does not fit."""
        y = outputs.get(self.profile.output_name)
        if y is None or y.ndim == 0 or y.shape[0] != rows or not y.size:
            return None
        scores = y.reshape(rows, -1)
        if y.dtype.kind in "iu" and scores.shape[1] == 1:
            return scores
        if scores.shape[1] != self._classes or y.dtype.kind not in "biuf":
            return None
        return scores

    def _add_classes(self, scores: np.ndarray, counts: NDArray[np.int64]) -> None:
        """Rows per predicted class (argmax, or the label itself) added to counts."""
        if scores.dtype.kind in "iu" and scores.shape[1] == 1:
            labels = scores[:, 0]
            labels = labels[(labels >= 0) & (labels < self._classes)]
            counts += np.bincount(labels, minlength=self._classes)
        else:
            compiled.argmax_add(scores, counts)

    def _close(self, now: float) -> _Window:
        """Hand the open window to `tick` and open a fresh one (lock held)."""
        self._flush(self._window)
        self._window.closed = now
        if len(self._pending) == self._pending.maxlen:
            self.windows_dropped += 1
        self._pending.append(self._window)
        self._window = self._new_window()
        return self._window

    # -- off the hot path

    def tick(self, now: float | None = None) -> None:
        """Close the open window if its time is up, then judge every closed window."""
        now = self._clock() if now is None else now
        with self._judge_lock:  # first, so that concurrent ticks judge windows in order
            with self._lock:
                window = self._window
                if window.rows and now - window.opened >= self.settings.window_seconds:
                    self._close(now)
                closed = list(self._pending)
                self._pending.clear()
            for window in closed:
                self._judge(window)

    def _judge(self, window: _Window) -> None:
        result = self._evaluate(window)
        self.windows_closed += 1
        self._ring.append(result)
        if result.judged:
            self.windows_judged += 1
            self._last = result
            self._transition(result.level)

    def _evaluate(self, window: _Window) -> WindowResult:
        p = shares(window.counts)
        q = self.profile.proportions
        dist = None
        if self._classes and window.classes.sum():
            dist = class_distance(shares(window.classes), self.profile.class_proportions)
        scores = psi(p, q, self.settings.epsilon), js_distance(p, q), ks_binned(p, q)
        judged = window.rows >= self.settings.min_samples
        floors = self.floors(window.rows)
        level = self.settings.level(scores[0], scores[1], dist, floors) if judged else OK
        offset = self._wall_offset_s
        noise = floors.psi if floors is not None else None
        return WindowResult(window.opened + offset, window.closed + offset, window.rows,
                            judged, level, *scores, dist, noise)  # fmt: skip

    def _transition(self, level: int) -> None:
        """Enter alert at ALERT; leave it only at OK, so a score hovering at the alert
        threshold does not flap. Each transition is logged once."""
        was = self.alert
        self.warn = level >= WARN
        if level == ALERT and not was:
            self.alert = True
            self.alerts_raised += 1
            log.warning("drift alert for %s v%s: %s", self.model_name, self.version,
                        self._describe())  # fmt: skip
        elif level == OK and was:
            self.alert = False
            log.info("drift alert cleared for %s v%s", self.model_name, self.version)

    def _describe(self) -> str:
        assert self._last is not None
        worst = self._last.worst(self.profile.feature_names, 3)
        parts = [f"{w['feature']} psi={w['psi']:.3f}" for w in worst if w["psi"] is not None]
        if self._last.class_distance is not None:
            parts.append(f"class distance={self._last.class_distance:.3f}")
        return ", ".join(parts)

    # -- reading

    def report(self) -> dict[str, Any]:
        """JSON-ready state: settings, the last judged window, worst features, the ring."""
        names = self.profile.feature_names
        with self._judge_lock:
            last = self._last
            return {
                "model": self.model_name,
                "version": self.version,
                "settings": asdict(self.settings),
                "alert": self.alert,
                "warn": self.warn,
                "windows_closed": self.windows_closed,
                "windows_judged": self.windows_judged,
                "alerts_raised": self.alerts_raised,
                "windows_dropped": self.windows_dropped,
                "batches_skipped": self.batches_skipped,
                "last_window": last.detail(names) if last else None,
                "worst_features": last.worst(names) if last else [],
                "recent": [r.summary() for r in self._ring],
            }

    def metric_families(self) -> list[MetricFamily]:
        """This monitor's Prometheus samples: one series per feature and statistic, no bins."""
        return metric_families([self])

    def _samples(self, families: dict[str, MetricFamily]) -> None:
        labels = (self.model_name, self.version)
        with self._judge_lock:
            last = self._last
            families["alert"].samples.append((labels, float(self.alert)))
            families["warn"].samples.append((labels, float(self.warn)))
            families["windows"].samples.append((labels, float(self.windows_judged)))
            if last is None:
                return
            families["rows"].samples.append((labels, float(last.rows)))
            if last.class_distance is not None:
                families["class"].samples.append((labels, last.class_distance))
        for stat in STATISTICS:
            for name, value in zip(self.profile.feature_names, getattr(last, stat), strict=True):
                families["score"].samples.append(((*labels, name, stat), float(value)))


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


def predicted_classes(y: np.ndarray) -> NDArray[np.int64]:
    """Class per row: an integer [N] or [N, 1] output is labels already; scores are argmaxed."""
    rows = y.reshape(y.shape[0], -1)
    if y.dtype.kind in "iu" and rows.shape[1] == 1:
        return np.asarray(rows[:, 0], np.int64)
    return np.asarray(np.argmax(rows, axis=1), np.int64)


def from_samples(
    path: Path | str,
    input_name: str,
    output_name: str = "",
    bins: int = profiles.DEFAULT_BINS,
    feature_names: tuple[str, ...] = (),
) -> ReferenceProfile:
    """A profile built from a .npz of sample rows: an array named after the model's input and,
    optionally, one named after its output (scores [N, C] or integer labels [N])."""
    with np.load(path, allow_pickle=False) as data:
        if input_name not in data.files:
            raise ValueError(f"reference samples '{path}' have no array '{input_name}'")
        inputs = np.asarray(data[input_name])
        outputs = np.asarray(data[output_name]) if output_name in data.files else None
    if outputs is not None and len(outputs) != len(inputs):
        raise ValueError(
            f"reference samples '{path}': {len(outputs)} rows of '{output_name}' "
            f"for {len(inputs)} rows of '{input_name}'"
        )
    if outputs is not None:
        outputs = _one_hot_labels(outputs)
    return profiles.build(inputs, input_name, outputs, output_name if outputs is not None else "",
                          bins, feature_names)  # fmt: skip


def _one_hot_labels(outputs: np.ndarray) -> np.ndarray:
    """Scores pass through; integer labels become one-hot so that `build` argmaxes them back."""
    labels = predicted_classes(outputs)
    if outputs.dtype.kind not in "iu" or outputs.reshape(len(outputs), -1).shape[1] != 1:
        return outputs
    if labels.size and labels.min() < 0:
        raise ValueError("class labels must be >= 0")
    return np.eye(int(labels.max(initial=0)) + 1)[labels]


# ----------------------------------------------------------------------------- at load

# Keys of a model's `drift:` section that choose the monitor rather than tune it.
ENABLED_KEY = "enabled"
REFERENCE_KEY = "reference"


def monitor_for(
    model_name: str,
    version: str,
    version_dir: Path,
    doc: Mapping[str, Any] | None,
    input_names: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> DriftMonitor | None:
    """The monitor a model version gets, or None when it has no reference to compare with.

    The reference is the version's drift_profile.npz, or, when the model's `drift:` section
    names `reference: FILE`, a .npz of sample rows (in the version folder, else the model
    folder) built into a profile now. `enabled: false` turns the monitor off. The server's
    defaults (--drift-window-*) apply under the model's own settings. ValueError says what
    is wrong.
    """
    section = dict(doc or {})
    enabled = section.pop(ENABLED_KEY, True)
    reference = section.pop(REFERENCE_KEY, None)
    if not isinstance(enabled, bool):
        raise ValueError(f"drift setting '{ENABLED_KEY}' must be true or false, got {enabled!r}")
    settings = DriftSettings.from_mapping({**(defaults or {}), **section})
    if not enabled:
        return None
    profile = _reference_profile(version_dir, reference, input_names)
    if profile is None:
        return None
    names = set(input_names)
    if profile.input_name not in names:
        raise ValueError(
            f"the drift profile watches input '{profile.input_name}', but the model's inputs "
            f"are {sorted(names)}"
        )
    return DriftMonitor(profile, settings, model_name, version)


def _reference_profile(
    version_dir: Path, reference: Any, input_names: Iterable[str]
) -> ReferenceProfile | None:
    if reference is None:
        path = version_dir / profiles.FILENAME
        return profiles.load(path) if path.is_file() else None
    if not isinstance(reference, str):
        raise ValueError(f"drift setting '{REFERENCE_KEY}' must be a file name, got {reference!r}")
    candidates = [version_dir / reference, version_dir.parent / reference]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ValueError(
            f"drift reference '{reference}' is in neither '{version_dir}' "
            f"nor '{version_dir.parent}'"
        )
    path = found
    names = sorted(input_names)
    with np.load(path, allow_pickle=False) as data:
        watched = next((n for n in names if n in data.files), None)
        outputs = [n for n in data.files if n not in names]
    if watched is None:
        raise ValueError(f"drift reference '{path}' holds none of the model's inputs {names}")
    return from_samples(path, watched, outputs[0] if len(outputs) == 1 else "")
