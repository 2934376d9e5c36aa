"""NumPy reference implementations: the definition each Numba kernel is tested against."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def standardize(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> NDArray[np.float32]:
    """((x - mean) / std) as float32, mean and std per column."""
    out: NDArray[np.float32] = ((np.asarray(x) - mean) / np.asarray(std)).astype(np.float32)
    return out


def normalize_image(img: NDArray[np.uint8], mean: ArrayLike, std: ArrayLike) -> NDArray[np.float32]:
    """uint8 NHWC -> float32 NCHW: (img / 255 - mean[c]) / std[c]."""
    out = (img / 255 - np.asarray(mean)) / np.asarray(std)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def _axis_weights(size_in: int, size_out: int) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any]]:
    """Half-pixel source indices and weights along one axis, clamped as OpenCV does."""
    src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    return lo, hi, np.where(lo < size_in - 1, src - lo, 0.0)


def resize_bilinear(img: NDArray[Any], height: int, width: int) -> NDArray[np.float32]:
    """NHWC bilinear resize with half-pixel centres (OpenCV INTER_LINEAR); float32 out."""
    y0, y1, wy = _axis_weights(img.shape[1], height)
    x0, x1, wx = _axis_weights(img.shape[2], width)
    src = img.astype(np.float64)
    wx = wx[None, None, :, None]
    top = src[:, y0][:, :, x0] * (1 - wx) + src[:, y0][:, :, x1] * wx
    bottom = src[:, y1][:, :, x0] * (1 - wx) + src[:, y1][:, :, x1] * wx
    wy = wy[None, :, None, None]
    out: NDArray[np.float32] = (top * (1 - wy) + bottom * wy).astype(np.float32)
    return out


def one_hot(codes: ArrayLike, n: int) -> NDArray[np.float32]:
    """int codes [N] -> float32 [N, n]; a code outside 0..n-1 gives an all-zero row."""
    codes = np.asarray(codes)
    out = np.zeros((codes.shape[0], n), np.float32)
    valid = (codes >= 0) & (codes < n)
    out[np.nonzero(valid)[0], codes[valid]] = 1
    return out


def bucketize(x: ArrayLike, edges: ArrayLike) -> NDArray[np.intp]:
    """np.digitize(x, edges) for increasing edges."""
    out: NDArray[np.intp] = np.digitize(np.asarray(x), np.asarray(edges))
    return out


def softmax(x: ArrayLike, axis: int = -1) -> NDArray[np.float32]:
    """Softmax in float32 with the maximum subtracted first."""
    x32 = np.asarray(x, np.float32)
    e = np.exp(x32 - x32.max(axis=axis, keepdims=True))
    out: NDArray[np.float32] = e / e.sum(axis=axis, keepdims=True)
    return out


_ONE = np.float32(1)


def sigmoid(x: ArrayLike) -> NDArray[np.float32]:
    """Logistic function in float32: 1 / (1 + exp(-x)) in four SIMD passes over one output
    buffer, no temporaries. Below x = -88.7, exp(-x) overflows to inf and the result is 0
    (the exact value is under 3e-39): that overflow is the answer, not an error."""
    x32 = np.asarray(x, np.float32)
    out = np.negative(x32, out=np.empty_like(x32))  # an array even for a 0-d x
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    np.add(out, _ONE, out=out)  # `out += 1` parses its arguments more slowly
    return np.reciprocal(out, out=out)


def topk(x: NDArray[Any], k: int) -> tuple[NDArray[Any], NDArray[np.int64]]:
    """The k largest along the last axis, descending; ties keep the lower index, NaN ranks last."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    # A stable sort of -x puts ties in index order and NaN (still NaN) at the end.
    idx = np.argsort(-x, axis=-1, kind="stable")[..., :k].astype(np.int64)
    return np.take_along_axis(x, idx, axis=-1), idx


def _iou(boxes: NDArray[np.float64], areas: NDArray[np.float64], i: int, rest: NDArray[Any]) -> Any:
    """IoU of box i with each box in rest; 0 where the union is empty."""
    xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
    yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
    xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
    yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
    inter = np.maximum(0.0, xx2 - xx1) * np.maximum(0.0, yy2 - yy1)
    union = areas[i] + areas[rest] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(
    boxes: ArrayLike, scores: ArrayLike, iou_threshold: float, score_threshold: float
) -> NDArray[np.int64]:
    """Greedy NMS over x1,y1,x2,y2 boxes: kept indices by descending score (ties: lower first).

    Boxes scoring <= score_threshold are dropped; a box is suppressed by IoU > iou_threshold.
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    s = np.asarray(scores, np.float64)
    areas = np.maximum(0.0, b[:, 2] - b[:, 0]) * np.maximum(0.0, b[:, 3] - b[:, 1])
    order = np.nonzero(s > score_threshold)[0]
    order = order[np.argsort(-s[order], kind="stable")]
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[~(_iou(b, areas, i, rest) > iou_threshold)]
    return np.asarray(keep, np.int64)


def histogram(x: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """x [N, F], edges [F, B+1] -> counts [F, B+2]; bin 0 underflow, B+1 overflow, NaN skipped."""
    x2 = np.asarray(x)
    e = np.asarray(edges)
    counts = np.zeros((e.shape[0], e.shape[1] + 1), np.int64)
    for f in range(e.shape[0]):
        col = x2[:, f]
        col = col[~np.isnan(col)]
        counts[f] = np.bincount(np.searchsorted(e[f], col, side="right"), minlength=e.shape[1] + 1)
    return counts
