"""Protocol-neutral vocabulary: tensor specs, requests and responses; numpy and plain values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.errors import InvalidInput


def scheduling_parameter(parameters: Mapping[str, Any], key: str) -> int:
    """`priority` or `timeout` from request parameters: a non-negative integer, 0 if absent."""
    value = parameters.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(
            f"request parameter '{key}' must be a non-negative integer, got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One model input or output: protocol datatype and dims without the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False
    labels: tuple[str, ...] = ()

    def metadata_shape(self, max_batch_size: int) -> list[int]:
        """The shape shown in model metadata: -1 batch dim first when the model batches."""
        return [-1, *self.dims] if max_batch_size > 0 else list(self.dims)


@dataclass(slots=True)
class InputTensor:
    """One decoded input: the datatype the client declared and its array, already shaped."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; `class_count` > 0 asks for classification."""

    name: str
    class_count: int = 0


@dataclass(slots=True)
class InferenceRequest:
    """A request as the data plane sees it; no protocol object ever gets this far."""

    model_name: str
    model_version: str = ""
    id: str = ""
    inputs: dict[str, InputTensor] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    timeout_us: int = 0
    protocol: str = ""  # "http" or "grpc", for metrics only
    # When the adapter took the request (time.monotonic_ns); 0 = when the data plane did.
    received_ns: int = 0
    # Set by an adapter that can tell when its client went away; checked at dequeue.
    client_gone: Callable[[], bool] | None = None
    # A runtime.monitoring.tracing.RequestTrace when the request is sampled for tracing.
    trace: Any = None


@dataclass(slots=True)
class OutputTensor:
    """One output of a response; `data` may be a view into the batch result."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(slots=True)
class InferenceResponse:
    """The answer to one request, in the order the outputs are to be sent."""

    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)
