"""SLO-adaptive batching: tune the batch cap and queue delay online to meet a p99 target.

Additive increase, multiplicative decrease (as Clipper does for its batch size), applied
to the cause of a miss rather than to the symptom:

- the batch cap is cut only when running a batch itself takes more than half the
  target; when the time goes to queueing behind busy instances, a smaller batch would
  lower throughput and lengthen the queue (a spiral down to batches of one), so the
  cap is allowed to grow instead;
- the deliberate wait for a fuller batch exists for throughput, so it follows how busy
  the instances are. Mostly idle (under half busy), it is dropped: fuller batches are not
  needed, and the wait is pure latency (a fixed 5 ms wait is the whole difference between
  meeting and missing a 10 ms p99 on a CNN at 40% load; benchmarks/slo.py). Busy nearly
  all the time, it grows: the miss is queueing, and a shorter wait would only make smaller
  batches, each paying the per-batch cost, and lower the throughput the queue needs
  (measured: at 1,600 images/s on a CNN, cutting it spiralled to batches of 4 and
  half-second latencies where a fixed 5 ms wait held batches of 17). In between, it is
  cut when the target is missed and grows while p99 is comfortably under it. It never
  exceeds half the target.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

WINDOW = 128  # requests per decision: enough for a p99, few enough to react within a second
DECREASE = 0.75  # multiplicative cut
HEADROOM = 0.8  # grow the wait only while p99 is under this fraction of the target
COMPUTE_SHARE = 0.5  # of the target, the most one batch's run may take
SATURATED = 0.8  # busy share of the instances above which a miss is taken for queueing
IDLE = 0.5  # busy share below which waiting for fuller batches buys nothing


class SloController:
    """Holds the current batch cap and delay; `observe` feeds it finished requests."""

    def __init__(
        self,
        target_ns: int,
        max_rows: int,
        initial_delay_ns: int = 0,
        instances: int = 1,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        if target_ns <= 0:
            raise ValueError("the latency target must be positive")
        self.instances = max(1, instances)
        self.clock = clock
        self._window_start_ns = clock()
        self._busy_ns = 0
        self.last_utilisation = 0.0
        self.target_ns = target_ns
        self.max_rows = max(1, max_rows)
        self.rows_cap = self.max_rows
        self.max_delay_ns = int(target_ns * (1 - COMPUTE_SHARE))
        self.delay_ns = min(initial_delay_ns, self.max_delay_ns)
        self._row_step = max(1, self.max_rows // 16)
        self._delay_step = max(1, target_ns // 20)
        self._total = np.empty(WINDOW, dtype=np.int64)
        self._compute = np.empty(WINDOW, dtype=np.int64)
        self._filled = 0
        self._last_compute_ns = 0
        self.last_p99_ns = 0

    def observe_batch(self, compute_ns: int) -> None:
        """The run time of the latest batch (dispatch to results)."""
        self._last_compute_ns = compute_ns
        self._busy_ns += compute_ns

    def observe_request(self, latency_ns: int) -> None:
        """One answered request, from when the server took it to when its answer was ready."""
        self._total[self._filled] = latency_ns
        self._compute[self._filled] = self._last_compute_ns
        self._filled += 1
        if self._filled == WINDOW:
            self._decide()
            self._filled = 0

    def _decide(self) -> None:
        p99 = int(np.percentile(self._total, 99))
        compute_p99 = int(np.percentile(self._compute, 99))
        self.last_p99_ns = p99
        self.last_utilisation = self._utilisation()
        if compute_p99 > self.target_ns * COMPUTE_SHARE:
            self.rows_cap = max(1, int(self.rows_cap * DECREASE))
        elif self.rows_cap < self.max_rows:
            self.rows_cap = min(self.max_rows, self.rows_cap + self._row_step)
        self._tune_delay(p99, self.last_utilisation)

    def _tune_delay(self, p99: int, utilisation: float) -> None:
        """Wait for fuller batches only while the throughput they bring is needed."""
        if utilisation >= SATURATED:
            grow = True  # queueing behind busy instances: bigger batches drain it faster
        elif utilisation < IDLE:
            self.delay_ns = 0  # idle instances need no fuller batches: no wait at all
            return
        elif p99 > self.target_ns:
            grow = False
        elif p99 < self.target_ns * HEADROOM:
            grow = True
        else:
            return
        if grow:
            self.delay_ns = min(self.max_delay_ns, self.delay_ns + self._delay_step)
        else:
            delay = int(self.delay_ns * DECREASE)
            self.delay_ns = delay if delay >= 1000 else 0  # under a microsecond: no wait

    def _utilisation(self) -> float:
        """Busy share of the instances since the last decision."""
        now = self.clock()
        elapsed = max(1, now - self._window_start_ns) * self.instances
        busy, self._busy_ns, self._window_start_ns = self._busy_ns, 0, now
        return busy / elapsed
