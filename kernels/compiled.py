"""Numba kernels (serial, nogil, cached) with typed wrappers that normalise their inputs.

The wrappers cast to one dtype and C order per kernel, so that a request never meets a new
signature (and a compile) that `warm_up` did not.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

# error_model="numpy": a float division by zero gives inf/nan as in NumPy instead of raising.
_jit = numba.njit(nogil=True, cache=True, error_model="numpy")


def _standardize_loop(
    x: NDArray[Any], mean: NDArray[np.float64], std: NDArray[np.float64], out: NDArray[np.float32]
) -> NDArray[np.float32]:
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (x[i, j] - mean[j]) / std[j]
    return out


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


def _one_hot_loop(codes: NDArray[np.int64], n: int) -> NDArray[np.float32]:
    out = np.zeros((codes.shape[0], n), np.float32)
    for i in range(codes.shape[0]):
        if 0 <= codes[i] < n:
            out[i, codes[i]] = 1
    return out


def _search_right_loop(edges: NDArray[np.float64], v: float) -> int:
    lo, hi = 0, edges.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        # `not v < e` rather than `e <= v`: NaN then sorts after every edge, as in NumPy.
        if v < edges[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


_search_right = _jit(_search_right_loop)


def _bucketize_loop(x: NDArray[Any], edges: NDArray[np.float64]) -> NDArray[np.int64]:
    out = np.empty(x.shape[0], np.int64)
    for i in range(x.shape[0]):
        out[i] = _search_right(edges, x[i])
    return out


def _histogram_columns_loop(
    x: NDArray[Any], edges: NDArray[np.float64], counts: NDArray[np.int64]
) -> None:
    # Rows as the vector lanes, for few features and many rows. Counted per edge instead of
    # searched per value: for sorted edges, the bin of v is the number of edges <= v, so bin k
    # holds (values >= edge k-1) - (values >= edge k). Each count is a branch-free reduction
    # over one column that LLVM vectorises, where a binary search per value branches
    # unpredictably and its increments hit the same few counters (3x faster at 256 rows x 32
    # features). NaN is >= nothing and is left out of `valid`.
    n, features = x.shape
    n_edges = edges.shape[1]
    col = np.empty(n, np.float64)
    for f in range(features):
        valid = 0
        for i in range(n):
            v = np.float64(x[i, f])
            col[i] = v
            valid += v == v
        above = valid
        for k in range(n_edges):
            edge = edges[f, k]
            at_least = 0
            for i in range(n):
                at_least += col[i] >= edge
            counts[f, k] += above - at_least
            above = at_least
        counts[f, n_edges] += above


def _edges_up32_loop(edges: NDArray[np.float64]) -> NDArray[np.float32]:
    """edges [F, K] -> [K, F] float32, each rounded up to the nearest float32 >= it.

    For a float32 v and a float64 edge e, v >= e exactly when v >= up(e), so the compares can
    run on float32 lanes (twice as many per instruction) without changing a single bin. One
    step up is one step of the bit pattern away from zero for a positive float and towards it
    for a negative one (-inf steps to -max); from either zero it is the smallest subnormal.
    Done on the bits because np.nextafter is a libm call per edge (1.5 against 1.1 µs for
    32 x 11 edges)."""
    features, n_edges = edges.shape
    out = np.empty((n_edges, features), np.float32)
    bits = out.view(np.int32)
    for f in range(features):
        for k in range(n_edges):
            e = edges[f, k]
            r = np.float32(e)
            out[k, f] = r
            if np.float64(r) < e:  # never true for NaN, nor for r = +inf
                if r == 0:
                    bits[k, f] = 1
                elif r > 0:
                    bits[k, f] += 1
                else:
                    bits[k, f] -= 1
    return out


def _histogram_rows_loop(x: NDArray[Any], edges_t: NDArray[Any], counts: NDArray[np.int64]) -> None:
    # Features as the vector lanes, for the usual drift batch (tens of features, up to a few
    # hundred rows): one row's features against one edge are one masked compare, and eight rows
    # are summed before their counter is loaded and stored, which amortises that memory
    # traffic and the loop's entry checks (2.3x faster than the column layout at 256 x 32).
    # edges_t is [K, F] in x's dtype; int32 counters are two vector lanes per int64 one.
    n, features = x.shape
    n_edges = edges_t.shape[0]
    at_least = np.zeros((n_edges + 1, features), np.int32)  # last row: the non-NaN count
    valid = at_least[n_edges]
    whole = n - n % 8
    for i in range(0, whole, 8):
        block = x[i : i + 8]
        for f in range(features):
            s = np.int32(0)
            for j in range(8):  # constant trip count: LLVM unrolls it, then vectorises over f
                s += block[j, f] == block[j, f]
            valid[f] += s
        for k in range(n_edges):
            acc = at_least[k]
            edge = edges_t[k]
            for f in range(features):
                e = edge[f]
                s = np.int32(0)
                for j in range(8):
                    s += block[j, f] >= e
                acc[f] += s
    for i in range(whole, n):
        _count_row(x[i], edges_t, at_least)
    _add_bins(at_least, counts)


def _count_row_loop(row: NDArray[Any], edges_t: NDArray[Any], at_least: NDArray[np.int32]) -> None:
    n_edges = edges_t.shape[0]
    valid = at_least[n_edges]
    for f in range(row.shape[0]):
        valid[f] += row[f] == row[f]
    for k in range(n_edges):
        acc = at_least[k]
        edge = edges_t[k]
        for f in range(row.shape[0]):
            acc[f] += row[f] >= edge[f]


def _add_bins_loop(at_least: NDArray[np.int32], counts: NDArray[np.int64]) -> None:
    """[K + 1, F] counts of values >= each edge (last row: non-NaN), added to bins [F, K + 1]."""
    n_edges = at_least.shape[0] - 1
    for f in range(at_least.shape[1]):
        above = np.int64(at_least[n_edges, f])
        for k in range(n_edges):
            counts[f, k] += above - at_least[k, f]
            above = np.int64(at_least[k, f])
        counts[f, n_edges] += above


def _argmax_add_loop(scores: NDArray[Any], counts: NDArray[np.int64]) -> None:
    # Each row's first maximum, or its first NaN, as np.argmax picks.
    for i in range(scores.shape[0]):
        best = 0
        top = scores[i, 0]
        if top == top:
            for j in range(1, scores.shape[1]):
                v = scores[i, j]
                if v != v:
                    best = j
                    break
                if v > top:
                    top = v
                    best = j
        counts[best] += 1


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


def _sigmoid_loop(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        z = np.float32(math.exp(-abs(x[i])))
        out[i] = 1 / (1 + z) if x[i] >= 0 else z / (1 + z)
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


_standardize = _jit(_standardize_loop)
_normalize_image = _jit(_normalize_image_loop)
_resize_bilinear = _jit(_resize_bilinear_loop)
_one_hot = _jit(_one_hot_loop)
_bucketize = _jit(_bucketize_loop)
_histogram_columns = _jit(_histogram_columns_loop)
_histogram_rows = _jit(_histogram_rows_loop)
_edges_up32 = _jit(_edges_up32_loop)
_count_row = _jit(_count_row_loop)
_add_bins = _jit(_add_bins_loop)
_argmax_add = _jit(_argmax_add_loop)


# The edges are transposed inside compiled code: one dispatch from Python instead of two
# (3.4 to 2.1 µs for one row).
@_jit
def _histogram_rows_f32(
    x: NDArray[np.float32], edges: NDArray[np.float64], counts: NDArray[np.int64]
) -> None:
    _histogram_rows(x, _edges_up32(edges), counts)


@_jit
def _histogram_rows_f64(
    x: NDArray[np.float64], edges: NDArray[np.float64], counts: NDArray[np.int64]
) -> None:
    _histogram_rows(x, np.ascontiguousarray(edges.T), counts)


_softmax = _jit(_softmax_loop)
_sigmoid = _jit(_sigmoid_loop)
_topk = _jit(_topk_loop)
_nms = _jit(_nms_loop)


def _float(x: ArrayLike) -> NDArray[Any]:
    """float32 and float64 pass through; anything else becomes float64. Always C order."""
    a = np.asarray(x)
    if a.dtype.char in "fd" and a.flags.c_contiguous:
        return a  # the common case, checked in about a third of the time the general one takes
    return np.ascontiguousarray(a, a.dtype if a.dtype.char in "fd" else np.float64)


def _f64(x: ArrayLike) -> NDArray[np.float64]:
    return np.ascontiguousarray(x, np.float64)


def _output(shape: tuple[int, ...]) -> NDArray[np.float32]:
    """A large output allocated by NumPy rather than inside the kernel: NumPy asks the kernel
    for transparent huge pages (madvise), so the first touch of each page costs far less.
    normalize_image at 64 x 224 x 224 x 3 went from 20.7 to 7.4 ms this way."""
    return np.empty(shape, np.float32)


def _per_index(values: ArrayLike, n: int, what: str) -> NDArray[np.float64]:
    """One float64 per column or channel; a single value applies to all.

    The loops index these without bounds checks, so a short array must be refused here.
    """
    a = _f64(values).ravel()
    if a.size == 1 and n != 1:
        return np.full(n, a[0])
    if a.size != n:
        raise ValueError(f"{what} has {a.size} values, expected 1 or {n}")
    return a


def _require_ndim(a: NDArray[Any], ndim: int, what: str) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {list(a.shape)}")


def standardize(x: ArrayLike, mean: ArrayLike, std: ArrayLike) -> NDArray[np.float32]:
    """((x - mean) / std) as float32, mean and std per column (last axis)."""
    xf = _float(x)
    n = xf.shape[-1]
    rows = xf.reshape(math.prod(xf.shape[:-1]), n)
    out: NDArray[np.float32] = _standardize(
        rows, _per_index(mean, n, "mean"), _per_index(std, n, "std"), _output(rows.shape)
    )
    return out.reshape(xf.shape)


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


def one_hot(codes: ArrayLike, n: int) -> NDArray[np.float32]:
    """int codes [N] -> float32 [N, n]; a code outside 0..n-1 gives an all-zero row."""
    a = np.ascontiguousarray(codes, np.int64)
    _require_ndim(a, 1, "one_hot's codes")
    if n < 0:
        raise ValueError(f"one_hot needs n >= 0, got {n}")
    out: NDArray[np.float32] = _one_hot(a, n)
    return out


def bucketize(x: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """np.digitize(x, edges) for increasing edges, any shape of x."""
    xf = _float(x)
    out: NDArray[np.int64] = _bucketize(xf.ravel(), _f64(edges))
    return out.reshape(xf.shape)


_INT32_MAX = 2**31 - 1


def histogram(x: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """x [N, F], edges [F, B+1] -> counts [F, B+2]; bin 0 underflow, B+1 overflow, NaN skipped."""
    xf, e = _histogram_args(x, edges)
    out = np.zeros((e.shape[0], e.shape[1] + 1), np.int64)
    _histogram_add(xf, e, out)
    return out


def histogram_add(x: ArrayLike, edges: ArrayLike, counts: NDArray[np.int64]) -> None:
    """Add histogram(x, edges) into counts, an int64 [F, B+2] C-order array (the drift
    monitor's open window), without allocating the counts of one batch."""
    xf, e = _histogram_args(x, edges)
    shape = (e.shape[0], e.shape[1] + 1)
    if counts.shape != shape or counts.dtype != np.int64 or not counts.flags.c_contiguous:
        raise ValueError(
            f"histogram counts must be a C-order int64 array of shape {list(shape)}, "
            f"got {counts.dtype} {list(counts.shape)}"
        )
    _histogram_add(xf, e, counts)


def _histogram_args(x: ArrayLike, edges: ArrayLike) -> tuple[NDArray[Any], NDArray[np.float64]]:
    xf = _float(x)
    e = _f64(edges)
    _require_ndim(xf, 2, "histogram's x")
    _require_ndim(e, 2, "histogram's edges")
    if e.shape[0] != xf.shape[1] or e.shape[1] < 1:
        raise ValueError(
            f"histogram edges {list(e.shape)} must be [F, B+1] for x of {xf.shape[1]} features"
        )
    return xf, e


def _histogram_add(x: NDArray[Any], edges: NDArray[np.float64], counts: NDArray[np.int64]) -> None:
    n, features = x.shape
    if (features < 8 and n >= 256) or n > _INT32_MAX:
        # Too few features to fill the vector lanes (4 x 4,096: 6.0x NumPy by columns, 4.9x by
        # rows), or more rows than an int32 counter holds.
        _histogram_columns(x, edges, counts)
    elif x.dtype.char == "f":
        _histogram_rows_f32(x, edges, counts)
    else:
        _histogram_rows_f64(x, edges, counts)


def argmax_add(scores: ArrayLike, counts: NDArray[np.int64]) -> None:
    """Add one to counts[argmax(row)] for each row of scores [N, C] (NaN wins, as in
    np.argmax); counts is int64 [C]."""
    s = _float(scores)
    _require_ndim(s, 2, "argmax_add's scores")
    if counts.shape != (s.shape[1],) or counts.dtype != np.int64 or s.shape[1] < 1:
        raise ValueError(
            f"argmax_add counts must be int64 [{s.shape[1]}] for scores of {s.shape[1]} "
            f"columns, got {counts.dtype} {list(counts.shape)}"
        )
    _argmax_add(s, counts)


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
