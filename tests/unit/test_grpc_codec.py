"""The gRPC codec, cross-checked against messages built and parsed by tritonclient.grpc."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2 as triton_pb  # type: ignore[import-untyped]
from tritonclient.grpc._utils import _get_inference_request  # type: ignore[import-untyped]

from runtime.errors import InvalidInput, ServingError, Unsupported
from runtime.proto import grpc_service_pb2 as pb
from runtime.protocol.grpc import codec
from runtime.types import InferenceResponse, OutputTensor, RequestedOutput

ARRAYS: dict[str, tuple[str, np.ndarray]] = {
    "BOOL": ("BOOL", np.array([[True, False, True]])),
    "UINT8": ("UINT8", np.array([0, 255], dtype=np.uint8)),
    "UINT16": ("UINT16", np.array([0, 65535], dtype=np.uint16)),
    "UINT32": ("UINT32", np.array([0, 2**32 - 1], dtype=np.uint32)),
    "UINT64": ("UINT64", np.array([0, 2**64 - 1], dtype=np.uint64)),
    "INT8": ("INT8", np.array([-128, 127], dtype=np.int8)),
    "INT16": ("INT16", np.array([-(2**15), 2**15 - 1], dtype=np.int16)),
    "INT32": ("INT32", np.array([[-(2**31)], [2**31 - 1]], dtype=np.int32)),
    "INT64": ("INT64", np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
    "FP16": ("FP16", np.array([0.5, -65504.0], dtype=np.float16)),
    "FP32": ("FP32", np.array([[1.5, -2.25], [3.0, 1e-30]], dtype=np.float32)),
    "FP64": ("FP64", np.array([1e300, -1e-300], dtype=np.float64)),
    "BYTES": ("BYTES", np.array([[b"a", b""], [b"\x00\xff", b"xyz"]], dtype=object)),
}
TYPED = tuple(n for n in ARRAYS if n != "FP16")  # FP16 has no typed contents field


def client_request(names: tuple[str, ...], **kwargs: Any) -> Any:
    """A ModelInferRequest as tritonclient.grpc builds it (raw_input_contents)."""
    inputs = []
    for name in names:
        datatype, arr = ARRAYS[name]
        tensor = grpcclient.InferInput(name, list(arr.shape), datatype)
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    args: dict[str, Any] = {
        "model_version": "",
        "request_id": "",
        "outputs": None,
        "sequence_id": 0,
        "sequence_start": False,
        "sequence_end": False,
        "priority": 0,
        "timeout": None,
        "parameters": None,
    }
    args.update(kwargs)
    return _get_inference_request(model_name="model", inputs=inputs, **args)


def ours(message: Any) -> Any:
    """Re-read a tritonclient message with our own stubs, through its wire bytes."""
    return pb.ModelInferRequest.FromString(message.SerializeToString())


def assert_inputs(
    request: Any, names: tuple[str, ...], arrays: dict[str, tuple[str, np.ndarray]] = ARRAYS
) -> None:
    assert list(request.inputs) == list(names)
    for name in names:
        datatype, arr = arrays[name]
        got = request.inputs[name]
        assert got.datatype == datatype
        assert got.data.shape == arr.shape, name
        if datatype == "BYTES":
            assert got.data.tolist() == arr.tolist()
        else:
            assert got.data.dtype == arr.dtype, name
            np.testing.assert_array_equal(got.data, arr)


def typed_request(
    names: tuple[str, ...], arrays: dict[str, tuple[str, np.ndarray]] = ARRAYS
) -> Any:
    msg = pb.ModelInferRequest(model_name="model")
    for name in names:
        datatype, arr = arrays[name]
        tensor = msg.inputs.add(name=name, datatype=datatype, shape=arr.shape)
        field = getattr(tensor.contents, codec._CONTENTS_FIELD[datatype])
        field.extend(arr.ravel().tolist())
    return msg


# --- decode_request ------------------------------------------------------------------------


def test_decode_raw_contents_from_tritonclient() -> None:
    names = tuple(ARRAYS)
    request = codec.decode_request(ours(client_request(names)))
    assert request.model_name == "model"
    assert request.model_version == ""
    assert request.outputs is None
    assert request.priority == 0
    assert request.timeout_us == 0
    assert_inputs(request, names)


def test_decode_raw_contents_is_zero_copy() -> None:
    msg = ours(client_request(("FP32", "INT64")))
    request = codec.decode_request(msg)
    for name in ("FP32", "INT64"):
        arr = request.inputs[name].data
        assert not arr.flags.owndata  # a view over the message's bytes, not a copy
        assert not arr.flags.writeable


def test_decode_typed_contents_for_each_type() -> None:
    # UINT64 past 2**63 has its own test below
    arrays = {**ARRAYS, "UINT64": ("UINT64", np.array([0, 2**62 + 1], dtype=np.uint64))}
    request = codec.decode_request(typed_request(TYPED, arrays))
    assert_inputs(request, TYPED, arrays)


@pytest.mark.parametrize(
    "values",
    [[2**64 - 1], [0, 2**63 + 1], [2**63, 2**53 + 1], [1, 2**64 - 1, 2**63 + 12345]],
)
def test_decode_typed_uint64_contents_exactly(values: list[int]) -> None:
    """uint64_contents above int64's range must not go through float64 (or be refused)."""
    msg = pb.ModelInferRequest()
    tensor = msg.inputs.add(name="u", datatype="UINT64", shape=[len(values)])
    tensor.contents.uint64_contents.extend(values)
    arr = codec.decode_request(msg).inputs["u"].data
    assert arr.dtype == np.uint64
    assert [int(v) for v in arr] == values


def test_decode_typed_contents_from_tritonclient_stubs() -> None:
    msg = triton_pb.ModelInferRequest(model_name="model")
    tensor = msg.inputs.add(name="INT32", datatype="INT32", shape=[2, 1])
    tensor.contents.int_contents.extend([-(2**31), 2**31 - 1])
    tensor = msg.inputs.add(name="BYTES", datatype="BYTES", shape=[2, 2])
    tensor.contents.bytes_contents.extend([b"a", b"", b"\x00\xff", b"xyz"])
    assert_inputs(codec.decode_request(ours(msg)), ("INT32", "BYTES"))


def test_decode_empty_tensor() -> None:
    msg = pb.ModelInferRequest(model_name="model")
    msg.inputs.add(name="x", datatype="FP32", shape=[0, 3])
    msg.raw_input_contents.append(b"")
    assert codec.decode_request(msg).inputs["x"].data.shape == (0, 3)


def test_decode_parameters_from_tritonclient() -> None:
    outputs = [
        grpcclient.InferRequestedOutput("A"),
        grpcclient.InferRequestedOutput("B", class_count=3),
    ]
    msg = client_request(
        ("FP32",),
        model_version="2",
        request_id="req-9",
        outputs=outputs,
        priority=5,
        timeout=1500,
        parameters={"custom": "value", "flag": True, "n": 7},
    )
    request = codec.decode_request(ours(msg))
    assert request.model_version == "2"
    assert request.id == "req-9"
    assert request.priority == 5
    assert request.timeout_us == 1500
    assert request.outputs == [RequestedOutput("A", 0), RequestedOutput("B", 3)]
    assert request.parameters["custom"] == "value"
    assert request.parameters["flag"] is True
    assert request.parameters["n"] == 7


def test_parameter_value_of_each_kind() -> None:
    msg = pb.ModelInferRequest()
    msg.parameters["b"].bool_param = True
    msg.parameters["i"].int64_param = -3
    msg.parameters["s"].string_param = "x"
    msg.parameters["d"].double_param = 0.5
    msg.parameters["u"].uint64_param = 2**64 - 1
    msg.parameters["empty"].SetInParent()
    values = {k: codec.parameter_value(v) for k, v in msg.parameters.items()}
    assert values == {"b": True, "i": -3, "s": "x", "d": 0.5, "u": 2**64 - 1, "empty": None}


# --- errors ----------------------------------------------------------------------------------


def test_raw_contents_count_mismatch() -> None:
    msg = ours(client_request(("FP32", "INT64")))
    del msg.raw_input_contents[1]
    with pytest.raises(InvalidInput, match="expected 2 raw_input_contents"):
        codec.decode_request(msg)


def test_raw_contents_and_typed_contents_together() -> None:
    msg = ours(client_request(("INT32",)))
    msg.inputs[0].contents.int_contents.extend([1, 2])
    with pytest.raises(InvalidInput, match="contents field must not be specified"):
        codec.decode_request(msg)


@pytest.mark.parametrize("delta", [-1, 1])
def test_raw_contents_of_the_wrong_size(delta: int) -> None:
    msg = ours(client_request(("FP32",)))
    blob = msg.raw_input_contents[0]
    msg.raw_input_contents[0] = blob[:delta] if delta < 0 else blob + b"\x00"
    with pytest.raises(InvalidInput, match="'FP32'"):
        codec.decode_request(msg)


def test_raw_bytes_contents_that_do_not_match_the_shape() -> None:
    msg = ours(client_request(("BYTES",)))
    msg.inputs[0].shape[:] = [5]
    with pytest.raises(InvalidInput, match="BYTES"):
        codec.decode_request(msg)


def test_typed_contents_count_mismatch() -> None:
    msg = typed_request(("FP32",))
    msg.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="needs 4 elements, got 5"):
        codec.decode_request(msg)


def test_fp16_via_typed_contents() -> None:
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="h", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="raw_input_contents"):
        codec.decode_request(msg)


def test_unknown_datatype() -> None:
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="q", datatype="FLOAT", shape=[1]).contents.fp32_contents.append(1.0)
    with pytest.raises(InvalidInput, match="FLOAT"):
        codec.decode_request(msg)


def test_bf16_is_unsupported() -> None:
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="bf", datatype="BF16", shape=[1])
    msg.raw_input_contents.append(b"\x00\x00")
    with pytest.raises(Unsupported, match="BF16"):
        codec.decode_request(msg)


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 128), ("INT16", -40000), ("UINT8", 256)])
def test_typed_contents_out_of_range(datatype: str, value: int) -> None:
    msg = pb.ModelInferRequest()
    tensor = msg.inputs.add(name="v", datatype=datatype, shape=[2])
    getattr(tensor.contents, codec._CONTENTS_FIELD[datatype]).extend([0, value])
    with pytest.raises(InvalidInput, match="out of range"):
        codec.decode_request(msg)


def test_duplicate_input() -> None:
    msg = typed_request(("INT32",))
    msg.inputs.append(msg.inputs[0])
    with pytest.raises(InvalidInput, match="more than once"):
        codec.decode_request(msg)


@pytest.mark.parametrize(
    ("key", "kind", "value"),
    [
        ("priority", "string_param", "1"),
        ("priority", "bool_param", True),
        ("priority", "int64_param", -1),
        ("priority", "double_param", 1.0),
        ("timeout", "string_param", "10"),
        ("timeout", "int64_param", -5),
        ("timeout", "bool_param", False),
    ],
)
def test_bad_priority_or_timeout(key: str, kind: str, value: Any) -> None:
    msg = typed_request(("INT32",))
    setattr(msg.parameters[key], kind, value)
    with pytest.raises(InvalidInput, match=key):
        codec.decode_request(msg)


def test_priority_as_int64_and_timeout_as_uint64_are_accepted() -> None:
    msg = typed_request(("INT32",))
    msg.parameters["priority"].int64_param = 2
    msg.parameters["timeout"].uint64_param = 30
    request = codec.decode_request(msg)
    assert (request.priority, request.timeout_us) == (2, 30)


@pytest.mark.parametrize(
    ("kind", "value"), [("bool_param", True), ("int64_param", -1), ("string_param", "3")]
)
def test_bad_classification(kind: str, value: Any) -> None:
    msg = typed_request(("INT32",))
    setattr(msg.outputs.add(name="O").parameters["classification"], kind, value)
    with pytest.raises(InvalidInput, match="classification"):
        codec.decode_request(msg)


def test_every_decode_error_is_a_serving_error() -> None:
    msg = pb.ModelInferRequest()
    msg.inputs.add(name="x", datatype="INT32", shape=[-1])
    with pytest.raises(ServingError):
        codec.decode_request(msg)


# --- encode_response -------------------------------------------------------------------------


def test_encode_response_parses_back_with_tritonclient() -> None:
    names = tuple(ARRAYS)
    outputs = [OutputTensor(n, ARRAYS[n][0], ARRAYS[n][1]) for n in names]
    msg = codec.encode_response(InferenceResponse("model", "3", "req-1", outputs))
    assert len(msg.raw_output_contents) == len(names)
    assert [o.name for o in msg.outputs] == list(names)
    assert [list(o.shape) for o in msg.outputs] == [list(ARRAYS[n][1].shape) for n in names]
    wire = triton_pb.ModelInferResponse.FromString(msg.SerializeToString())
    assert (wire.model_name, wire.model_version, wire.id) == ("model", "3", "req-1")
    result = grpcclient.InferResult(wire)
    for name in names:
        datatype, arr = ARRAYS[name]
        got = result.as_numpy(name)
        assert got.shape == arr.shape, name
        if datatype == "BYTES":
            assert got.tolist() == arr.tolist()
        else:
            assert got.dtype == arr.dtype, name
            np.testing.assert_array_equal(got, arr)


def test_encode_response_of_a_non_contiguous_view() -> None:
    """Batch outputs are sliced per request: a strided view must still encode row-major."""
    batch = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = batch[1:3, ::2]
    msg = codec.encode_response(InferenceResponse("m", "1", "", [OutputTensor("o", "FP32", view)]))
    assert list(msg.outputs[0].shape) == [2, 3]
    np.testing.assert_array_equal(
        np.frombuffer(msg.raw_output_contents[0], dtype="<f4").reshape(2, 3), view
    )


def test_round_trip_tritonclient_request_to_response() -> None:
    """What tritonclient sends comes back bit-exact through decode and encode."""
    names = tuple(ARRAYS)
    request = codec.decode_request(ours(client_request(names)))
    echoed = [OutputTensor(t.name, t.datatype, t.data) for t in request.inputs.values()]
    msg = codec.encode_response(InferenceResponse("model", "1", request.id, echoed))
    result = grpcclient.InferResult(
        triton_pb.ModelInferResponse.FromString(msg.SerializeToString())
    )
    for name in names:
        assert result.as_numpy(name).tolist() == ARRAYS[name][1].tolist()
