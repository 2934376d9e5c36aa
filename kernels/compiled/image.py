"""Image kernels on NHWC batches: normalisation to float32 NCHW and bilinear resizing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernels.compiled.signature import _jit, _output, _per_index, _require_ndim


def _normalize_image_loop(
    img: NDArray[np.uint8],
    mean: NDArray[np.float64],
    std: NDArray[np.float64],
    out: NDArray[np.float32],
) -> NDArray[np.float32]:
    n, h, w, c = img.shape
    # One float32 per (channel, byte value), computed exactly as the reference does, so the
    # pixel loop is a gather and the result is bit-identical to NumPy.
    lut = np.empty((c, 256), np.float32)
    for ch in range(c):
        for v in range(256):
            lut[ch, v] = (v / 255 - mean[ch]) / std[ch]
    # Channel-outer, so the NCHW output is written contiguously (2x faster than pixel-outer).
    for b in range(n):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    out[b, ch, y, x] = lut[ch, img[b, y, x, ch]]
    return out


def _axis_weights_loop(
    size_in: int, size_out: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    lo = np.empty(size_out, np.int64)
    hi = np.empty(size_out, np.int64)
    weight = np.empty(size_out, np.float64)
    scale = size_in / size_out
    for d in range(size_out):
        src = max((d + 0.5) * scale - 0.5, 0.0)
        lo[d] = min(math.floor(src), size_in - 1)
        hi[d] = min(lo[d] + 1, size_in - 1)
        weight[d] = src - lo[d] if lo[d] < size_in - 1 else 0.0
    return lo, hi, weight


_axis_weights = _jit(_axis_weights_loop)


def _resize_bilinear_loop(
    img: NDArray[Any], height: int, width: int, out: NDArray[np.float32]
) -> NDArray[np.float32]:
    n, h, w, c = img.shape
    y0, y1, wy = _axis_weights(h, height)
    x0, x1, wx = _axis_weights(w, width)
    for b in range(n):
        for y in range(height):
            for x in range(width):
                for ch in range(c):
                    # Same expression order as the reference, so float64 results match exactly.
                    top = img[b, y0[y], x0[x], ch] * (1 - wx[x]) + img[b, y0[y], x1[x], ch] * wx[x]
                    bot = img[b, y1[y], x0[x], ch] * (1 - wx[x]) + img[b, y1[y], x1[x], ch] * wx[x]
                    out[b, y, x, ch] = top * (1 - wy[y]) + bot * wy[y]
    return out


_normalize_image = _jit(_normalize_image_loop)
_resize_bilinear = _jit(_resize_bilinear_loop)


def normalize_image(img: ArrayLike, mean: ArrayLike, std: ArrayLike) -> NDArray[np.float32]:
    """uint8 NHWC -> float32 NCHW: (img / 255 - mean[c]) / std[c], in one pass."""
    a = np.ascontiguousarray(img, np.uint8)
    _require_ndim(a, 4, "normalize_image's input (NHWC)")
    c = a.shape[3]
    n, h, w, _ = a.shape
    out: NDArray[np.float32] = _normalize_image(
        a, _per_index(mean, c, "mean"), _per_index(std, c, "std"), _output((n, c, h, w))
    )
    return out


def resize_bilinear(img: ArrayLike, height: int, width: int) -> NDArray[np.float32]:
    """NHWC bilinear resize with half-pixel centres (OpenCV INTER_LINEAR); float32 out."""
    a = np.asarray(img)
    src = np.ascontiguousarray(a, np.uint8 if a.dtype == np.uint8 else np.float32)
    _require_ndim(src, 4, "resize_bilinear's input (NHWC)")
    if height < 1 or width < 1:
        raise ValueError(f"resize_bilinear needs a positive size, got {height}x{width}")
    shape = (src.shape[0], height, width, src.shape[3])
    out: NDArray[np.float32] = _resize_bilinear(src, height, width, _output(shape))
    return out
