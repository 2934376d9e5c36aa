"""Binning kernels: bucketize, the per-feature histograms the drift monitor counts its
windows with, and its counts of each row's argmax class."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from kernels.compiled.signature import _f64, _float, _jit, _require_ndim


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
