"""Hypothesis against the native front end's C++ decoder, with grpc.aio's as the oracle.

Every message goes to two servers on the same repository, one on `--grpc-frontend native`
and one on `aio`, and both must answer alike: the same status code, and for a success the
same outputs. Neither may answer INTERNAL or UNKNOWN, or stop serving. The messages are
test_fuzz.py's adversarial ModelInfer requests, messages written field by field on the
wire (so strings need not be UTF-8, varints may overflow, and every InferParameter kind
appears, which no generated stub would send), and valid messages cut and corrupted at
random bytes. The examples follow the Hypothesis profile, as in test_fuzz.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from tests.integration.conftest import CLIENT_TIMEOUT_S, ServerProcess, running_server
from tests.integration.test_fuzz import ADVERSARIAL, FUZZ, adversarial_request

pytest.importorskip("conveyor_grpc_native", reason="the native extension is not built")

MODEL = "add_sub_fp32"
METHOD = "/inference.GRPCInferenceService/ModelInfer"
FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)

Outcome = tuple[grpc.StatusCode, str, list[bytes]]


class Pair:
    """The native and the grpc.aio server, each with a channel that sends bytes as they are."""

    def __init__(self, native: ServerProcess, aio: ServerProcess) -> None:
        self.servers = (native, aio)
        self._channels = [grpc.insecure_channel(s.grpc_url) for s in self.servers]
        self._calls = [ch.unary_unary(METHOD) for ch in self._channels]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    def outcomes(self, payload: bytes) -> tuple[Outcome, Outcome]:
        native, aio = (self._outcome(call, payload) for call in self._calls)
        return native, aio

    @staticmethod
    def _outcome(call: Any, payload: bytes) -> Outcome:
        try:
            reply = call(payload, timeout=CLIENT_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code(), str(exc.details()), []
        message = service_pb2.ModelInferResponse.FromString(reply)
        return grpc.StatusCode.OK, "", list(message.raw_output_contents)


@pytest.fixture(scope="module")
def pair(test_repo: Path) -> Iterator[Pair]:
    with (
        running_server(test_repo, "--grpc-frontend", "native") as native,
        running_server(test_repo, "--grpc-frontend", "aio") as aio,
    ):
        assert "(native)" in native.log_text()
        both = Pair(native, aio)
        try:
            yield both
        finally:
            both.close()


def check_alike(pair: Pair, payload: bytes) -> None:
    """Both front ends answer alike, neither with a fault, and the native one still serves."""
    native, aio = pair.outcomes(payload)
    # --hypothesis-show-statistics: how far the examples get
    event(native[0].name)
    assert native[0] not in FAULTS, native
    assert native[0] == aio[0], (native, aio)
    if "malformed protobuf" in native[1]:
        assert native[1] == aio[1], (native, aio)  # the same words on both
    assert native[0] == grpc.StatusCode.OK or native[1], native
    assert native[2] == aio[2], (native, aio)
    check_serving(pair)


def valid_request(rows: int = 1) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="ok")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, 4])
        request.raw_input_contents.append(np.arange(4 * rows, dtype="<f4").tobytes())
    return request


def check_serving(pair: Pair) -> None:
    native, _ = pair.outcomes(valid_request().SerializeToString())
    assert native[0] == grpc.StatusCode.OK, native
    assert np.frombuffer(native[2][0], "<f4").tolist() == [0.0, 2.0, 4.0, 6.0]


# -- test_fuzz.py's messages -------------------------------------------------------------------


@FUZZ
@given(**ADVERSARIAL)
def test_adversarial_messages(
    pair: Pair,
    blobs: list[bytes],
    shapes: list[list[int]],
    datatypes: list[str],
    names: list[str],
    use_contents: bool,
) -> None:
    request = adversarial_request(blobs, shapes, datatypes, names, use_contents)
    check_alike(pair, request.SerializeToString())


# -- messages written on the wire --------------------------------------------------------------


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a 64-bit two's complement value."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def scalar(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def length_delimited(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def double(number: int, value: float) -> bytes:
    return varint(number << 3 | 1) + struct.pack("<d", value)


# Strings as bytes: names the server knows or any text; `wire_bytes` need not be UTF-8 (a
# malformed message), so it stands in only for some strings, or few examples would parse.
wire_string = st.sampled_from(
    [b"", b"INPUT0", b"INPUT1", b"OUTPUT0", b"FP32", b"INT32", b"BYTES"]
) | st.text(max_size=6).map(str.encode)
wire_bytes = wire_string | st.binary(max_size=6)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# One InferParameter: each kind of its oneof, or none set.
parameter = st.one_of(
    st.booleans().map(lambda b: scalar(1, int(b))),
    int64.map(lambda n: scalar(2, n)),
    wire_bytes.map(lambda s: length_delimited(3, s)),
    st.floats().map(lambda x: double(4, x)),
    st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: scalar(5, n)),
    st.just(b""),
)
parameter_key = st.sampled_from(
    [b"priority", b"timeout", b"binary_data", b"classification", b"binary_data_output", b"x"]
) | st.text(max_size=4).map(str.encode)


@st.composite
def parameter_map(draw: st.DrawFn, number: int) -> bytes:
    entries = draw(st.lists(st.tuples(parameter_key, parameter), max_size=3))
    return b"".join(
        length_delimited(number, length_delimited(1, key) + length_delimited(2, value))
        for key, value in entries
    )


def pick(draw: st.DrawFn, wild: bool, valid: Any, strategy: st.SearchStrategy[Any]) -> Any:
    """The valid value, or (where this part is wild) anything the strategy draws."""
    return draw(strategy) if wild else valid


@st.composite
def wire_input(draw: st.DrawFn, name: bytes, wild: bool) -> bytes:
    """One InferInputTensor: a valid FP32 [1, 4] input, or with any of its fields wild."""
    parts = draw(st.sets(st.sampled_from(["name", "datatype", "shape", "params", "contents"])))
    parts = parts if wild else set()
    dims = st.lists(st.sampled_from([1, 4]) | int64, max_size=4)
    shape = pick(draw, "shape" in parts, [1, 4], dims)
    packed = draw(st.booleans())
    fields = [
        length_delimited(1, pick(draw, "name" in parts, name, wire_string)),
        length_delimited(2, pick(draw, "datatype" in parts, b"FP32", wire_string)),
        length_delimited(3, b"".join(varint(d) for d in shape))
        if packed
        else b"".join(scalar(3, d) for d in shape),
        pick(draw, "params" in parts, b"", parameter_map(4)),
    ]
    if "contents" in parts:  # typed contents: the request goes to Python's decoder
        floats = draw(st.lists(st.floats(width=32), max_size=4))
        packed_floats = struct.pack(f"<{len(floats)}f", *floats)
        fields.append(length_delimited(5, length_delimited(6, packed_floats)))
    return b"".join(draw(st.permutations(fields)))


REQUEST_PARTS = ("model", "version", "id", "params", "inputs", "outputs", "raw")
VALID_BLOB = np.arange(4, dtype="<f4").tobytes()


@st.composite
def wire_request(draw: st.DrawFn) -> bytes:
    """A valid request with up to three of its parts wild, its fields in any order."""
    parts = draw(st.sets(st.sampled_from(REQUEST_PARTS), max_size=3))
    if "inputs" in parts:
        names = draw(st.lists(st.sampled_from([b"INPUT0", b"INPUT1"]), max_size=3))
        inputs = [draw(wire_input(name, wild=draw(st.booleans()))) for name in names]
    else:
        inputs = [draw(wire_input(name, wild=False)) for name in (b"INPUT0", b"INPUT1")]
    blob = st.just(VALID_BLOB) | st.binary(max_size=40)
    blobs = pick(draw, "raw" in parts, [VALID_BLOB] * len(inputs), st.lists(blob, max_size=3))
    output = st.tuples(st.sampled_from([b"OUTPUT0", b"OUTPUT1"]) | wire_string, parameter_map(2))
    outputs = pick(draw, "outputs" in parts, [(b"OUTPUT1", b"")], st.lists(output, max_size=3))
    priority = length_delimited(1, b"priority") + length_delimited(2, scalar(2, 1))
    fields = [
        length_delimited(1, pick(draw, "model" in parts, MODEL.encode(), wire_string)),
        length_delimited(2, pick(draw, "version" in parts, b"1", wire_string)),
        length_delimited(3, pick(draw, "id" in parts, b"wire", wire_bytes)),
        pick(draw, "params" in parts, length_delimited(4, priority), parameter_map(4)),
        *(length_delimited(5, i) for i in inputs),
        *(length_delimited(6, length_delimited(1, name) + params) for name, params in outputs),
        *(length_delimited(7, b) for b in blobs),
    ]
    return b"".join(draw(st.permutations(fields)))


@FUZZ
@given(payload=wire_request())
def test_messages_written_on_the_wire(pair: Pair, payload: bytes) -> None:
    check_alike(pair, payload)


# -- valid messages, corrupted ---------------------------------------------------------------


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    request = valid_request(rows=draw(st.integers(1, 3)))
    request.parameters["priority"].int64_param = draw(st.integers(0, 2))
    request.outputs.add(name="OUTPUT1")
    data = bytearray(request.SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif at < len(data):
            del data[at]
    return bytes(data)


@FUZZ
@given(payload=corrupted())
def test_corrupted_valid_messages(pair: Pair, payload: bytes) -> None:
    check_alike(pair, payload)
