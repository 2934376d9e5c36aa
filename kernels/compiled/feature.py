"""Feature kernels: per-column standardisation and one-hot codes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernels.compiled.signature import _float, _jit, _output, _per_index, _require_ndim


def _standardize_loop(
    x: NDArray[Any], mean: NDArray[np.float64], std: NDArray[np.float64], out: NDArray[np.float32]
) -> NDArray[np.float32]:
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (x[i, j] - mean[j]) / std[j]
    return out


def _one_hot_loop(codes: NDArray[np.int64], n: int) -> NDArray[np.float32]:
    out = np.zeros((codes.shape[0], n), np.float32)
    for i in range(codes.shape[0]):
        if 0 <= codes[i] < n:
            out[i, codes[i]] = 1
    return out


_standardize = _jit(_standardize_loop)
_one_hot = _jit(_one_hot_loop)


def standardize(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> NDArray[np.float32]:
    """((x - mean) / std) as float32, mean and std per column (last axis)."""
    xf = _float(x)
    n = xf.shape[-1]
    rows = xf.reshape(math.prod(xf.shape[:-1]), n)
    out: NDArray[np.float32] = _standardize(
        rows, _per_index(mean, n, "mean"), _per_index(std, n, "std"), _output(rows.shape)
    )
    return out.reshape(xf.shape)


def one_hot(codes: ArrayLike, n: int) -> NDArray[np.float32]:
    """int codes [N] -> float32 [N, n]; a code outside 0..n-1 gives an all-zero row."""
    a = np.ascontiguousarray(codes, np.int64)
    _require_ndim(a, 1, "one_hot's codes")
    if n < 0:
        raise ValueError(f"one_hot needs n >= 0, got {n}")
    out: NDArray[np.float32] = _one_hot(a, n)
    return out
