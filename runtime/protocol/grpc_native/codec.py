"""The native server's ModelInfer tuples <-> InferenceRequest / InferenceResponse.

The server decodes a ModelInferRequest here only when every input is in
`raw_input_contents` and no output asks for classification; its inputs arrive as buffers
over the decoded message, and become numpy views with the same checks as the grpc.aio
codec (runtime.protocol.grpc.codec, which decodes every other request).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from runtime import tensors
from runtime.errors import InvalidInput
from runtime.types import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestedOutput,
    scheduling_parameter,
)

# The second element of an answer tuple (native/python/conveyor_grpc_native/_native.pyi).
ANSWER_INFER = 0
ANSWER_MESSAGE = 1
ANSWER_ERROR = 2
ANSWER_CLOSE = 3


def decode_request(event: tuple[Any, ...]) -> InferenceRequest:
    """The neutral request of a natively decoded ModelInfer event; sizes checked first."""
    _, _, model_name, model_version, request_id, raw_inputs, params, outputs, _ = event
    inputs: dict[str, InputTensor] = {}
    for name, datatype, shape, blob in raw_inputs:
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once in the request")
        inputs[name] = InputTensor(name, datatype, tensors.from_raw(blob, datatype, shape, name))
    parameters: dict[str, Any] = params or {}
    request = InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        id=request_id,
        inputs=inputs,
        parameters=parameters,
        priority=scheduling_parameter(parameters, "priority"),
        timeout_us=scheduling_parameter(parameters, "timeout"),
    )
    if outputs:
        request.outputs = [RequestedOutput(name, 0) for name in outputs]
    return request


def encode_response(call_id: int, response: InferenceResponse) -> tuple[Any, ...]:
    """The answer tuple the server serialises: one raw blob per output, in output order."""
    outputs = [
        (out.name, out.datatype, out.data.shape, _raw(out.data, out.datatype))
        for out in response.outputs
    ]
    return (
        call_id,
        ANSWER_INFER,
        response.model_name,
        response.model_version,
        response.id,
        outputs,
    )


def _raw(data: np.ndarray, datatype: str) -> Any:
    """What tensors.to_raw gives, as a contiguous array where no copy is needed: the server
    copies it straight into the response message."""
    if datatype == "BYTES":
        return tensors.to_raw(data, datatype)
    return np.ascontiguousarray(data, dtype=_little_endian(datatype))


@functools.cache
def _little_endian(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of a datatype (made once: newbyteorder builds a new
    dtype object on every call)."""
    return tensors.numpy_dtype(datatype).newbyteorder("<")
