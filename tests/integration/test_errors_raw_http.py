"""Broken HTTP requests tritonclient cannot send, straight over http.client.

Every non-200 answer must be JSON `{"error": "..."}` with the right status, and the server
must keep serving afterwards (`still_serving`).
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, http_request

pytestmark = pytest.mark.usefixtures("still_serving")

INFER = "/v2/models/add_sub_fp32/infer"
RAW_TIMEOUT_S = 10.0


def error_of(status: int, headers: dict[str, str], body: bytes, expected: int) -> str:
    """Check the status and the JSON error body; return the message."""
    assert status == expected, body
    assert headers.get("content-type", "").startswith("application/json"), headers
    doc = json.loads(body)
    assert isinstance(doc, dict)
    assert isinstance(doc.get("error"), str)
    assert doc["error"]
    return str(doc["error"])


def post(srv: ServerProcess, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return http_request(srv, "POST", INFER, body, headers, timeout_s=RAW_TIMEOUT_S)


def binary_request(
    sizes: tuple[int, int], blob_bytes: int, shape: list[int] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor body whose inputs declare `sizes` and whose blob part has blob_bytes."""
    shape = shape or [1, 4]
    doc = {
        "inputs": [
            {
                "name": name,
                "shape": shape,
                "datatype": "FP32",
                "parameters": {"binary_data_size": size},
            }
            for name, size in zip(("INPUT0", "INPUT1"), sizes, strict=True)
        ]
    }
    header = json.dumps(doc).encode()
    blob = np.arange(blob_bytes // 4 + 1, dtype=np.float32).tobytes()[:blob_bytes]
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


def json_request(inputs: list[dict[str, Any]]) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


def fp32_input(name: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "FP32", "data": data}


def test_valid_binary_request_baseline(server: ServerProcess) -> None:
    """The helper builds a correct body when sizes agree (so the cases below fail for cause)."""
    body, headers = binary_request((16, 16), 32)
    status, _, data = post(server, body, headers)
    assert status == 200, data


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/models/add_sub_fp32/versions/1/infer", 200),
        ("/v2/models/add_sub_fp32/versions/01/infer", 200),  # an int, as the route reads it
        ("/v2/models/add_sub_fp32/versions/9/infer", 404),  # no such version
        ("/v2/models/add_sub_fp32/versions/x/infer", 404),  # not a version: no route
        ("/v2/models/add_sub_fp32/versions/infer", 404),
        ("/v2/models/add_sub_fp32/extra/infer", 404),
        ("/v2/models//infer", 404),
    ],
)
def test_infer_paths(server: ServerProcess, path: str, expected: int) -> None:
    """Infer requests skip Starlette's router; their paths must resolve as its routes do."""
    body, headers = binary_request((16, 16), 32)
    status, got_headers, data = http_request(
        server, "POST", path, body, headers, timeout_s=RAW_TIMEOUT_S
    )
    if expected == 200:
        assert status == 200, data
        assert got_headers.get("content-type") == "application/json", got_headers
        doc = json.loads(data)
        assert doc["model_name"] == "add_sub_fp32"
        assert doc["model_version"] == "1"
    else:
        error_of(status, got_headers, data, expected)


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_malformed_json(server: ServerProcess, body: bytes) -> None:
    error_of(*post(server, body), 400)


def test_json_missing_inputs(server: ServerProcess) -> None:
    message = error_of(*post(server, b'{"outputs": []}'), 400)
    assert "inputs" in message


def test_binary_body_shorter_than_declared(server: ServerProcess) -> None:
    body, headers = binary_request((16, 16), 20)
    message = error_of(*post(server, body, headers), 400)
    assert "INPUT1" in message or "binary" in message


def test_binary_body_longer_than_declared(server: ServerProcess) -> None:
    body, headers = binary_request((16, 16), 40)
    message = error_of(*post(server, body, headers), 400)
    assert "binary" in message


def test_binary_size_disagrees_with_shape(server: ServerProcess) -> None:
    body, headers = binary_request((12, 20), 32)
    message = error_of(*post(server, body, headers), 400)
    assert "INPUT0" in message


def test_header_length_larger_than_body(server: ServerProcess) -> None:
    body, headers = binary_request((16, 16), 32)
    headers["Inference-Header-Content-Length"] = str(len(body) + 10)
    message = error_of(*post(server, body, headers), 400)
    assert "Inference-Header-Content-Length" in message


@pytest.mark.parametrize("value", ["-1", "abc", "1.5"])
def test_header_length_not_a_length(server: ServerProcess, value: str) -> None:
    body, headers = binary_request((16, 16), 32)
    headers["Inference-Header-Content-Length"] = value
    error_of(*post(server, body, headers), 400)


def test_json_data_count_mismatch(server: ServerProcess) -> None:
    body = json_request(
        [fp32_input("INPUT0", [1, 4], [1, 2, 3]), fp32_input("INPUT1", [1, 4], [1, 2, 3, 4])]
    )
    message = error_of(*post(server, body), 400)
    assert "INPUT0" in message


def test_json_data_wrong_type(server: ServerProcess) -> None:
    body = json_request(
        [
            fp32_input("INPUT0", [1, 4], [1, 2, 3, 4]),
            fp32_input("INPUT1", [1, 4], ["a", "b", "c", "d"]),
        ]
    )
    message = error_of(*post(server, body), 400)
    assert "INPUT1" in message


@pytest.mark.parametrize(
    "shape", [[2**31, 2**31], [2**62, 2**62], [-1, 4], [1, -4], [2**63 - 1, 2]]
)
def test_huge_or_negative_shape_binary(server: ServerProcess, shape: list[int]) -> None:
    body, headers = binary_request((16, 16), 32, shape=shape)
    message = error_of(*post(server, body, headers), 400)
    assert "INPUT0" in message


@pytest.mark.parametrize("shape", [[2**31, 2**31], [2**40, 1]])
def test_huge_shape_json(server: ServerProcess, shape: list[int]) -> None:
    body = json_request(
        [fp32_input("INPUT0", shape, [1, 2, 3, 4]), fp32_input("INPUT1", shape, [1, 2, 3, 4])]
    )
    message = error_of(*post(server, body), 400)
    assert "INPUT0" in message


def test_unknown_route(server: ServerProcess) -> None:
    status, headers, body = http_request(server, "GET", "/v2/nowhere", timeout_s=RAW_TIMEOUT_S)
    assert error_of(status, headers, body, 404) == "Not Found"


def test_unknown_model_route_action(server: ServerProcess) -> None:
    status, headers, body = http_request(
        server, "GET", "/v2/models/add_sub_fp32/bogus", timeout_s=RAW_TIMEOUT_S
    )
    error_of(status, headers, body, 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", INFER), ("POST", "/v2/health/ready"), ("PUT", "/v2"), ("GET", "/v2/repository/index")],
)
def test_wrong_method(server: ServerProcess, method: str, path: str) -> None:
    status, headers, body = http_request(server, method, path, b"", timeout_s=RAW_TIMEOUT_S)
    assert error_of(status, headers, body, 405) == "Method Not Allowed"


def test_unsupported_content_encoding(server: ServerProcess) -> None:
    body = json_request([fp32_input("INPUT0", [1, 4], [1, 2, 3, 4])])
    status, headers, data = post(server, body, {"Content-Encoding": "br"})
    message = error_of(status, headers, data, 501)
    assert "br" in message


def test_corrupt_gzip_body(server: ServerProcess) -> None:
    status, headers, data = post(server, b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"})
    error_of(status, headers, data, 400)


def test_unknown_model_http(server: ServerProcess) -> None:
    body = json_request([fp32_input("INPUT0", [1, 4], [1, 2, 3, 4])])
    status, headers, data = http_request(
        server, "POST", "/v2/models/no_such_model/infer", body, timeout_s=RAW_TIMEOUT_S
    )
    assert "no_such_model" in error_of(status, headers, data, 404)


def test_model_not_ready_http(server: ServerProcess) -> None:
    """Readiness probe of a model that failed to load: non-200 (the client only checks 200)."""
    status, _, _ = http_request(server, "GET", "/v2/models/corrupt/ready", timeout_s=RAW_TIMEOUT_S)
    assert status != 200


def test_body_over_size_limit(server: ServerProcess) -> None:
    """A declared body over --http-max-input-size (64 MiB) is refused from its headers alone."""
    host, port = server.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=RAW_TIMEOUT_S)
    try:
        conn.putrequest("POST", INFER)
        conn.putheader("Content-Length", str(65 * 1024 * 1024))
        conn.putheader("Content-Type", "application/json")
        conn.endheaders(b'{"inputs": [')
        response = conn.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        error_of(response.status, headers, body, 413)
    finally:
        conn.close()


def test_errors_keep_the_connection_usable(server: ServerProcess) -> None:
    """Bad requests on a keep-alive connection do not desynchronise the next request."""
    host, port = server.http_url.split(":")
    good, good_headers = binary_request((16, 16), 32)
    short, short_headers = binary_request((16, 16), 20)
    conn = http.client.HTTPConnection(host, int(port), timeout=RAW_TIMEOUT_S)
    try:
        for body, headers, expected in [
            (b"{not json", {}, 400),
            (good, good_headers, 200),
            (short, short_headers, 400),
            (good, good_headers, 200),
            (b'{"inputs": []}', {"Content-Encoding": "br"}, 501),
            (good, good_headers, 200),
        ]:
            conn.request("POST", INFER, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            assert response.status == expected, data
    finally:
        conn.close()


def test_nested_json_data(server: ServerProcess) -> None:
    """KServe allows `data` nested like the shape as well as flat."""
    rows = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]
    body = json_request([fp32_input("INPUT0", [2, 4], rows), fp32_input("INPUT1", [2, 4], rows)])
    status, _, data = post(server, body)
    assert status == 200, data
    outputs = {o["name"]: o for o in json.loads(data)["outputs"]}
    assert outputs["OUTPUT0"]["shape"] == [2, 4]
    assert outputs["OUTPUT0"]["datatype"] == "FP32"
    np.testing.assert_array_equal(np.array(outputs["OUTPUT0"]["data"]).ravel(), np.ravel(rows) * 2)
    np.testing.assert_array_equal(np.array(outputs["OUTPUT1"]["data"]).ravel(), np.zeros(8))
