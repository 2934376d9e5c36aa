"""ONNX Runtime backend: one InferenceSession per model version, shared by its instances.

ONNX Runtime sessions are safe to run from several threads at once, so the instance count
of a model bounds how many batches run concurrently rather than how many sessions exist.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtime import tensors
from runtime.config import ConfigError, GraphTensor
from runtime.errors import InvalidInput
from runtime.proto import model_config_pb2 as pb

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _int_parameter(parameters: Mapping[str, str], key: str, default: int) -> int:
    if key not in parameters:
        return default
    try:
        return int(parameters[key])
    except ValueError:
        raise ValueError(f"parameter '{key}' must be an integer, got '{parameters[key]}'") from None


def choose_providers(kind: str, gpu_id: int = 0, device: str = "auto") -> list[Any]:
    """CUDA when onnxruntime-gpu sees a device and the model (KIND_GPU) or --device asks for it.

    `kind` is the model's instance kind; KIND_AUTO takes the GPU when there is one.
    """
    has_cuda = CUDA in ort.get_available_providers()
    if device == "gpu" and not has_cuda:
        raise ValueError("--device gpu was asked for but ONNX Runtime has no CUDA provider here")
    wants_gpu = device == "gpu" or (device == "auto" and kind in ("KIND_GPU", "KIND_AUTO"))
    if wants_gpu and has_cuda:
        return [(CUDA, {"device_id": gpu_id}), CPU]
    return [CPU]


def open_onnx(model_dir: Path, version: int, message: pb.ModelConfig, device: str) -> OnnxBackend:
    """One version's ONNX file in a session on the provider its instance kind and --device ask
    for; ConfigError (the model's reason to be unavailable) when it cannot be opened."""
    filename = message.default_model_filename or "model.onnx"
    path = model_dir / str(version) / filename
    if not path.exists():
        raise ConfigError(f"model file '{path}' does not exist")
    groups = message.instance_group
    kind = pb.ModelInstanceGroup.Kind.Name(groups[0].kind) if groups else "KIND_AUTO"
    gpu_id = groups[0].gpus[0] if groups and groups[0].gpus else 0
    parameters = {k: v.string_value for k, v in message.parameters.items()}
    try:
        return OnnxBackend(path, parameters, choose_providers(kind, gpu_id, device))
    except Exception as exc:
        raise ConfigError(f"ONNX Runtime cannot load '{path}': {exc}") from exc


class OnnxBackend:
    """Runs an ONNX model (a file, or its bytes) with ONNX Runtime's `session.run`: on the CPU
    provider, or on the CUDA provider copying through host memory inside the call."""

    # ONNX Runtime sessions keep no per-thread state: batches may run on the event loop.
    thread_bound = False

    def __init__(
        self,
        model: Path | bytes,
        parameters: Mapping[str, str] | None = None,
        providers: list[Any] | None = None,
    ) -> None:
        parameters = parameters or {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = _int_parameter(parameters, "intra_op_thread_count", 0)
        options.inter_op_num_threads = _int_parameter(parameters, "inter_op_thread_count", 0)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Our own thread pool decides concurrency; ORT's spinning threads would only
        # steal CPU from the event loop between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = providers or [CPU]
        source = model if isinstance(model, bytes) else str(model)
        self._session = ort.InferenceSession(source, options, providers=self.providers)
        self._inputs = [_graph_tensor(a) for a in self._session.get_inputs()]
        self._outputs = [_graph_tensor(a) for a in self._session.get_outputs()]
        self._text_inputs = frozenset(t.name for t in self._inputs if t.datatype == "BYTES")

    @property
    def on_gpu(self) -> bool:
        first = self.providers[0]
        return bool((first[0] if isinstance(first, tuple) else first) == CUDA)

    @property
    def session(self) -> ort.InferenceSession:
        """The session itself, for IO binding (runtime/backends/onnx_cuda.py)."""
        return self._session

    @property
    def device_id(self) -> int:
        first = self.providers[0]
        return int(first[1].get("device_id", 0)) if isinstance(first, tuple) else 0

    def graph_inputs(self) -> Sequence[GraphTensor]:
        return self._inputs

    def graph_outputs(self) -> Sequence[GraphTensor]:
        return self._outputs

    def prepare(self, completed: pb.ModelConfig) -> None:
        """The session is complete as opened."""

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        feeds = {
            name: _to_text(arr, name) if name in self._text_inputs else arr
            for name, arr in inputs.items()
        }
        results = self._session.run(list(output_names), feeds)
        return dict(zip(output_names, results, strict=True))

    def close(self) -> None:
        del self._session


def _to_text(arr: np.ndarray, name: str) -> np.ndarray:
    """ONNX STRING tensors hold UTF-8 text; ORT would store the repr() of a bytes object."""
    flat = arr.ravel()
    try:
        text = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in flat]
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"input '{name}' holds bytes that are not UTF-8 text, which ONNX string tensors "
            f"require: {exc}"
        ) from None
    return np.array(text, dtype=object).reshape(arr.shape)


def _graph_tensor(arg: ort.NodeArg) -> GraphTensor:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return GraphTensor(name=arg.name, datatype=tensors.from_ort_type(arg.type), shape=shape)
