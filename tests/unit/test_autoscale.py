"""The load window and the replica count it asks for, on a clock the test moves."""

from __future__ import annotations

import pytest

from runtime.events import BatchDone
from runtime.monitoring.autoscale import BUCKETS, AutoscalePolicy, LoadWindow

S = 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100 * S

    def __call__(self) -> int:
        return self.now


def window(policy: AutoscalePolicy | None = None, instances: int = 1) -> tuple[LoadWindow, Clock]:
    clock = Clock()
    return LoadWindow(instances, policy or AutoscalePolicy(window_s=10.0), clock), clock


def test_idle_model_asks_for_nothing() -> None:
    load, clock = window()
    clock.now += 5 * S
    signals = load.signals(queue_depth=0)
    assert signals["arrival_rate"] == 0
    assert signals["in_flight_avg"] == 0
    assert signals["desired_replicas"] == 0


def test_rates_levels_and_utilisation_over_the_window() -> None:
    load, clock = window()
    for _ in range(10):  # ten requests, each in flight for 0.5 s, one batch of 0.25 s each
        load.arrived()
        clock.now += S // 2
        load.batch_done(
            BatchDone(1, 0, 0, 0, dispatched_ns=clock.now - S // 4, requests=[], ok=True)
        )
        load.request_done(S // 2, None, "http")
    signals = load.signals(queue_depth=3)
    assert signals["window_s"] == 5.0
    assert signals["arrival_rate"] == pytest.approx(2.0)
    assert signals["completion_rate"] == pytest.approx(2.0)
    assert signals["in_flight_avg"] == pytest.approx(1.0)
    assert signals["utilisation"] == pytest.approx(0.5)
    assert signals["queue_depth"] == 3
    assert signals["in_flight"] == 0


def test_old_buckets_fall_out_of_the_window() -> None:
    load, clock = window()
    for _ in range(20):
        load.arrived()
        load.request_done(0, None, "grpc")
    clock.now += 11 * S  # past the whole window
    assert load.signals(0)["arrival_rate"] == 0
    load.arrived()
    assert load.signals(0)["arrival_rate"] == pytest.approx(1 / 10)
    assert BUCKETS == 10


def _steady(
    load: LoadWindow, clock: Clock, in_flight: int, utilisation: float, rate: float
) -> None:
    """Ten seconds at a steady level: `in_flight` requests, completing at `rate`."""
    for _ in range(in_flight):
        load.arrived()
    step = S // 10
    for _ in range(100):
        clock.now += step
        load.batch_done(
            BatchDone(1, 0, 0, 0, clock.now - int(step * utilisation), requests=[], ok=True)
        )
        for _ in range(int(rate / 10)):
            load.request_done(0, None, "http")
            load.arrived()


def test_desired_replicas_follow_littles_law() -> None:
    policy = AutoscalePolicy(window_s=10.0, latency_target_s=0.1, headroom=0.5)
    load, clock = window(policy)
    # 100 req/s at 50% busy: capacity 200 req/s; target in flight 200 * 0.1 * 0.5 = 10.
    _steady(load, clock, in_flight=30, utilisation=0.5, rate=100)
    signals = load.signals(0)
    assert signals["capacity_rps"] == pytest.approx(200, rel=0.02)
    assert signals["target_in_flight"] == pytest.approx(10, rel=0.02)
    assert signals["desired_replicas"] == 3


def test_within_the_tolerance_one_replica_is_enough() -> None:
    policy = AutoscalePolicy(window_s=10.0, latency_target_s=0.1, headroom=0.5)
    load, clock = window(policy)
    _steady(load, clock, in_flight=11, utilisation=0.5, rate=100)  # ratio 1.1
    assert load.signals(0)["desired_replicas"] == 1
