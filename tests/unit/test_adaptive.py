"""The SLO controller: additive increase under the target, multiplicative decrease over it."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import text_format

from runtime import config as cfg
from runtime.batching.adaptive import DECREASE, WINDOW, SloController
from runtime.config import ConfigError, GraphTensor
from runtime.proto import model_config_pb2 as pb
from tests.unit.test_batcher import FakeModel, batcher_for, check_own_rows, rows, run, submit

MS = 1_000_000


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


def controller(max_rows: int = 64, initial_delay_ns: int = 0, instances: int = 1) -> SloController:
    return SloController(10 * MS, max_rows, initial_delay_ns, instances, Clock())


def feed(
    slo: SloController,
    latency_ns: int,
    compute_ns: int,
    count: int = WINDOW,
    busy: float = 0.6,
) -> None:
    """`count` requests answered in `latency_ns`, from one batch that ran in `compute_ns`,
    over wall time in which the instances were `busy` (a share) of the time."""
    clock = slo.clock
    assert isinstance(clock, Clock)
    clock.now_ns += int(max(compute_ns, 1) / busy / slo.instances)
    slo.observe_batch(compute_ns)
    for _ in range(count):
        slo.observe_request(latency_ns)


def test_a_batch_too_slow_to_run_cuts_the_cap_and_a_miss_cuts_the_delay() -> None:
    slo = controller(64, 4 * MS)
    feed(slo, 20 * MS, 6 * MS)
    assert slo.rows_cap == int(64 * DECREASE)
    assert slo.delay_ns == int(4 * MS * DECREASE)
    assert slo.last_p99_ns == 20 * MS


def test_a_miss_from_queueing_keeps_growing_the_cap() -> None:
    # Shrinking batches when requests wait behind busy instances would only lower
    # throughput and lengthen the queue.
    slo = controller(64, 4 * MS)
    slo.rows_cap = 8
    feed(slo, 30 * MS, 1 * MS)
    assert slo.rows_cap == 8 + 64 // 16
    assert slo.delay_ns == int(4 * MS * DECREASE)


def test_comfortably_under_the_target_grows_the_wait() -> None:
    slo = controller(64)
    feed(slo, 1 * MS, 1 * MS)
    assert (slo.rows_cap, slo.delay_ns) == (64, 10 * MS // 20)


def test_near_the_target_holds_the_wait() -> None:
    slo = controller(64, 2 * MS)
    feed(slo, 9 * MS, 1 * MS)
    assert (slo.rows_cap, slo.delay_ns) == (64, 2 * MS)


def test_a_miss_while_the_instances_are_saturated_grows_the_wait() -> None:
    """Queueing behind busy instances: a shorter wait would shrink batches and throughput."""
    slo = controller(64, 2 * MS, instances=2)
    feed(slo, 40 * MS, 1 * MS, busy=0.6)
    assert slo.last_utilisation == pytest.approx(0.6)
    assert slo.delay_ns == int(2 * MS * DECREASE)
    feed(slo, 40 * MS, 9 * MS, busy=0.9)
    assert slo.last_utilisation == pytest.approx(0.9)
    assert slo.delay_ns == int(2 * MS * DECREASE) + 10 * MS // 20


def test_idle_instances_need_no_wait_even_under_the_target() -> None:
    """Fuller batches are for throughput; with instances mostly idle the wait is latency."""
    slo = controller(64, 4 * MS)
    feed(slo, 6 * MS, 1 * MS, busy=0.3)
    assert slo.last_utilisation == pytest.approx(0.3)
    assert slo.delay_ns == 0
    feed(slo, 6 * MS, 1 * MS, busy=0.6)  # busier: the wait grows back while p99 allows
    assert slo.delay_ns == 10 * MS // 20


def test_nothing_changes_before_a_window_is_full() -> None:
    slo = controller(64)
    feed(slo, 50 * MS, 50 * MS, WINDOW - 1)
    assert slo.rows_cap == 64


def test_bounds_hold_after_many_windows() -> None:
    slo = controller(32, 100 * MS)
    assert slo.delay_ns == 5 * MS  # never more than the budget left after a batch's run
    for _ in range(50):
        feed(slo, 100 * MS, 100 * MS)
    assert (slo.rows_cap, slo.delay_ns) == (1, 0)
    for _ in range(200):
        feed(slo, 0, 1)
    assert (slo.rows_cap, slo.delay_ns) == (32, 5 * MS)


def test_the_cap_limits_the_batches_the_batcher_forms() -> None:
    async def body() -> None:
        model = FakeModel()
        config = cfg.build(
            cfg.complete(
                text_format.Parse(
                    "max_batch_size: 8\ndynamic_batching { }\n"
                    'parameters { key: "latency_slo_ms" value: { string_value: "10" } }',
                    pb.ModelConfig(),
                ),
                "fake",
                [GraphTensor("INPUT0", "FP32", (None, 2))],
                [GraphTensor("OUTPUT0", "FP32", (None, 2))],
            )
        )
        assert config.batching.latency_slo_us == 10_000
        async with batcher_for(config, model) as batcher:
            assert batcher.slo is not None
            batcher.slo.rows_cap = 3
            model.block()
            busy = submit(batcher, rows(1, 0))
            await model.entered()
            sent = [rows(1, 10 * i) for i in range(1, 8)]
            futures = [submit(batcher, d) for d in sent]
            await asyncio.sleep(0)
            model.gate.set()
            await check_own_rows([busy, *futures], [rows(1, 0), *sent])
        assert model.sizes == [1, 3, 3, 1]

    run(body())


@pytest.mark.parametrize("value", ["0", "-5", "fast"])
def test_a_bad_target_is_a_config_error(value: str) -> None:
    message = text_format.Parse(
        "max_batch_size: 8\ndynamic_batching { }\n"
        f'parameters {{ key: "latency_slo_ms" value: {{ string_value: "{value}" }} }}',
        pb.ModelConfig(),
    )
    completed = cfg.complete(
        message,
        "fake",
        [GraphTensor("INPUT0", "FP32", (None, 2))],
        [GraphTensor("OUTPUT0", "FP32", (None, 2))],
    )
    with pytest.raises(ConfigError, match="latency_slo_ms"):
        cfg.build(completed)
