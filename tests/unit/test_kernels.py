"""Each Numba kernel against its NumPy reference, with Hypothesis over shapes, dtypes and edges."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernels
from kernels import compiled, reference

# Deterministic and quick for CI: fixed seed, no example database, no per-example deadline
# (the first example of each test pays the JIT compile).
CI = settings(deadline=None, max_examples=50, derandomize=True, database=None)
ROOT = Path(__file__).resolve().parents[2]

FLOATS = (np.float32, np.float64)
EDGE_VALUES = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, np.nan, np.inf, -np.inf)


def float_arrays(shape: Any, dtypes: tuple[Any, ...] = FLOATS) -> st.SearchStrategy[Any]:
    """Arrays mixing ordinary values with NaN, inf and repeated values (ties)."""
    return st.sampled_from(dtypes).flatmap(
        lambda dt: hnp.arrays(
            dt,
            shape,
            elements=st.one_of(
                st.sampled_from(EDGE_VALUES),
                st.floats(-1e6, 1e6, width=32),
            ),
        )
    )


def sorted_edges(size: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return hnp.arrays(np.float64, size, elements=st.floats(-10, 10, width=32)).map(np.sort)


def reference_of(fn: Callable[..., Any], *args: Any) -> Any:
    # NumPy warns on 0/0, inf-inf and the like; the kernels define those results, not errors.
    with np.errstate(all="ignore"):
        return fn(*args)


def assert_close(got: Any, want: Any) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype or (got.dtype.kind == want.dtype.kind == "i")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


@CI
@given(
    x=st.tuples(st.integers(0, 8), st.integers(1, 6)).flatmap(
        lambda s: float_arrays(s) | hnp.arrays(np.int64, s, elements=st.integers(-1000, 1000))
    ),
    data=st.data(),
)
def test_standardize(x: Any, data: st.DataObject) -> None:
    f = x.shape[1]
    mean = data.draw(hnp.arrays(np.float32, f, elements=st.floats(-100, 100, width=32)))
    std = data.draw(hnp.arrays(np.float32, f, elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])))
    want = reference_of(reference.standardize, x, mean, std)
    assert_close(compiled.standardize(x, mean, std), want)
    assert_close(reference_of(kernels.standardize, x, mean, std), want)


@CI
@given(
    img=hnp.arrays(
        np.uint8, st.tuples(st.integers(0, 3), st.integers(1, 5), st.integers(1, 5), st.just(3))
    ),
    mean=hnp.arrays(np.float32, 3, elements=st.floats(0, 1, width=32)),
    std=hnp.arrays(np.float32, 3, elements=st.floats(0.0625, 2, width=32)),
)
def test_normalize_image(img: Any, mean: Any, std: Any) -> None:
    want = reference.normalize_image(img, mean, std)
    assert want.flags.c_contiguous
    # The lookup table is computed with the reference's float64 arithmetic: bit-identical.
    np.testing.assert_array_equal(kernels.normalize_image(img, mean, std), want)


@CI
@given(
    shape=st.tuples(st.integers(0, 2), st.integers(1, 6), st.integers(1, 6), st.integers(1, 3)),
    size=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    dtype=st.sampled_from([np.uint8, np.float32]),
    data=st.data(),
)
def test_resize_bilinear(
    shape: Any, size: tuple[int, int], dtype: Any, data: st.DataObject
) -> None:
    elements = st.floats(-1e3, 1e3, width=32) if dtype == np.float32 else None
    img = data.draw(hnp.arrays(dtype, shape, elements=elements))
    assert_close(kernels.resize_bilinear(img, *size), reference.resize_bilinear(img, *size))


def test_resize_bilinear_matches_opencv_half_pixel_centres() -> None:
    # Upsampling [0, 10] to 4 pixels: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    img = np.array([0, 10], np.float32).reshape(1, 1, 2, 1)
    got = kernels.resize_bilinear(img, 1, 4)
    np.testing.assert_allclose(got.ravel(), [0.0, 2.5, 7.5, 10.0])


@CI
@given(
    n=st.integers(1, 6),
    dtype=st.sampled_from([np.int32, np.int64]),
    length=st.integers(0, 10),
    data=st.data(),
)
def test_one_hot(n: int, dtype: Any, length: int, data: st.DataObject) -> None:
    codes = data.draw(hnp.arrays(dtype, length, elements=st.integers(-3, n + 3)))
    np.testing.assert_array_equal(kernels.one_hot(codes, n), reference.one_hot(codes, n))


@CI
@given(
    x=hnp.array_shapes(min_dims=1, max_dims=2, min_side=0, max_side=6).flatmap(float_arrays),
    edges=sorted_edges(st.integers(1, 8)),
)
def test_bucketize(x: Any, edges: Any) -> None:
    want = reference.bucketize(x, edges)
    np.testing.assert_array_equal(kernels.bucketize(x, edges), want)
    assert kernels.bucketize(x, edges).shape == want.shape


def histogram_edges(n: int) -> st.SearchStrategy[Any]:
    """Sorted float64 edges, many of them between two float32 values, some infinite or beyond
    float32's range (the float32 layout rounds them up)."""
    elements = st.one_of(
        st.floats(-10, 10, width=32),
        st.floats(-10, 10),
        st.sampled_from([-np.inf, np.inf, 1e300, -1e300]),
    )
    return hnp.arrays(np.float64, n, elements=elements).map(np.sort)


def histogram_layouts(x: Any, edges: Any) -> dict[str, Any]:
    """The public kernel, each of its two layouts whichever the shape would pick, and
    histogram_add into counts that already hold one in every bin."""
    xf = compiled._float(x)
    shape = (edges.shape[0], edges.shape[1] + 1)
    columns, rows, added = (
        np.zeros(shape, np.int64),
        np.zeros(shape, np.int64),
        np.ones(shape, np.int64),
    )
    compiled._histogram_columns(xf, edges, columns)
    by_rows = (
        compiled._histogram_rows_f32 if xf.dtype == np.float32 else compiled._histogram_rows_f64
    )
    by_rows(xf, edges, rows)
    compiled.histogram_add(x, edges, added)
    return {
        "public": kernels.histogram(x, edges),
        "columns": columns,
        "rows": rows,
        "add": added - 1,
    }


@CI
@given(
    # Up to 20 rows: the rows layout sums blocks of 8 and then a remainder.
    x=st.tuples(st.integers(0, 20), st.integers(1, 12)).flatmap(float_arrays),
    bins=st.integers(1, 6),
    data=st.data(),
)
def test_histogram(x: Any, bins: int, data: st.DataObject) -> None:
    edges = np.stack([data.draw(histogram_edges(bins + 1)) for _ in range(x.shape[1])])
    want = reference.histogram(x, edges)
    for layout, got in histogram_layouts(x, edges).items():
        np.testing.assert_array_equal(got, want, err_msg=layout)
        assert got.dtype == np.int64
    got = kernels.histogram(x, edges)
    assert got.sum() == np.count_nonzero(~np.isnan(x))


@pytest.mark.parametrize("dtype", FLOATS)
def test_histogram_edges_between_float32_values(dtype: Any) -> None:
    """1.0 lies above 1 - 1e-12 and below 1 + 1e-12. Rounding the edges to the nearest
    float32 (1.0 both) would put it in the wrong bin; rounding up does not."""
    x = np.full((300, 8), 1.0, dtype)
    x[::3] = 0.5
    edges = np.tile([-np.inf, 1 - 1e-12, 1.0, 1 + 1e-12, 1e300], (8, 1))
    want = reference.histogram(x, edges)
    assert want[0].tolist() == [0, 100, 0, 200, 0, 0]
    for layout, got in histogram_layouts(x, edges).items():
        np.testing.assert_array_equal(got, want, err_msg=layout)


def test_edges_rounded_up_to_float32() -> None:
    """Each edge becomes the smallest float32 at or above it, also at zero, the subnormals,
    beyond float32's range and at the infinities, and transposed to [K, F]."""
    edges = np.array(
        [-np.inf, -1e300, -3.5e38, -1.0 - 1e-12, -1e-50, -0.0, 0.0, 1e-50, 1e-40, 1 - 1e-12,
         1.0, 1 + 1e-12, 3.5e38, 1e300, np.inf, np.nan]
    )  # fmt: skip
    with np.errstate(over="ignore"):
        nearest = edges.astype(np.float32)
    want = np.where(nearest < edges, np.nextafter(nearest, np.float32(np.inf)), nearest)
    got = compiled._edges_up32(np.stack([edges, edges[::-1]]))
    np.testing.assert_array_equal(got, np.stack([want, want[::-1]]).T)
    numbers = ~np.isnan(edges)
    assert (got[numbers, 0].astype(np.float64) >= edges[numbers]).all()


@CI
@given(scores=st.tuples(st.integers(0, 12), st.integers(1, 5)).flatmap(float_arrays))
def test_argmax_add_counts_what_np_argmax_picks(scores: Any) -> None:
    """Ties go to the first maximum and NaN wins, as in np.argmax."""
    counts = np.full(scores.shape[1], 2, np.int64)
    compiled.argmax_add(scores, counts)
    want = np.bincount(np.argmax(scores, axis=1), minlength=scores.shape[1]) if len(scores) else 0
    np.testing.assert_array_equal(counts, want + 2)


def test_histogram_many_rows_few_features() -> None:
    x = np.random.default_rng(0).normal(size=(4096, 2))
    edges = np.tile(np.linspace(-2, 2, 11), (2, 1))
    np.testing.assert_array_equal(kernels.histogram(x, edges), reference.histogram(x, edges))


@CI
@given(
    x=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6).flatmap(float_arrays),
    data=st.data(),
)
def test_softmax(x: Any, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    want = reference_of(reference.softmax, x, axis)
    assert_close(compiled.softmax(x, axis), want)
    assert_close(reference_of(kernels.softmax, x, axis), want)


@CI
@given(x=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6).flatmap(float_arrays))
def test_sigmoid(x: Any) -> None:
    want = reference.sigmoid(x)
    assert_close(compiled.sigmoid(x), want)
    assert_close(kernels.sigmoid(x), want)


SIGMOID_EDGES = [np.nan, np.inf, -np.inf, 1e6, -1e6, 100.0, -100.0, 88.5, -88.5, 0.0, -0.0]


@pytest.mark.parametrize("n", [1, 80, 1023, 1024, 1025, 5120, 256_000])
def test_sigmoid_is_the_logistic_to_float32_precision_at_every_size(n: int) -> None:
    # Against float64, at the sizes of the record below and between. Below x = -87 the exact
    # value is under 1.7e-38 (subnormal or less) and an implementation may answer 0.
    x = np.random.default_rng(n).normal(0, 20, n).astype(np.float32)
    x[: len(SIGMOID_EDGES)] = SIGMOID_EDGES[:n]
    with np.errstate(over="ignore"):
        want = 1 / (1 + np.exp(-x.astype(np.float64)))
    for fn in (kernels.sigmoid, compiled.sigmoid, reference.sigmoid):
        got = fn(x)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-38, equal_nan=True)


def test_sigmoid_runs_the_side_measured_faster() -> None:
    """The public op against benchmarks/kernel_speed.py's record, not a clock: at each measured
    size where one side was clearly faster (by a quarter), its answer is that side's, bit for
    bit (the two round differently). Rerun the benchmark on a new machine and this says whether
    the choice still holds there."""
    record = json.loads((ROOT / "benchmarks" / "results" / "kernels.json").read_text())
    sides = {"numpy_us": reference.sigmoid, "numba_us": compiled.sigmoid}
    checked = 0
    for row in record["sigmoid_sizes"]:
        faster, slower = sorted(sides, key=lambda side: row[side])
        if row[slower] < 1.25 * row[faster]:
            continue
        x = np.random.default_rng(0).normal(0, 4, row["shape"]).astype(np.float32)
        got = kernels.sigmoid(x)
        assert not np.array_equal(sides[slower](x), sides[faster](x))  # the check can tell
        assert np.array_equal(got, sides[faster](x)), f"{row}: not the {faster[:5]} side"
        checked += 1
    assert checked >= len(record["sigmoid_sizes"]) // 2
    assert {row["shape"][0] * row["shape"][1] for row in record["sigmoid_sizes"]} >= {
        80,
        256 * 1000,
    }


@CI
@given(
    # min_side 0: empty rows and empty batches are shapes the classification path sends.
    x=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=10).flatmap(
        lambda s: st.sampled_from(FLOATS).flatmap(
            lambda dt: hnp.arrays(dt, s, elements=st.sampled_from(EDGE_VALUES))
        )
    ),
    k=st.integers(0, 12),
)
def test_topk(x: Any, k: int) -> None:
    want_values, want_indices = reference.topk(x, k)
    values, indices = kernels.topk(x, k)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(values, want_values)
    assert values.dtype == x.dtype


def test_topk_rejects_negative_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        kernels.topk(np.zeros(3), -1)


@st.composite
def detections(draw: st.DrawFn) -> tuple[Any, Any]:
    n = draw(st.integers(0, 12))
    corner = draw(hnp.arrays(np.float32, (n, 2), elements=st.integers(0, 30).map(float)))
    # Zero sizes give empty boxes; repeated corners give identical boxes and exact IoU ties.
    size = draw(hnp.arrays(np.float32, (n, 2), elements=st.sampled_from([0.0, 5.0, 10.0, 20.0])))
    scores = draw(
        hnp.arrays(np.float32, n, elements=st.sampled_from([0.1, 0.5, 0.9, 0.9, np.nan, np.inf]))
    )
    return np.hstack([corner, corner + size]), scores


@CI
@given(
    dets=detections(),
    iou_threshold=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    score_threshold=st.sampled_from([-1.0, 0.1, 0.5]),
)
def test_nms(dets: tuple[Any, Any], iou_threshold: float, score_threshold: float) -> None:
    boxes, scores = dets
    want = reference.nms(boxes, scores, iou_threshold, score_threshold)
    np.testing.assert_array_equal(kernels.nms(boxes, scores, iou_threshold, score_threshold), want)


def test_nms_suppresses_overlap_and_orders_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], np.float32)
    np.testing.assert_array_equal(kernels.nms(boxes, scores, 0.5, 0.1), [3, 2])


def test_registry_names_every_public_kernel() -> None:
    assert set(kernels.KERNELS) == {
        "standardize", "normalize_image", "resize_bilinear", "one_hot", "bucketize",
        "softmax", "sigmoid", "topk", "nms", "histogram",
    }  # fmt: skip
    for name, fn in kernels.KERNELS.items():
        assert fn is getattr(kernels, name)


def test_warm_up_runs() -> None:
    kernels.warm_up()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: compiled.standardize(np.zeros((2, 3)), np.zeros(2), np.ones(3)), "mean has 2"),
        (lambda: compiled.standardize(np.zeros((2, 3)), np.zeros(3), np.ones(4)), "std has 4"),
        (
            lambda: compiled.normalize_image(np.zeros((1, 2, 2, 3), np.uint8), [0, 0], [1, 1, 1]),
            "mean has 2 values, expected 1 or 3",
        ),
        (lambda: compiled.normalize_image(np.zeros((2, 2, 3), np.uint8), 0, 1), "4 dimensions"),
        (lambda: compiled.resize_bilinear(np.zeros((2, 2, 3)), 2, 2), "4 dimensions"),
        (lambda: compiled.resize_bilinear(np.zeros((1, 2, 2, 3)), 0, 2), "positive size"),
        (lambda: compiled.one_hot(np.zeros((2, 1), np.int64), 3), "1 dimensions"),
        (lambda: compiled.one_hot(np.zeros(2, np.int64), -1), "n >= 0"),
        (lambda: compiled.histogram(np.zeros((4, 3)), np.zeros((2, 5))), r"\[F, B\+1\]"),
        (lambda: compiled.histogram(np.zeros(4), np.zeros((1, 5))), "2 dimensions"),
        (
            lambda: compiled.histogram_add(
                np.zeros((4, 3)), np.zeros((3, 5)), np.zeros((3, 5), np.int64)
            ),
            r"int64 array of shape \[3, 6\]",
        ),
        (
            lambda: compiled.histogram_add(np.zeros((4, 3)), np.zeros((3, 5)), np.zeros((3, 6))),
            "got float64",
        ),
        (lambda: compiled.argmax_add(np.zeros((4, 3)), np.zeros(2, np.int64)), r"int64 \[3\]"),
        (lambda: compiled.argmax_add(np.zeros(4), np.zeros(4, np.int64)), "2 dimensions"),
    ],
)
def test_kernels_refuse_shapes_they_would_read_past(call: Any, match: str) -> None:
    """The loops run without bounds checks: a short mean or edges array must not reach them."""
    with pytest.raises(ValueError, match=match):
        call()


def test_a_single_mean_and_std_apply_to_every_column() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(compiled.standardize(x, 1.0, [2.0]), (x - 1) / 2)
