"""The datatype table (protocol name, numpy, model config, ONNX) and tensor (de)serialisation.

Both protocol adapters decode and encode tensors here, so HTTP and gRPC cannot disagree;
numeric tensors never go through per-element Python, only BYTES does, in tight loops.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from runtime.errors import InvalidInput, Unsupported


class _Datatype(NamedTuple):
    name: str
    numpy: str | None  # None: ONNX Runtime's Python API has no numpy dtype for it
    config: str
    onnx: int  # onnx.TensorProto.DataType value
    ort: str  # the element type inside onnxruntime's "tensor(...)" strings
    size: int  # bytes per element; 0 = variable length


# TensorProto values are hard-coded so that this module does not import onnx.
_TABLE = (
    _Datatype("BOOL", "?", "TYPE_BOOL", 9, "bool", 1),  # TensorProto.BOOL
    _Datatype("UINT8", "u1", "TYPE_UINT8", 2, "uint8", 1),  # TensorProto.UINT8
    _Datatype("UINT16", "u2", "TYPE_UINT16", 4, "uint16", 2),  # TensorProto.UINT16
    _Datatype("UINT32", "u4", "TYPE_UINT32", 12, "uint32", 4),  # TensorProto.UINT32
    _Datatype("UINT64", "u8", "TYPE_UINT64", 13, "uint64", 8),  # TensorProto.UINT64
    _Datatype("INT8", "i1", "TYPE_INT8", 3, "int8", 1),  # TensorProto.INT8
    _Datatype("INT16", "i2", "TYPE_INT16", 5, "int16", 2),  # TensorProto.INT16
    _Datatype("INT32", "i4", "TYPE_INT32", 6, "int32", 4),  # TensorProto.INT32
    _Datatype("INT64", "i8", "TYPE_INT64", 7, "int64", 8),  # TensorProto.INT64
    _Datatype("FP16", "f2", "TYPE_FP16", 10, "float16", 2),  # TensorProto.FLOAT16
    _Datatype("FP32", "f4", "TYPE_FP32", 1, "float", 4),  # TensorProto.FLOAT
    _Datatype("FP64", "f8", "TYPE_FP64", 11, "double", 8),  # TensorProto.DOUBLE
    _Datatype("BYTES", "O", "TYPE_STRING", 8, "string", 0),  # TensorProto.STRING
    _Datatype("BF16", None, "TYPE_BF16", 16, "bfloat16", 2),  # TensorProto.BFLOAT16
)

DATATYPES: tuple[str, ...] = tuple(t.name for t in _TABLE)

_BY_NAME = {t.name: t for t in _TABLE}
_BY_CONFIG = {t.config: t.name for t in _TABLE}
_BY_ONNX = {t.onnx: t.name for t in _TABLE}
_BY_ORT = {f"tensor({t.ort})": t.name for t in _TABLE}
_BY_KIND = {
    (np.dtype(t.numpy).kind, np.dtype(t.numpy).itemsize): t.name
    for t in _TABLE
    if t.numpy not in (None, "O")
}
_JSON_REFUSED = ("FP16", "BF16")  # Triton refuses these as JSON too: no exact JSON form
_LENGTH = struct.Struct("<I")  # the BYTES element length prefix


def _entry(datatype: str) -> _Datatype:
    try:
        return _BY_NAME[datatype]
    except KeyError:
        valid = ", ".join(DATATYPES)
        raise InvalidInput(f"unknown datatype '{datatype}'; expected one of {valid}") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a protocol datatype; BYTES is `object`, BF16 is Unsupported."""
    entry = _entry(datatype)
    if entry.numpy is None:
        raise Unsupported(
            f"datatype {datatype} is not supported: ONNX Runtime's Python API takes no such arrays"
        )
    return np.dtype(entry.numpy)


def datatype_of(dtype: np.dtype) -> str:
    """The protocol datatype for a numpy dtype; strings and objects are BYTES."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_KIND[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise Unsupported(f"numpy dtype {dtype} has no protocol datatype") from None


def config_type(datatype: str) -> str:
    """The model-config enum name of a datatype: FP32 -> TYPE_FP32, BYTES -> TYPE_STRING."""
    return _entry(datatype).config


def from_config_type(name: str) -> str:
    """The datatype of a model-config enum name: TYPE_STRING -> BYTES."""
    try:
        return _BY_CONFIG[name]
    except KeyError:
        valid = ", ".join(_BY_CONFIG)
        raise InvalidInput(f"unknown data_type '{name}'; expected one of {valid}") from None


def from_onnx_type(elem_type: int) -> str:
    """The datatype of an onnx.TensorProto element type: FLOAT (1) -> FP32."""
    try:
        return _BY_ONNX[elem_type]
    except KeyError:
        raise Unsupported(f"ONNX element type {elem_type} has no protocol datatype") from None


def from_ort_type(type_str: str) -> str:
    """The datatype of an onnxruntime NodeArg.type string: "tensor(float)" -> FP32."""
    try:
        return _BY_ORT[type_str]
    except KeyError:
        raise Unsupported(f"ONNX Runtime type '{type_str}' has no protocol datatype") from None


def element_count(shape: Sequence[int], name: str) -> int:
    """The number of elements of `shape`, in Python ints so it cannot overflow."""
    count = 1
    for dim in shape:
        try:
            size = operator.index(dim)
        except TypeError:
            raise InvalidInput(
                f"input '{name}': shape {list(shape)} has a non-integer dimension"
            ) from None
        if size < 0:
            raise InvalidInput(f"input '{name}': shape {list(shape)} has a negative dimension")
        count *= size
    return count


def byte_size(datatype: str) -> int:
    """Bytes per element of a datatype; 0 for BYTES, whose elements vary in length."""
    return _entry(datatype).size


def _input_dtype(datatype: str, name: str) -> np.dtype:
    """numpy_dtype, with the input named in the error."""
    try:
        return numpy_dtype(datatype)
    except (InvalidInput, Unsupported) as exc:
        raise type(exc)(f"input '{name}': {exc.message}") from None


def from_raw(
    buf: bytes | bytearray | memoryview, datatype: str, shape: Sequence[int], name: str
) -> np.ndarray:
    """Decode a little-endian row-major blob into an array of `shape`; numeric data is a view.

    Sizes are checked against the buffer before anything is allocated.
    """
    dtype = _input_dtype(datatype, name).newbyteorder("<")
    count = element_count(shape, name)
    if datatype == "BYTES":
        return _unpack_bytes(buf, count, name).reshape(tuple(shape))
    received = memoryview(buf).nbytes
    expected = count * dtype.itemsize
    if received != expected:
        raise InvalidInput(
            f"input '{name}': {datatype} shape {list(shape)} needs {expected} bytes, got {received}"
        )
    arr = np.frombuffer(buf, dtype=dtype)
    if datatype == "BOOL" and arr.size and arr.view(np.uint8).max() > 1:
        raise InvalidInput(f"input '{name}': BOOL data holds a byte other than 0 or 1")
    return arr.reshape(tuple(shape))


def _unpack_bytes(buf: bytes | bytearray | memoryview, count: int, name: str) -> np.ndarray:
    """Split length-prefixed BYTES elements into a 1-D object array of `bytes`."""
    data = buf if isinstance(buf, bytes) else bytes(buf)
    # Each element takes at least its 4-byte prefix: refuse absurd shapes before allocating.
    if count * _LENGTH.size > len(data):
        raise InvalidInput(
            f"input '{name}': BYTES shape needs {count} elements (at least "
            f"{count * _LENGTH.size} bytes), got {len(data)} bytes"
        )
    out = np.empty(count, dtype=object)
    out[:] = _split_bytes(data, count, name)
    return out


def _split_bytes(data: bytes, count: int, name: str) -> list[bytes]:
    """The `count` payloads of `data`, which must hold exactly that many elements."""
    items: list[bytes] = []
    append, unpack, total, offset = items.append, _LENGTH.unpack_from, len(data), 0
    for _ in range(count):
        if offset + 4 > total:
            raise _short_bytes(name, total - offset, len(items), count)
        (length,) = unpack(data, offset)
        start, offset = offset + 4, offset + 4 + length
        if offset > total:
            raise InvalidInput(
                f"input '{name}': BYTES element {len(items)} declares {length} bytes "
                f"but only {total - start} remain"
            )
        append(data[start:offset])
    if offset != total:
        raise InvalidInput(
            f"input '{name}': BYTES data has {total - offset} bytes after the {count} "
            "elements its shape declares"
        )
    return items


def _short_bytes(name: str, left: int, found: int, count: int) -> InvalidInput:
    """The error for BYTES data that ends before its shape's element count."""
    if left:
        return InvalidInput(
            f"input '{name}': BYTES element {found} has a truncated length prefix "
            f"({left} of 4 bytes)"
        )
    return InvalidInput(f"input '{name}': BYTES data holds {found} elements, shape needs {count}")


def to_raw(arr: np.ndarray, datatype: str) -> bytes:
    """Encode `arr` as the little-endian row-major blob of `datatype`."""
    if datatype == "BYTES":
        return _pack_bytes(arr)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    return np.asarray(arr, dtype=dtype).tobytes()


def _pack_bytes(arr: np.ndarray) -> bytes:
    """Length-prefix each element: bytes as-is, anything else str()-ed and UTF-8 encoded."""
    items = arr.ravel().tolist()
    if not all(type(item) is bytes for item in items):
        items = [item if isinstance(item, bytes) else _utf8(item) for item in items]
    # Interleave prefixes and payloads with C-level map/slice assignment, not a Python loop.
    parts: list[bytes] = [b""] * (2 * len(items))
    try:
        parts[0::2] = map(_LENGTH.pack, map(len, items))
    except struct.error:
        raise Unsupported("a BYTES element is over the 4 GiB the length prefix allows") from None
    parts[1::2] = items
    return b"".join(parts)


def _utf8(item: object) -> bytes:
    return (item if isinstance(item, str) else str(item)).encode()


def from_json(data: object, datatype: str, shape: Sequence[int], name: str) -> np.ndarray:
    """Decode KServe JSON `data` (flat or nested lists, row-major) into an array of `shape`."""
    if datatype in _JSON_REFUSED:
        raise InvalidInput(
            f"input '{name}': {datatype} data cannot be sent as JSON; "
            "use the binary tensor data extension"
        )
    dtype = _input_dtype(datatype, name)
    expected = element_count(shape, name)
    if not isinstance(data, list):
        raise InvalidInput(
            f"input '{name}': {datatype} data must be a JSON list, got {type(data).__name__}"
        )
    if not data or not isinstance(data[0], list):
        # A flat list tells its count at once: reject a mismatch before converting anything.
        _check_count(len(data), expected, name)
    if datatype == "BYTES":
        arr = _json_strings(data, name)
    else:
        arr = _json_numbers(data, datatype, dtype, name)
    _check_count(arr.size, expected, name)
    return arr.reshape(tuple(shape))


def _check_count(got: int, expected: int, name: str) -> None:
    if got != expected:
        raise InvalidInput(f"input '{name}': shape needs {expected} elements, data holds {got}")


def _json_strings(data: list[Any], name: str) -> np.ndarray:
    """JSON strings as a 1-D object array of their UTF-8 bytes."""
    flat = _flatten(data, name)
    try:
        encoded = [str.encode(item) for item in flat]
    except TypeError:
        raise InvalidInput(f"input '{name}': BYTES data must be JSON strings") from None
    except UnicodeEncodeError:
        raise InvalidInput(f"input '{name}': BYTES data holds invalid Unicode") from None
    out = np.empty(len(encoded), dtype=object)
    out[:] = encoded
    return out


def _flatten(data: list[Any], name: str) -> list[Any]:
    """Flatten nested lists one level at a time, refusing rows of differing lengths."""
    level = data
    while level and isinstance(level[0], list):
        width = len(level[0])
        if any(not isinstance(row, list) or len(row) != width for row in level):
            raise InvalidInput(f"input '{name}': BYTES data is a nested list of uneven rows")
        level = [item for row in level for item in row]
    return level


def _json_numbers(data: list[Any], datatype: str, dtype: np.dtype, name: str) -> np.ndarray:
    """JSON numbers (or booleans for BOOL) as an array of `dtype`, strictly typed."""
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            f"input '{name}': {datatype} data must be a rectangular list of numbers"
        ) from None
    if raw.size == 0:
        return raw.astype(dtype)
    if datatype == "BOOL":
        return _json_bools(raw, name)
    if _has_bool(data):
        kind = "integers" if dtype.kind in "iu" else "numbers"
        raise InvalidInput(f"input '{name}': {datatype} data must be JSON {kind}, not booleans")
    if raw.dtype.kind == "O" or (dtype.kind in "iu" and raw.dtype.kind == "f"):
        # numpy fell back to object or float64: integers past int64, or wrong types.
        raw = _exact_numbers(data, datatype, dtype, name)
    if dtype.kind == "f":
        return _json_floats(raw, datatype, dtype, name)
    return _json_ints(raw, datatype, dtype, name)


def _has_bool(data: list[Any]) -> bool:
    """Whether a (nested) JSON list holds true/false; numpy would read them as 1/0."""
    stack = [data]
    while stack:
        items = stack.pop()
        kinds = set(map(type, items))
        if bool in kinds:
            return True
        if list in kinds:
            stack.extend(x for x in items if type(x) is list)
    return False


def _exact_numbers(data: list[Any], datatype: str, dtype: np.dtype, name: str) -> np.ndarray:
    """The rare path, per element: an object array of exact Python ints (and floats)."""
    allowed: tuple[type, ...] = (int,) if dtype.kind in "iu" else (int, float)
    values = np.asarray(data, dtype=object)
    # type() rather than isinstance(): a bool is an int to Python but not a number here.
    if not all(type(value) in allowed for value in values.ravel().tolist()):
        kind = "integers" if dtype.kind in "iu" else "numbers"
        raise InvalidInput(f"input '{name}': {datatype} data must be JSON {kind}")
    return values


def _json_bools(raw: np.ndarray, name: str) -> np.ndarray:
    """true/false, or the integers 0 and 1, as np.bool_."""
    if raw.dtype.kind == "b":
        return raw
    if raw.dtype.kind in "iu" and raw.min() >= 0 and raw.max() <= 1:
        return raw.astype(np.bool_)
    raise InvalidInput(f"input '{name}': BOOL data must be true/false (or 0/1)")


def _json_floats(raw: np.ndarray, datatype: str, dtype: np.dtype, name: str) -> np.ndarray:
    """JSON numbers as floats; a finite value too large for `dtype` is refused."""
    if raw.dtype.kind not in "iufO":
        raise InvalidInput(f"input '{name}': {datatype} data must be JSON numbers")
    try:
        with np.errstate(over="raise"):
            return raw.astype(dtype, copy=False)
    except (FloatingPointError, OverflowError):
        raise InvalidInput(f"input '{name}': {datatype} data holds a value out of range") from None


def _json_ints(raw: np.ndarray, datatype: str, dtype: np.dtype, name: str) -> np.ndarray:
    """JSON integers, each within the range of `dtype`."""
    if raw.dtype.kind not in "iuO":
        raise InvalidInput(f"input '{name}': {datatype} data must be JSON integers")
    info = np.iinfo(dtype)
    low, high = int(raw.min()), int(raw.max())
    if low < info.min or high > info.max:
        bad = low if low < info.min else high
        raise InvalidInput(
            f"input '{name}': {bad} is out of range for {datatype} [{info.min}, {info.max}]"
        )
    return raw.astype(dtype, copy=False)


def to_json(arr: np.ndarray, datatype: str, *, name: str = "") -> list[Any]:
    """A flat row-major list for a JSON response; BYTES elements must be UTF-8."""
    where = f"output '{name}'" if name else "output"
    if datatype in _JSON_REFUSED:
        raise Unsupported(f"{where}: {datatype} data cannot be sent as JSON; request binary_data")
    if datatype != "BYTES":
        _entry(datatype)
        flat: list[Any] = arr.ravel().tolist()
        return flat
    try:
        return [_text(item) for item in arr.ravel().tolist()]
    except UnicodeDecodeError:
        raise Unsupported(
            f"{where} holds bytes that are not UTF-8; request it with binary_data"
        ) from None


def _text(item: object) -> str:
    return item.decode() if isinstance(item, bytes) else str(item)  # str(a str) is itself
