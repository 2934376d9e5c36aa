"""Queue-depth autoscaling signals: load over a sliding window, and the replicas it calls for.

Each model version keeps a ring of time buckets (arrivals, completions, busy time and the
time-integral of requests in flight), updated on the event loop only, so no locks. From
it: arrival and completion rates, instance utilisation, the time-averaged number in
flight, and by Little's law the in-flight level one replica can hold within a latency
target; `desired_replicas` is what this replica's load asks for against that level,
with the HPA's tolerance so it does not flap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.events import BatchDone, Subscriber

BUCKETS = 10


@dataclass(frozen=True, slots=True)
class AutoscalePolicy:
    """How the signals turn into a replica count (settable from the command line)."""

    window_s: float = 10.0
    latency_target_s: float = 0.1
    # Run replicas at this fraction of what they can hold: waiting time explodes near
    # saturation (M/M/1: W = S / (1 - rho)); 0.7 is Knative's default.
    headroom: float = 0.7
    tolerance: float = 0.1  # the HPA's default


class LoadWindow(Subscriber):
    """One model version's load over the last `window_s` seconds."""

    def __init__(
        self, instance_count: int, policy: AutoscalePolicy,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:  # fmt: skip
        self.instances = max(1, instance_count)
        self.policy = policy
        self._clock = clock
        self._bucket_ns = max(1, int(policy.window_s * 1e9 / BUCKETS))
        self._arrivals = [0] * BUCKETS
        self._completions = [0] * BUCKETS
        self._busy_ns = [0] * BUCKETS
        self._area = [0] * BUCKETS  # requests in flight x ns
        self._started = clock()
        self._bucket = self._started // self._bucket_ns
        self._changed = self._started
        self.in_flight = 0

    def _advance(self, now: int) -> int:
        """Move to the bucket of `now`, clearing the ones passed; return its slot."""
        bucket = now // self._bucket_ns
        for b in range(self._bucket + 1, min(bucket, self._bucket + BUCKETS) + 1):
            i = b % BUCKETS
            self._arrivals[i] = self._completions[i] = self._busy_ns[i] = self._area[i] = 0
        self._bucket = max(self._bucket, bucket)
        return self._bucket % BUCKETS

    def _integrate(self, now: int) -> int:
        slot = self._advance(now)
        self._area[slot] += self.in_flight * (now - self._changed)
        self._changed = now
        return slot

    def arrived(self) -> None:
        slot = self._integrate(self._clock())
        self._arrivals[slot] += 1
        self.in_flight += 1

    def request_done(self, duration_ns: int, error: BaseException | None, protocol: str) -> None:
        slot = self._integrate(self._clock())
        self._completions[slot] += 1
        self.in_flight -= 1

    def batch_done(self, batch: BatchDone) -> None:
        now = self._clock()
        self._busy_ns[self._advance(now)] += now - batch.dispatched_ns

    def signals(self, queue_depth: int) -> dict[str, Any]:
        """The window's rates and levels, and the replicas they call for."""
        now = self._clock()
        self._integrate(now)
        span_ns = max(1, min(now - self._started, BUCKETS * self._bucket_ns))
        span_s = span_ns / 1e9
        completions = sum(self._completions)
        utilisation = min(1.0, sum(self._busy_ns) / (span_ns * self.instances))
        completion_rate = completions / span_s
        result: dict[str, Any] = {
            "queue_depth": queue_depth,
            "in_flight": self.in_flight,
            "in_flight_avg": sum(self._area) / span_ns,
            "arrival_rate": sum(self._arrivals) / span_s,
            "completion_rate": completion_rate,
            "utilisation": utilisation,
            "window_s": span_s,
        }
        result.update(self._replicas(result["in_flight_avg"], completion_rate, utilisation))
        return result

    def _replicas(self, in_flight: float, rate: float, utilisation: float) -> dict[str, Any]:
        # Capacity = what the instances would complete if always busy (needs some load to
        # measure); Little's law turns it into the in-flight level the target allows.
        if utilisation < 0.01 or rate <= 0:
            return {"capacity_rps": None, "target_in_flight": None,
                    "desired_replicas": 1 if in_flight > 0 else 0}  # fmt: skip
        capacity = rate / utilisation
        target = max(1.0, capacity * self.policy.latency_target_s * self.policy.headroom)
        ratio = in_flight / target
        desired = 1 if abs(ratio - 1) <= self.policy.tolerance else math.ceil(ratio)
        return {"capacity_rps": capacity, "target_in_flight": target, "desired_replicas": desired}
