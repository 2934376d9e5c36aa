"""Kernels on model scores: softmax, sigmoid, top-k and non-maximum suppression."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernels.compiled.signature import _float, _jit


def _softmax_loop(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        peak = x[i, 0]
        for v in x[i]:
            if v > peak or v != v:  # NaN propagates, as with ndarray.max
                peak = v
                if v != v:
                    break
        total = 0.0  # float64 accumulator: no drift over long rows
        for j in range(x.shape[1]):
            out[i, j] = math.exp(x[i, j] - peak)
            total += out[i, j]
        for j in range(x.shape[1]):
            out[i, j] = out[i, j] / total
    return out


# exp(-a) for 0 <= a <= 87 in float32 with no libm call, so that LLVM vectorises the loop (a
# call to expf per element kept it scalar: 2.5-3 ns an element, behind NumPy's SIMD exp).
# Cody-Waite: exp(-a) = 2^-k exp(r), k = round(a / ln 2), |r| <= ln 2 / 2, ln 2 split in two so
# that k ln 2 is exact (k <= 126: 7 bits, _LN2_HI: 9); exp(r) by Cephes' expf polynomial (about
# 1 ulp); 2^-k written as exponent bits, a normal number for k <= 126. exp(-87) is 1.6e-38,
# just above float32's smallest normal: past |x| = 87 the answer is 0 or 1 (under 1.7e-38 off).
_EXP_CAP = np.float32(87.0)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
# exp(r) ~ 1 + r + r^2 (_P5 + r (_P4 + r (_P3 + r (_P2 + r (_P1 + r _P0))))), Cephes' expf.
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ZERO, _HALF, _ONE = np.float32(0), np.float32(0.5), np.float32(1)


_SIGMOID_BLOCK = 2048  # elements: a block's input, output and exp(r) fit in L1 together


def _sigmoid_block_loop(
    x: NDArray[np.float32], out: NDArray[np.float32], exp_r: NDArray[np.float32]
) -> None:
    """Two passes over one block, each vectorised: the first writes 2^-k's bits into the output
    (Numba has no scalar bit cast) and exp(r) beside it, the second makes exp(-|v|) of them,
    then the logistic, 1 - e/(1+e) or e/(1+e) by the sign of v. All in float32."""
    scale_bits = out.view(np.int32)
    for i in range(x.shape[0]):
        a = abs(x[i])
        a = a if a < _EXP_CAP else _EXP_CAP  # NaN too: int32(NaN) below is undefined
        k = np.floor(a * _LOG2E + _HALF)
        r = (k * _LN2_HI - a) + k * _LN2_LO
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        exp_r[i] = (p * r * r + r) + _ONE
        scale_bits[i] = (127 - np.int32(k)) << 23
    for i in range(x.shape[0]):
        v = x[i]
        e = exp_r[i] * out[i]  # exp(-|v|)
        low = e / (_ONE + e)  # the logistic of -|v|
        low = low if abs(v) <= _EXP_CAP else _ZERO
        logistic = _ONE - low if v >= _ZERO else low
        out[i] = logistic if v == v else v  # NaN stays NaN


_sigmoid_block = _jit(_sigmoid_block_loop)


def _sigmoid_loop(x: NDArray[np.float32]) -> NDArray[np.float32]:
    # Block by block, passed as slices: their indices start at 0, so the loops above carry no
    # negative-index wraparound, which kept LLVM from vectorising. Whole-array passes without
    # blocks measured the same up to 64,000 elements and 20% slower at 256,000 (a second
    # array the size of the input, out of cache).
    out = np.empty_like(x)
    exp_r = np.empty(_SIGMOID_BLOCK, np.float32)
    for start in range(0, x.shape[0], _SIGMOID_BLOCK):
        stop = min(start + _SIGMOID_BLOCK, x.shape[0])
        _sigmoid_block(x[start:stop], out[start:stop], exp_r)
    return out


def _ranks_above_loop(v: float, w: float) -> bool:
    """Whether v comes before w in top-k order: larger first, NaN after every number."""
    return v > w or (w != w and v == v)


_ranks_above = _jit(_ranks_above_loop)


def _topk_row_loop(
    row: NDArray[Any], k: int, values: NDArray[Any], indices: NDArray[np.int64]
) -> None:
    """Insertion into a sorted buffer of k: O(n k), far cheaper than a sort for small k."""
    filled = 0
    for j in range(row.shape[0]):
        v = row[j]
        if filled == k and not _ranks_above(v, values[k - 1]):
            continue
        # Ties stay behind existing entries (which have lower indices).
        pos = min(filled, k - 1)
        while pos > 0 and _ranks_above(v, values[pos - 1]):
            values[pos] = values[pos - 1]
            indices[pos] = indices[pos - 1]
            pos -= 1
        values[pos] = v
        indices[pos] = j
        filled = min(filled + 1, k)


_topk_row = _jit(_topk_row_loop)


def _topk_loop(x: NDArray[Any], k: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
    values = np.empty((x.shape[0], k), x.dtype)
    indices = np.empty((x.shape[0], k), np.int64)
    if k > 0:
        for i in range(x.shape[0]):
            _topk_row(x[i], k, values[i], indices[i])
    return values, indices


def _iou_loop(boxes: NDArray[np.float64], areas: NDArray[np.float64], i: int, j: int) -> float:
    inter = max(0.0, min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])) * max(
        0.0, min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
    )
    union = areas[i] + areas[j] - inter
    return inter / union if union > 0 else 0.0


_iou = _jit(_iou_loop)


def _nms_loop(
    boxes_in: NDArray[Any],
    scores_in: NDArray[Any],
    iou_threshold: float,
    score_threshold: float,
) -> NDArray[np.int64]:
    # float32 or float64 in, widened here rather than by NumPy in the wrapper: the reference
    # computes in float64, and two conversions per call were most of the time for a few boxes.
    boxes = boxes_in.astype(np.float64)
    scores = scores_in.astype(np.float64)
    areas = np.maximum(0.0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0.0, boxes[:, 3] - boxes[:, 1])
    order = np.nonzero(scores > score_threshold)[0]
    order = order[np.argsort(-scores[order], kind="mergesort")]  # mergesort is stable
    suppressed = np.zeros(order.shape[0], np.bool_)
    keep = np.empty(order.shape[0], np.int64)
    kept = 0
    for a in range(order.shape[0]):
        if suppressed[a]:
            continue
        keep[kept] = order[a]
        kept += 1
        for b in range(a + 1, order.shape[0]):
            if not suppressed[b] and _iou(boxes, areas, order[a], order[b]) > iou_threshold:
                suppressed[b] = True
    return keep[:kept].copy()


_softmax = _jit(_softmax_loop)
_sigmoid = _jit(_sigmoid_loop)
_topk = _jit(_topk_loop)
_nms = _jit(_nms_loop)


def softmax(x: ArrayLike, axis: int = -1) -> NDArray[np.float32]:
    """Softmax in float32 with the maximum subtracted first."""
    moved = np.moveaxis(np.asarray(x, np.float32), axis, -1)
    rows = np.ascontiguousarray(moved).reshape(-1, moved.shape[-1])
    out: NDArray[np.float32] = _softmax(rows)
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def sigmoid(x: ArrayLike) -> NDArray[np.float32]:
    """Logistic function in float32, via exp(-|x|) so that it never overflows."""
    a = np.ascontiguousarray(x, np.float32)
    out: NDArray[np.float32] = _sigmoid(a.ravel())
    return out.reshape(a.shape)


def topk(x: ArrayLike, k: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """The k largest along the last axis, descending; ties keep the lower index, NaN ranks last."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    xf = _float(x)
    k = min(k, xf.shape[-1])
    if xf.ndim == 2:  # already rows: the reshapes below cost a third of a one-row call
        out: tuple[NDArray[Any], NDArray[np.int64]] = _topk(xf, k)
        return out
    # Rows counted explicitly: reshape(-1, 0) is ambiguous when the last axis is empty.
    values, indices = _topk(xf.reshape(math.prod(xf.shape[:-1]), xf.shape[-1]), k)
    shape = (*xf.shape[:-1], k)
    return values.reshape(shape), indices.reshape(shape)


def nms(
    boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, score_threshold: float
) -> NDArray[np.int64]:
    """Greedy NMS over x1,y1,x2,y2 boxes: kept indices by descending score (ties: lower first)."""
    b = _float(boxes)
    s = _float(scores)
    out: NDArray[np.int64] = _nms(
        b.reshape(b.size // 4, 4) if b.ndim != 2 else b,
        s.ravel(),
        float(iou_threshold),
        float(score_threshold),
    )
    return out
