"""What only HTTP has: JSON tensors, binary vs JSON outputs, gzip/deflate bodies."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.integration.conftest import (
    ServerProcess,
    add_sub_inputs,
    http_request,
    inputs_of,
    make_client,
    requested_output,
)
from tests.integration.test_infer import all_types_inputs, assert_outputs
from tests.models import reference

INFER = "/v2/models/add_sub_fp32/infer"


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = make_client("http", server)
    try:
        yield c
    finally:
        c.close()


def as_text(array: np.ndarray) -> np.ndarray:
    """BYTES come back from JSON outputs as str: the same values, decoded."""
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [v.decode() for v in array.flat]
    return out


def test_json_inputs(http: httpclient.InferenceServerClient) -> None:
    arrays = add_sub_inputs(seed=11, rows=3)
    result = http.infer("add_sub_fp32", inputs_of("http", arrays, binary=False))
    assert_outputs(result, reference("add_sub_fp32", arrays))


def test_json_outputs(http: httpclient.InferenceServerClient) -> None:
    arrays = add_sub_inputs(seed=12, rows=2)
    outputs = [requested_output("http", n, binary=False) for n in ("OUTPUT0", "OUTPUT1")]
    result = http.infer("add_sub_fp32", inputs_of("http", arrays), outputs=outputs)
    for out in result.get_response()["outputs"]:
        assert "data" in out
        assert "binary_data_size" not in out.get("parameters", {})
    assert_outputs(result, reference("add_sub_fp32", arrays))


def test_mixed_json_and_binary_outputs(http: httpclient.InferenceServerClient) -> None:
    arrays = add_sub_inputs(seed=13, rows=2)
    outputs = [
        requested_output("http", "OUTPUT0", binary=False),
        requested_output("http", "OUTPUT1", binary=True),
    ]
    result = http.infer("add_sub_fp32", inputs_of("http", arrays, binary=False), outputs=outputs)
    by_name = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" in by_name["OUTPUT0"]
    assert "data" not in by_name["OUTPUT1"]
    assert by_name["OUTPUT1"]["parameters"]["binary_data_size"] == 2 * 4 * 4
    assert_outputs(result, reference("add_sub_fp32", arrays))


def test_no_outputs_requested_returns_all_binary(http: httpclient.InferenceServerClient) -> None:
    arrays = add_sub_inputs(seed=14)
    result = http.infer("add_sub_fp32", inputs_of("http", arrays))
    outputs = result.get_response()["outputs"]
    assert sorted(o["name"] for o in outputs) == ["OUTPUT0", "OUTPUT1"]
    for out in outputs:
        assert out["parameters"]["binary_data_size"] == 16
    assert_outputs(result, reference("add_sub_fp32", arrays))


def test_all_types_json(http: httpclient.InferenceServerClient) -> None:
    """Every datatype that JSON can carry (all but FP16), in and out as JSON."""
    arrays = {k: v for k, v in all_types_inputs().items() if k != "IN_FP16"}
    expected = reference("all_types", {**all_types_inputs(), **arrays})
    outputs = [
        requested_output("http", name, binary=False) for name in expected if name != "OUT_FP16"
    ]
    inputs = inputs_of("http", arrays, binary=False) + inputs_of(
        "http", {"IN_FP16": all_types_inputs()["IN_FP16"]}
    )
    result = http.infer("all_types", inputs, outputs=outputs)
    expected.pop("OUT_FP16")
    expected["OUT_BYTES"] = as_text(expected["OUT_BYTES"])
    assert_outputs(result, expected)


def test_bytes_json_utf8(http: httpclient.InferenceServerClient) -> None:
    words = ["", "héllo", "日本語", "🎉", ""]
    arrays = {"INPUT0": np.array([w.encode() for w in words], dtype=object).reshape(1, 5)}
    outputs = [requested_output("http", "OUTPUT0", binary=False)]
    result = http.infer("identity_bytes", inputs_of("http", arrays, binary=False), outputs=outputs)
    assert result.as_numpy("OUTPUT0").tolist() == [words]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_request_compression(http: httpclient.InferenceServerClient, algorithm: str) -> None:
    arrays = add_sub_inputs(seed=15, rows=4)
    result = http.infer(
        "add_sub_fp32", inputs_of("http", arrays), request_compression_algorithm=algorithm
    )
    assert_outputs(result, reference("add_sub_fp32", arrays))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_response_compression(http: httpclient.InferenceServerClient, algorithm: str) -> None:
    arrays = add_sub_inputs(seed=16, rows=4)
    result = http.infer(
        "add_sub_fp32",
        inputs_of("http", arrays),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert_outputs(result, reference("add_sub_fp32", arrays))


def _json_body(rows: int = 1) -> tuple[bytes, dict[str, np.ndarray]]:
    arrays = add_sub_inputs(seed=17, rows=rows)
    doc = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in arrays.items()
        ]
    }
    return json.dumps(doc).encode(), arrays


def _json_outputs(body: bytes) -> dict[str, np.ndarray]:
    doc = json.loads(body)
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in doc["outputs"]}


def test_raw_json_request_gets_json_response(server: ServerProcess) -> None:
    body, arrays = _json_body(rows=2)
    status, headers, data = http_request(server, "POST", INFER, body)
    assert status == 200, data
    assert "inference-header-content-length" not in headers
    got = _json_outputs(data)
    for name, want in reference("add_sub_fp32", arrays).items():
        np.testing.assert_allclose(got[name], want, rtol=1e-6)


def test_raw_header_length_equal_to_body(server: ServerProcess) -> None:
    """perf_analyzer always sends the header, equal to the whole body when all is JSON."""
    body, arrays = _json_body()
    status, _, data = http_request(
        server, "POST", INFER, body, {"Inference-Header-Content-Length": str(len(body))}
    )
    assert status == 200, data
    got = _json_outputs(data)
    np.testing.assert_allclose(got["OUTPUT0"], arrays["INPUT0"] + arrays["INPUT1"], rtol=1e-6)


@pytest.mark.parametrize(
    ("encoding", "decompress"), [("gzip", gzip.decompress), ("deflate", zlib.decompress)]
)
def test_raw_response_is_compressed(
    server: ServerProcess, encoding: str, decompress: object
) -> None:
    body, arrays = _json_body()
    status, headers, data = http_request(server, "POST", INFER, body, {"Accept-Encoding": encoding})
    assert status == 200, data
    assert headers.get("content-encoding") == encoding
    assert callable(decompress)
    got = _json_outputs(decompress(data))
    np.testing.assert_allclose(got["OUTPUT1"], arrays["INPUT0"] - arrays["INPUT1"], rtol=1e-6)


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_raw_compressed_request(server: ServerProcess, encoding: str, compress: object) -> None:
    body, arrays = _json_body()
    assert callable(compress)
    status, headers, data = http_request(
        server, "POST", INFER, compress(body), {"Content-Encoding": encoding}
    )
    assert status == 200, data
    assert "content-encoding" not in headers
    got = _json_outputs(data)
    np.testing.assert_allclose(got["OUTPUT0"], arrays["INPUT0"] + arrays["INPUT1"], rtol=1e-6)
