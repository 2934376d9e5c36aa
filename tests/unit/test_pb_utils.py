"""Conveyor's `triton_python_backend_utils`: the parts that run without a worker."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from runtime import pb_utils


def test_bytes_tensors_use_tritons_flat_layout() -> None:
    tensor = np.array([[b"abc", b""], ["h\u00e9", b"\x00z"]], dtype=object)
    flat = pb_utils.serialize_byte_tensor(tensor)
    expected = b"\x03\x00\x00\x00abc" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00h\xc3\xa9"
    expected += b"\x02\x00\x00\x00\x00z"
    assert flat.item() == expected
    back = pb_utils.deserialize_bytes_tensor(flat.item())
    assert back.dtype == object
    assert list(back) == [b"abc", b"", "h\u00e9".encode(), b"\x00z"]


def test_an_empty_bytes_tensor() -> None:
    assert pb_utils.serialize_byte_tensor(np.array([], dtype=object)).item() == b""
    assert pb_utils.deserialize_bytes_tensor(b"").shape == (0,)


def test_model_config_fills_what_the_file_left_empty() -> None:
    config = pb_utils.ModelConfig(
        {"name": "m", "max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32"}]}
    )
    config.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [4]})
    config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [4]})
    config.set_max_batch_size(8)
    config.set_dynamic_batching()
    assert config.as_dict() == {
        "name": "m",
        "max_batch_size": 8,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [4]}],
        "dynamic_batching": {},
    }


@pytest.mark.parametrize(
    ("start", "change", "message"),
    [
        (
            {"input": [{"name": "x", "data_type": "TYPE_INT32", "dims": [4]}]},
            lambda c: c.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [4]}),
            "data_type 'TYPE_FP32', but the configuration says 'TYPE_INT32'",
        ),
        (
            {},
            lambda c: c.add_output({"name": "y", "data_type": "TYPE_FP32"}),
            "missing ['dims']",
        ),
        (
            {},
            lambda c: c.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [1], "x": 1}),
            "unknown ['x']",
        ),
        ({"max_batch_size": 16}, lambda c: c.set_max_batch_size(8), "max_batch_size 16"),
        ({"sequence_batching": {}}, lambda c: c.set_dynamic_batching(), "sequence_batching"),
    ],
)
def test_model_config_refuses_what_triton_refuses(
    start: dict[str, Any], change: Callable[[pb_utils.ModelConfig], None], message: str
) -> None:
    config = pb_utils.ModelConfig({"name": "m", **start})
    with pytest.raises(ValueError, match=re.escape(message)):
        change(config)


def test_a_model_config_from_json_text() -> None:
    assert pb_utils.ModelConfig('{"name": "m"}').as_dict() == {"name": "m"}


def test_decoupled_policy_is_read_from_the_config() -> None:
    assert pb_utils.using_decoupled_model_transaction_policy(
        {"model_transaction_policy": {"decoupled": True}}
    )
    assert not pb_utils.using_decoupled_model_transaction_policy({})


def test_exec_outside_execute_is_refused_with_tritons_message() -> None:
    request = pb_utils.InferenceRequest(
        model_name="m", requested_output_names=["y"], inputs=[pb_utils.Tensor("x", [1.0])]
    )
    with pytest.raises(pb_utils.TritonModelException, match="only supported during"):
        request.exec()


def test_tensors_cross_dlpack_both_ways() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = pb_utils.Tensor.from_dlpack("y", pb_utils.Tensor("x", array).to_dlpack())
    np.testing.assert_array_equal(out.as_numpy(), array)
    assert out.name() == "y"
    readonly = array.copy()
    readonly.flags.writeable = False  # as a request's inputs are
    again = pb_utils.Tensor.from_dlpack("z", pb_utils.Tensor("x", readonly).to_dlpack())
    np.testing.assert_array_equal(again.as_numpy(), array)
    from_object = pb_utils.Tensor.from_dlpack("w", array)  # anything with __dlpack__
    np.testing.assert_array_equal(from_object.as_numpy(), array)
