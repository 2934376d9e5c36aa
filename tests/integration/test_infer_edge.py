"""Less travelled but legal requests, both protocols: empty tensors, parameters, reuse."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import add_sub_inputs, expect_error, inputs_of
from tests.integration.test_infer import assert_outputs
from tests.models import reference


@pytest.mark.parametrize(
    ("model", "array"),
    [
        ("identity_bytes", np.empty((1, 0), dtype=object)),
        ("identity_fp16", np.empty((2, 0), np.float16)),
    ],
)
def test_zero_length_dim(client: Any, protocol: str, model: str, array: np.ndarray) -> None:
    result = client.infer(model, inputs_of(protocol, {"INPUT0": array}))
    got = result.as_numpy("OUTPUT0")
    assert got.shape == array.shape


def test_reserved_and_custom_parameters(client: Any, protocol: str) -> None:
    """priority (no priority levels configured: ignored), timeout, and custom parameters."""
    arrays = add_sub_inputs(seed=40, rows=2)
    result = client.infer(
        "add_sub_fp32",
        inputs_of(protocol, arrays),
        priority=1,
        timeout=10_000_000,
        parameters={"custom_str": "x", "custom_int": 3, "custom_bool": True},
    )
    assert_outputs(result, reference("add_sub_fp32", arrays))


def test_variable_length_rows_in_turn(client: Any, protocol: str) -> None:
    """The same model answers different lengths of its variable dim, one after the other."""
    for length in (1, 5, 2, 9):
        arrays = {"INPUT0": np.linspace(-1, 1, 3 * length).astype(np.float16).reshape(3, length)}
        result = client.infer("identity_fp16", inputs_of(protocol, arrays))
        assert_outputs(result, reference("identity_fp16", arrays))


def test_large_bytes_elements(client: Any, protocol: str) -> None:
    """Elements of about 64 KiB and 1 MiB of UTF-8 text survive both encodings."""
    blob = "".join(chr(c) for c in range(32, 2000)).encode() * 20
    arrays = {"INPUT0": np.array([[blob, blob * 16, b"x"]], dtype=object)}
    result = client.infer("identity_bytes", inputs_of(protocol, arrays))
    assert result.as_numpy("OUTPUT0").tolist() == arrays["INPUT0"].tolist()


def test_non_utf8_bytes_refused(client: Any, protocol: str) -> None:
    """ONNX string tensors hold text: other bytes are a clear 400, not a crash."""
    arrays = {"INPUT0": np.array([[b"ok", b"\xff\xfe\x80"]], dtype=object)}
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "identity_bytes", inputs_of(protocol, arrays)
    )
    assert "INPUT0" in message
    assert "UTF-8" in message


def test_large_fp16_batch(client: Any, protocol: str) -> None:
    """A 512 KiB FP16 tensor: the full max batch of a wide variable dim."""
    rng = np.random.default_rng(41)
    arrays = {"INPUT0": rng.standard_normal((8, 32768)).astype(np.float16)}
    result = client.infer("identity_fp16", inputs_of(protocol, arrays))
    assert_outputs(result, reference("identity_fp16", arrays))


def test_client_reuse_across_models(client: Any, protocol: str) -> None:
    """One client (one connection/channel) interleaving models and versions."""
    for i in range(3):
        arrays = add_sub_inputs(seed=50 + i, rows=i + 1)
        assert_outputs(
            client.infer("add_sub_fp32", inputs_of(protocol, arrays)),
            reference("add_sub_fp32", arrays),
        )
        one = {"INPUT0": arrays["INPUT0"]}
        assert_outputs(
            client.infer("two_versions", inputs_of(protocol, one), model_version="1"),
            reference("two_versions", one, version=1),
        )
