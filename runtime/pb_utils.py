"""`triton_python_backend_utils` for models written for Triton's Python backend.

Written from the backend's documented interface, so that a `model.py` defining
`TritonPythonModel` and doing `import triton_python_backend_utils as pb_utils` runs in a
Conveyor worker unchanged (runtime/worker.py installs this module under that name).
Tensors are numpy arrays; BYTES tensors are object arrays of `bytes`. Calling other models
from `execute` (BLS) and decoupled responses are not served yet.
"""

from __future__ import annotations

import json
import logging
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


class InferenceRequest:
    """A request as `execute` receives it."""

    def __init__(
        self,
        inputs: Sequence[Tensor] = (),
        request_id: str = "",
        requested_output_names: Sequence[str] = (),
        parameters: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._id = request_id
        self._outputs = list(requested_output_names)
        self._parameters = dict(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._id

    def correlation_id(self) -> int:
        return 0

    def flags(self) -> int:
        return 0

    def timeout(self) -> int:
        return 0

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def requested_output_names(self) -> list[str]:
        return self._outputs

    def is_cancelled(self) -> bool:
        return False

    def exec(self, *_: Any, **__: Any) -> InferenceResponse:
        raise TritonModelException(
            "calling other models from execute (BLS) is not supported by this server yet"
        )

    async def async_exec(self, *args: Any, **kwargs: Any) -> InferenceResponse:
        return self.exec(*args, **kwargs)


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


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def get_input_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((t for t in model_config.get("input", []) if t.get("name") == name), None)


def get_output_config_by_name(model_config: Mapping[str, Any], name: str) -> Any:
    return next((t for t in model_config.get("output", []) if t.get("name") == name), None)


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
