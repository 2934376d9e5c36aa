"""One served model version: the unit the registry holds, swaps and retires.

`ModelInstance.infer` checks a request against the version's tensors, queues it in the
version's batcher (which runs the pipeline: pre steps, backend, post steps) and builds the
response; every step is told to the version's monitors as events (runtime/events.py).
It is also the read-only view that statistics, metrics and autoscaling are handed.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import numpy as np

from runtime import classification
from runtime.batching.batcher import DynamicBatcher
from runtime.config import ModelConfig, TensorSpec
from runtime.errors import ServingError, Unsupported
from runtime.events import Events
from runtime.monitoring.autoscale import LoadWindow
from runtime.monitoring.drift import DriftMonitor
from runtime.monitoring.stats import ModelStatistics
from runtime.pipeline import Pipeline
from runtime.types import InferenceRequest, InferenceResponse, OutputTensor
from runtime.validation import RequestValidator


class ModelInstance:
    """A loaded, warmed model version with its batcher, statistics and monitors."""

    __slots__ = (
        "_load",
        "_validator",
        "batcher",
        "config",
        "drift",
        "events",
        "name",
        "pipeline",
        "statistics",
        "version",
    )

    def __init__(
        self,
        config: ModelConfig,
        version: int,
        pipeline: Pipeline,
        batcher: DynamicBatcher,
        events: Events,
        statistics: ModelStatistics,
        load: LoadWindow,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.name = config.name
        self.version = str(version)
        # What clients see: inputs and outputs as the pipeline's steps take and give them.
        self.config = config
        self.pipeline = pipeline
        self.batcher = batcher
        self.events = events
        self.statistics = statistics
        self.drift = drift
        self._load = load
        self._validator = RequestValidator(config)

    # -- the read-only view (runtime/monitoring/view.py) ----------------------------------

    @property
    def ready(self) -> bool:
        return self.batcher.failed is None

    @property
    def queue_depth(self) -> int:
        return self.batcher.depth

    @property
    def batches_in_flight(self) -> int:
        return self.batcher.in_flight

    def signals(self) -> dict[str, Any]:
        return self._load.signals(self.batcher.depth)

    # -- serving --------------------------------------------------------------------------

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Check, queue, wait for the batch, and build this request's response."""
        start = request.received_ns or time.monotonic_ns()
        self.events.arrived()
        error: BaseException | None = None
        try:
            self._validator.check(request)
            outputs = await self.batcher.submit(request)
            response = respond(self._validator, self.version, request, outputs)
            if self.batcher.slo is not None:
                # The whole stay in the server, front end included, is what the target bounds.
                self.batcher.slo.observe_request(time.monotonic_ns() - start)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.events.request_done(time.monotonic_ns() - start, error, request.protocol)

    def refuse(self, request: InferenceRequest, error: ServingError) -> NoReturn:
        """Answer a request with an error before it is checked, counted like any other."""
        start = request.received_ns or time.monotonic_ns()
        self.events.arrived()
        self.events.request_done(time.monotonic_ns() - start, error, request.protocol)
        raise error

    def start(self) -> None:
        """Begin taking batches (the registry calls it as it swaps the version in)."""
        self.batcher.start()

    async def close(self) -> None:
        """Drain (queued and running requests finish), then close the backend."""
        await self.batcher.stop(drain=True)
        self.pipeline.backend.close()


def respond(
    validator: RequestValidator,
    version: str,
    request: InferenceRequest,
    outputs: dict[str, np.ndarray],
) -> InferenceResponse:
    """The response to one checked request from its outputs: the outputs it asked for (all
    when it named none), in its order, ranked where it asked for classification."""
    specs = validator.outputs
    config = validator.config
    result: list[OutputTensor] = []
    if request.outputs is None:
        for name in validator.output_names:
            result.append(OutputTensor(name, specs[name].datatype, outputs[name]))
    else:
        for out in request.outputs:
            spec = specs[out.name]
            data = outputs[out.name]
            if out.class_count > 0:
                data = _classify(spec, config, data, out.class_count)
                result.append(OutputTensor(out.name, "BYTES", data))
            else:
                result.append(OutputTensor(out.name, spec.datatype, data))
    return InferenceResponse(config.name, version, request.id, result)


def _classify(spec: TensorSpec, config: ModelConfig, data: np.ndarray, count: int) -> np.ndarray:
    try:
        return classification.classify(data, count, spec.labels, config.batched)
    except ServingError:
        raise
    except Exception as exc:  # e.g. a BYTES output cannot be ranked
        raise Unsupported(f"cannot classify output '{spec.name}': {exc}") from exc
