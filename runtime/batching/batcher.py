"""The dynamic batcher: Triton's dynamic_batching semantics over a bounded priority queue.

Requests are queued; a loop forms batches whenever an instance is free (up to
max_batch_size rows, a preferred size, or once the oldest request waited
max_queue_delay), runs each batch in the model's thread pool, and hands every caller
exactly its own rows back as views of the batch output. What it measures goes out as
events (runtime/events.py).

The rule is that model work never blocks the event loop. Its one measured exception:
batches whose runs average under the model's `inline_run_us` (100 us by default) run on
the loop, since handing them to a thread and back costs more than the run (BENCHMARKS.md,
"inline runs"); a model that slows down moves back to its threads by itself, and one whose
runs on threads only look slow comes back (probes, below).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import numpy as np

from runtime.batching.adaptive import SloController
from runtime.batching.collate import BatchOutputs, check_rows, joined, scatter
from runtime.batching.queue import Pending, PriorityQueue, resolve
from runtime.config import ModelConfig
from runtime.errors import Cancelled, InternalError, Rejected, ServingError, Unavailable
from runtime.events import BatchDone, Events
from runtime.types import InferenceRequest

log = logging.getLogger(__name__)

# A model on its threads whose runs average under PROBE_UNDER times its inline_run_us runs
# every PROBE_EVERY-th batch on the loop, and that run's time replaces the average. On a
# thread a run's time includes the wait for the GIL after the model releases it, which a
# busy loop makes long: a fast model that went to its threads once (a busy moment) would
# otherwise measure its runs there as slow, and stay.
PROBE_EVERY = 64
PROBE_UNDER = 10

# What runs one batch: the model version's pipeline (pre steps, backend, post steps). A
# coroutine function is awaited on the loop (a backend that waits on another process);
# a plain one runs on an instance thread, or inline when it is fast.
RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
# An awaited run is also told each request's rows, and may answer each request on its own.
AsyncRunFn = Callable[[Mapping[str, np.ndarray], list[int]], Awaitable[BatchOutputs]]


@dataclass(slots=True)
class _Plan:
    """The batch the queue's head allows now."""

    count: int = 0
    complete: bool = False
    deadline_ns: int = 0


class DynamicBatcher:
    """Queues requests for one model version and runs them in batches."""

    def __init__(
        self,
        config: ModelConfig,
        run: RunFn | AsyncRunFn,
        events: Events | None = None,
        *,
        default_max_queue_size: int = 0,
        inline: bool = True,
    ) -> None:
        self._config = config
        self._batching = config.batching
        self._run_async: AsyncRunFn | None = None
        self._run_model: RunFn | None = None
        if inspect.iscoroutinefunction(run):
            self._run_async = run
            inline = False
        else:
            self._run_model = cast(RunFn, run)
        self._events = events or Events()
        self._watched = self._events.watches_batches
        self._queue = PriorityQueue(config.batching, default_max_queue_size)
        self._max_rows = config.max_batch_size if config.batching.enabled else 0
        self._delay_ns = config.batching.max_queue_delay_us * 1000
        self.slo: SloController | None = None
        if self._max_rows and config.batching.latency_slo_us:
            self.slo = SloController(
                config.batching.latency_slo_us * 1000,
                self._max_rows,
                self._delay_ns,
                config.instance_count,
            )
        self._preferred = config.batching.preferred_batch_sizes
        self._executor = ThreadPoolExecutor(
            max_workers=config.instance_count, thread_name_prefix=f"model-{config.name}"
        )
        self._slots = asyncio.Semaphore(config.instance_count)
        # Inline runs (Conveyor's own): a batch that takes a few tens of microseconds costs
        # less to run on the event loop than to hand to an instance thread and back (two
        # wake-ups and two GIL hand-overs). The moving average of recent runs decides, so a
        # model that slows down (bigger batches, a busier machine) moves back to its
        # threads; `inline` is False where runs must stay on them (device buffers).
        self._inline_ns = config.inline_run_us * 1000 if inline else 0
        self._run_ns = 0.0
        self._since_probe = 0  # batches run on threads since the last probe
        self._arrival = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        # Set as the server begins to stop: batches go out at once, the delay not awaited.
        self._hurry = False
        # Batches by dispatch order, for preserve_ordering.
        self._dispatched = 0
        self._released = 0
        self._finished: dict[int, Callable[[], None]] = {}
        self.failed: BaseException | None = None

    @property
    def depth(self) -> int:
        """Requests queued and not yet handed to an instance."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        """Batches running now."""
        return len(self._in_flight)

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, request: InferenceRequest) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue one checked request; the returned future holds its own rows of every output.

        Its rows are the first dimension of its inputs when the model batches, else one.
        """
        if self._stopping or self.failed is not None:
            raise Unavailable(f"model '{self._config.name}' is not accepting requests")
        now = time.monotonic_ns()
        inputs = {name: t.data for name, t in request.inputs.items()}
        rows = 1
        if self._config.batched and inputs:
            rows = max(int(next(iter(inputs.values())).shape[0]), 1)
        level = self._queue.level_for(request.priority)
        timeout = self._timeout_us(level, request.timeout_us)
        fut: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        item = Pending(
            inputs=inputs,
            rows=rows,
            future=fut,
            enqueued_ns=now,
            deadline_ns=now + timeout * 1000 if timeout else 0,
            level=level,
            client_gone=request.client_gone,
            trace=request.trace,
            shape_key=tuple(a.shape[1:] for a in inputs.values()) if self._max_rows else (),
        )
        self._queue.put(item, request.id)
        self._arrival.set()
        return fut

    def _timeout_us(self, level: int, requested_us: int) -> int:
        policy = self._batching.policy(level + 1)
        default = policy.default_timeout_us
        # Triton lets a request only shorten a configured timeout; a configured 0 means
        # "none", which any request timeout shortens.
        if policy.allow_timeout_override and requested_us > 0:
            return requested_us if default == 0 else min(default, requested_us)
        return default

    def hurry(self) -> None:
        """Send what is queued now and from here on without waiting out the batching delay.

        A stopping server calls it first, so that requests it accepted run within the exit
        timeout however long a model's max_queue_delay_microseconds; requests still arrive
        (an ensemble's steps, BLS calls) and are accepted as before.
        """
        self._hurry = True
        self._arrival.set()

    async def stop(self, drain: bool = True) -> None:
        """Stop accepting; with drain, finish everything queued and running first."""
        self._stopping = True
        self._arrival.set()
        task = self._loop_task
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # already logged; retrieved so asyncio does not warn again
        elif task is not None:
            if drain:
                # A loop that crashed already failed its queue and logged why.
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
            else:
                task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        for item in list(self._queue):
            resolve(item.future, error=Unavailable(f"model '{self._config.name}' was unloaded"))
        self._executor.shutdown(wait=True)

    async def _loop(self) -> None:
        try:
            while True:
                await self._slots.acquire()
                batch = await self._next_batch()
                if batch is None:
                    self._slots.release()
                    return
                inline = 0 < self._run_ns < self._inline_ns
                if inline or self._probe_due():
                    self._run_inline(batch, probe=not inline)
                    self._slots.release()
                    await asyncio.sleep(0)  # the answered requests and the sockets go first
                    continue
                task = asyncio.get_running_loop().create_task(self._execute(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # rule: a crashed loop fails everyone and says so
            log.exception("batch loop of model '%s' crashed", self._config.name)
            self.failed = exc
            for item in list(self._queue):
                resolve(item.future, error=InternalError(f"batcher failed: {exc}"))
            raise

    def _probe_due(self) -> bool:
        """Whether this batch, due on a thread, runs on the loop instead to time it there."""
        if not 0 < self._run_ns < PROBE_UNDER * self._inline_ns:
            return False
        self._since_probe += 1
        if self._since_probe < PROBE_EVERY:
            return False
        self._since_probe = 0
        return True

    async def _next_batch(self) -> list[Pending] | None:
        while True:
            if not self._queue:
                if self._stopping:
                    return None
                self._arrival.clear()
                await self._arrival.wait()
                continue
            now = time.monotonic_ns()
            plan = self._plan(now)
            if plan.count == 0:
                continue
            wait_ns = self._wait_ns(plan, now)
            if wait_ns <= 0 or self._stopping or self._hurry:
                return self._queue.popleft_matching(plan.count)
            self._arrival.clear()
            # asyncio.timeout arms one timer handle; wait_for would create a task per wait.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_ns / 1e9):
                    await self._arrival.wait()

    def _plan(self, now: int) -> _Plan:
        """Walk the head of the queue: how many requests the next batch takes, how long to wait.

        Dead requests met on the way (cancelled or past their deadline) are answered and
        dropped, so a long queue is never scanned beyond one batch.
        """
        plan = _Plan()
        dead: list[Pending] = []
        rows = preferred_count = 0
        first_key: tuple[tuple[int, ...], ...] | None = None
        cap = self.slo.rows_cap if self.slo is not None else self._max_rows
        for item in self._queue:
            if item.is_dead(now):
                dead.append(item)
                continue
            if first_key is None:
                first_key = item.shape_key
            elif item.shape_key != first_key or rows + item.rows > cap:
                plan.complete = True
                break
            rows += item.rows
            plan.count += 1
            if item.deadline_ns:
                plan.deadline_ns = min(plan.deadline_ns or item.deadline_ns, item.deadline_ns)
            if rows in self._preferred:
                preferred_count = plan.count
            if not cap or rows >= cap:
                plan.complete = True
                break
        if self._drop(dead):
            return self._plan(now)  # the serving order changed under the count
        if not plan.complete and preferred_count:
            plan.count, plan.complete = preferred_count, True
        return plan

    def _wait_ns(self, plan: _Plan, now: int) -> int:
        delay_ns = self.slo.delay_ns if self.slo is not None else self._delay_ns
        if plan.complete or delay_ns == 0:
            return 0
        wait = self._queue.oldest_ns() + delay_ns - now
        if plan.deadline_ns:  # wake to answer a request whose queue timeout runs out first
            wait = min(wait, plan.deadline_ns - now + 1)
        return wait

    def _drop(self, dead: list[Pending]) -> bool:
        """Answer and remove dead requests, or delay them; True if any was delayed."""
        delayed = False
        for item in dead:
            if item.client_gone is not None and item.client_gone():
                self._queue.remove(item)
                error: ServingError = Cancelled("the client went away while the request was queued")
                resolve(item.future, error=error)
                self._events.rejected(item, error)
                continue
            if not item.future.done() and self._queue.delay_on_timeout[item.level]:
                self._queue.delay(item)  # timeout_action: DELAY
                delayed = True
                continue
            self._queue.remove(item)
            if not item.future.done():
                error = Rejected("Request timeout expired")
                resolve(item.future, error=error)
                self._events.rejected(item, error)
        return delayed

    async def _execute(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        dispatched_ns = time.monotonic_ns()
        seq = self._dispatched
        self._dispatched += 1
        try:
            if self._run_async is not None:
                outputs, done = await self._await_batch(self._run_async, batch)
            else:
                outputs, done = await loop.run_in_executor(self._executor, self._run_batch, batch)
        except Exception as exc:
            self._answer_failure(seq, batch, exc, dispatched_ns)
            return
        finally:
            self._slots.release()
        done.dispatched_ns = dispatched_ns
        self._release(seq, functools.partial(self._scatter, outputs, batch, done, seq))

    def _run_inline(self, batch: list[Pending], probe: bool = False) -> None:
        """One batch on the event loop, answered as _execute answers one from a thread."""
        dispatched_ns = time.monotonic_ns()
        seq = self._dispatched
        self._dispatched += 1
        try:
            outputs, done = self._run_batch(batch, probe)
        except Exception as exc:
            self._answer_failure(seq, batch, exc, dispatched_ns)
            return
        done.dispatched_ns = dispatched_ns
        self._release(seq, functools.partial(self._scatter, outputs, batch, done, seq))

    def _answer_failure(
        self, seq: int, batch: list[Pending], exc: Exception, dispatched_ns: int
    ) -> None:
        if not isinstance(exc, ServingError):
            log.exception("model '%s' failed on a batch of %d", self._config.name, len(batch))
            exc = InternalError(f"model '{self._config.name}' failed to run: {exc}")
        rows = sum(p.rows for p in batch)
        failed = BatchDone(rows, 0, 0, 0, dispatched_ns, batch, False)
        self._release(seq, functools.partial(self._fail, exc, batch, failed, seq))

    def _release(self, seq: int, answer: Callable[[], None]) -> None:
        """Answer a finished batch; with preserve_ordering, only after every earlier one."""
        if not self._batching.preserve_ordering:
            answer()
            return
        self._finished[seq] = answer
        while self._released in self._finished:
            self._finished.pop(self._released)()
            self._released += 1

    def _fail(self, error: ServingError, batch: list[Pending], done: BatchDone, seq: int) -> None:
        self._events.batch_done(done)
        for item in batch:
            if item.trace is not None:
                item.trace.ran(item.enqueued_ns, done, seq)
            resolve(item.future, error=error)

    def _run_batch(
        self, batch: list[Pending], probe: bool = False
    ) -> tuple[BatchOutputs, BatchDone]:
        assert self._run_model is not None
        t0 = time.perf_counter_ns()
        inputs = joined(batch)
        t1 = time.perf_counter_ns()
        return self._ran(batch, inputs, self._run_model(inputs), t0, t1, probe)

    async def _await_batch(
        self, run: AsyncRunFn, batch: list[Pending]
    ) -> tuple[BatchOutputs, BatchDone]:
        t0 = time.perf_counter_ns()
        inputs = joined(batch)
        t1 = time.perf_counter_ns()
        return self._ran(batch, inputs, await run(inputs, [p.rows for p in batch]), t0, t1)

    def _ran(
        self,
        batch: list[Pending],
        inputs: Mapping[str, np.ndarray],
        outputs: BatchOutputs,
        t0: int,
        t1: int,
        probe: bool = False,
    ) -> tuple[BatchOutputs, BatchDone]:
        """Time, check and watch a batch that ran (on whichever thread it ran); a probe's
        time replaces the average."""
        t2 = time.perf_counter_ns()
        run_ns = t2 - t0
        if probe or not self._run_ns:
            self._run_ns = run_ns
        else:
            self._run_ns += (run_ns - self._run_ns) / 5
        rows = sum(p.rows for p in batch)
        if self._config.batched and isinstance(outputs, dict):
            check_rows(self._config.name, outputs, rows)
        if self._watched and isinstance(outputs, dict):
            # Outside the timed run: a monitor neither counts as compute in the statistics
            # nor moves a model off inline runs (a 7 µs drift tap took the MLP's batches of
            # 16 over the 100 µs mark, onto threads: 11% fewer requests over HTTP).
            self._events.batch_ran(inputs, outputs)
        return outputs, BatchDone(rows, t1 - t0, t2 - t1, 0, 0, batch, True)

    def _scatter(
        self, outputs: BatchOutputs, batch: list[Pending], done: BatchDone, seq: int
    ) -> None:
        t0 = time.perf_counter_ns()
        scatter(outputs, batch)
        done.output_ns = time.perf_counter_ns() - t0
        self._events.batch_done(done)
        for item in batch:
            if item.trace is not None:  # a sampled request (runtime/monitoring/tracing.py)
                item.trace.ran(item.enqueued_ns, done, seq)
        if self.slo is not None:
            self.slo.observe_batch(time.monotonic_ns() - done.dispatched_ns)
