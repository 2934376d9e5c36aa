"""Inference values over both protocols, checked against ONNX Runtime run in-process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import add_sub_inputs, inputs_of, requested_output
from tests.models import reference

UTF8_STRINGS = ["", "hello", "héllo wörld", "日本語テキスト", "emoji 🎉", "a\tb\nc", "zero\x00byte"]


def assert_outputs(result: Any, expected: dict[str, np.ndarray]) -> None:
    """Each expected output is in the result with the same shape, dtype and values."""
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None, f"output {name} missing from the response"
        assert got.shape == want.shape, name
        if want.dtype == object:
            assert got.tolist() == want.tolist(), name
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


def response_version(result: Any, protocol: str) -> str:
    response = result.get_response()
    return str(response["model_version"] if protocol == "http" else response.model_version)


def output_names(result: Any, protocol: str) -> list[str]:
    response = result.get_response()
    if protocol == "http":
        return [o["name"] for o in response["outputs"]]
    return [o.name for o in response.outputs]


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_add_sub_fp32(client: Any, protocol: str, rows: int) -> None:
    arrays = add_sub_inputs(seed=rows, rows=rows)
    result = client.infer("add_sub_fp32", inputs_of(protocol, arrays))
    assert sorted(output_names(result, protocol)) == ["OUTPUT0", "OUTPUT1"]
    assert_outputs(result, reference("add_sub_fp32", arrays))
    response = result.get_response()
    name = response["model_name"] if protocol == "http" else response.model_name
    assert name == "add_sub_fp32"
    assert response_version(result, protocol) == "1"


@pytest.mark.parametrize("wanted", ["OUTPUT0", "OUTPUT1"])
def test_requested_output_subset(client: Any, protocol: str, wanted: str) -> None:
    arrays = add_sub_inputs(seed=7, rows=2)
    result = client.infer(
        "add_sub_fp32", inputs_of(protocol, arrays), outputs=[requested_output(protocol, wanted)]
    )
    assert output_names(result, protocol) == [wanted]
    other = "OUTPUT1" if wanted == "OUTPUT0" else "OUTPUT0"
    assert result.as_numpy(other) is None
    assert_outputs(result, {wanted: reference("add_sub_fp32", arrays)[wanted]})


def test_request_id_echoed(client: Any, protocol: str) -> None:
    arrays = add_sub_inputs(seed=8)
    result = client.infer("add_sub_fp32", inputs_of(protocol, arrays), request_id="req-42")
    response = result.get_response()
    assert (response["id"] if protocol == "http" else response.id) == "req-42"


def test_add_sub_int32(client: Any, protocol: str) -> None:
    info = np.iinfo(np.int32)
    arrays = {
        "INPUT0": np.array([[1, -2, 3, info.max - 5], [0, 7, -8, info.min + 9]], np.int32),
        "INPUT1": np.array([[4, 5, -6, 5], [1, -1, 8, -9]], np.int32),
    }
    result = client.infer("add_sub_int32", inputs_of(protocol, arrays))
    assert_outputs(result, reference("add_sub_int32", arrays))


def test_identity_fp16(client: Any, protocol: str) -> None:
    values = [0.0, -0.0, 1.5, -2.25, 65504.0, 6.1e-5, np.inf, -np.inf, 1e-7, 3.14159]
    arrays = {"INPUT0": np.array(values, np.float16).reshape(2, 5)}
    result = client.infer("identity_fp16", inputs_of(protocol, arrays))
    assert_outputs(result, reference("identity_fp16", arrays))


@pytest.mark.parametrize("length", [1, 7])
def test_identity_bytes(client: Any, protocol: str, length: int) -> None:
    words = (UTF8_STRINGS * 2)[: 2 * length]
    arrays = {"INPUT0": np.array([w.encode() for w in words], dtype=object).reshape(2, length)}
    result = client.infer("identity_bytes", inputs_of(protocol, arrays))
    expected = reference("identity_bytes", arrays)
    assert expected["OUTPUT0"].tolist() == arrays["INPUT0"].tolist()
    assert_outputs(result, expected)


def test_identity_bytes_all_empty(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.array([[b"", b""]], dtype=object)}
    result = client.infer("identity_bytes", inputs_of(protocol, arrays))
    assert_outputs(result, {"OUTPUT0": arrays["INPUT0"]})


def test_nobatch_fp32(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5}
    result = client.infer("nobatch_fp32", inputs_of(protocol, arrays))
    assert_outputs(result, reference("nobatch_fp32", arrays))


def test_two_versions_default_is_latest(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.array([[1, 2, 3, 4]], np.float32)}
    result = client.infer("two_versions", inputs_of(protocol, arrays))
    assert_outputs(result, reference("two_versions", arrays, version=2))
    assert response_version(result, protocol) == "2"


@pytest.mark.parametrize("version", [1, 2])
def test_two_versions_explicit(client: Any, protocol: str, version: int) -> None:
    arrays = {"INPUT0": np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], np.float32)}
    result = client.infer("two_versions", inputs_of(protocol, arrays), model_version=str(version))
    assert_outputs(result, reference("two_versions", arrays, version=version))
    assert response_version(result, protocol) == str(version)


def test_noconfig(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.array([[1, 2, 3], [4, 5, 6], [0.5, -0.5, 7]], np.float32)}
    result = client.infer("noconfig", inputs_of(protocol, arrays))
    assert_outputs(result, reference("noconfig", arrays))


def all_types_inputs() -> dict[str, np.ndarray]:
    """Two rows of three values for every datatype, with each type's extremes."""
    arrays: dict[str, np.ndarray] = {
        "IN_BOOL": np.array([[True, False, True], [False, False, True]]),
        "IN_FP16": np.array([[0.5, -1.25, 65504], [-65504, 6.1e-5, 0]], np.float16),
        "IN_FP32": np.array([[1.5, -3.4e38, 3.4e38], [1e-38, 0, -7.25]], np.float32),
        "IN_FP64": np.array([[1.5, -1.7e308, 1.7e308], [5e-324, 0, -7.25]], np.float64),
        "IN_BYTES": np.array([[b"a", b"", "ü".encode()], [b"xyz", b"0", b"  "]], dtype=object),
    }
    for kind in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"):
        dtype = np.dtype(kind.lower())
        info = np.iinfo(dtype)
        arrays[f"IN_{kind}"] = np.array([[info.min, info.max, 1], [0, info.max - 1, 2]], dtype)
    return arrays


def test_all_types(client: Any, protocol: str) -> None:
    arrays = all_types_inputs()
    result = client.infer("all_types", inputs_of(protocol, arrays))
    expected = reference("all_types", arrays)
    assert len(expected) == 13
    assert_outputs(result, expected)
