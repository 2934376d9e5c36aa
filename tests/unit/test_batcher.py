"""DynamicBatcher against a fake model whose runs are held and released by threading.Events.

Nothing here waits on the clock (asyncio.sleep(0) only yields to the loop): a test that
needs a run to be in progress waits for the fake to say it entered, and a test that needs
it blocked clears its gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from runtime import config as cfg
from runtime.batching import batcher as batcher_module
from runtime.batching.batcher import DynamicBatcher
from runtime.config import BatchingConfig, GraphTensor, ModelConfig, QueuePolicy, TensorSpec
from runtime.errors import Cancelled, InternalError, InvalidInput, ServingError, Unavailable
from runtime.events import BatchDone, Events, QueuedRequest, Subscriber
from runtime.monitoring.stats import ModelStatistics
from runtime.proto import model_config_pb2 as pb
from runtime.types import InferenceRequest, InputTensor

WAIT_S = 5.0  # how long a fake run or a test waits for the other side before failing
HOUR_US = 3_600_000_000

Arrays = dict[str, np.ndarray]


def make_config(
    max_batch_size: int = 8,
    *,
    enabled: bool = True,
    preferred: Sequence[int] = (),
    delay_us: int = 0,
    instance_count: int = 1,
    levels: int = 0,
    default_level: int = 0,
    policy: QueuePolicy | None = None,
    level_policies: Mapping[int, QueuePolicy] | None = None,
) -> ModelConfig:
    batching = BatchingConfig(
        enabled=enabled,
        preferred_batch_sizes=tuple(preferred),
        max_queue_delay_us=delay_us,
        priority_levels=levels,
        default_priority_level=default_level,
        default_policy=policy or QueuePolicy(),
        priority_policies=dict(level_policies or {}),
    )
    return ModelConfig(
        name="fake",
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        inputs=(TensorSpec("INPUT0", "FP32", (-1,)),),
        outputs=(TensorSpec("OUTPUT0", "FP32", (-1,)),),
        batching=batching,
        instance_count=instance_count,
        instance_kind="KIND_CPU",
        gpus=(),
        default_model_filename="model.onnx",
        parameters={},
        source=pb.ModelConfig(),
    )


def double(inputs: Mapping[str, np.ndarray]) -> Arrays:
    return {"OUTPUT0": inputs["INPUT0"] * 2}


class FakeModel:
    """A run function that records its batches and blocks while `gate` is clear."""

    def __init__(self, fn: Callable[[Mapping[str, np.ndarray]], Arrays] = double) -> None:
        self.fn = fn
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[np.ndarray] = []
        self._entered = threading.Semaphore(0)
        self._lock = threading.Lock()

    def block(self) -> None:
        self.gate.clear()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        with self._lock:
            self.calls.append(np.array(inputs["INPUT0"], copy=True))
        self._entered.release()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("the test never opened the gate")
        return self.fn(inputs)

    async def entered(self) -> None:
        """Wait until one more run has started (and is held at the gate if blocked)."""
        ok = await asyncio.to_thread(self._entered.acquire, True, WAIT_S)
        assert ok, "the batcher never called the model"

    @property
    def sizes(self) -> list[int]:
        with self._lock:
            return [len(c) for c in self.calls]


class Recorder(Subscriber):
    """Keeps what the batcher reports."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, bool]] = []
        self.refused: list[BaseException] = []

    def batch_done(self, batch: BatchDone) -> None:
        assert batch.size == sum(p.rows for p in batch.requests)
        self.batches.append((batch.size, len(batch.requests), batch.ok))

    def rejected(self, request: QueuedRequest, error: BaseException) -> None:
        self.refused.append(error)


def rows(n: int, first: float, width: int = 2) -> Arrays:
    """`n` rows of distinct values starting at `first`."""
    data = np.arange(first, first + n * width, dtype=np.float32).reshape(n, width)
    return {"INPUT0": data}


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run one async test body, failing instead of hanging if it never finishes."""

    async def bounded() -> None:
        async with asyncio.timeout(4 * WAIT_S):
            await coro

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def batcher_for(
    config: ModelConfig,
    model: FakeModel,
    observer: Subscriber | None = None,
    default_max_queue_size: int = 0,
) -> AsyncIterator[DynamicBatcher]:
    batcher = DynamicBatcher(
        config, model, events(observer), default_max_queue_size=default_max_queue_size
    )
    batcher.start()
    try:
        yield batcher
    finally:
        model.gate.set()
        await batcher.stop(drain=False)


def events(*subscribers: Subscriber | None) -> Events:
    """The batcher's events, to a fresh Recorder when no subscriber is given."""
    return Events([s for s in subscribers if s is not None] or [Recorder()])


def request(data: Arrays, **kwargs: Any) -> InferenceRequest:
    inputs = {name: InputTensor(name, "FP32", arr) for name, arr in data.items()}
    return InferenceRequest("fake", inputs=inputs, **kwargs)


def submit(batcher: DynamicBatcher, data: Arrays, **kwargs: Any) -> asyncio.Future[Arrays]:
    return batcher.submit(request(data, **kwargs))


async def check_own_rows(futures: Sequence[asyncio.Future[Arrays]], sent: Sequence[Arrays]) -> None:
    results = await asyncio.gather(*futures)
    for result, data in zip(results, sent, strict=True):
        np.testing.assert_array_equal(result["OUTPUT0"], data["INPUT0"] * 2)


# --- batch formation ----------------------------------------------------------------------


def test_each_caller_gets_exactly_its_own_rows() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(8), model) as batcher:
            sent = [rows(1, 0), rows(2, 100), rows(3, 200), rows(2, 300)]
            futures = [submit(batcher, d) for d in sent]
            await check_own_rows(futures, sent)
        assert model.sizes == [8]  # all were queued before the loop ran: one batch
        np.testing.assert_array_equal(model.calls[0], np.concatenate([d["INPUT0"] for d in sent]))

    run(body())


def test_max_batch_size_is_never_exceeded() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(4), model) as batcher:
            sent = [rows(n, 100 * i) for i, n in enumerate([3, 2, 1, 4, 1, 2, 1, 1])]
            futures = [submit(batcher, d) for d in sent]
            await check_own_rows(futures, sent)
        assert all(size <= 4 for size in model.sizes)
        # FIFO: 3 | 2+1 | 4 | 1+2+1 | 1
        assert model.sizes == [3, 3, 4, 4, 1]

    run(body())


def test_request_that_would_overflow_goes_to_the_next_batch() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(4), model) as batcher:
            sent = [rows(3, 0), rows(2, 100)]
            await check_own_rows([submit(batcher, d) for d in sent], sent)
        assert model.sizes == [3, 2]

    run(body())


def test_different_non_batch_shapes_never_share_a_batch() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(8), model) as batcher:
            sent = [rows(1, 0, 2), rows(1, 100, 3), rows(1, 200, 3), rows(2, 300, 2)]
            await check_own_rows([submit(batcher, d) for d in sent], sent)
        for call in model.calls:
            assert call.ndim == 2
        assert [(len(c), c.shape[1]) for c in model.calls] == [(1, 2), (2, 3), (2, 2)]

    run(body())


def test_default_scheduler_runs_each_request_alone() -> None:
    async def body() -> None:
        model = FakeModel()
        recorder = Recorder()
        async with batcher_for(make_config(8, enabled=False), model, recorder) as batcher:
            sent = [rows(1, 0), rows(2, 100), rows(1, 200)]
            await check_own_rows([submit(batcher, d) for d in sent], sent)
        assert model.sizes == [1, 2, 1]
        assert recorder.batches == [(1, 1, True), (2, 1, True), (1, 1, True)]

    run(body())


def test_config_built_from_a_completed_protobuf() -> None:
    """No config.pbtxt: max_batch_size 4, dynamic batching, preferred [4], no delay."""
    graph_in = [GraphTensor("INPUT0", "FP32", (None, 2))]
    graph_out = [GraphTensor("OUTPUT0", "FP32", (None, 2))]
    config = cfg.build(cfg.complete(pb.ModelConfig(), "auto", graph_in, graph_out))

    async def body() -> None:
        model = FakeModel()
        async with batcher_for(config, model) as batcher:
            sent = [rows(1, 10 * i) for i in range(6)]
            await check_own_rows([submit(batcher, d) for d in sent], sent)
        assert model.sizes == [4, 2]

    run(body())


def test_preferred_batch_size_is_sent_at_once() -> None:
    async def body() -> None:
        model = FakeModel()
        config = make_config(8, preferred=[2], delay_us=HOUR_US)
        async with batcher_for(config, model) as batcher:
            first = rows(1, 0)
            fut = submit(batcher, first)
            for _ in range(5):  # let the loop see the lone request and start waiting
                await asyncio.sleep(0)
            assert batcher.depth == 1
            assert model.sizes == []
            second = rows(1, 100)
            # The arrival completes a preferred batch: it must go now, not in an hour.
            await check_own_rows([fut, submit(batcher, second)], [first, second])
        assert model.sizes == [2]

    run(body())


def test_largest_reachable_preferred_size_wins_and_leftover_waits() -> None:
    async def body() -> None:
        model = FakeModel()
        config = make_config(8, preferred=[2, 4], delay_us=HOUR_US)
        async with batcher_for(config, model) as batcher:
            sent = [rows(1, 10 * i) for i in range(5)]
            futures = [submit(batcher, d) for d in sent]
            await check_own_rows(futures[:4], sent[:4])
            assert model.sizes == [4]
            assert batcher.depth == 1
            assert not futures[4].done()
            await batcher.stop(drain=True)  # draining sends the leftover without the delay
            await check_own_rows(futures[4:], sent[4:])
        assert model.sizes == [4, 1]

    run(body())


def test_queued_requests_coalesce_when_an_instance_frees() -> None:
    """Delay 0: whatever queued while the only instance was busy goes as one batch."""

    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(8), model) as batcher:
            model.block()
            first = rows(1, 0)
            busy = submit(batcher, first)
            await model.entered()
            sent = [rows(1, 100), rows(2, 200), rows(1, 300)]
            futures = [submit(batcher, d) for d in sent]
            assert batcher.depth == 3
            model.gate.set()
            await check_own_rows([busy, *futures], [first, *sent])
        assert model.sizes == [1, 4]

    run(body())


def test_full_batch_does_not_wait_for_a_long_delay() -> None:
    """A long delay: requests that fill max_batch_size while the run is blocked go at once."""

    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(4, delay_us=HOUR_US), model) as batcher:
            model.block()
            first = rows(4, 0)
            busy = submit(batcher, first)
            await model.entered()
            sent = [rows(1, 100), rows(2, 200), rows(1, 300)]
            futures = [submit(batcher, d) for d in sent]
            model.gate.set()
            await check_own_rows([busy, *futures], [first, *sent])
        assert model.sizes == [4, 4]

    run(body())


# --- admission, priority, timeouts ---------------------------------------------------------


def test_full_queue_is_refused_at_submit() -> None:
    async def body() -> None:
        model = FakeModel()
        config = make_config(1, policy=QueuePolicy(max_queue_size=2))
        async with batcher_for(config, model) as batcher:
            model.block()
            running = submit(batcher, rows(1, 0))
            await model.entered()
            queued = [submit(batcher, rows(1, 100)), submit(batcher, rows(1, 200))]
            with pytest.raises(
                Unavailable, match=r"^\[request id: r4\] Exceeds maximum queue size$"
            ):
                submit(batcher, rows(1, 300), id="r4")
            with pytest.raises(Unavailable, match=r"\[request id: <id_unknown>\] Exceeds maximum"):
                submit(batcher, rows(1, 400))
            assert batcher.depth == 2
            model.gate.set()
            await asyncio.gather(running, *queued)
            # room again once the queue drained
            await submit(batcher, rows(1, 500))
        assert model.sizes == [1, 1, 1, 1]

    run(body())


def test_level_one_is_batched_before_level_two_queued_earlier() -> None:
    async def body() -> None:
        model = FakeModel()
        config = make_config(2, levels=2, default_level=2)
        async with batcher_for(config, model) as batcher:
            model.block()
            busy = submit(batcher, rows(2, 0), priority=1)
            await model.entered()
            low = [rows(1, 100), rows(1, 200)]
            default = rows(1, 300)  # priority 0 takes the default level, 2
            out_of_range = rows(1, 400)  # priority above the levels: default level too
            high = [rows(1, 500), rows(1, 600)]
            futures = [submit(batcher, d, priority=2) for d in low]
            futures += [submit(batcher, default), submit(batcher, out_of_range, priority=9)]
            futures += [submit(batcher, d, priority=1) for d in high]
            model.gate.set()
            await busy
            await check_own_rows(futures, [*low, default, out_of_range, *high])
        batches = [c[:, 0].tolist() for c in model.calls[1:]]
        assert batches == [[500, 600], [100, 200], [300, 400]]

    run(body())


def test_expired_request_fails_and_never_reaches_the_model() -> None:
    async def body() -> None:
        model = FakeModel()
        recorder = Recorder()
        policy = QueuePolicy(default_timeout_us=HOUR_US, allow_timeout_override=True)
        config = make_config(8, policy=policy)
        async with batcher_for(config, model, recorder) as batcher:
            model.block()
            busy = submit(batcher, rows(1, 0))
            await model.entered()
            expiring = submit(batcher, rows(1, 100), timeout_us=1)
            kept = rows(1, 200)
            waiting = submit(batcher, kept)
            model.gate.set()
            with pytest.raises(Unavailable, match=r"^Request timeout expired$"):
                await expiring
            await check_own_rows([waiting], [kept])
            await busy
        assert [c[:, 0].tolist() for c in model.calls] == [[0], [200]]
        assert [e.message for e in recorder.refused] == ["Request timeout expired"]

    run(body())


def test_queue_timeout_is_answered_while_the_batcher_waits_out_a_long_delay() -> None:
    async def body() -> None:
        model = FakeModel()
        policy = QueuePolicy(default_timeout_us=1000, allow_timeout_override=True)
        # The delay is an hour: only a wake-up at the request's deadline can answer it.
        config = make_config(8, delay_us=HOUR_US, policy=policy)
        async with batcher_for(config, model) as batcher:
            with pytest.raises(Unavailable, match="Request timeout expired"):
                await submit(batcher, rows(1, 0))
            assert model.calls == []
            # The queue emptied by expiry must leave the loop alive for the next batch.
            full = rows(8, 10)
            await check_own_rows([submit(batcher, full)], [full])
            assert batcher.failed is None

    run(body())


def test_request_timeout_is_ignored_without_override() -> None:
    async def body() -> None:
        model = FakeModel()
        config = make_config(8, policy=QueuePolicy(default_timeout_us=HOUR_US))
        async with batcher_for(config, model) as batcher:
            model.block()
            busy = submit(batcher, rows(1, 0))
            await model.entered()
            sent = rows(1, 100)
            fut = submit(batcher, sent, timeout_us=1)
            model.gate.set()
            await check_own_rows([busy, fut], [rows(1, 0), sent])

    run(body())


def test_request_timeout_cannot_lengthen_the_configured_one() -> None:
    async def body() -> None:
        model = FakeModel()
        policy = QueuePolicy(default_timeout_us=1, allow_timeout_override=True)
        # level 1 times out after 1 us; level 2 (the busy request) has no timeout
        config = make_config(8, levels=2, default_level=2, level_policies={1: policy})
        async with batcher_for(config, model) as batcher:
            model.block()
            busy = submit(batcher, rows(1, 0), priority=2)
            await model.entered()
            fut = submit(batcher, rows(1, 100), priority=1, timeout_us=HOUR_US)
            model.gate.set()
            with pytest.raises(Unavailable, match="Request timeout expired"):
                await fut
            await busy
        assert len(model.calls) == 1

    run(body())


# --- failures and cancellation ----------------------------------------------------------------


def test_cancelled_caller_is_dropped_at_dequeue() -> None:
    async def body() -> None:
        model = FakeModel()
        recorder = Recorder()
        async with batcher_for(make_config(8), model, recorder) as batcher:
            model.block()
            busy = submit(batcher, rows(1, 0))
            await model.entered()
            a, gone, b = rows(1, 100), rows(1, 200), rows(2, 300)
            futures = [submit(batcher, a), submit(batcher, gone), submit(batcher, b)]
            futures[1].cancel()
            model.gate.set()
            await check_own_rows([busy, futures[0], futures[2]], [rows(1, 0), a, b])
            assert futures[1].cancelled()
            # the loop is alive
            await check_own_rows([submit(batcher, rows(1, 900))], [rows(1, 900)])
        assert [c[:, 0].tolist() for c in model.calls] == [[0], [100, 300, 302], [900]]
        assert recorder.refused == []
        assert batcher.failed is None

    run(body())


def test_caller_cancelled_while_its_batch_runs_does_not_break_the_batch() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(8), model) as batcher:
            model.block()
            a, b = rows(1, 0), rows(2, 100)
            futures = [submit(batcher, a), submit(batcher, b)]
            await model.entered()
            futures[0].cancel()
            model.gate.set()
            await check_own_rows(futures[1:], [b])
            await check_own_rows([submit(batcher, rows(1, 900))], [rows(1, 900)])
        assert model.sizes == [3, 1]
        assert batcher.failed is None

    run(body())


def explode_on_zero(inputs: Mapping[str, np.ndarray]) -> Arrays:
    """A model that fails any batch starting with the value 0 and doubles the rest."""
    if inputs["INPUT0"][0, 0] == 0:
        raise RuntimeError("boom")
    return double(inputs)


def test_failing_run_fails_only_its_batch() -> None:
    async def body() -> None:
        model = FakeModel(explode_on_zero)
        recorder = Recorder()
        async with batcher_for(make_config(8), model, recorder) as batcher:
            failing = [submit(batcher, rows(1, 0)), submit(batcher, rows(2, 100))]
            results = await asyncio.gather(*failing, return_exceptions=True)
            for result in results:
                assert isinstance(result, InternalError)
                assert "boom" in result.message
                assert "'fake'" in result.message
            later = rows(1, 500)
            await check_own_rows([submit(batcher, later)], [later])
        assert recorder.batches == [(3, 2, False), (1, 1, True)]
        assert batcher.failed is None

    run(body())


def test_serving_error_from_the_run_reaches_the_callers_unchanged() -> None:
    def refuse(inputs: Mapping[str, np.ndarray]) -> Arrays:
        raise InvalidInput("input 'INPUT0' holds bytes that are not UTF-8 text")

    async def body() -> None:
        model = FakeModel(refuse)
        async with batcher_for(make_config(8), model) as batcher:
            with pytest.raises(InvalidInput, match="UTF-8"):
                await submit(batcher, rows(1, 0))

    run(body())


@pytest.mark.parametrize(
    "bad_output",
    [
        lambda x: x[:-1],  # one row short
        lambda x: np.concatenate([x, x]),  # too many rows
        lambda x: np.float32(x.sum()),  # a scalar
    ],
)
def test_output_rows_must_match_the_batch(bad_output: Callable[[np.ndarray], Any]) -> None:
    def fn(inputs: Mapping[str, np.ndarray]) -> Arrays:
        x = inputs["INPUT0"]
        if x[0, 0] == 0:
            return {"OUTPUT0": x * 2, "EXTRA": np.asarray(bad_output(x))}
        return double(inputs)

    async def body() -> None:
        model = FakeModel(fn)
        async with batcher_for(make_config(8), model) as batcher:
            futures = [submit(batcher, rows(1, 0)), submit(batcher, rows(2, 100))]
            for result in await asyncio.gather(*futures, return_exceptions=True):
                assert isinstance(result, InternalError)
                assert "EXTRA" in result.message
                assert "3 rows" in result.message
            later = rows(2, 500)
            await check_own_rows([submit(batcher, later)], [later])

    run(body())


# --- instances, stop -------------------------------------------------------------------------


def test_two_instances_run_two_batches_at_once() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(1, instance_count=2), model) as batcher:
            model.block()
            sent = [rows(1, 0), rows(1, 100), rows(1, 200)]
            futures = [submit(batcher, d) for d in sent]
            await model.entered()
            await model.entered()  # both held at the gate at the same time
            assert batcher.in_flight == 2
            assert batcher.depth == 1
            model.gate.set()
            await check_own_rows(futures, sent)
        assert model.sizes == [1, 1, 1]

    run(body())


def test_one_instance_runs_one_batch_at_a_time() -> None:
    async def body() -> None:
        model = FakeModel()
        async with batcher_for(make_config(1, instance_count=1), model) as batcher:
            model.block()
            sent = [rows(1, 0), rows(1, 100)]
            futures = [submit(batcher, d) for d in sent]
            await model.entered()
            for _ in range(5):
                await asyncio.sleep(0)
            assert batcher.in_flight == 1
            assert batcher.depth == 1
            model.gate.set()
            await check_own_rows(futures, sent)

    run(body())


def test_stop_with_drain_finishes_queued_work() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = DynamicBatcher(make_config(8, delay_us=HOUR_US), model, events())
        batcher.start()
        model.block()
        first = rows(8, 0)
        busy = submit(batcher, first)
        await model.entered()
        sent = [rows(1, 100), rows(2, 200)]  # not a full batch: would wait an hour
        futures = [submit(batcher, d) for d in sent]
        stopping = asyncio.create_task(batcher.stop(drain=True))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable, match="not accepting"):
            submit(batcher, rows(1, 900))
        model.gate.set()
        await stopping
        assert all(f.done() for f in futures)
        await check_own_rows([busy, *futures], [first, *sent])
        assert model.sizes == [8, 3]

    run(body())


def test_stop_without_drain_answers_queued_requests() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = DynamicBatcher(make_config(8, delay_us=HOUR_US), model, events())
        batcher.start()
        model.block()
        first = rows(8, 0)
        busy = submit(batcher, first)
        await model.entered()
        queued = submit(batcher, rows(1, 100))
        stopping = asyncio.create_task(batcher.stop(drain=False))
        await asyncio.sleep(0)
        model.gate.set()
        await stopping
        await check_own_rows([busy], [first])  # the running batch still completes
        with pytest.raises(Unavailable, match="unloaded"):
            await queued
        assert model.sizes == [8]

    run(body())


def test_submit_after_stop_is_unavailable() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = DynamicBatcher(make_config(8), model, events())
        batcher.start()
        await check_own_rows([submit(batcher, rows(1, 0))], [rows(1, 0)])
        await batcher.stop()
        with pytest.raises(Unavailable, match="'fake' is not accepting requests"):
            submit(batcher, rows(1, 0))
        assert Unavailable("x").http_status == 503

    run(body())


# --- statistics ------------------------------------------------------------------------------


def test_statistics_count_executions_inferences_and_queue() -> None:
    def explode_on_negative(inputs: Mapping[str, np.ndarray]) -> Arrays:
        if inputs["INPUT0"][0, 0] < 0:
            raise RuntimeError("boom")
        return double(inputs)

    async def body() -> None:
        model = FakeModel(explode_on_negative)
        stats = ModelStatistics("fake", "1")
        policy = QueuePolicy(default_timeout_us=HOUR_US, allow_timeout_override=True)
        async with batcher_for(make_config(8, policy=policy), model, stats) as batcher:
            first = [rows(1, 0), rows(2, 100), rows(1, 200)]  # one batch of 4
            await check_own_rows([submit(batcher, d) for d in first], first)
            second = [rows(2, 300)]  # one batch of 2
            await check_own_rows([submit(batcher, d) for d in second], second)
            with pytest.raises(InternalError):  # a failed batch of 1
                await submit(batcher, rows(1, -50))
            model.block()
            busy = submit(batcher, rows(4, 400))
            await model.entered()
            expired = submit(batcher, rows(1, 500), timeout_us=1)
            model.gate.set()
            await busy
            with pytest.raises(Unavailable):
                await expired

        assert stats.execution_count == 3
        assert stats.inference_count == 10
        assert sorted(stats.batches) == [2, 4]
        assert stats.batches[4].compute_infer.count == 2
        assert stats.batches[2].compute_infer.count == 1
        # per request: 3 + 1 + 1 successful requests
        assert stats.compute_infer.count == 5
        assert stats.compute_input.count == 5
        assert stats.compute_output.count == 5
        # every request that left the queue: 5 ok, 1 failed, 1 expired
        assert stats.queue.count == 7
        assert stats.queue.ns >= 0
        doc = stats.to_dict()
        assert doc["execution_count"] == 3
        assert doc["inference_count"] == 10
        assert [b["batch_size"] for b in doc["batch_stats"]] == [2, 4]
        assert [b["compute_infer"]["count"] for b in doc["batch_stats"]] == [1, 2]
        assert doc["inference_stats"]["queue"]["count"] == 7
        assert doc["last_inference"] > 0

    run(body())


# --- a crashed loop ------------------------------------------------------------------------


class BrokenObserver(Recorder):
    """An observer that fails, which crashes the batch loop when a request expires."""

    def rejected(self, request: QueuedRequest, error: BaseException) -> None:
        raise RuntimeError("observer bug")


async def crash_the_loop(batcher: DynamicBatcher, model: FakeModel) -> list[asyncio.Future[Arrays]]:
    """Queue one request that expires (the broken observer then raises) and one behind it."""
    batcher.start()
    model.block()
    busy = submit(batcher, rows(1, 0))
    await model.entered()
    expiring = submit(batcher, rows(1, 100), timeout_us=1)
    waiting = submit(batcher, rows(1, 200))
    model.gate.set()
    await check_own_rows([busy], [rows(1, 0)])
    with pytest.raises(InternalError, match="observer bug"):
        await waiting
    return [expiring, waiting]


def broken_batcher(model: FakeModel) -> DynamicBatcher:
    policy = QueuePolicy(default_timeout_us=HOUR_US, allow_timeout_override=True)
    return DynamicBatcher(make_config(8, policy=policy), model, events(BrokenObserver()))


def test_crashed_loop_fails_queued_requests_and_refuses_new_ones() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = broken_batcher(model)
        await crash_the_loop(batcher, model)
        assert isinstance(batcher.failed, RuntimeError)
        with pytest.raises(Unavailable):
            submit(batcher, rows(1, 300))
        with contextlib.suppress(RuntimeError):
            await batcher.stop()

    run(body())


def test_crashed_loop_answers_the_request_it_was_rejecting() -> None:
    """Rule 7: every pending request fails, including the one dequeued when the loop died."""

    async def body() -> None:
        model = FakeModel()
        batcher = broken_batcher(model)
        expiring, _ = await crash_the_loop(batcher, model)
        stranded = not expiring.done()
        if stranded:
            expiring.cancel()
        with contextlib.suppress(RuntimeError):
            await batcher.stop()
        assert not stranded, "the caller of the request being rejected waits forever"
        with pytest.raises(ServingError):
            expiring.result()

    run(body())


def test_stop_after_a_crashed_loop_does_not_raise() -> None:
    async def body() -> None:
        model = FakeModel()
        batcher = broken_batcher(model)
        await crash_the_loop(batcher, model)
        await batcher.stop(drain=True)

    run(body())


# --- timeout_action DELAY, preserve_ordering, clients that went away -------------------------


def test_delay_action_moves_an_expired_request_behind_live_ones() -> None:
    async def body() -> None:
        model = FakeModel()
        policy = QueuePolicy(
            timeout_action_delay=True, default_timeout_us=HOUR_US, allow_timeout_override=True
        )
        async with batcher_for(make_config(1, policy=policy), model) as batcher:
            model.block()
            busy = submit(batcher, rows(1, 0))
            await model.entered()
            late = submit(batcher, rows(1, 100), timeout_us=1)  # expires while queued
            live = submit(batcher, rows(1, 200))
            model.gate.set()
            await check_own_rows([busy, live, late], [rows(1, 0), rows(1, 200), rows(1, 100)])
        # DELAY: the expired request still runs, after the live one queued behind it.
        assert [c[0, 0] for c in model.calls] == [0, 200, 100]

    run(body())


def test_preserve_ordering_answers_batches_in_dispatch_order() -> None:
    async def body() -> None:
        first_may_finish = threading.Event()
        second_returned = threading.Event()

        def run_fn(inputs: Mapping[str, np.ndarray]) -> Arrays:
            x = inputs["INPUT0"]
            if x[0, 0] == 0:
                first_may_finish.wait(WAIT_S)
            else:
                second_returned.set()
            return {"OUTPUT0": x * 2}

        config = make_config(1, instance_count=2)
        config = dataclasses.replace(
            config, batching=dataclasses.replace(config.batching, preserve_ordering=True)
        )
        async with batcher_for(config, FakeModel(run_fn)) as batcher:
            order: list[int] = []
            sent = [rows(1, 0), rows(1, 100)]
            futures = [submit(batcher, d) for d in sent]
            for i, fut in enumerate(futures):
                fut.add_done_callback(lambda _, i=i: order.append(i))
            # The second batch finishes first; its answer must wait for the first's.
            assert await asyncio.to_thread(second_returned.wait, WAIT_S)
            first_may_finish.set()
            await check_own_rows(futures, sent)
        assert order == [0, 1]

    run(body())


def test_request_whose_client_went_away_is_dropped_at_dequeue() -> None:
    async def body() -> None:
        model = FakeModel()
        recorder = Recorder()
        async with batcher_for(make_config(1), model, recorder) as batcher:
            model.block()
            busy = submit(batcher, rows(1, 0))
            await model.entered()
            gone = submit(batcher, rows(1, 100), client_gone=lambda: True)
            kept = rows(1, 200)
            waiting = submit(batcher, kept, client_gone=lambda: False)
            model.gate.set()
            with pytest.raises(Cancelled, match="client went away"):
                await gone
            await check_own_rows([busy, waiting], [rows(1, 0), kept])
        assert [c[0, 0] for c in model.calls] == [0, 200]
        assert [type(e) for e in recorder.refused] == [Cancelled]

    run(body())


@pytest.mark.parametrize(("configured", "default", "admitted"), [(0, 2, 2), (3, 2, 3), (0, 0, 5)])
def test_server_default_bounds_a_queue_the_config_leaves_open(
    configured: int, default: int, admitted: int
) -> None:
    async def body() -> None:
        model = FakeModel()
        config = make_config(1, policy=QueuePolicy(max_queue_size=configured))
        async with batcher_for(config, model, default_max_queue_size=default) as batcher:
            model.block()
            running = submit(batcher, rows(1, 0))
            await model.entered()
            queued = []
            for i in range(5):
                try:
                    queued.append(submit(batcher, rows(1, i + 1)))
                except Unavailable:
                    break
            assert len(queued) == admitted
            model.gate.set()
            await asyncio.gather(running, *queued)

    run(body())


# --- inline runs ----------------------------------------------------------------------------


class ThreadRecorder(FakeModel):
    """Records the thread each run happens on."""

    def __init__(self, fn: Callable[[Mapping[str, np.ndarray]], Arrays] = double) -> None:
        super().__init__(fn)
        self.threads: list[int] = []

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> Arrays:
        self.threads.append(threading.get_ident())
        return super().__call__(inputs)


def inline_config(inline_run_us: int, **kwargs: Any) -> ModelConfig:
    return dataclasses.replace(make_config(8, **kwargs), inline_run_us=inline_run_us)


def test_fast_runs_move_onto_the_event_loop() -> None:
    """The first run (no estimate yet) is on an instance thread; once runs are known to
    be fast, they happen on the loop's own thread, and every caller still gets its rows."""

    async def body() -> None:
        model = ThreadRecorder()
        loop_thread = threading.get_ident()
        async with batcher_for(inline_config(10_000_000), model) as batcher:
            for i in range(4):
                data = rows(2, 10 * i)
                await check_own_rows([submit(batcher, data)], [data])
        assert model.threads[0] != loop_thread
        assert model.threads[1:] == [loop_thread] * 3

    run(body())


@pytest.mark.parametrize(("inline_run_us", "batcher_inline"), [(0, True), (10_000_000, False)])
def test_runs_stay_on_instance_threads_when_inline_is_off(
    inline_run_us: int, batcher_inline: bool
) -> None:
    """inline_run_us 0 turns it off; so does the registry for device runs."""

    async def body() -> None:
        model = ThreadRecorder()
        loop_thread = threading.get_ident()
        batcher = DynamicBatcher(
            inline_config(inline_run_us), model, events(), inline=batcher_inline
        )
        batcher.start()
        try:
            for i in range(4):
                data = rows(1, i)
                await check_own_rows([submit(batcher, data)], [data])
        finally:
            await batcher.stop()
        assert loop_thread not in model.threads
        assert len(model.threads) == 4

    run(body())


def test_slow_runs_stay_on_instance_threads() -> None:
    """A run averaging over the threshold keeps its batches off the event loop."""

    def slow(inputs: Mapping[str, np.ndarray]) -> Arrays:
        threading.Event().wait(0.002)  # 2 ms, far over the 1 µs threshold below
        return double(inputs)

    async def body() -> None:
        model = ThreadRecorder(slow)
        loop_thread = threading.get_ident()
        async with batcher_for(inline_config(1), model) as batcher:
            for i in range(3):
                data = rows(1, i)
                await check_own_rows([submit(batcher, data)], [data])
        assert loop_thread not in model.threads

    run(body())


def test_a_model_that_only_looks_slow_on_its_threads_comes_back_to_the_loop() -> None:
    """A run on a thread also waits for the GIL after the model releases it, which a busy
    loop makes long: a fast model timed there once must not stay there. Here runs take
    300 µs off the loop and nothing on it, against a 100 µs threshold: the first run (on a
    thread) puts the average over it, and a probe on the loop brings the runs back."""

    loop_thread = threading.get_ident()

    def slow_off_the_loop(inputs: Mapping[str, np.ndarray]) -> Arrays:
        if threading.get_ident() != loop_thread:
            threading.Event().wait(0.0003)
        return double(inputs)

    async def body() -> None:
        model = ThreadRecorder(slow_off_the_loop)
        async with batcher_for(inline_config(100), model) as batcher:
            for i in range(batcher_module.PROBE_EVERY + 8):
                data = rows(1, i)
                await check_own_rows([submit(batcher, data)], [data])
        on_loop = [i for i, t in enumerate(model.threads) if t == loop_thread]
        assert model.threads[0] != loop_thread
        assert on_loop, "never probed on the loop"
        first = on_loop[0]
        assert first == batcher_module.PROBE_EVERY  # the 64th run due on a thread
        assert model.threads[first:] == [loop_thread] * (len(model.threads) - first)

    run(body())


def test_a_slow_tap_sees_each_batch_without_moving_runs_off_the_loop() -> None:
    """The tap (the drift monitor) gets every batch's inputs and outputs, and its time is not
    the model's: a 2 ms tap behind a fast model leaves the runs inline."""
    seen: list[tuple[Arrays, Arrays]] = []

    class SlowTap(Subscriber):
        def batch_ran(
            self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
        ) -> None:
            threading.Event().wait(0.002)
            seen.append((dict(inputs), dict(outputs)))

    async def body() -> None:
        model = ThreadRecorder()
        loop_thread = threading.get_ident()
        batcher = DynamicBatcher(inline_config(1000), model, events(Recorder(), SlowTap()))
        batcher.start()
        sent = [rows(1, i) for i in range(4)]
        try:
            for data in sent:
                await check_own_rows([submit(batcher, data)], [data])
        finally:
            await batcher.stop()
        assert model.threads[1:] == [loop_thread] * 3
        assert len(seen) == 4
        for data, (inputs, outputs) in zip(sent, seen, strict=True):
            np.testing.assert_array_equal(inputs["INPUT0"], data["INPUT0"])
            np.testing.assert_array_equal(outputs["OUTPUT0"], data["INPUT0"] * 2)

    run(body())


def test_failing_inline_run_fails_only_its_batch() -> None:
    async def body() -> None:
        model = ThreadRecorder(explode_on_zero)
        recorder = Recorder()
        loop_thread = threading.get_ident()
        async with batcher_for(inline_config(10_000_000), model, recorder) as batcher:
            first = rows(1, 100)
            await check_own_rows([submit(batcher, first)], [first])  # learns the run time
            with pytest.raises(InternalError, match="boom"):
                await submit(batcher, rows(1, 0))
            later = rows(1, 500)
            await check_own_rows([submit(batcher, later)], [later])
        assert model.threads[1:] == [loop_thread, loop_thread]
        assert recorder.batches == [(1, 1, True), (1, 1, False), (1, 1, True)]
        assert batcher.failed is None

    run(body())


def test_an_awaitable_run_is_awaited_on_the_loop_and_answers_each_caller() -> None:
    """A backend that waits on another process gives the batcher a coroutine function: it is
    awaited on the loop (no instance thread), batches as usual, and failures fail its batch."""
    calls: list[tuple[int, list[int]]] = []

    async def awaited(inputs: Mapping[str, np.ndarray], rows: list[int]) -> Arrays:
        assert sum(rows) == len(inputs["INPUT0"])
        calls.append((threading.get_ident(), rows))
        await asyncio.sleep(0)
        if (inputs["INPUT0"] < 0).any():
            raise RuntimeError("boom")
        return double(inputs)

    async def body() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(make_config(8), awaited, events(recorder))
        batcher.start()
        try:
            sent = [rows(1, 0), rows(2, 100), rows(3, 200)]
            await check_own_rows([submit(batcher, d) for d in sent], sent)
            with pytest.raises(InternalError, match="boom"):
                await submit(batcher, rows(1, -50))
        finally:
            await batcher.stop()
        assert calls == [(threading.get_ident(), [1, 2, 3]), (threading.get_ident(), [1])]
        assert recorder.batches == [(6, 3, True), (1, 1, False)]

    run(body())


def test_an_awaited_run_may_answer_each_request_on_its_own() -> None:
    """A run that answers request by request (a Triton Python model's execute): each caller
    gets its own outputs or its own error, and one failure fails no other request."""

    async def each(inputs: Mapping[str, np.ndarray], rows: list[int]) -> Any:
        answers: list[Any] = []
        start = 0
        for n in rows:
            part = inputs["INPUT0"][start : start + n]
            start += n
            answers.append(InvalidInput("negative") if (part < 0).any() else {"OUTPUT0": part * 2})
        return answers

    async def body() -> None:
        recorder = Recorder()
        batcher = DynamicBatcher(
            make_config(8, delay_us=HOUR_US, preferred=[6]), each, events(recorder)
        )
        batcher.start()
        try:
            sent = [rows(1, 0), rows(2, -100), rows(3, 200)]
            good, bad, other = (submit(batcher, d) for d in sent)
            await check_own_rows([good, other], [sent[0], sent[2]])
            with pytest.raises(InvalidInput, match="negative"):
                await bad
        finally:
            await batcher.stop()
        assert recorder.batches == [(6, 3, True)]

    run(body())
