"""The native front end's codec: its event and answer tuples <-> the neutral types.

No server and no extension: the tuples are built here as the extension builds them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from runtime.errors import InvalidInput
from runtime.protocol.grpc_native.codec import ANSWER_INFER, decode_request, encode_response
from runtime.types import InferenceResponse, OutputTensor


def event(inputs: list[tuple[str, str, tuple[int, ...], Any]], **kw: Any) -> tuple[Any, ...]:
    return (0, 7, kw.get("model", "m"), kw.get("version", ""), kw.get("id", ""), inputs,
            kw.get("params"), kw.get("outputs"), None)  # fmt: skip


def test_raw_inputs_become_views_of_the_received_bytes() -> None:
    blob = bytearray(np.arange(6, dtype="<f4").tobytes())
    request = decode_request(event([("x", "FP32", (2, 3), blob)], id="r1", version="2"))
    x = request.inputs["x"].data
    assert (request.id, request.model_version, x.shape, x.dtype) == ("r1", "2", (2, 3), "<f4")
    blob[0:4] = np.float32(9).tobytes()
    assert x[0, 0] == 9  # no copy was made
    assert request.outputs is None
    assert request.parameters == {}


def test_parameters_and_requested_outputs() -> None:
    params = {"priority": 2, "timeout": 500, "custom": "v"}
    request = decode_request(event([], params=params, outputs=["b", "a"]))
    assert (request.priority, request.timeout_us) == (2, 500)
    assert request.parameters == params
    assert [(o.name, o.class_count) for o in request.outputs or []] == [("b", 0), ("a", 0)]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([("x", "FP32", (1,), b"\0" * 4), ("x", "FP32", (1,), b"\0" * 4)], "more than once"),
        ([("x", "FP32", (2,), b"\0" * 4)], "needs 8 bytes, got 4"),
        ([("x", "NOPE", (1,), b"\0")], "NOPE"),
    ],
)
def test_bad_inputs_are_invalid(inputs: list[Any], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(event(inputs))


def test_bad_priority_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="priority"):
        decode_request(event([], params={"priority": -1}))


def test_response_blobs_are_the_raw_encoding_in_output_order() -> None:
    strided = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    words = np.array([b"ab", b""], dtype=object)
    response = InferenceResponse("m", "1", "r", [
        OutputTensor("f", "FP32", strided), OutputTensor("s", "BYTES", words)
    ])  # fmt: skip
    call_id, kind, name, version, rid, outputs = encode_response(5, response)
    assert (call_id, kind, name, version, rid) == (5, ANSWER_INFER, "m", "1", "r")
    (f_name, f_type, f_shape, f_blob), (s_name, s_type, s_shape, s_blob) = outputs
    assert (f_name, f_type, f_shape) == ("f", "FP32", (3, 2))
    assert bytes(memoryview(f_blob)) == strided.tobytes()
    assert (s_name, s_type, s_shape) == ("s", "BYTES", (2,))
    assert bytes(s_blob) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
