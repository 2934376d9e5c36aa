"""KServe v2 HTTP bodies <-> InferenceRequest / InferenceResponse.

Handles JSON tensors, the binary tensor data extension (a JSON header followed by raw
blobs, `Inference-Header-Content-Length`), and gzip/deflate bodies with a bound on the
decompressed size, so a small compressed body cannot expand without limit.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from runtime import tensors
from runtime.errors import InvalidInput, TooLarge, Unsupported
from runtime.types import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestedOutput,
    TensorSpec,
    scheduling_parameter,
)

HEADER_LENGTH = "inference-header-content-length"
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


@dataclass(slots=True)
class HttpRequest:
    """A decoded request plus what only the HTTP encoding needs: which outputs go binary."""

    request: InferenceRequest
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding; refuse output past `limit` bytes (no decompression bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise Unsupported(
            f"unsupported Content-Encoding '{encoding}'; expected gzip, deflate or identity"
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"cannot decompress the {encoding} request body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise TooLarge(f"the decompressed request body is larger than the limit of {limit} bytes")
    return out


def compress(body: bytes, encoding: str) -> bytes:
    obj = zlib.compressobj(wbits=_WBITS[encoding])
    return obj.compress(body) + obj.flush()


def accepted_encoding(header: str) -> str:
    """The best of gzip/deflate in an Accept-Encoding header by q-value, or ''."""
    best, best_q = "", 0.0
    for part in header.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        if token in ("gzip", "deflate") and q > best_q:
            best, best_q = token, q
    return best


def split_body(body: bytes, header_length: str | None) -> tuple[bytes | None, memoryview]:
    """The JSON part and the binary part of an infer body; None for a raw binary body."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidInput(
            f"Unable to parse Inference-Header-Content-Length '{header_length}' as an integer"
        ) from None
    if n < 0 or n > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {n} is out of range: the body has {len(body)} bytes"
        )
    view = memoryview(body)
    if n == 0:
        return None, view
    return body[:n], view[n:]


def load_json_object(text: bytes) -> dict[str, Any]:
    """Parse a body that must be one JSON object; anything else is a 400 naming the fault."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"failed to parse the request JSON buffer: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"the request JSON must be an object, got {type(doc).__name__}")
    return doc


def _field(obj: Mapping[str, Any], key: str, kind: type, where: str, default: Any = None) -> Any:
    value = obj.get(key, default)
    if value is None and default is None:
        raise InvalidInput(f"{where}: missing required field '{key}'")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInput(
            f"{where}: field '{key}' must be of type {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _shape(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise InvalidInput(f"{where}: 'shape' must be a list of integers, got {value!r}")
    return value


def decode_request(
    doc_bytes: bytes, blobs: memoryview, model_name: str, model_version: str
) -> HttpRequest:
    """Build the neutral request from the JSON header and the binary blobs after it."""
    doc = load_json_object(doc_bytes)
    raw_inputs = _field(doc, "inputs", list, "inference request")
    params = _field(doc, "parameters", dict, "inference request", {})
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("inference request: field 'id' must be a string")
    inputs: dict[str, InputTensor] = {}
    offset = 0
    for i, item in enumerate(raw_inputs):
        tensor, offset = _decode_input(item, i, blobs, offset)
        if tensor.name in inputs:
            raise InvalidInput(f"input '{tensor.name}' appears more than once in the request")
        inputs[tensor.name] = tensor
    if offset != len(blobs):
        raise InvalidInput(
            f"the binary part of the body has {len(blobs)} bytes but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    result = HttpRequest(
        InferenceRequest(
            model_name=model_name,
            model_version=model_version,
            id=request_id,
            inputs=inputs,
            parameters=params,
            priority=scheduling_parameter(params, "priority"),
            timeout_us=scheduling_parameter(params, "timeout"),
        ),
        binary_default=bool(params.get("binary_data_output", False)),
    )
    if "outputs" in doc:
        result.request.outputs = _decode_outputs(doc["outputs"], result.binary_outputs)
    return result


def decode_raw_request(
    blob: memoryview, model_name: str, model_version: str, spec: TensorSpec, batched: bool
) -> HttpRequest:
    """A body that is only the bytes of a one-input model's input (header length 0).

    The shape is the input's dims with at most one -1 deduced from the size, and a batch
    of one where the model batches; every output comes back binary.
    """
    shape = _raw_shape(spec, len(blob))
    if batched:
        shape.insert(0, 1)
    data = tensors.from_raw(blob, spec.datatype, shape, spec.name)
    request = InferenceRequest(
        model_name=model_name,
        model_version=model_version,
        inputs={spec.name: InputTensor(spec.name, spec.datatype, data)},
    )
    return HttpRequest(request, binary_default=True)


def _raw_shape(spec: TensorSpec, size: int) -> list[int]:
    dims = list(spec.dims)
    unknown = dims.count(-1)
    if unknown == 0:
        return dims
    itemsize = tensors.byte_size(spec.datatype)
    if unknown > 1 or itemsize == 0:
        raise InvalidInput(
            f"cannot deduce the shape of input '{spec.name}' ({spec.datatype} {dims}) from a "
            "raw binary body; send a JSON header with the shape"
        )
    known = math.prod(d for d in dims if d != -1) * itemsize
    if size % known:
        raise InvalidInput(
            f"raw binary body of {size} bytes is not a whole number of {spec.datatype} "
            f"elements of shape {dims} for input '{spec.name}'"
        )
    return [size // known if d == -1 else d for d in dims]


def _decode_input(item: Any, index: int, blobs: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}] must be an object")
    name = _field(item, "name", str, f"inputs[{index}]")
    where = f"input '{name}'"
    datatype = _field(item, "datatype", str, where)
    shape = _shape(item.get("shape"), where)
    params = _field(item, "parameters", dict, where, {})
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
        if "data" in item:
            raise InvalidInput(f"{where}: has both 'data' and binary_data_size")
        if offset + size > len(blobs):
            raise InvalidInput(
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"({len(blobs) - offset} bytes left)"
            )
        data = tensors.from_raw(blobs[offset : offset + size], datatype, shape, name)
        return InputTensor(name, datatype, data), offset + size
    if "data" not in item:
        raise InvalidInput(f"{where}: has neither 'data' nor a binary_data_size parameter")
    data = tensors.from_json(item["data"], datatype, shape, name)
    return InputTensor(name, datatype, data), offset


def _decode_outputs(raw: Any, binary: dict[str, bool]) -> list[RequestedOutput]:
    if not isinstance(raw, list):
        raise InvalidInput("inference request: 'outputs' must be a list")
    outputs = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidInput(f"outputs[{i}] must be an object")
        name = _field(item, "name", str, f"outputs[{i}]")
        params = _field(item, "parameters", dict, f"output '{name}'", {})
        if "binary_data" in params:
            binary[name] = bool(params["binary_data"])
        count = params.get("classification", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidInput(f"output '{name}': classification must be a non-negative integer")
        outputs.append(RequestedOutput(name, count))
    return outputs


def encode_response(response: InferenceResponse, decoded: HttpRequest) -> tuple[bytes, int | None]:
    """The response body, and the JSON header length when binary blobs follow it."""
    outputs_json: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out in response.outputs:
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.data.shape),
        }
        if decoded.binary_outputs.get(out.name, decoded.binary_default):
            blob = tensors.to_raw(out.data, out.datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(out.data, out.datatype, out.name)
        outputs_json.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id:
        doc["id"] = response.id
    doc["outputs"] = outputs_json
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


def _json_data(arr: np.ndarray, datatype: str, name: str) -> Any:
    # orjson writes contiguous numeric arrays natively, far faster than tolist().
    if datatype in (
        "FP32",
        "FP64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "BOOL",
    ):
        return np.ascontiguousarray(arr).reshape(-1)
    return tensors.to_json(arr, datatype, name=name)
