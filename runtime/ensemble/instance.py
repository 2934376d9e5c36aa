"""A served ensemble version: runs its steps as a dataflow over the models the server holds.

A step starts as soon as every tensor it reads exists, so independent steps run at once.
Each step is a request to its model's own `infer`: it is checked, queued and batched with
that model's direct traffic, and counted in that model's statistics. Tensors pass between
steps as the arrays the models returned (no copy, no encoding).

An ensemble has no batcher of its own (it would only hold requests back from the batchers of
its steps): it shows the same read-only view as a ModelInstance to statistics, metrics and
autoscaling, and tells its events what Triton reports for an ensemble: one execution per
request, no queue time, and compute time the sum of its steps' times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from runtime.config import ModelConfig
from runtime.ensemble.validate import Plan, Step
from runtime.errors import InternalError, NotFound, ServingError, Unavailable
from runtime.events import BatchDone, Events
from runtime.instance import respond
from runtime.monitoring.autoscale import LoadWindow
from runtime.monitoring.stats import ModelStatistics
from runtime.types import InferenceRequest, InferenceResponse, InputTensor, RequestedOutput
from runtime.validation import RequestValidator

# (name, version) -> the served model, raising NotFound: the registry's `get`.
Models = Callable[[str, str], Any]
# A step that ran: the step, its model's response, and how long it took (ns).
Finished = tuple[Step, InferenceResponse, int]


@dataclass(frozen=True, slots=True)
class _Arrival:
    """The ensemble request as the statistics read a batch's requests."""

    rows: int
    enqueued_ns: int


class EnsembleInstance:
    """One ensemble version: its plan, the models it calls, its statistics and monitors."""

    drift = None  # the steps' models watch their own inputs

    def __init__(
        self,
        config: ModelConfig,
        version: int,
        plan: Plan,
        models: Models,
        events: Events,
        statistics: ModelStatistics,
        load: LoadWindow,
    ) -> None:
        self.name = config.name
        self.version = str(version)
        self.config = config
        self.plan = plan
        self.events = events
        self.statistics = statistics
        self._models = models
        self._load = load
        self._validator = RequestValidator(config)
        self._limits = {
            s.index: asyncio.Semaphore(s.max_inflight) for s in plan.steps if s.max_inflight > 0
        }
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    # -- the read-only view (runtime/monitoring/view.py) ----------------------------------

    @property
    def ready(self) -> bool:
        """Ready while every step's model is."""
        if self._closed:
            return False
        for step in self.plan.steps:
            try:
                if not self._models(step.model_name, step.model_version).ready:
                    return False
            except ServingError:
                return False
        return True

    @property
    def queue_depth(self) -> int:
        return 0  # requests wait in the queues of the steps' models

    @property
    def batches_in_flight(self) -> int:
        return self._in_flight

    def signals(self) -> dict[str, Any]:
        return self._load.signals(0)

    # -- serving --------------------------------------------------------------------------

    def start(self) -> None:
        """Nothing to start: the steps' models run the work."""

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        start = request.received_ns or time.monotonic_ns()
        self.events.arrived()
        error: BaseException | None = None
        self._in_flight += 1
        self._idle.clear()
        try:
            self._validator.check(request)
            rows = _rows(request, self.config.batched)
            dispatched = time.monotonic_ns()
            outputs, step_ns = await self._run(request)
            self.events.batch_done(
                BatchDone(rows, 0, step_ns, 0, dispatched, [_Arrival(rows, dispatched)], True)
            )
            return respond(self._validator, self.version, request, outputs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
            self.events.request_done(time.monotonic_ns() - start, error, request.protocol)

    def refuse(self, request: InferenceRequest, error: ServingError) -> NoReturn:
        start = request.received_ns or time.monotonic_ns()
        self.events.arrived()
        self.events.request_done(time.monotonic_ns() - start, error, request.protocol)
        raise error

    async def close(self) -> None:
        """Let the requests in flight finish; the steps' models drain on their own."""
        self._closed = True
        await self._idle.wait()

    async def _run(self, request: InferenceRequest) -> tuple[dict[str, Any], int]:
        """Every step, each once its inputs exist; the ensemble's outputs and the steps' time."""
        tensors: dict[str, InputTensor] = dict(request.inputs)
        pending = list(self.plan.steps)
        running: dict[asyncio.Task[Finished], Step] = {}
        step_ns = 0
        try:
            while True:
                ready = [s for s in pending if all(t in tensors for t in s.inputs.values())]
                for step in ready:
                    pending.remove(step)
                if len(ready) == 1 and not running:
                    # A step that runs alone (each step of a chain) is awaited in place: a
                    # task and a wait around it would cost about as much as the step's call.
                    finished = [await self._step(ready[0], request, tensors)]
                elif ready or running:
                    finished = await self._first_done(ready, running, request, tensors)
                else:
                    break
                for step, response, ns in finished:
                    step_ns += ns
                    for out in response.outputs:
                        name = step.outputs[out.name]
                        tensors[name] = InputTensor(name, out.datatype, out.data)
        finally:
            for task in running:
                task.cancel()
        missing = [t for t in self.plan.outputs if t not in tensors]
        if missing:
            raise InternalError(
                f"in ensemble '{self.name}', unexpected deadlock, at least one output is not "
                "set while no more ensemble steps can be made"
            )
        return {t: tensors[t].data for t in self.plan.outputs}, step_ns

    async def _first_done(
        self,
        ready: list[Step],
        running: dict[asyncio.Task[Finished], Step],
        request: InferenceRequest,
        tensors: Mapping[str, InputTensor],
    ) -> list[Finished]:
        """Start the ready steps beside those running; the results of the first to finish."""
        for step in ready:
            running[asyncio.ensure_future(self._step(step, request, tensors))] = step
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        finished = []
        for task in done:
            del running[task]
            finished.append(task.result())
        return finished

    async def _step(
        self, step: Step, outer: InferenceRequest, tensors: Mapping[str, InputTensor]
    ) -> Finished:
        """One step as a request to its model; its errors name the ensemble and the step."""
        try:
            model = self._models(step.model_name, step.model_version)
        except ServingError as exc:
            raise Unavailable(
                f"in ensemble '{self.name}', step {step.index}: model '{step.model_name}' is "
                f"not available: {exc}"
            ) from None
        inner = InferenceRequest(
            model_name=step.model_name,
            model_version=step.model_version,
            id=outer.id,
            inputs={
                name: InputTensor(name, tensors[t].datatype, tensors[t].data)
                for name, t in step.inputs.items()
            },
            outputs=[RequestedOutput(name) for name in step.outputs],
            priority=outer.priority,
            timeout_us=outer.timeout_us,
            protocol=outer.protocol,
            client_gone=outer.client_gone,
        )
        if outer.trace is not None:  # a sampled request: each step is a child span
            inner.trace = outer.trace.child(step.model_name)
        limit = self._limits.get(step.index)
        started = time.monotonic_ns()
        try:
            if limit is None:
                response = await model.infer(inner)
            else:
                async with limit:
                    response = await model.infer(inner)
        except ServingError as exc:
            if inner.trace is not None:
                inner.trace.end(step.model_version, exc)
            raise _in_ensemble(self.name, step, exc) from None
        if inner.trace is not None:
            inner.trace.end(response.model_version)
        return step, response, time.monotonic_ns() - started


def _in_ensemble(name: str, step: Step, exc: ServingError) -> ServingError:
    """The step's error, with its kind (status code), naming the ensemble and the step."""
    message = f"in ensemble '{name}', step {step.index} (model '{step.model_name}'): {exc}"
    try:
        return type(exc)(message)
    except TypeError:  # an error class with a constructor of its own
        return InternalError(message) if not isinstance(exc, NotFound) else NotFound(message)


def _rows(request: InferenceRequest, batched: bool) -> int:
    if not batched or not request.inputs:
        return 1
    shape = next(iter(request.inputs.values())).data.shape
    return int(shape[0]) if shape else 1
