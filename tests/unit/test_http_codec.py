"""The HTTP codec against bodies built and parsed by tritonclient.http itself."""

from __future__ import annotations

import gzip
import json
import tracemalloc
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient  # type: ignore[import-untyped]

from runtime.config import TensorSpec
from runtime.errors import InvalidInput, TooLarge, Unsupported
from runtime.protocol.http import codec
from runtime.types import InferenceResponse, OutputTensor, RequestedOutput

MB = 1 << 20

ARRAYS: dict[str, tuple[str, np.ndarray]] = {
    "F32": ("FP32", np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, 7.0]], dtype=np.float32)),
    "F16": ("FP16", np.array([[0.5, -1.0], [65504.0, 2.0]], dtype=np.float16)),
    "F64": ("FP64", np.array([1e300, -1e-300], dtype=np.float64)),
    "I8": ("INT8", np.array([[-128, 127]], dtype=np.int8)),
    "I64": ("INT64", np.array([[2**62, -(2**62)]], dtype=np.int64)),
    "U16": ("UINT16", np.array([0, 65535], dtype=np.uint16)),
    "U64": ("UINT64", np.array([2**64 - 1, 0], dtype=np.uint64)),
    "B": ("BOOL", np.array([[True, False, True]], dtype=np.bool_)),
    "S": ("BYTES", np.array([[b"a", b""], [b"\x00\xff", "\u00e9".encode()]], dtype=object)),
    "T": ("BYTES", np.array([b"text", "\u00e9\u4e2d".encode(), b""], dtype=object)),
}
JSON_SAFE = ("F32", "F64", "I8", "I64", "U16", "U64", "B", "T")


def infer_input(name: str, binary: bool = True) -> Any:
    datatype, arr = ARRAYS[name]
    tensor = httpclient.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def body_of(inputs: list[Any], **kwargs: Any) -> tuple[bytes, str | None]:
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return body, None if json_size is None else str(json_size)


def decode(body: bytes, header: str | None) -> codec.HttpRequest:
    doc, blobs = codec.split_body(body, header)
    return codec.decode_request(doc, blobs, "model", "1")


def decode_doc(doc: dict[str, Any], blobs: bytes = b"") -> codec.HttpRequest:
    return codec.decode_request(orjson.dumps(doc), memoryview(blobs), "model", "")


def assert_inputs(decoded: codec.HttpRequest, names: tuple[str, ...]) -> None:
    inputs = decoded.request.inputs
    assert list(inputs) == list(names)
    for name in names:
        datatype, arr = ARRAYS[name]
        assert inputs[name].datatype == datatype
        assert inputs[name].data.shape == arr.shape
        if datatype == "BYTES":
            assert inputs[name].data.tolist() == arr.tolist()
        else:
            assert inputs[name].data.dtype == arr.dtype
            np.testing.assert_array_equal(inputs[name].data, arr)


# --- decode_request ------------------------------------------------------------------------


def test_decode_json_tensors() -> None:
    body, header = body_of([infer_input(n, binary=False) for n in JSON_SAFE])
    assert header is None
    decoded = decode(body, header)
    assert_inputs(decoded, JSON_SAFE)
    assert decoded.request.model_name == "model"
    assert decoded.request.model_version == "1"
    assert decoded.request.outputs is None
    assert decoded.binary_default  # tritonclient asks for binary outputs when none are listed


def test_decode_nested_json_data() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]
    }
    arr = decode_doc(doc).request.inputs["x"].data
    np.testing.assert_array_equal(arr, np.array([[1, 2], [3, 4]], dtype=np.int32))


def test_decode_binary_tensors_from_tritonclient() -> None:
    names = tuple(ARRAYS)
    body, header = body_of([infer_input(n) for n in names])
    assert header is not None
    doc = json.loads(body[: int(header)])
    assert all("data" not in i for i in doc["inputs"])
    assert_inputs(decode(body, header), names)


def test_decode_binary_numeric_input_is_a_view_of_the_body() -> None:
    body, header = body_of([infer_input("F32")])
    arr = decode(body, header).request.inputs["F32"].data
    assert np.shares_memory(arr, np.frombuffer(body, dtype=np.uint8))


def test_decode_mixed_json_and_binary() -> None:
    inputs = [
        infer_input("F32"),
        infer_input("I64", False),
        infer_input("S"),
        infer_input("B", False),
    ]
    body, header = body_of(inputs)
    assert_inputs(decode(body, header), ("F32", "I64", "S", "B"))


def test_decode_empty_binary_tensor() -> None:
    tensor = httpclient.InferInput("E", [0, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((0, 3), dtype=np.float32))
    body, header = body_of([tensor, infer_input("F32")])
    decoded = decode(body, header)
    assert decoded.request.inputs["E"].data.shape == (0, 3)
    np.testing.assert_array_equal(decoded.request.inputs["F32"].data, ARRAYS["F32"][1])


def test_decode_request_parameters_and_outputs() -> None:
    outputs = [
        httpclient.InferRequestedOutput("A", binary_data=True),
        httpclient.InferRequestedOutput("B", binary_data=False, class_count=3),
        httpclient.InferRequestedOutput("C", binary_data=False),
    ]
    body, header = body_of(
        [infer_input("F32")],
        outputs=outputs,
        request_id="req-7",
        priority=2,
        timeout=1500,
        parameters={"custom": "value"},
    )
    decoded = decode(body, header)
    request = decoded.request
    assert request.id == "req-7"
    assert request.priority == 2
    assert request.timeout_us == 1500
    assert request.parameters["custom"] == "value"
    assert request.outputs == [
        RequestedOutput("A", 0),
        RequestedOutput("B", 3),
        RequestedOutput("C", 0),
    ]
    assert decoded.binary_outputs == {"A": True, "B": False, "C": False}
    assert not decoded.binary_default


def test_decode_binary_data_output_request_parameter() -> None:
    doc = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}],
        "outputs": [{"name": "A"}, {"name": "B", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},
    }
    decoded = decode_doc(doc)
    assert decoded.binary_default
    assert decoded.binary_outputs == {"B": False}


def test_decode_without_outputs_or_parameters() -> None:
    doc = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    decoded = decode_doc(doc)
    assert decoded.request.outputs is None
    assert not decoded.binary_default
    assert decoded.request.priority == 0
    assert decoded.request.timeout_us == 0
    assert decoded.request.id == ""


# --- split_body ----------------------------------------------------------------------------


def test_split_body_without_header_is_all_json() -> None:
    doc, blobs = codec.split_body(b'{"inputs": []}', None)
    assert doc == b'{"inputs": []}'
    assert len(blobs) == 0


def test_split_body_at_the_header_length() -> None:
    doc, blobs = codec.split_body(b"{}abcdef", "2")
    assert doc == b"{}"
    assert bytes(blobs) == b"abcdef"
    doc, blobs = codec.split_body(b"{}", "2")  # all JSON, as perf_analyzer sends it
    assert (doc, bytes(blobs)) == (b"{}", b"")


@pytest.mark.parametrize("header", ["abc", "", "1.5", "0x10", "1e2", "2,3"])
def test_split_body_non_integer_header(header: str) -> None:
    with pytest.raises(InvalidInput, match="Unable to parse Inference-Header-Content-Length"):
        codec.split_body(b"{}" * 10, header)


@pytest.mark.parametrize("header", ["-1", "21", str(2**40)])
def test_split_body_header_out_of_range(header: str) -> None:
    with pytest.raises(InvalidInput, match="out of range"):
        codec.split_body(b"{}" * 10, header)


def test_split_body_zero_header_is_a_raw_body() -> None:
    doc, blobs = codec.split_body(b"\x00" * 16, "0")
    assert doc is None
    assert bytes(blobs) == b"\x00" * 16


def test_raw_body_deduces_the_variable_dim_and_adds_a_batch_of_one() -> None:
    x = np.arange(6, dtype=np.float32)
    spec = TensorSpec("IN", "FP32", (-1,))
    decoded = codec.decode_raw_request(memoryview(x.tobytes()), "m", "", spec, batched=True)
    got = decoded.request.inputs["IN"].data
    assert got.shape == (1, 6)
    np.testing.assert_array_equal(got[0], x)
    assert decoded.binary_default is True


def test_raw_body_of_a_partial_element_is_refused() -> None:
    spec = TensorSpec("IN", "FP32", (3, -1))
    with pytest.raises(InvalidInput, match="whole number"):
        codec.decode_raw_request(memoryview(b"\x00" * 14), "m", "", spec, batched=False)


def test_raw_body_cannot_deduce_two_variable_dims() -> None:
    spec = TensorSpec("IN", "FP32", (-1, -1))
    with pytest.raises(InvalidInput, match="cannot deduce"):
        codec.decode_raw_request(memoryview(b"\x00" * 16), "m", "", spec, batched=False)


def test_blobs_longer_than_sizes() -> None:
    body, header = body_of([infer_input("F32")])
    with pytest.raises(InvalidInput, match="binary part"):
        decode(body + b"\x00", header)


def test_blobs_shorter_than_sizes() -> None:
    body, header = body_of([infer_input("F32"), infer_input("I64")])
    with pytest.raises(InvalidInput, match="runs past the end"):
        decode(body[:-1], header)


def test_binary_size_that_does_not_fit_the_shape() -> None:
    doc = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}
        ]
    }
    with pytest.raises(InvalidInput, match="x"):
        decode_doc(doc, b"\x00" * 4)


# --- malformed JSON --------------------------------------------------------------------------


def test_duplicate_input() -> None:
    item = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}
    with pytest.raises(InvalidInput, match="more than once"):
        decode_doc({"inputs": [item, item]})


GOOD = {"name": "x", "datatype": "INT32", "shape": [2], "data": [1, 2]}


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"shape": "2"}, "shape"),
        ({"shape": 2}, "shape"),
        ({"shape": [2.0]}, "shape"),
        ({"shape": [True, 2]}, "shape"),
        ({"shape": ["2"]}, "shape"),
        ({"shape": None}, "shape"),
        ({"datatype": 5}, "datatype"),
        ({"datatype": None}, "datatype"),
        ({"datatype": "FLOAT"}, "FLOAT"),
        ({"name": 1}, "name"),
        ({"name": None}, "name"),
        ({"parameters": []}, "parameters"),
        ({"data": None, "parameters": {"binary_data_size": True}}, "binary_data_size"),
        ({"data": None, "parameters": {"binary_data_size": -1}}, "binary_data_size"),
        ({"data": None, "parameters": {"binary_data_size": "8"}}, "binary_data_size"),
        ({"parameters": {"binary_data_size": 0}}, "both"),
        ({"data": None}, "neither"),
        ({"data": [1, 2, 3]}, "elements"),
        ({"data": "12"}, "list"),
    ],
)
def test_bad_input_fields(change: dict[str, Any], pattern: str) -> None:
    item = {**GOOD, **change}
    item = {k: v for k, v in item.items() if v is not None}
    with pytest.raises(InvalidInput, match=pattern):
        decode_doc({"inputs": [item]})


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("INT32", [1, True]), ("INT64", [False, 2]), ("FP32", [1.5, False]), ("UINT8", [[1], [True]])],
)
def test_bool_mixed_into_numeric_json_data_is_refused(datatype: str, data: list[Any]) -> None:
    """A JSON true is not a number (Triton: rapidjson IsInt/IsNumber fail); mixed in, too."""
    shape = [2, 1] if isinstance(data[0], list) else [2]
    doc = {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    with pytest.raises(InvalidInput, match="x"):
        decode_doc(doc)


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ({}, "inputs"),
        ({"inputs": {}}, "inputs"),
        ({"inputs": [5]}, "inputs"),
        ({"inputs": [GOOD], "id": 5}, "id"),
        ({"inputs": [GOOD], "parameters": []}, "parameters"),
        ({"inputs": [GOOD], "parameters": {"priority": True}}, "priority"),
        ({"inputs": [GOOD], "parameters": {"priority": -1}}, "priority"),
        ({"inputs": [GOOD], "parameters": {"priority": 1.0}}, "priority"),
        ({"inputs": [GOOD], "parameters": {"timeout": "10"}}, "timeout"),
        ({"inputs": [GOOD], "outputs": {}}, "outputs"),
        ({"inputs": [GOOD], "outputs": ["A"]}, "outputs"),
        ({"inputs": [GOOD], "outputs": [{"name": 3}]}, "name"),
        ({"inputs": [GOOD], "outputs": [{"name": "A", "parameters": 1}]}, "parameters"),
        (
            {"inputs": [GOOD], "outputs": [{"name": "A", "parameters": {"classification": True}}]},
            "classification",
        ),
        (
            {"inputs": [GOOD], "outputs": [{"name": "A", "parameters": {"classification": -2}}]},
            "classification",
        ),
    ],
)
def test_bad_request_fields(doc: dict[str, Any], pattern: str) -> None:
    with pytest.raises(InvalidInput, match=pattern):
        decode_doc(doc)


@pytest.mark.parametrize("text", [b"", b"{", b"[1, 2]", b'"inputs"', b"\xff\xfe"])
def test_body_that_is_not_a_json_object(text: bytes) -> None:
    with pytest.raises(InvalidInput):
        codec.decode_request(text, memoryview(b""), "model", "")


def test_fp16_as_json_is_refused() -> None:
    doc = {"inputs": [{"name": "h", "datatype": "FP16", "shape": [1], "data": [1.0]}]}
    with pytest.raises(InvalidInput, match="FP16"):
        decode_doc(doc)


# --- compression ---------------------------------------------------------------------------

PAYLOAD = b'{"inputs": []}' + bytes(range(256)) * 40


@pytest.mark.parametrize(
    ("encoding", "compressed"),
    [
        ("gzip", gzip.compress(PAYLOAD)),
        ("GZIP", gzip.compress(PAYLOAD)),
        ("x-gzip", gzip.compress(PAYLOAD)),
        (" gzip ", gzip.compress(PAYLOAD)),
        ("deflate", zlib.compress(PAYLOAD)),
        ("identity", PAYLOAD),
        ("", PAYLOAD),
    ],
)
def test_decompress(encoding: str, compressed: bytes) -> None:
    assert codec.decompress(compressed, encoding, MB) == PAYLOAD


def test_decompress_exactly_at_the_limit() -> None:
    assert codec.decompress(gzip.compress(PAYLOAD), "gzip", len(PAYLOAD)) == PAYLOAD
    with pytest.raises(TooLarge):
        codec.decompress(gzip.compress(PAYLOAD), "gzip", len(PAYLOAD) - 1)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, deflate"])
def test_decompress_unknown_encoding(encoding: str) -> None:
    with pytest.raises(Unsupported):
        codec.decompress(PAYLOAD, encoding, MB)


def test_decompress_corrupt_body() -> None:
    with pytest.raises(InvalidInput):
        codec.decompress(b"not gzip at all", "gzip", MB)
    with pytest.raises(InvalidInput):
        codec.decompress(gzip.compress(PAYLOAD)[:10] + b"\x00" * 10, "gzip", MB)


def test_decompress_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\x00" * (10 * MB))
    assert len(bomb) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="limit"):
            codec.decompress(bomb, "gzip", MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MB


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compress_round_trips_through_the_standard_library(encoding: str) -> None:
    packed = codec.compress(PAYLOAD, encoding)
    unpack = gzip.decompress if encoding == "gzip" else zlib.decompress
    assert unpack(packed) == PAYLOAD
    assert codec.decompress(packed, encoding, MB) == PAYLOAD


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("GZip", "gzip"),
        ("gzip, deflate", "gzip"),
        ("deflate, gzip", "deflate"),
        ("deflate, gzip;q=0.5", "deflate"),
        ("gzip;q=0.2, deflate;q=0.8", "deflate"),
        ("gzip; q=0.9, deflate; q=0.3", "gzip"),
        ("gzip;q=0", ""),
        ("gzip;q=0, deflate;q=0", ""),
        ("gzip;q=nonsense", ""),
        ("br", ""),
        ("identity", ""),
        ("", ""),
        ("br;q=1.0, deflate;q=0.1", "deflate"),
    ],
)
def test_accepted_encoding(header: str, expected: str) -> None:
    assert codec.accepted_encoding(header) == expected


# --- encode_response -------------------------------------------------------------------------


def response_of(*names: str, request_id: str = "") -> InferenceResponse:
    outputs = [OutputTensor(n, ARRAYS[n][0], ARRAYS[n][1]) for n in names]
    return InferenceResponse("model", "1", request_id, outputs)


def parse_back(body: bytes, header: int | None, encoding: str | None = None) -> Any:
    return httpclient.InferResult.from_response_body(
        body, header_length=header, content_encoding=encoding
    )


def assert_outputs(result: Any, names: tuple[str, ...]) -> None:
    for name in names:
        datatype, arr = ARRAYS[name]
        got = result.as_numpy(name)
        assert got.shape == arr.shape, name
        if datatype == "BYTES":
            assert [v if isinstance(v, bytes) else v.encode() for v in got.ravel()] == list(
                arr.ravel()
            )
        else:
            assert got.dtype == arr.dtype, name
            np.testing.assert_array_equal(got, arr)


def test_encode_json_outputs() -> None:
    decoded = codec.HttpRequest(request=None)  # type: ignore[arg-type]
    body, header = codec.encode_response(response_of(*JSON_SAFE, request_id="r1"), decoded)
    assert header is None
    doc = json.loads(body)
    assert doc["model_name"] == "model"
    assert doc["model_version"] == "1"
    assert doc["id"] == "r1"
    assert [o["name"] for o in doc["outputs"]] == list(JSON_SAFE)
    for out in doc["outputs"]:
        assert "parameters" not in out
        assert out["datatype"] == ARRAYS[out["name"]][0]
        assert out["shape"] == list(ARRAYS[out["name"]][1].shape)
    assert_outputs(parse_back(body, None), JSON_SAFE)


def test_encode_json_output_values() -> None:
    response = InferenceResponse(
        "model",
        "1",
        "",
        [
            OutputTensor("U", "UINT64", np.array([2**64 - 1], dtype=np.uint64)),
            OutputTensor("B", "BOOL", np.array([[True, False]])),
            OutputTensor("S", "BYTES", np.array([b"x", "\u00e9".encode()], dtype=object)),
            OutputTensor("V", "INT32", np.arange(6, dtype=np.int32).reshape(2, 3)[:, 1:]),
        ],
    )
    body, header = codec.encode_response(response, codec.HttpRequest(request=None))  # type: ignore[arg-type]
    assert header is None
    data = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert data == {"U": [2**64 - 1], "B": [True, False], "S": ["x", "\u00e9"], "V": [1, 2, 4, 5]}
    assert "id" not in json.loads(body)


def test_encode_binary_outputs_parse_back_with_tritonclient() -> None:
    names = tuple(ARRAYS)
    decoded = codec.HttpRequest(request=None, binary_default=True)  # type: ignore[arg-type]
    body, header = codec.encode_response(response_of(*names), decoded)
    assert header is not None
    doc = json.loads(body[:header])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert all("data" not in o for o in doc["outputs"])
    assert header + sum(sizes) == len(body)
    assert_outputs(parse_back(body, header), names)


def test_encode_mixed_outputs_parse_back_with_tritonclient() -> None:
    names = ("F32", "S", "F16", "I64", "B", "U64")
    decoded = codec.HttpRequest(
        request=None,  # type: ignore[arg-type]
        binary_outputs={"F32": False, "S": True, "F16": True, "B": False},
        binary_default=False,
    )
    body, header = codec.encode_response(response_of(*names), decoded)
    assert header is not None
    doc = json.loads(body[:header])
    binary = [o["name"] for o in doc["outputs"] if "parameters" in o]
    assert binary == ["S", "F16"]
    assert_outputs(parse_back(body, header), names)


def test_encode_compressed_body_parses_back_with_tritonclient() -> None:
    decoded = codec.HttpRequest(request=None, binary_default=True)  # type: ignore[arg-type]
    body, header = codec.encode_response(response_of("F32", "S", "F16"), decoded)
    for encoding in ("gzip", "deflate"):
        packed = codec.compress(body, encoding)
        assert_outputs(parse_back(packed, header, encoding), ("F32", "S", "F16"))


def test_encode_fp16_as_json_is_refused() -> None:
    decoded = codec.HttpRequest(request=None)  # type: ignore[arg-type]
    with pytest.raises(Unsupported, match="FP16"):
        codec.encode_response(response_of("F16"), decoded)


def test_encode_non_utf8_bytes_as_json_is_refused() -> None:
    response = InferenceResponse(
        "model", "1", "", [OutputTensor("S", "BYTES", np.array([b"\xff"], dtype=object))]
    )
    with pytest.raises(Unsupported, match="binary_data"):
        codec.encode_response(response, codec.HttpRequest(request=None))  # type: ignore[arg-type]


def test_round_trip_request_decode_then_response_encode() -> None:
    """What a client sends comes back bit-exact when a model echoes it."""
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=n != "I64") for n in ("F16", "I64", "S")
    ]
    body, header = body_of([infer_input(n) for n in ("F16", "I64", "S")], outputs=outputs)
    decoded = decode(body, header)
    echoed = [OutputTensor(t.name, t.datatype, t.data) for t in decoded.request.inputs.values()]
    out_body, out_header = codec.encode_response(
        InferenceResponse("model", "1", "", echoed), decoded
    )
    assert_outputs(parse_back(out_body, out_header), ("F16", "I64", "S"))
