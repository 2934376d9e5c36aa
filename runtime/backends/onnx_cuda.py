"""A model version on the GPU: pinned staging, IO binding, pre/post steps on the device.

When a session runs on ONNX Runtime's CUDA provider, `session.run` with numpy arrays copies
each input to the device and each output back inside the call, from pageable memory. This
backend instead:

1. copies each batched input into a pinned (page-locked) host buffer, kept per thread and
   grown as needed, and from there to the device on its own stream, once;
2. runs its device steps there as numba.cuda kernels (kernels/cuda.py): the pre steps when
   every one has a device version (else the pipeline runs them on the host, before);
3. binds the device arrays to the session with IO binding, and binds the outputs to
   device memory that ONNX Runtime allocates;
4. runs its device post steps on the device outputs (or the pipeline runs them on the host
   after the copy back), and copies each output to the host once.

Memory is reached through `DeviceMemory`, so that the same backend also runs, for its
tests, on numba's CUDA simulator with ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from runtime.backends.onnx import OnnxBackend
from runtime.config import GraphTensor
from runtime.proto import model_config_pb2 as pb

DeviceArray = Any  # a numba.cuda device array (or the simulator's stand-in)
Kernel = Callable[..., DeviceArray]


def _cuda() -> Any:
    """numba.cuda, imported when first needed (it has no type information)."""
    return importlib.import_module("numba.cuda")


class DeviceMemory(Protocol):
    """Where device arrays live, as ONNX Runtime's IO binding names it."""

    @property
    def ort_device(self) -> str: ...

    @property
    def device_id(self) -> int: ...

    def pointer(self, array: DeviceArray) -> int: ...

    def from_ort(self, value: ort.OrtValue) -> DeviceArray: ...


@dataclass(frozen=True, slots=True)
class CudaMemory:
    """Real device memory: pointers from __cuda_array_interface__, outputs wrapped in place."""

    device_id: int = 0
    ort_device: str = "cuda"

    def pointer(self, array: DeviceArray) -> int:
        return int(array.__cuda_array_interface__["data"][0])

    def from_ort(self, value: ort.OrtValue) -> DeviceArray:
        return _cuda().as_cuda_array(_OrtDeviceView(value))


@dataclass(frozen=True, slots=True)
class SimulatedMemory:
    """numba's CUDA simulator keeps "device" arrays in host memory: ORT's CPU provider can
    read them in place; ORT's outputs are copied into simulator arrays (the simulator has no
    way to wrap foreign memory)."""

    device_id: int = 0
    ort_device: str = "cpu"

    def pointer(self, array: DeviceArray) -> int:
        return int(array.__array_interface__["data"][0])

    def from_ort(self, value: ort.OrtValue) -> DeviceArray:
        return _cuda().to_device(value.numpy())


class _OrtDeviceView:
    """An ORT-owned device tensor seen through __cuda_array_interface__ (no copy)."""

    def __init__(self, value: ort.OrtValue) -> None:
        self.value = value  # keeps the memory alive as long as the view
        dtype = _ORT_DTYPES.get(value.data_type())
        if dtype is None:
            raise ValueError(f"no device view for an output of type {value.data_type()}")
        self.__cuda_array_interface__ = {
            "shape": tuple(value.shape()),
            "typestr": np.dtype(dtype).str,
            "data": (value.data_ptr(), False),
            "strides": None,
            "version": 3,
        }


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def default_memory(device_id: int = 0) -> DeviceMemory:
    """The CUDA device, or the simulator when numba runs with NUMBA_ENABLE_CUDASIM=1."""
    from numba import config

    if getattr(config, "ENABLE_CUDASIM", False):
        return SimulatedMemory(device_id)
    return CudaMemory(device_id)


class KernelStep(Protocol):
    """A resolved pipeline step as the device needs it: kernel name, tensor, arguments."""

    @property
    def kernel(self) -> str: ...

    @property
    def tensor(self) -> str: ...

    @property
    def args(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class DeviceStep:
    tensor: str
    kernel: Kernel
    args: tuple[Any, ...]


def device_steps(steps: Sequence[KernelStep]) -> tuple[DeviceStep, ...] | None:
    """The steps as device kernels with their arrays uploaded once, or None when one of them
    has no device version (that stage then runs on the host)."""
    device_kernels: Any = importlib.import_module("kernels.cuda")

    out = []
    for step in steps:
        if step.kernel not in device_kernels.DEVICE_KERNELS:
            return None
        args = dict(step.args)
        # The device softmax works along the last axis only.
        if step.kernel == "softmax" and args.pop("axis", -1) != -1:
            return None
        uploaded = device_kernels.upload(args)
        kernel = getattr(device_kernels, step.kernel)
        out.append(DeviceStep(step.tensor, kernel, tuple(uploaded.values())))
    return tuple(out)


class _Staging(threading.local):
    """Pinned host buffers of this thread, by input name; grown, never shrunk."""

    def __init__(self) -> None:
        self.buffers: dict[str, np.ndarray] = {}


class OnnxCudaBackend:
    """An ONNX Runtime session on the CUDA provider, run through IO binding, with the steps
    that run on the device (the pipeline runs the others on the host)."""

    # Pinned staging buffers are kept per thread: batches stay on the instance threads.
    thread_bound = True

    def __init__(
        self,
        onnx: OnnxBackend,
        pre: Sequence[DeviceStep] = (),
        post: Sequence[DeviceStep] = (),
        memory: DeviceMemory | None = None,
    ) -> None:
        self.onnx = onnx
        self.session = onnx.session
        self.memory = memory or default_memory()
        self.pre = tuple(pre)
        self.post = tuple(post)
        self._staging = _Staging()
        # Small batches launch small grids, by design; numba would warn on each one.
        from numba import config

        setattr(config, "CUDA_LOW_OCCUPANCY_WARNINGS", 0)  # noqa: B010 (no stubs)

    def graph_inputs(self) -> Sequence[GraphTensor]:
        return self.onnx.graph_inputs()

    def graph_outputs(self) -> Sequence[GraphTensor]:
        return self.onnx.graph_outputs()

    def close(self) -> None:
        self.onnx.close()

    def prepare(self, completed: pb.ModelConfig) -> None:
        self.onnx.prepare(completed)

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        stream = _cuda().stream()
        device = {name: self._upload(name, arr, stream) for name, arr in inputs.items()}
        for step in self.pre:
            device[step.tensor] = step.kernel(device[step.tensor], *step.args, stream=stream)
        stream.synchronize()  # ONNX Runtime reads the inputs on its own stream
        binding = self._bind(device, output_names)
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        values = dict(zip(output_names, binding.get_outputs(), strict=True))
        return self._outputs(values, stream)

    def _upload(self, name: str, array: np.ndarray, stream: Any) -> DeviceArray:
        return _cuda().to_device(self._staged(name, array), stream=stream)

    def _staged(self, name: str, array: np.ndarray) -> np.ndarray:
        """The array copied into this thread's pinned buffer for the input (a view of it)."""
        buffer = self._staging.buffers.get(name)
        if buffer is None or buffer.dtype != array.dtype or buffer.size < array.size:
            buffer = _cuda().pinned_array(max(array.size, 1), array.dtype)
            self._staging.buffers[name] = buffer
        view = buffer[: array.size].reshape(array.shape)
        np.copyto(view, array)
        return view

    def _bind(
        self, device: Mapping[str, DeviceArray], output_names: Sequence[str]
    ) -> ort.IOBinding:
        m = self.memory
        binding = self.session.io_binding()
        for name, array in device.items():
            binding.bind_input(
                name, m.ort_device, m.device_id, array.dtype, list(array.shape), m.pointer(array)
            )
        for name in output_names:
            binding.bind_output(name, m.ort_device, m.device_id)
        return binding

    def _outputs(self, values: Mapping[str, ort.OrtValue], stream: Any) -> dict[str, np.ndarray]:
        steps = self.post
        touched = {s.tensor for s in steps}
        outputs = {n: v.numpy() for n, v in values.items() if n not in touched}
        device = {n: self.memory.from_ort(values[n]) for n in touched}
        for step in steps:
            device[step.tensor] = step.kernel(device[step.tensor], *step.args, stream=stream)
        for name, array in device.items():
            outputs[name] = array.copy_to_host(stream=stream)
        stream.synchronize()
        return outputs
