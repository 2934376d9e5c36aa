"""Hand-built ModelInferRequests over the generated stub: cases tritonclient cannot produce."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.integration.conftest import CLIENT_TIMEOUT_S, ServerProcess

pytestmark = pytest.mark.usefixtures("still_serving")

ROW0 = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
ROW1 = np.array([[0.5, -0.5, 2.0, -2.0]], np.float32)


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def request(with_raw: bool = True, **overrides: Any) -> service_pb2.ModelInferRequest:
    """A valid add_sub_fp32 request for ROW0, ROW1 (raw_input_contents, or typed contents)."""
    msg = service_pb2.ModelInferRequest(model_name="add_sub_fp32", **overrides)
    for name, row in (("INPUT0", ROW0), ("INPUT1", ROW1)):
        tensor = msg.inputs.add(name=name, datatype="FP32", shape=list(row.shape))
        if with_raw:
            msg.raw_input_contents.append(row.tobytes())
        else:
            tensor.contents.fp32_contents.extend(row.ravel().tolist())
    return msg


def expect_invalid(stub: Any, msg: service_pb2.ModelInferRequest) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(msg, timeout=CLIENT_TIMEOUT_S)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details()
    return str(error.details())


def outputs_of(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
    assert len(response.raw_output_contents) == len(response.outputs)
    return {
        out.name: np.frombuffer(blob, np.float32).reshape(list(out.shape))
        for out, blob in zip(response.outputs, response.raw_output_contents, strict=True)
    }


@pytest.mark.parametrize("with_raw", [True, False])
def test_valid_request(stub: Any, with_raw: bool) -> None:
    """Both encodings of the same tensors give the same raw outputs."""
    response = stub.ModelInfer(request(with_raw, id="x1"), timeout=CLIENT_TIMEOUT_S)
    assert response.model_name == "add_sub_fp32"
    assert response.model_version == "1"
    assert response.id == "x1"
    got = outputs_of(response)
    np.testing.assert_array_equal(got["OUTPUT0"], ROW0 + ROW1)
    np.testing.assert_array_equal(got["OUTPUT1"], ROW0 - ROW1)


def test_raw_count_below_inputs(stub: Any) -> None:
    msg = request()
    del msg.raw_input_contents[1]
    assert "raw_input_contents" in expect_invalid(stub, msg)


def test_raw_count_above_inputs(stub: Any) -> None:
    msg = request()
    msg.raw_input_contents.append(ROW0.tobytes())
    assert "raw_input_contents" in expect_invalid(stub, msg)


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_raw_blob_wrong_size(stub: Any, size: int) -> None:
    msg = request()
    msg.raw_input_contents[0] = bytes(size)
    assert "INPUT0" in expect_invalid(stub, msg)


def test_contents_and_raw_both_set(stub: Any) -> None:
    msg = request()
    msg.inputs[0].contents.fp32_contents.extend(ROW0.ravel().tolist())
    message = expect_invalid(stub, msg)
    assert "INPUT0" in message
    assert "contents" in message


def test_contents_count_wrong(stub: Any) -> None:
    msg = request(with_raw=False)
    del msg.inputs[1].contents.fp32_contents[-1]
    assert "INPUT1" in expect_invalid(stub, msg)


def test_contents_wrong_field(stub: Any) -> None:
    msg = request(with_raw=False)
    msg.inputs[0].ClearField("contents")
    msg.inputs[0].contents.int_contents.extend([1, 2, 3, 4])
    assert "INPUT0" in expect_invalid(stub, msg)


@pytest.mark.parametrize("shape", [[2**31, 2**31], [-1, 4], [2**62, 4]])
def test_huge_or_negative_shape(stub: Any, shape: list[int]) -> None:
    msg = request()
    msg.inputs[0].ClearField("shape")
    msg.inputs[0].shape.extend(shape)
    assert "INPUT0" in expect_invalid(stub, msg)


def test_unknown_datatype(stub: Any) -> None:
    msg = request()
    msg.inputs[0].datatype = "FP128"
    assert "FP128" in expect_invalid(stub, msg)


def test_duplicate_input(stub: Any) -> None:
    msg = request()
    msg.inputs[1].name = "INPUT0"
    assert "INPUT0" in expect_invalid(stub, msg)


# -- messages that do not parse: INVALID_ARGUMENT naming the message, on both front ends --

SERVICE = "/inference.GRPCInferenceService"
MALFORMED = [b"\xff\xff\xff", b"\x0a\x05ab"]  # a bad tag; a field longer than the message


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("ModelInfer", "ModelInferRequest"),
        ("ModelMetadata", "ModelMetadataRequest"),
        ("ModelConfig", "ModelConfigRequest"),
    ],
)
@pytest.mark.parametrize("payload", MALFORMED)
def test_malformed_protobuf_is_an_invalid_argument(
    server: ServerProcess, method: str, message: str, payload: bytes
) -> None:
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.unary_unary(f"{SERVICE}/{method}")  # the bytes as they are
        with pytest.raises(grpc.RpcError) as info:
            call(payload, timeout=CLIENT_TIMEOUT_S)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details() == f"the {message} could not be parsed (malformed protobuf)"


def test_a_stream_answers_each_message_then_ends_on_a_malformed_one(server: ServerProcess) -> None:
    good = request(id="s1").SerializeToString()
    with grpc.insecure_channel(server.grpc_url) as channel:
        stream = channel.stream_stream(f"{SERVICE}/ModelStreamInfer")
        replies = stream(iter([good]), timeout=CLIENT_TIMEOUT_S)
        (only,) = [service_pb2.ModelStreamInferResponse.FromString(r) for r in replies]
        assert only.error_message == ""
        assert only.infer_response.id == "s1"
        broken = stream(iter([good, MALFORMED[0]]), timeout=CLIENT_TIMEOUT_S)
        with pytest.raises(grpc.RpcError) as info:
            list(broken)
    error: Any = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "ModelStreamInfer message could not be parsed (malformed protobuf)" in error.details()
