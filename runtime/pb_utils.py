"""`triton_python_backend_utils` for models written for Triton's Python backend.

Written from the backend's documented interface, so that a `model.py` defining
`TritonPythonModel` and doing `import triton_python_backend_utils as pb_utils` runs in a
Conveyor worker unchanged (runtime/worker.py installs this module under that name).
Tensors are numpy arrays; BYTES tensors are object arrays of `bytes`. `exec` and
`async_exec` call any model the server serves, with no network hop (runtime/model_calls.py);
decoupled responses are not served.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

_NUMPY = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64, "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}  # fmt: skip
# Triton's TRITONSERVER_DataType numbering, as numpy_to_triton_type answers it.
_ENUM = {
    np.bool_: 1, np.uint8: 2, np.uint16: 3, np.uint32: 4, np.uint64: 5, np.int8: 6,
    np.int16: 7, np.int32: 8, np.int64: 9, np.float16: 10, np.float32: 11, np.float64: 12,
    np.object_: 13, np.bytes_: 13,
}  # fmt: skip


def triton_string_to_numpy(triton_type_string: str) -> Any:
    """`"TYPE_FP32"` -> `np.float32`; `TYPE_STRING` is `np.object_` (KeyError for others)."""
    return _NUMPY[triton_type_string]


def numpy_to_triton_type(data_type: Any) -> int | None:
    return _ENUM.get(np.dtype(data_type).type)


def triton_to_numpy_type(data_type: int) -> Any:
    for numpy_type, number in _ENUM.items():
        if number == data_type:
            return numpy_type
    return None


class TritonError:
    """An error for one response; `code` names what kind, as the server maps it."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG = 0, 1, 2, 3
    UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = 4, 5, 6, 7

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message = message
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class TritonModelException(Exception):
    """What a model raises to fail the requests of its `execute` call."""


class Tensor:
    """A named tensor; `as_numpy` gives the array (a read-only view for inputs)."""

    def __init__(self, name: str, data: Any) -> None:
        if not name:
            raise TritonModelException("a Tensor needs a name")
        array = np.asarray(data)
        if array.dtype.kind in "SU":
            array = array.astype(object)
        self._name = name
        self._array = array if array.flags.c_contiguous else np.ascontiguousarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._array.dtype)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """The tensor as a DLPack capsule (for torch.utils.dlpack.from_dlpack and the like);
        a read-only input is copied first, since DLPack before 1.0 cannot mark it so."""
        try:
            return self._array.__dlpack__()
        except BufferError:
            return np.array(self._array).__dlpack__()

    @staticmethod
    def from_dlpack(name: str, tensor: Any) -> Tensor:
        """A Tensor from a DLPack capsule or an object with `__dlpack__` (host memory only)."""
        if not hasattr(tensor, "__dlpack__"):
            tensor = _Capsule(tensor)
        return Tensor(name, np.from_dlpack(tensor))


class _Capsule:
    """A bare DLPack capsule as the object np.from_dlpack takes (host memory)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0


class InferenceRequest:
    """A request as `execute` receives it, or one that model code builds to call a model."""

    def __init__(
        self,
        inputs: Sequence[Tensor] = (),
        request_id: str = "",
        requested_output_names: Sequence[str] = (),
        parameters: Mapping[str, Any] | None = None,
        model_name: str = "",
        model_version: int = -1,
        correlation_id: int | str = 0,
        flags: int = 0,
        timeout: int = 0,
        **_: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._id = request_id
        self._outputs = list(requested_output_names)
        self._parameters = dict(parameters or {})
        self._model_name = model_name
        self._model_version = model_version
        self._correlation_id = correlation_id
        self._flags = flags
        self._timeout = timeout

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int | str:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def is_cancelled(self) -> bool:
        return False

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run `model_name` in this server; its errors come back in the response."""
        if decoupled:
            raise TritonModelException("decoupled calls to other models are not supported")
        if _calls is None or not _calls.open:
            raise TritonModelException("BLS is only supported during the 'execute' function.")
        if not self._model_name:
            raise TritonModelException("an InferenceRequest to execute needs a model_name")
        version = "" if self._model_version < 0 else str(self._model_version)
        outcome = _calls.call(
            self._model_name,
            version,
            {t.name(): t.as_numpy() for t in self._inputs},
            self._outputs,
            self._id,
            self._timeout,
        )
        if isinstance(outcome, tuple):
            return InferenceResponse(error=TritonError(outcome[1], outcome[0]))
        return InferenceResponse([Tensor(name, array) for name, array in outcome.items()])

    async def async_exec(self, decoupled: bool = False) -> InferenceResponse:
        """`exec` on a thread, so that an `async def execute` can await several at once."""
        return await asyncio.get_running_loop().run_in_executor(None, self.exec, decoupled)


class InferenceResponse:
    """One request's answer: its output tensors, or an error (then the outputs are ignored)."""

    def __init__(
        self,
        output_tensors: Iterable[Tensor] = (),
        error: TritonError | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> None:
        self._outputs = list(output_tensors)
        self._error = error
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class ModelConfig:
    """The config a model's `auto_complete_config` completes: Triton's JSON form of it, with
    the checks Triton makes before it takes what the model adds."""

    def __init__(self, model_config: Mapping[str, Any] | str) -> None:
        given = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._config: dict[str, Any] = dict(given)

    def as_dict(self) -> dict[str, Any]:
        return self._config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but "
                f"auto_complete_config of model '{self._config.get('name', '')}' specified "
                f"max_batch_size {max_batch_size}"
            )
        self._config["max_batch_size"] = int(max_batch_size)

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._config:
                raise ValueError(
                    f"cannot set dynamic_batching for model '{self._config.get('name', '')}': "
                    f"{other} is already its scheduler"
                )
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, policy: Mapping[str, Any]) -> None:
        self._config["model_transaction_policy"] = dict(policy)

    def add_input(self, input: Mapping[str, Any]) -> None:
        self._add("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: Mapping[str, Any]) -> None:
        self._add("output", output, ("name", "data_type", "dims"))

    def _add(self, kind: str, entry: Mapping[str, Any], allowed: Sequence[str]) -> None:
        """A new tensor, or the config's own entry of that name with what it left empty."""
        unknown = sorted(set(entry) - set(allowed))
        missing = [k for k in ("name", "data_type", "dims") if k not in entry]
        if unknown or missing:
            raise ValueError(
                f"model {kind} {dict(entry)} must have exactly the keys name, data_type and "
                f"dims{' (and optional)' if 'optional' in allowed else ''}: "
                + (f"unknown {unknown}" if unknown else f"missing {missing}")
            )
        entries: list[dict[str, Any]] = self._config.setdefault(kind, [])
        existing = next((e for e in entries if e.get("name") == entry["name"]), None)
        if existing is None:
            entries.append(dict(entry))
            return
        for key, value in entry.items():
            have = existing.get(key)
            if have in (None, "", "TYPE_INVALID", [], False) or have == value:
                existing[key] = value
                continue
            raise ValueError(
                f"model {kind} '{entry['name']}': auto_complete_config gives {key} {value!r}, "
                f"but the configuration says {have!r}"
            )


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


def serialize_byte_tensor(input_tensor: np.ndarray) -> np.ndarray:
    """A BYTES tensor in Triton's flat layout: each element, in C order, as its 4-byte
    little-endian length then its bytes (`str` elements as UTF-8); a 0-d object array."""
    parts: list[bytes] = []
    for item in np.asarray(input_tensor, dtype=object).ravel(order="C"):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [struct.pack("<I", len(data)), data]
    return np.array(b"".join(parts), dtype=object)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    """The elements of a flat BYTES tensor (the other way), as a 1-d array of bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        items.append(bytes(encoded_tensor[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def using_decoupled_model_transaction_policy(model_config: Mapping[str, Any]) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# The worker's ModelCalls (runtime/model_calls.py), which `exec` goes through.
_calls: Any = None


def bind_calls(calls: Any) -> None:
    """Where `InferenceRequest.exec` sends its calls: the worker's connection."""
    global _calls
    _calls = calls


_log = logging.getLogger("model")
# Logger's levels (Triton's numbering) as logging's.
_LEVELS = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}


class Logger:
    """Log lines from model code, on the server's log stream (the worker's stderr)."""

    INFO, WARNING, ERROR, VERBOSE = 0, 1, 2, 3

    @staticmethod
    def log(message: str, level: int = INFO) -> None:
        if not _log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s model: %(message)s"))
            _log.addHandler(handler)
            _log.setLevel(logging.INFO)
        _log.log(_LEVELS.get(level, logging.INFO), message)

    @staticmethod
    def log_info(message: str) -> None:
        Logger.log(message, Logger.INFO)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger.log(message, Logger.WARNING)

    @staticmethod
    def log_error(message: str) -> None:
        Logger.log(message, Logger.ERROR)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger.log(message, Logger.VERBOSE)
