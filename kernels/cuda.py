"""Device versions of the pre/post kernels (numba.cuda), on arrays already on the GPU.

Each wrapper checks shapes and dtypes on the host before launching, because the kernels index
without bounds checks, and returns a new device array; launches are asynchronous on `stream`.
`kernels.reference` is the spec. Importing this module needs no GPU; launching needs one, or
Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1), which the tests use.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import numpy as np

# numba.cuda (from the numba-cuda package) has no type information, so it is `Any` here, as
# are device arrays (numba's DeviceNDArray, or anything with __cuda_array_interface__) and
# streams (a cuda.Stream, or 0 for the default stream). The kernels must reach it through the
# global name `cuda`: the simulator swaps that global for its own module while they run.
cuda: Any = importlib.import_module("numba.cuda")
DeviceArray = Any
F = TypeVar("F", bound=Callable[..., Any])

# The simulator runs a launch to completion in the calling thread, with this module's global
# `cuda` swapped for a stand-in holding that launch's grid and shared memory. So the host side
# binds what it calls once, here, and simulated launches take turns; on a device, launches are
# asynchronous and thread-safe and take no lock.
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
# Row kernels (softmax, topk): one block per row, up to this many threads reducing it through
# shared memory. A power of two, so the tree reduction halves evenly.
ROW_THREADS = 128

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


def _device_function(fn: F) -> F:
    """fn compiled for the device, callable from kernels (plain Python in the simulator)."""
    return cast(F, cuda.jit(device=True)(fn))


def _kernel(fn: Callable[..., None]) -> Any:
    """fn as a kernel, for `_launch`."""
    return cuda.jit(fn)


def _launch(kernel: Any, blocks: int, threads: int, stream: Any, *args: Any) -> None:
    """kernel[blocks, threads, stream](*args): asynchronous on a device, one at a time in the
    simulator."""
    with _simulator_turn if _SIMULATED else contextlib.nullcontext():
        kernel[blocks, threads, stream](*args)


# --- device functions --------------------------------------------------------------------------


@_device_function
def _pick(values: Any, j: int) -> Any:
    """values[j], or values[0] for a single value that applies to every column or channel."""
    return values[j] if values.shape[0] != 1 else values[0]


@_device_function
def _max_nan(a: Any, b: Any) -> Any:
    """The larger of a and b, NaN if either is NaN (as ndarray.max)."""
    return a if a > b or a != a else b


@_device_function
def _ranks_above(v: float, w: float) -> bool:
    """Whether v comes before w in top-k order: larger first, NaN after every number."""
    return v > w or (w != w and v == v)


@_device_function
def _before(v: float, i: int, w: float, j: int) -> bool:
    """Whether (v, i) comes before (w, j): by value, then the lower index among ties."""
    return _ranks_above(v, w) or (not _ranks_above(w, v) and i < j)


@_device_function
def _block_max(shared: Any, value: Any) -> Any:
    """Maximum of `value` over the block (NaN wins); every thread gets it.

    Tree reduction over `shared` (one slot per thread), which must not be used again.
    """
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            shared[tid] = _max_nan(shared[tid], shared[tid + half])
        cuda.syncthreads()
        half //= 2
    return shared[0]


@_device_function
def _block_sum(shared: Any, value: Any) -> Any:
    """Pairwise sum of `value` over the block; every thread gets it. As _block_max."""
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            shared[tid] = shared[tid] + shared[tid + half]
        cuda.syncthreads()
        half //= 2
    return shared[0]


@_device_function
def _row_candidate(x: Any, row: int, prev_v: float, prev_i: int) -> tuple[float, int]:
    """This thread's best (value, index) of the row that ranks after (prev_v, prev_i).

    prev_i < 0 means nothing is taken yet; index -1 means this thread has no candidate.
    """
    best_v = 0.0
    best_i = -1
    for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        v = float(x[row, j])
        after_prev = prev_i < 0 or _before(prev_v, prev_i, v, j)
        if after_prev and (best_i < 0 or _before(v, j, best_v, best_i)):
            best_v = v
            best_i = j
    return best_v, best_i


@_device_function
def _block_best(shared_v: Any, shared_i: Any, v: float, i: int) -> Any:
    """Index of the first (v, i) in top-k order over the block; every thread gets it."""
    tid = cuda.threadIdx.x
    shared_v[tid] = v
    shared_i[tid] = i
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        other = shared_i[tid + half] if tid < half else -1
        if other >= 0 and (
            shared_i[tid] < 0 or _before(shared_v[tid + half], other, shared_v[tid], shared_i[tid])
        ):
            shared_v[tid] = shared_v[tid + half]
            shared_i[tid] = other
        cuda.syncthreads()
        half //= 2
    best = shared_i[0]
    cuda.syncthreads()  # every thread has read it: the next round may overwrite shared
    return best


# --- kernels -----------------------------------------------------------------------------------


@_kernel
def _standardize_kernel(x: Any, mean: Any, std: Any, out: Any) -> None:
    idx = cuda.grid(1)
    columns = x.shape[1]
    if idx < x.shape[0] * columns:
        i = idx // columns
        j = idx % columns
        # float64 arithmetic, one rounding to float32 on the store: as the reference.
        out[i, j] = (x[i, j] - _pick(mean, j)) / _pick(std, j)


@_kernel
def _normalize_image_kernel(img: Any, mean: Any, std: Any, out: Any) -> None:
    # One thread per output element in NCHW order, so the writes are contiguous.
    idx = cuda.grid(1)
    n, channels, height, width = out.shape
    if idx < n * channels * height * width:
        x = idx % width
        rest = idx // width
        y = rest % height
        rest //= height
        c = rest % channels
        b = rest // channels
        out[b, c, y, x] = (img[b, y, x, c] / 255.0 - _pick(mean, c)) / _pick(std, c)


@_kernel
def _sigmoid_kernel(x: Any, out: Any) -> None:
    i = cuda.grid(1)
    if i < x.shape[0]:
        v = np.float32(x[i])
        one = np.float32(1.0)
        z = np.float32(math.exp(-abs(v)))  # exp(-|x|) <= 1: never overflows
        out[i] = one / (one + z) if v >= 0 else z / (one + z)


@_kernel
def _softmax_kernel(x: Any, out: Any) -> None:
    # One block per row: the row's maximum, then exp and its sum, then the division.
    peaks = cuda.shared.array(ROW_THREADS, np.float32)
    sums = cuda.shared.array(ROW_THREADS, np.float64)
    row = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    step = cuda.blockDim.x
    peak = np.float32(-math.inf)
    for j in range(tid, x.shape[1], step):
        peak = _max_nan(peak, np.float32(x[row, j]))
    peak = _block_max(peaks, peak)
    total = 0.0  # float64: no drift over long rows, as compiled.softmax
    for j in range(tid, x.shape[1], step):
        e = np.float32(math.exp(np.float32(x[row, j]) - peak))
        out[row, j] = e
        total += float(e)
    total = _block_sum(sums, total)
    for j in range(tid, x.shape[1], step):
        out[row, j] = out[row, j] / total


@_kernel
def _topk_kernel(x: Any, k: int, values: Any, indices: Any) -> None:
    # One block per row, k rounds; each picks the first element after the previous pick in
    # top-k order (value descending, NaN last, lower index first among ties).
    shared_v = cuda.shared.array(ROW_THREADS, np.float64)
    shared_i = cuda.shared.array(ROW_THREADS, np.int64)
    row = cuda.blockIdx.x
    prev_v = 0.0
    prev_i = -1
    for r in range(k):
        v, i = _row_candidate(x, row, prev_v, prev_i)
        prev_i = _block_best(shared_v, shared_i, v, i)
        prev_v = float(x[row, prev_i])
        if cuda.threadIdx.x == 0:
            values[row, r] = x[row, prev_i]
            indices[row, r] = prev_i


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
