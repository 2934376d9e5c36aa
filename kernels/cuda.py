"""Device versions of the pre/post kernels (numba.cuda), on arrays already on the GPU.

Each wrapper checks shapes and dtypes on the host before launching, because the kernels index
without bounds checks, and returns a new device array; launches are asynchronous on `stream`.
`kernels.reference` is the spec. Importing this module needs no GPU; launching needs one, or
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which the tests use.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from kernels.cuda_device import (
    ROW_THREADS,
    _normalize_image_kernel,
    _sigmoid_kernel,
    _softmax_kernel,
    _standardize_kernel,
    _topk_kernel,
    cuda,
)

__all__ = [
    "DEVICE_KERNELS",
    "ELEMENT_THREADS",
    "ROW_THREADS",
    "WARP_SIZE",
    "DeviceArray",
    "cuda",
    "element_launch",
    "normalize_image",
    "row_threads",
    "sigmoid",
    "softmax",
    "standardize",
    "topk",
    "upload",
]

# Device arrays (numba's DeviceNDArray, or anything with __cuda_array_interface__) and streams
# (a cuda.Stream, or 0 for the default stream) have no type information: they are `Any` here.
DeviceArray = Any

# The simulator runs a launch to completion in the calling thread, with the kernels' global
# `cuda` (in kernels.cuda_device) swapped for a stand-in holding that launch's grid and shared
# memory. So the host side binds what it calls once, here, and simulated launches take turns;
# on a device, launches are asynchronous and thread-safe and take no lock.
_SIMULATED = bool(getattr(cuda.config, "ENABLE_CUDASIM", False))
_simulator_turn = threading.Lock()
_device_array = cuda.device_array
_to_device = cuda.to_device
_as_cuda_array = getattr(cuda, "as_cuda_array", None)  # the simulator has no foreign memory

DEVICE_KERNELS: frozenset[str] = frozenset(
    {"standardize", "normalize_image", "softmax", "sigmoid", "topk"}
)

WARP_SIZE = 32
# Elementwise kernels: one thread per output element, up to this many threads per block.
ELEMENT_THREADS = 256

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# --- launch configuration ----------------------------------------------------------------------


def element_launch(size: int) -> tuple[int, int]:
    """(blocks, threads per block) for one thread per element of `size` (> 0).

    Threads are a whole number of warps, at most ELEMENT_THREADS, so a tiny batch does not
    start a block of mostly idle threads.
    """
    threads = min(ELEMENT_THREADS, -(-size // WARP_SIZE) * WARP_SIZE)
    return -(-size // threads), threads


def row_threads(columns: int) -> int:
    """Threads per block for a row kernel: the power of two >= columns, at most ROW_THREADS.

    Fewer than a warp's threads cost a whole warp anyway, so a short row loses nothing.
    """
    threads = 1
    while threads < min(columns, ROW_THREADS):
        threads *= 2
    return threads


def _launch(kernel: Any, blocks: int, threads: int, stream: Any, *args: Any) -> None:
    """kernel[blocks, threads, stream](*args): asynchronous on a device, one at a time in the
    simulator."""
    with _simulator_turn if _SIMULATED else contextlib.nullcontext():
        kernel[blocks, threads, stream](*args)


# --- host-side checks --------------------------------------------------------------------------


def _on_device(a: Any, what: str) -> DeviceArray:
    """`a` as a numba device array; host arrays are refused rather than copied implicitly."""
    if getattr(a, "__cuda_ndarray__", False):
        return a
    if _as_cuda_array is not None and hasattr(a, "__cuda_array_interface__"):
        return _as_cuda_array(a)
    raise TypeError(f"{what} must be a device array, got {type(a).__name__} (see upload)")


def _require(
    a: DeviceArray, ndim: int | None, dtypes: tuple[np.dtype[Any], ...], what: str
) -> None:
    """Refuse a device array of the wrong rank (None: any) or dtype before a kernel sees it."""
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {list(a.shape)}")
    if a.dtype not in dtypes:
        names = " or ".join(str(d) for d in dtypes)
        raise ValueError(f"{what} must be {names}, got {a.dtype}")


def _per_index(values: Any, n: int, what: str) -> DeviceArray:
    """A float64 device vector of n values, or of one value that applies to all."""
    a = _on_device(values, what)
    if a.dtype != np.float64:
        raise ValueError(f"{what} must be float64 on the device (see upload), got {a.dtype}")
    if a.size not in (1, n):
        raise ValueError(f"{what} has {a.size} values, expected 1 or {n}")
    return a if a.ndim == 1 else a.reshape(a.size)


def _as_rows(a: DeviceArray, what: str) -> DeviceArray:
    """A view of `a` as [rows, last axis]: as it is when 2-D, else reshaped (C order only)."""
    if a.ndim == 2:
        return a
    shape = tuple(a.shape)  # the simulator's shape refuses negative indices
    if not shape or not a.is_c_contiguous():
        raise ValueError(f"{what} must be 2-D, or C-contiguous with at least one dimension")
    return a.reshape(math.prod(shape[:-1]), shape[-1])


def _empty(shape: tuple[int, ...], dtype: Any, stream: Any) -> DeviceArray:
    return _device_array(shape, dtype=dtype, stream=stream)


# --- public wrappers ---------------------------------------------------------------------------


def upload(args: Mapping[str, Any], stream: Any = 0) -> dict[str, Any]:
    """A step's arguments for the device: arrays (mean, std) become float64 device arrays, once.

    Ints (sizes, axes) and arrays already on the device are left as they are.
    """
    out: dict[str, Any] = {}
    for name, value in args.items():
        on_device = getattr(value, "__cuda_ndarray__", False) or hasattr(
            value, "__cuda_array_interface__"
        )
        if on_device or isinstance(value, int | np.integer):
            out[name] = value
        else:
            host = np.ascontiguousarray(np.atleast_1d(np.asarray(value, np.float64)))
            out[name] = _to_device(host, stream=stream)
    return out


def standardize(x: Any, mean: Any, std: Any, stream: Any = 0) -> DeviceArray:
    """((x - mean) / std) as float32 for x [..., F]; mean and std float64, per column."""
    xd = _on_device(x, "standardize's x")
    _require(xd, None, _FLOATS, "standardize's x")
    rows = _as_rows(xd, "standardize's x")
    mean_d = _per_index(mean, rows.shape[1], "mean")
    std_d = _per_index(std, rows.shape[1], "std")
    out = _empty(rows.shape, np.float32, stream)
    if out.size:
        blocks, threads = element_launch(out.size)
        _launch(_standardize_kernel, blocks, threads, stream, rows, mean_d, std_d, out)
    return out.reshape(xd.shape)


def normalize_image(img: Any, mean: Any, std: Any, stream: Any = 0) -> DeviceArray:
    """uint8 NHWC -> float32 NCHW: (img / 255 - mean[c]) / std[c], in float64 until the store."""
    imgd = _on_device(img, "normalize_image's input")
    _require(imgd, 4, (np.dtype(np.uint8),), "normalize_image's input (NHWC)")
    n, height, width, channels = imgd.shape
    mean_d = _per_index(mean, channels, "mean")
    std_d = _per_index(std, channels, "std")
    out = _empty((n, channels, height, width), np.float32, stream)
    if out.size:
        blocks, threads = element_launch(out.size)
        _launch(_normalize_image_kernel, blocks, threads, stream, imgd, mean_d, std_d, out)
    return out


def sigmoid(x: Any, stream: Any = 0) -> DeviceArray:
    """Logistic function in float32, elementwise over a C-contiguous array, via exp(-|x|)."""
    xd = _on_device(x, "sigmoid's x")
    _require(xd, None, _FLOATS, "sigmoid's x")
    if not xd.is_c_contiguous():
        raise ValueError("sigmoid's x must be C-contiguous")
    out = _empty(xd.shape, np.float32, stream)
    if out.size:
        blocks, threads = element_launch(out.size)
        _launch(
            _sigmoid_kernel, blocks, threads, stream, xd.reshape(xd.size), out.reshape(out.size)
        )
    return out


def softmax(x: Any, stream: Any = 0) -> DeviceArray:
    """Softmax in float32 along the last axis of x [..., C], the row maximum subtracted first."""
    xd = _on_device(x, "softmax's x")
    _require(xd, None, _FLOATS, "softmax's x")
    rows = _as_rows(xd, "softmax's x")
    if rows.shape[0] and not rows.shape[1]:
        raise ValueError(f"softmax needs at least one class per row, got shape {list(xd.shape)}")
    out = _empty(rows.shape, np.float32, stream)
    if rows.shape[0]:
        _launch(_softmax_kernel, rows.shape[0], row_threads(rows.shape[1]), stream, rows, out)
    return out.reshape(xd.shape)


def topk(x: Any, k: int, stream: Any = 0) -> tuple[DeviceArray, DeviceArray]:
    """The k largest along the last axis of x [..., C], descending: (values, int64 indices).

    Ties keep the lower index first and NaN ranks last; a k above C gives all C.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    xd = _on_device(x, "topk's x")
    _require(xd, None, _FLOATS, "topk's x")
    rows = _as_rows(xd, "topk's x")
    k = min(k, rows.shape[1])
    values = _empty((rows.shape[0], k), xd.dtype, stream)
    indices = _empty((rows.shape[0], k), np.int64, stream)
    if values.size:
        blocks, threads = rows.shape[0], row_threads(rows.shape[1])
        _launch(_topk_kernel, blocks, threads, stream, rows, k, values, indices)
    shape = (*tuple(xd.shape)[:-1], k)
    return values.reshape(shape), indices.reshape(shape)
