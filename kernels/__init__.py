"""Pre/post-processing kernels: for each op, the faster of Numba and NumPy as measured.

Figures are from benchmarks/kernel_speed.py (median µs per call); `reference` holds the NumPy
definitions and `compiled` the Numba ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernels import compiled, reference

normalize_image = compiled.normalize_image
resize_bilinear = compiled.resize_bilinear
one_hot = compiled.one_hot
bucketize = compiled.bucketize
# NumPy's SIMD exp wins at every batch measured: 5.5 vs 11.6 µs at 1x1000, 374 vs 1070 µs at
# 256x1000 (benchmarks/kernel_speed.py), so softmax is the NumPy reference.
softmax = reference.softmax
# Numba's loop, vectorised (exp by a polynomial, no libm call), wins at every FP32 size measured,
# 80 to 256,000 elements: 1.5 vs 3.3 µs at 1x80, 5.2 vs 7.7 at 64x80, 206 vs 253 at 256x1000,
# and beats the one-line 1 / (1 + np.exp(-x)) by 1.16-1.6x (sigmoid_sizes in the JSON).
sigmoid = compiled.sigmoid
topk = compiled.topk
nms = compiled.nms
histogram = compiled.histogram

# Below this element count Numba's lower call overhead wins; above, NumPy's SIMD ufuncs do.
# standardize: NumPy 2.1 vs Numba 3.5 µs at 1x32, 3.8 vs 4.2 at 64x32, Numba 6.0 vs 7.7 µs at
# 256x32.
_STANDARDIZE_NUMBA_FROM = 4096


def _size(x: ArrayLike) -> int:
    # ndarray.size directly: np.size() costs about 0.3 µs, a tenth of a small call.
    return x.size if isinstance(x, np.ndarray) else int(np.size(x))


def standardize(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> NDArray[np.float32]:
    """((x - mean) / std) as float32, mean and std per column (last axis)."""
    if _size(x) < _STANDARDIZE_NUMBA_FROM:
        return reference.standardize(x, mean, std)
    return compiled.standardize(x, mean, std)


KERNELS: dict[str, Callable[..., Any]] = {
    "standardize": standardize,
    "normalize_image": normalize_image,
    "resize_bilinear": resize_bilinear,
    "one_hot": one_hot,
    "bucketize": bucketize,
    "softmax": softmax,
    "sigmoid": sigmoid,
    "topk": topk,
    "nms": nms,
    "histogram": histogram,
}

__all__ = [
    "KERNELS",
    "bucketize",
    "histogram",
    "nms",
    "normalize_image",
    "one_hot",
    "resize_bilinear",
    "sigmoid",
    "softmax",
    "standardize",
    "topk",
    "warm_up",
]


def warm_up() -> None:
    """Call every Numba kernel once per dtype the server feeds it, writable and read-only
    (raw gRPC and binary HTTP tensors are read-only views of the request bytes, a separate
    Numba signature), so that the cache holds them all and no request pays JIT."""
    for writable in (True, False):

        def zeros(shape: tuple[int, ...], dtype: Any, writable: bool = writable) -> Any:
            a = np.zeros(shape, dtype)
            a.flags.writeable = writable
            return a

        for dtype in (np.float32, np.float64):
            rows = zeros((2, 3), dtype)
            compiled.standardize(rows, np.zeros(3), np.ones(3))
            compiled.bucketize(rows, np.arange(3.0))
            compiled.histogram(rows, np.zeros((3, 2)))  # features as the lanes
            compiled.histogram(zeros((256, 1), dtype), np.zeros((1, 2)))  # rows as the lanes
            compiled.topk(rows, 2)
            compiled.argmax_add(rows, np.zeros(3, np.int64))  # the drift monitor's class count
            compiled.nms(zeros((2, 4), dtype), zeros((2,), dtype), 0.5, 0.0)
        for image in (zeros((1, 2, 2, 3), np.uint8), zeros((1, 2, 2, 3), np.float32)):
            compiled.resize_bilinear(image, 3, 3)
        compiled.normalize_image(zeros((1, 2, 2, 3), np.uint8), np.zeros(3), np.ones(3))
        compiled.one_hot(zeros((2,), np.int64), 3)
        compiled.sigmoid(zeros((2, 3), np.float32))
