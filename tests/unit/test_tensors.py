"""The datatype table and tensor codecs, checked against numpy, ONNX and tritonclient."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper
from tritonclient.utils import (  # type: ignore[import-untyped]
    deserialize_bytes_tensor,
    serialize_byte_tensor,
)

from runtime import classification, tensors
from runtime.errors import InvalidInput, Unsupported

INTEGER = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")
NUMERIC = ("BOOL", *INTEGER, "FP16", "FP32", "FP64")
JSON_NUMERIC = tuple(d for d in NUMERIC if d != "FP16")
NUMPY: dict[str, type[np.generic]] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
ONNX_NAMES = {
    "BOOL": "BOOL",
    "UINT8": "UINT8",
    "UINT16": "UINT16",
    "UINT32": "UINT32",
    "UINT64": "UINT64",
    "INT8": "INT8",
    "INT16": "INT16",
    "INT32": "INT32",
    "INT64": "INT64",
    "FP16": "FLOAT16",
    "FP32": "FLOAT",
    "FP64": "DOUBLE",
    "BYTES": "STRING",
    "BF16": "BFLOAT16",
}
HYPOTHESIS = settings(database=None, deadline=None, max_examples=60)


def sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A deterministic array of `datatype` holding a spread of values, extremes included."""
    dtype = np.dtype(NUMPY[datatype])
    count = math.prod(shape)
    if dtype.kind == "b":
        flags: np.ndarray = np.arange(count) % 3 == 0
        return flags.reshape(shape)
    if dtype.kind == "f":
        return np.linspace(-1000, 1000, count).astype(dtype).reshape(shape)
    info = np.iinfo(dtype.str)
    edges = [info.min, info.max, 0, 1]
    values = [edges[i % 4] if i < 4 else i % 100 for i in range(count)]
    return np.array(values, dtype=dtype).reshape(shape)


def pack(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def strings(items: Sequence[bytes], shape: Sequence[int]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out.reshape(tuple(shape))


# The datatype table.


def test_datatypes_lists_every_protocol_name_in_order() -> None:
    assert (*NUMERIC[:9], "FP16", "FP32", "FP64", "BYTES", "BF16") == tensors.DATATYPES


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numpy_dtype_and_datatype_of_are_inverse(datatype: str) -> None:
    assert tensors.numpy_dtype(datatype) == np.dtype(NUMPY[datatype])
    assert tensors.datatype_of(np.dtype(NUMPY[datatype])) == datatype
    assert tensors.datatype_of(np.dtype(NUMPY[datatype]).newbyteorder(">")) == datatype


def test_numpy_dtype_of_bytes_is_object() -> None:
    assert tensors.numpy_dtype("BYTES") == np.dtype(object)


def test_numpy_dtype_refuses_bf16_as_unsupported() -> None:
    with pytest.raises(Unsupported, match="BF16"):
        tensors.numpy_dtype("BF16")


def test_numpy_dtype_of_unknown_names_it_and_lists_valid() -> None:
    with pytest.raises(InvalidInput, match=r"'FLOAT32'.*BOOL, UINT8.*BYTES, BF16"):
        tensors.numpy_dtype("FLOAT32")


@pytest.mark.parametrize("dtype", [np.dtype("U3"), np.dtype("S2"), np.dtype(object)])
def test_datatype_of_strings_and_objects_is_bytes(dtype: np.dtype) -> None:
    assert tensors.datatype_of(dtype) == "BYTES"


@pytest.mark.parametrize("dtype", [np.complex64, np.dtype("M8[s]"), np.dtype("V4")])
def test_datatype_of_unknown_dtype_is_unsupported(dtype: Any) -> None:
    with pytest.raises(Unsupported):
        tensors.datatype_of(np.dtype(dtype))


@pytest.mark.parametrize("datatype", tensors.DATATYPES)
def test_config_type_round_trips(datatype: str) -> None:
    name = tensors.config_type(datatype)
    assert name == ("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")
    assert tensors.from_config_type(name) == datatype


def test_config_type_names_exist_in_the_model_config_proto() -> None:
    from runtime.proto import model_config_pb2

    known = set(model_config_pb2.DataType.keys())
    assert {tensors.config_type(d) for d in tensors.DATATYPES} <= known


@pytest.mark.parametrize("name", ["TYPE_INVALID", "FP32", ""])
def test_from_config_type_refuses_unknown(name: str) -> None:
    with pytest.raises(InvalidInput, match="TYPE_STRING"):
        tensors.from_config_type(name)


@pytest.mark.parametrize("datatype", tensors.DATATYPES)
def test_from_onnx_type_matches_tensor_proto(datatype: str) -> None:
    assert tensors.from_onnx_type(getattr(TensorProto, ONNX_NAMES[datatype])) == datatype


@pytest.mark.parametrize("elem_type", [TensorProto.UNDEFINED, TensorProto.COMPLEX64, 99])
def test_from_onnx_type_refuses_unknown(elem_type: int) -> None:
    with pytest.raises(Unsupported, match=str(elem_type)):
        tensors.from_onnx_type(elem_type)


def ort_type_string(elem_type: int) -> str:
    """What onnxruntime reports as NodeArg.type for an Identity model's input."""
    import onnxruntime as ort

    x = helper.make_tensor_value_info("x", elem_type, [2])
    y = helper.make_tensor_value_info("y", elem_type, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    type_str: str = session.get_inputs()[0].type
    return type_str


@pytest.mark.parametrize("datatype", tensors.DATATYPES)
def test_from_ort_type_reads_onnxruntime_type_strings(datatype: str) -> None:
    elem_type = getattr(onnx.TensorProto, ONNX_NAMES[datatype])
    assert tensors.from_ort_type(ort_type_string(elem_type)) == datatype


@pytest.mark.parametrize(
    "type_str", ["tensor(complex64)", "seq(tensor(float))", "map(int64,tensor(float))", "float"]
)
def test_from_ort_type_refuses_unknown(type_str: str) -> None:
    with pytest.raises(Unsupported, match=type_str.replace("(", r"\(").replace(")", r"\)")):
        tensors.from_ort_type(type_str)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_byte_size_is_the_numpy_itemsize(datatype: str) -> None:
    assert tensors.byte_size(datatype) == np.dtype(NUMPY[datatype]).itemsize


def test_byte_size_of_variable_and_bf16() -> None:
    assert tensors.byte_size("BYTES") == 0
    assert tensors.byte_size("BF16") == 2


@pytest.mark.parametrize(
    ("shape", "count"), [([], 1), ([0], 0), ([2, 3, 4], 24), ([2**40, 2**40], 2**80)]
)
def test_element_count(shape: list[int], count: int) -> None:
    assert tensors.element_count(shape, "x") == count


def test_element_count_refuses_negative_dimension() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x': shape \[2, -1\] has a negative dimension"):
        tensors.element_count([2, -1], "x")


def test_element_count_refuses_non_integer_dimension() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x'.*non-integer"):
        tensors.element_count([2.5], "x")  # type: ignore[list-item]


# Raw (binary) tensors.


@pytest.mark.parametrize("datatype", NUMERIC)
@pytest.mark.parametrize("shape", [(), (0,), (5,), (2, 3), (2, 0, 3), (1, 2, 3, 4)])
def test_raw_round_trip(datatype: str, shape: tuple[int, ...]) -> None:
    arr = sample(datatype, shape)
    raw = tensors.to_raw(arr, datatype)
    assert raw == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    back = tensors.from_raw(raw, datatype, shape, "x")
    assert back.dtype == arr.dtype
    assert back.shape == shape
    np.testing.assert_array_equal(back, arr)


@HYPOTHESIS
@given(data=st.data(), datatype=st.sampled_from(NUMERIC))
def test_raw_round_trip_any_shape(data: st.DataObject, datatype: str) -> None:
    arr = data.draw(hnp.arrays(NUMPY[datatype], hnp.array_shapes(min_dims=0, min_side=0)))
    back = tensors.from_raw(tensors.to_raw(arr, datatype), datatype, arr.shape, "x")
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_from_raw_is_a_zero_copy_view() -> None:
    buf = np.arange(6, dtype=np.float32).tobytes()
    arr = tensors.from_raw(buf, "FP32", [2, 3], "x")
    assert np.shares_memory(arr, np.frombuffer(buf, dtype=np.uint8))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_from_raw_takes_any_buffer(kind: type) -> None:
    raw = tensors.to_raw(np.arange(4, dtype=np.int32), "INT32")
    np.testing.assert_array_equal(tensors.from_raw(kind(raw), "INT32", [4], "x"), np.arange(4))
    packed = pack([b"a", b"bc"])
    back = tensors.from_raw(kind(packed), "BYTES", [2], "x")
    assert back.tolist() == [b"a", b"bc"]


def test_to_raw_is_little_endian_and_row_major() -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3).T
    assert tensors.to_raw(arr, "INT32") == struct.pack("<6i", 0, 3, 1, 4, 2, 5)


def test_bool_raw_is_one_byte_zero_or_one() -> None:
    assert tensors.to_raw(np.array([True, False, True]), "BOOL") == b"\x01\x00\x01"
    arr = tensors.from_raw(b"\x00\x01", "BOOL", [2], "x")
    assert arr.dtype == np.bool_
    assert arr.tolist() == [False, True]


def test_from_raw_refuses_bool_bytes_other_than_zero_or_one() -> None:
    with pytest.raises(InvalidInput, match=r"input 'flags'.*BOOL"):
        tensors.from_raw(b"\x00\x02", "BOOL", [2], "flags")


@pytest.mark.parametrize(("size", "shape"), [(7, [2]), (9, [2]), (0, [1]), (4, [0])])
def test_from_raw_refuses_wrong_byte_count(size: int, shape: list[int]) -> None:
    expected = math.prod(shape) * 4
    with pytest.raises(InvalidInput, match=f"input 'in0'.*{expected} bytes, got {size}"):
        tensors.from_raw(b"\x00" * size, "FP32", shape, "in0")


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_from_raw_refuses_a_huge_declared_shape_without_allocating(datatype: str) -> None:
    with pytest.raises(InvalidInput, match="input 'big'"):
        tensors.from_raw(b"\x00" * 64, datatype, [2**40, 2**40], "big")


def test_from_raw_refuses_negative_shape() -> None:
    with pytest.raises(InvalidInput, match=r"input 'x'.*negative"):
        tensors.from_raw(b"", "FP32", [-1], "x")


def test_from_raw_refuses_bf16_and_unknown_naming_the_input() -> None:
    with pytest.raises(Unsupported, match=r"input 'x'.*BF16"):
        tensors.from_raw(b"\x00\x00", "BF16", [1], "x")
    with pytest.raises(InvalidInput, match=r"input 'x'.*'FLOAT'"):
        tensors.from_raw(b"\x00" * 4, "FLOAT", [1], "x")


def test_to_raw_refuses_bf16() -> None:
    with pytest.raises(Unsupported, match="BF16"):
        tensors.to_raw(np.zeros(2, np.float32), "BF16")


# BYTES over raw.

BYTES_CASES = [
    ([b"hello", b"world"], [2]),
    ([b"", b"", b""], [3]),
    (["héllo wörld ✓".encode(), b"\x00\xff\x00", b"\x00"], [3, 1]),
    ([], [0]),
    ([], [2, 0]),
    ([b"a", b"bb", b"", b"dddd", b"e", b"ff"], [2, 3]),
    ([b"scalar"], []),
]


@pytest.mark.parametrize(("items", "shape"), BYTES_CASES)
def test_bytes_raw_round_trip(items: list[bytes], shape: list[int]) -> None:
    arr = strings(items, shape)
    raw = tensors.to_raw(arr, "BYTES")
    assert raw == pack(items)
    back = tensors.from_raw(raw, "BYTES", shape, "x")
    assert back.dtype == np.dtype(object)
    assert back.shape == tuple(shape)
    assert all(type(item) is bytes for item in back.ravel())
    assert back.ravel().tolist() == items


@pytest.mark.parametrize(("items", "shape"), BYTES_CASES)
def test_bytes_raw_matches_tritonclient(items: list[bytes], shape: list[int]) -> None:
    arr = strings(items, shape)
    theirs = serialize_byte_tensor(arr)
    theirs_raw = theirs.item() if theirs.size else b""
    assert tensors.to_raw(arr, "BYTES") == theirs_raw
    decoded = deserialize_bytes_tensor(tensors.to_raw(arr, "BYTES"))
    assert decoded.tolist() == items
    assert tensors.from_raw(theirs_raw, "BYTES", shape, "x").ravel().tolist() == items


@HYPOTHESIS
@given(items=st.lists(st.binary(max_size=20), max_size=20))
def test_bytes_raw_round_trip_any(items: list[bytes]) -> None:
    raw = serialize_byte_tensor(strings(items, [len(items)]))
    raw_bytes = raw.item() if raw.size else b""
    back = tensors.from_raw(raw_bytes, "BYTES", [len(items)], "x")
    assert back.tolist() == items
    assert tensors.to_raw(back, "BYTES") == raw_bytes


def test_to_raw_bytes_encodes_str_and_other_objects_as_utf8() -> None:
    arr = np.array(["é", b"\xff", 7, 1.5], dtype=object)
    assert tensors.to_raw(arr, "BYTES") == pack([b"\xc3\xa9", b"\xff", b"7", b"1.5"])
    assert tensors.to_raw(np.array(["ab", "c"]), "BYTES") == pack([b"ab", b"c"])
    assert tensors.to_raw(np.array([b"ab", b"c"]), "BYTES") == pack([b"ab", b"c"])


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (pack([b"ab"])[:2], [1], r"at least 4 bytes\), got 2 bytes"),
        (pack([b"ab"]) + b"\x01\x00", [2], "truncated length prefix"),
        (pack([b"abc"])[:-1], [1], "declares 3 bytes but only 2 remain"),
        (pack([b"ab"]) + b"x", [1], "1 bytes after the 1 elements"),
        (pack([b"a", b"b"]), [1], "after the 1 elements"),
        (pack([b"", b""]), [3], "at least 12 bytes"),
        (pack([b"abcdefgh"]), [2], "holds 1 elements, shape needs 2"),
        (b"\xff\xff\xff\xff", [1], "declares 4294967295 bytes"),
    ],
)
def test_from_raw_bytes_refuses_malformed(raw: bytes, shape: list[int], message: str) -> None:
    with pytest.raises(InvalidInput, match=f"input 'text'.*{message}"):
        tensors.from_raw(raw, "BYTES", shape, "text")


# JSON tensors.


@pytest.mark.parametrize("datatype", JSON_NUMERIC)
@pytest.mark.parametrize("shape", [(0,), (5,), (2, 3), (2, 0), (1, 2, 3)])
def test_json_round_trip(datatype: str, shape: tuple[int, ...]) -> None:
    arr = sample(datatype, shape)
    data = tensors.to_json(arr, datatype)
    assert data == arr.ravel().tolist()
    for sent in (data, arr.tolist()):  # flat and nested are both legal
        back = tensors.from_json(sent, datatype, shape, "x")
        assert back.dtype == arr.dtype
        assert back.shape == shape
        np.testing.assert_array_equal(back, arr)


@HYPOTHESIS
@given(data=st.data(), datatype=st.sampled_from(JSON_NUMERIC))
def test_json_round_trip_any_shape(data: st.DataObject, datatype: str) -> None:
    elements = hnp.from_dtype(np.dtype(NUMPY[datatype]), allow_nan=False, allow_infinity=False)
    arr = data.draw(
        hnp.arrays(NUMPY[datatype], hnp.array_shapes(min_dims=1, min_side=0), elements=elements)
    )
    back = tensors.from_json(tensors.to_json(arr, datatype), datatype, arr.shape, "x")
    np.testing.assert_array_equal(back, arr)
    nested = tensors.from_json(arr.tolist(), datatype, arr.shape, "x")
    np.testing.assert_array_equal(nested, arr)


def test_json_scalar_shape_takes_one_element() -> None:
    assert tensors.from_json([3], "INT32", [], "x").shape == ()


def test_json_accepts_ints_for_floats_and_zero_one_for_bool() -> None:
    np.testing.assert_array_equal(tensors.from_json([1, 2.5], "FP32", [2], "x"), [1.0, 2.5])
    assert tensors.from_json([0, 1], "BOOL", [2], "x").tolist() == [False, True]
    assert tensors.from_json([[True], [False]], "BOOL", [2, 1], "x").dtype == np.bool_


@pytest.mark.parametrize(
    ("items", "shape"),
    [
        (["hello", "wörld ✓"], [2]),
        (["", ""], [1, 2]),
        ([], [0]),
        ([["a", "b"], ["c", "d"]], [2, 2]),
    ],
)
def test_json_bytes_round_trip(items: list[Any], shape: list[int]) -> None:
    arr = tensors.from_json(items, "BYTES", shape, "x")
    assert arr.dtype == np.dtype(object)
    assert arr.shape == tuple(shape)
    flat = np.array(items, dtype=object).ravel().tolist()
    assert arr.ravel().tolist() == [s.encode() for s in flat]
    assert tensors.to_json(arr, "BYTES") == flat


def test_json_bytes_output_takes_str_elements_too() -> None:
    arr = np.array(["a", b"b", 3], dtype=object)
    assert tensors.to_json(arr, "BYTES") == ["a", "b", "3"]


def test_to_json_refuses_bytes_that_are_not_utf8() -> None:
    with pytest.raises(Unsupported, match=r"output 'out'.*not UTF-8.*binary_data"):
        tensors.to_json(np.array([b"\xff"], dtype=object), "BYTES", name="out")


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_to_json_refuses_half_floats(datatype: str) -> None:
    with pytest.raises(Unsupported, match=f"output 'out'.*{datatype}.*binary_data"):
        tensors.to_json(np.zeros(2, np.float16), datatype, name="out")


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_from_json_refuses_half_floats(datatype: str) -> None:
    with pytest.raises(InvalidInput, match=f"input 'x': {datatype} data cannot be sent as JSON"):
        tensors.from_json([1.0], datatype, [1], "x")


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([1, 2, 3], "FP32", [2], "needs 2 elements, data holds 3"),
        ([[1, 2], [3, 4]], "INT32", [3], "needs 3 elements, data holds 4"),
        ([], "INT32", [2**40, 2**40], f"needs {2**80} elements, data holds 0"),
        (["a"], "BYTES", [2], "needs 2 elements, data holds 1"),
        (["1.5"], "FP32", [1], "FP32 data must be JSON numbers"),
        ([None], "FP64", [1], "FP64 data must be JSON numbers"),
        ([True], "FP32", [1], "FP32 data must be JSON numbers"),
        ([1.5], "INT32", [1], "INT32 data must be JSON integers"),
        ([True, False], "INT8", [2], "INT8 data must be JSON integers"),
        (["1"], "INT64", [1], "INT64 data must be JSON integers"),
        ([{"a": 1}], "INT64", [1], "INT64 data must be JSON integers"),
        ([300], "UINT8", [1], r"300 is out of range for UINT8 \[0, 255\]"),
        ([-1], "UINT32", [1], "-1 is out of range for UINT32"),
        ([2**63], "INT64", [1], "out of range for INT64"),
        ([2**70], "UINT64", [1], "UINT64"),
        ([1e39], "FP32", [1], "FP32 data holds a value out of range"),
        ([2], "BOOL", [1], "BOOL data must be true/false"),
        ([1.0], "BOOL", [1], "BOOL data must be true/false"),
        (["true"], "BOOL", [1], "BOOL data must be true/false"),
        ([[1, 2], [3]], "INT32", [3], "INT32 data must be a rectangular list"),
        ([[1, 2], 3, 4], "FP32", [4], "FP32 data must be a rectangular list"),
        ([1, "a"], "BYTES", [2], "BYTES data must be JSON strings"),
        ([b"a"], "BYTES", [1], "BYTES data must be JSON strings"),
        ([["a", "b"], ["c"], ["d"]], "BYTES", [4], "BYTES data is a nested list of uneven rows"),
        ([["a"], "b"], "BYTES", [2], "BYTES data is a nested list of uneven rows"),
        (["\ud800"], "BYTES", [1], "invalid Unicode"),
        ({"a": 1}, "FP32", [1], "FP32 data must be a JSON list, got dict"),
        (1.5, "FP32", [], "FP32 data must be a JSON list, got float"),
        ([1], "FLOAT", [1], "unknown datatype 'FLOAT'"),
        ([1], "INT32", [-1], "negative dimension"),
    ],
)
def test_from_json_refuses_bad_data(
    data: object, datatype: str, shape: list[int], message: str
) -> None:
    with pytest.raises(InvalidInput, match=f"input 'in0'.*{message}"):
        tensors.from_json(data, datatype, shape, "in0")


# Classification.


def reference_classify(
    row: Sequence[float], count: int, labels: Sequence[str] | None
) -> list[bytes]:
    """Sort by value descending, then index ascending; format like Triton's std::to_string."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:count]
    out = []
    for i in order:
        value = f"{row[i]:f}" if isinstance(row[i], float) else str(int(row[i]))
        label = f":{labels[i]}" if labels is not None and i < len(labels) else ""
        out.append(f"{value}:{i}{label}".encode())
    return out


def test_classify_formats_like_triton() -> None:
    arr = np.array([[0.1, 0.5, 0.2, 0.5]], dtype=np.float32)
    out = classification.classify(arr, 3, ["zero", "one", "two", "three"], True)
    assert out.shape == (1, 3)
    expected = [b"0.500000:1:one", b"0.500000:3:three", b"0.200000:2:two"]
    assert out.tolist() == [expected]


def test_classify_labels_shorter_than_classes_omit_the_label() -> None:
    out = classification.classify(np.array([1, 3, 2], dtype=np.int32), 3, ["a"], False)
    assert out.tolist() == [b"3:1", b"2:2", b"1:0:a"]


def test_classify_unbatched_treats_the_whole_array_as_one_row() -> None:
    arr = np.array([[0.25, 0.75], [1.0, 0.0]], dtype=np.float64)
    out = classification.classify(arr, 2, None, False)
    assert out.shape == (2,)
    assert out.tolist() == [b"1.000000:2", b"0.750000:1"]


def test_classify_batched_flattens_all_but_the_first_axis() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    out = classification.classify(arr, 2, None, True)
    assert out.tolist() == [[b"5.000000:5", b"4.000000:4"], [b"11.000000:5", b"10.000000:4"]]


def test_classify_bool_and_extreme_unsigned() -> None:
    out = classification.classify(np.array([False, True, True]), 2, None, False)
    assert out.tolist() == [b"1:1", b"1:2"]
    big = np.array([0, 2**64 - 1, 2**63], dtype=np.uint64)
    assert classification.classify(big, 3, None, False).tolist() == [
        f"{2**64 - 1}:1".encode(),
        f"{2**63}:2".encode(),
        b"0:0",
    ]


def test_classify_nan_ranks_last() -> None:
    out = classification.classify(np.array([np.nan, 0.5, -1.0]), 3, None, False)
    assert out.tolist() == [b"0.500000:1", b"-1.000000:2", b"nan:0"]


def test_classify_empty_batch_and_zero_classes() -> None:
    assert classification.classify(np.zeros((0, 4), np.float32), 2, None, True).shape == (0, 2)
    assert classification.classify(np.zeros((3, 0), np.float32), 2, None, True).shape == (3, 0)


@HYPOTHESIS
@given(
    data=st.data(),
    dtype=st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.uint16, np.uint64]),
    count=st.integers(1, 12),
    with_labels=st.booleans(),
)
def test_classify_matches_reference(
    data: st.DataObject, dtype: Any, count: int, with_labels: bool
) -> None:
    # Few distinct values, so that ties are common.
    elements = st.sampled_from([0, 1, 2, 5, 7]).map(lambda v: np.dtype(dtype).type(v))
    arr = data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=2, max_dims=3), elements=elements))
    labels = [f"c{i}" for i in range(5)] if with_labels else None
    out = classification.classify(arr, count, labels, True)
    rows = arr.reshape(arr.shape[0], -1)
    assert out.shape == (arr.shape[0], min(count, rows.shape[1]))
    for got, row in zip(out.tolist(), rows.tolist(), strict=True):
        assert got == reference_classify(row, count, labels)


def test_classify_refuses_bad_requests() -> None:
    with pytest.raises(InvalidInput, match="positive"):
        classification.classify(np.zeros(3), 0, None, False)
    with pytest.raises(InvalidInput, match="batch dimension"):
        classification.classify(np.array(1.0, dtype=np.float32), 1, None, True)
    with pytest.raises(Unsupported, match="numeric"):
        classification.classify(np.array([b"a"], dtype=object), 1, None, False)
