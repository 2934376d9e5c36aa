"""DriftMonitor: one model version's traffic binned on the hot path (`observe`), its closed
windows judged off it (`tick`), and its report."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from kernels import compiled
from runtime.monitoring.drift.config import ALERT, OK, WARN, DriftSettings
from runtime.monitoring.drift.metric import MetricFamily, metric_families
from runtime.monitoring.drift.noise import NoiseFloors, _psi_noise_ratio, chi2_quantile
from runtime.monitoring.drift.score import (
    STATISTICS,
    Array,
    class_distance,
    js_distance,
    ks_binned,
    psi,
    shares,
)
from runtime.monitoring.drift.window import WindowResult, _Window
from runtime.monitoring.profile import ReferenceProfile

# Named for the package rather than this module, so that log settings and filters keyed on
# runtime.monitoring.drift keep seeing the monitor's records.
log = logging.getLogger("runtime.monitoring.drift")

BUFFER_BYTES = 64 * 1024


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
