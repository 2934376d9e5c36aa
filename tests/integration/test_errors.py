"""Bad requests through tritonclient: the status (HTTP code / gRPC code) and a useful message.

After each test the server must still answer a valid request (`still_serving`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import add_sub_inputs, expect_error, inputs_of, requested_output

pytestmark = pytest.mark.usefixtures("still_serving")


def test_wrong_shape(client: Any, protocol: str) -> None:
    arrays = {
        "INPUT0": np.zeros((1, 5), np.float32),
        "INPUT1": np.zeros((1, 5), np.float32),
    }
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "INPUT0" in message or "INPUT1" in message
    assert "shape" in message
    assert "[-1, 4]" in message or "[-1,4]" in message


def test_missing_batch_dim(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.zeros(4, np.float32), "INPUT1": np.zeros(4, np.float32)}
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "shape" in message
    assert "INPUT0" in message or "INPUT1" in message


def test_nobatch_wrong_shape(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.zeros((1, 2, 3), np.float32)}
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "nobatch_fp32", inputs_of(protocol, arrays)
    )
    assert "INPUT0" in message
    assert "[2, 3]" in message or "[2,3]" in message


def test_wrong_datatype(client: Any, protocol: str) -> None:
    arrays = {
        "INPUT0": np.zeros((1, 4), np.int32),
        "INPUT1": np.zeros((1, 4), np.float32),
    }
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "INPUT0" in message
    assert "FP32" in message
    assert "INT32" in message


def test_unknown_input(client: Any, protocol: str) -> None:
    arrays = {**add_sub_inputs(), "INPUT9": np.zeros((1, 4), np.float32)}
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "INPUT9" in message


def test_missing_input(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.zeros((1, 4), np.float32)}
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "INPUT1" in message


def test_batch_disagreement(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.zeros((2, 4), np.float32), "INPUT1": np.zeros((3, 4), np.float32)}
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "batch" in message


def test_batch_above_max(client: Any, protocol: str) -> None:
    arrays = add_sub_inputs(rows=9)
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "batch" in message
    assert "8" in message


def test_unknown_model(client: Any, protocol: str) -> None:
    message = expect_error(
        protocol,
        ("NOT_FOUND",),
        client.infer,
        "no_such_model",
        inputs_of(protocol, add_sub_inputs()),
    )
    assert "no_such_model" in message


def test_unknown_version(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.zeros((1, 4), np.float32)}
    message = expect_error(
        protocol,
        ("NOT_FOUND",),
        client.infer,
        "two_versions",
        inputs_of(protocol, arrays),
        model_version="3",
    )
    assert "two_versions" in message
    assert "3" in message


def test_unknown_output(client: Any, protocol: str) -> None:
    message = expect_error(
        protocol,
        ("INVALID_ARGUMENT",),
        client.infer,
        "add_sub_fp32",
        inputs_of(protocol, add_sub_inputs()),
        outputs=[requested_output(protocol, "OUTPUT9")],
    )
    assert "OUTPUT9" in message


@pytest.mark.parametrize("times", [2, 1000])
def test_duplicate_output(client: Any, protocol: str, times: int) -> None:
    """An output named N times would come back N times: a small request, a huge answer."""
    message = expect_error(
        protocol,
        ("INVALID_ARGUMENT",),
        client.infer,
        "add_sub_fp32",
        inputs_of(protocol, add_sub_inputs()),
        outputs=[requested_output(protocol, "OUTPUT1")] * times,
    )
    assert "'OUTPUT1'" in message
    assert "more than once" in message


def test_corrupt_model(client: Any, protocol: str) -> None:
    arrays = {"INPUT0": np.zeros((1, 4), np.float32)}
    message = expect_error(
        protocol,
        ("NOT_FOUND", "UNAVAILABLE"),
        client.infer,
        "corrupt",
        inputs_of(protocol, arrays),
    )
    assert "corrupt" in message


@pytest.mark.parametrize("call", ["get_model_metadata", "get_model_config"])
def test_metadata_unknown_model(client: Any, protocol: str, call: str) -> None:
    message = expect_error(protocol, ("NOT_FOUND",), getattr(client, call), "no_such_model")
    assert "no_such_model" in message


def test_metadata_unknown_version(client: Any, protocol: str) -> None:
    message = expect_error(protocol, ("NOT_FOUND",), client.get_model_metadata, "two_versions", "3")
    assert "3" in message


def test_bytes_to_numeric_input(client: Any, protocol: str) -> None:
    arrays = {
        "INPUT0": np.array([[b"a", b"b", b"c", b"d"]], dtype=object),
        "INPUT1": np.zeros((1, 4), np.float32),
    }
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_fp32", inputs_of(protocol, arrays)
    )
    assert "INPUT0" in message
    assert "BYTES" in message
