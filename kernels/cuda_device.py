"""What kernels.cuda launches on the GPU: numba.cuda device functions (the block reductions
and the top-k order) and the kernels built from them."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np

# numba.cuda (from the numba-cuda package) has no type information, so it is `Any` here. The
# kernels must reach it through the global name `cuda`: the simulator swaps that global for its
# own module while they run.
cuda: Any = importlib.import_module("numba.cuda")
F = TypeVar("F", bound=Callable[..., Any])

# Row kernels (softmax, topk): one block per row, up to this many threads reducing it through
# shared memory. A power of two, so the tree reduction halves evenly.
ROW_THREADS = 128


def _device_function(fn: F) -> F:
    """fn compiled for the device, callable from kernels (plain Python in the simulator)."""
    return cast(F, cuda.jit(device=True)(fn))


def _kernel(fn: Callable[..., None]) -> Any:
    """fn as a kernel, for `_launch`."""
    return cuda.jit(fn)


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
