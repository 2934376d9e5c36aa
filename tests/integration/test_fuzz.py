"""Hypothesis throws malformed and adversarial requests at the real server.

Whatever arrives, the answer is a 4xx (or a 200 for what happens to be valid) with an
error message, never a 500 or an INTERNAL, never a crash or a hang, and a valid request
right after still succeeds. The examples are the "ci" profile's fixed draw unless the "fuzz"
profile is loaded (`make fuzz`, tests/conftest.py), which draws new ones on every run.
"""

from __future__ import annotations

import functools
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import fuzz_examples
from tests.integration.conftest import ServerProcess, http_request

MODEL = "add_sub_fp32"
PATH = f"/v2/models/{MODEL}/infer"
FUZZ = settings(
    max_examples=fuzz_examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DATATYPES = ["FP32", "FP16", "INT32", "BYTES", "BOOL", "UINT64", "BF16", "fp32", "", "X" * 40]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
dims = st.lists(st.integers(min_value=-3, max_value=2**40) | st.just(4) | st.just(1), max_size=4)
tensor = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["INPUT0", "INPUT1", "nope", ""]) | json_values,
        "datatype": st.sampled_from(DATATYPES) | json_values,
        "shape": dims | json_values,
    },
    optional={
        "data": st.lists(st.floats(allow_nan=False, width=32), max_size=8) | json_values,
        "parameters": st.fixed_dictionaries(
            {}, optional={"binary_data_size": st.integers(min_value=-5, max_value=64)}
        )
        | json_values,
    },
)
request_doc = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_values},
    optional={
        "outputs": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["OUTPUT0", "OUTPUT1", "x"])},
                optional={
                    "parameters": st.dictionaries(
                        st.sampled_from(["binary_data", "classification"]), json_values
                    )
                },
            ),
            max_size=3,
        )
        | json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["priority", "timeout", "binary_data_output", "x"]), json_values
        ),
        "id": json_values,
    },
)


@functools.cache
def _valid_body() -> bytes:
    x = [1.0, 2.0, 3.0, 4.0]
    return orjson.dumps(
        {
            "inputs": [
                {"name": n, "shape": [1, 4], "datatype": "FP32", "data": x}
                for n in ("INPUT0", "INPUT1")
            ]
        }
    )


def _still_serves(server: ServerProcess) -> None:
    status, _, body = http_request(server, "POST", PATH, _valid_body(), timeout_s=10)
    assert status == 200, body
    assert orjson.loads(body)["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


def _check_answer(status: int, body: bytes) -> None:
    # 501 is Triton's answer to an unsupported feature (e.g. a Content-Encoding), not a fault.
    assert status < 500 or status == 501, (status, body)
    if status != 200:
        error = orjson.loads(body)["error"]
        assert isinstance(error, str)
        assert error


@FUZZ
@given(doc=request_doc)
def test_http_structured_garbage(server: ServerProcess, doc: dict[str, Any]) -> None:
    body = orjson.dumps(doc)
    status, _, answer = http_request(server, "POST", PATH, body, timeout_s=10)
    _check_answer(status, answer)
    _still_serves(server)


@FUZZ
@given(
    body=st.binary(max_size=256),
    header=st.none()
    | st.integers(min_value=-10, max_value=300).map(str)
    | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=6),
    encoding=st.none() | st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip"]),
)
def test_http_binary_garbage(
    server: ServerProcess, body: bytes, header: str | None, encoding: str | None
) -> None:
    headers = {}
    if header is not None and header.isprintable() and header.strip() == header:
        headers["Inference-Header-Content-Length"] = header
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    status, _, answer = http_request(server, "POST", PATH, body, headers, timeout_s=10)
    _check_answer(status, answer)
    _still_serves(server)


# What adversarial_request is drawn from: inputs whose names, datatypes, shapes and raw
# blobs need not agree.
ADVERSARIAL = {
    "blobs": st.lists(st.binary(max_size=40), max_size=3),
    "shapes": st.lists(dims, min_size=2, max_size=2),
    "datatypes": st.lists(st.sampled_from(DATATYPES), min_size=2, max_size=2),
    "names": st.lists(st.sampled_from(["INPUT0", "INPUT1", "zz"]), min_size=2, max_size=2),
    "use_contents": st.booleans(),
}


def adversarial_request(
    blobs: list[bytes],
    shapes: list[list[int]],
    datatypes: list[str],
    names: list[str],
    use_contents: bool,
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest of drawn inputs: names, datatypes, shapes and raw blobs that need
    not agree, with typed contents as well where `use_contents`."""
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for name, datatype, shape in zip(names, datatypes, shapes, strict=True):
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if use_contents:
            tensor.contents.fp32_contents.extend(np.arange(3, dtype=np.float32).tolist())
    request.raw_input_contents.extend(blobs)
    return request


@FUZZ
@given(**ADVERSARIAL)
def test_grpc_adversarial_messages(
    grpc_stub: Any,
    server: ServerProcess,
    blobs: list[bytes],
    shapes: list[list[int]],
    datatypes: list[str],
    names: list[str],
    use_contents: bool,
) -> None:
    request = adversarial_request(blobs, shapes, datatypes, names, use_contents)
    code, details = _grpc_outcome(grpc_stub, request)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
    assert code == grpc.StatusCode.OK or details
    _still_serves(server)


def _grpc_outcome(stub: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), str(exc.details())
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def grpc_stub(server: ServerProcess) -> Any:
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()
