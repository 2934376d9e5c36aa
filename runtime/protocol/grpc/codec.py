"""ModelInferRequest / ModelInferResponse <-> InferenceRequest / InferenceResponse.

`raw_input_contents` become numpy views with no per-element Python work; the typed
`contents` fields are accepted too. Responses always carry `raw_output_contents`, one
blob per output in output order, which is what tritonclient and perf_analyzer read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from runtime import tensors
from runtime.errors import InvalidInput
from runtime.proto import grpc_service_pb2 as pb
from runtime.types import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestedOutput,
    scheduling_parameter,
)

# Which typed `contents` field carries each datatype (BYTES has no length prefix there).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(p: pb.InferParameter) -> Any:
    """The Python value of an InferParameter (its oneof)."""
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _parameters(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {k: parameter_value(v) for k, v in params.items()}


def decode_request(msg: pb.ModelInferRequest) -> InferenceRequest:
    """Build the neutral request; sizes are checked before any array is made."""
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(
            f"expected {len(msg.inputs)} raw_input_contents (one per input), got {len(raw)}"
        )
    inputs: dict[str, InputTensor] = {}
    for i, tensor in enumerate(msg.inputs):
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' appears more than once in the request")
        inputs[tensor.name] = _decode_input(tensor, raw[i] if raw else None)
    params = _parameters(msg.parameters)
    request = InferenceRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=inputs,
        parameters=params,
        priority=scheduling_parameter(params, "priority"),
        timeout_us=scheduling_parameter(params, "timeout"),
    )
    if msg.outputs:
        request.outputs = [_decode_output(o) for o in msg.outputs]
    return request


def _decode_input(tensor: pb.ModelInferRequest.InferInputTensor, blob: bytes | None) -> InputTensor:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if blob is not None:
        if tensor.HasField("contents"):
            raise InvalidInput(
                f"input '{name}': contents field must not be specified when using "
                "raw_input_contents"
            )
        return InputTensor(name, datatype, tensors.from_raw(blob, datatype, shape, name))
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        tensors.numpy_dtype(datatype)  # raises for an unknown datatype
        raise InvalidInput(f"input '{name}': {datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    count = tensors.element_count(shape, name)
    if len(values) != count:
        raise InvalidInput(
            f"input '{name}': shape {shape} needs {count} elements, got {len(values)} in "
            f"contents.{field}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
    else:
        arr = _typed(values, datatype, field, name)
    return InputTensor(name, datatype, arr.reshape(shape))


# The protobuf field's own element type, so no value is routed through float64.
_FIELD_DTYPE = {
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def _typed(values: Any, datatype: str, field: str, name: str) -> np.ndarray:
    dtype = tensors.numpy_dtype(datatype)
    wide: np.ndarray = np.array(values, dtype=_FIELD_DTYPE[field])
    arr = wide.astype(dtype)
    if dtype.kind in "iu" and wide.size and not np.array_equal(arr, wide):
        raise InvalidInput(f"input '{name}': a value is out of range for {datatype}")
    return arr


def _decode_output(out: pb.ModelInferRequest.InferRequestedOutputTensor) -> RequestedOutput:
    count = 0
    if "classification" in out.parameters:
        value = parameter_value(out.parameters["classification"])
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidInput(
                f"output '{out.name}': classification must be a non-negative integer"
            )
        count = value
    return RequestedOutput(out.name, count)


def encode_response(response: InferenceResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.id,
    )
    for out in response.outputs:
        msg.outputs.add(name=out.name, datatype=out.datatype, shape=out.data.shape)
        msg.raw_output_contents.append(tensors.to_raw(out.data, out.datatype))
    return msg
