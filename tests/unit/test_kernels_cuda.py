"""The device kernels (kernels/cuda.py) against their NumPy reference, with Hypothesis.

They run in Numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1), which runs
each GPU thread as a Python thread: shapes stay small. With CONVEYOR_REAL_CUDA=1 on a GPU
machine the same tests run on the device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numba import cuda

import kernels
from kernels import cuda as device
from kernels import reference
from tests.unit.test_kernels import EDGE_VALUES, FLOATS, assert_close, float_arrays, reference_of

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

pytestmark = [
    pytest.mark.skipif(not cuda.is_available(), reason="no CUDA device and no simulator"),
    # In the simulator, kernel arithmetic is NumPy scalar arithmetic, which warns on inf - inf,
    # x / 0 and float32 overflow where the device silently gives IEEE results.
    pytest.mark.filterwarnings(
        "ignore:(invalid value|overflow|divide by zero) encountered:RuntimeWarning"
    ),
    # On a device, numba warns about every grid under 128 blocks: a small batch is one.
    pytest.mark.filterwarnings("ignore:Grid size .* under-utilization"),
]

# Fixed seed and no database, as in test_kernels; fewer examples, as the simulator is slow.
SIM = settings(deadline=None, max_examples=30, derandomize=True, database=None)


@pytest.fixture(autouse=True, scope="module")
def _short_switch_interval() -> Iterator[None]:
    """The simulator polls its threads at each syncthreads while holding the GIL; a short
    switch interval lets the waiting threads run sooner (several times faster here)."""
    before = sys.getswitchinterval()
    if SIMULATED:
        sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(before)


def _atomic_shared_arrays() -> Callable[[], None]:
    """Make the simulator give every thread of a block the same shared array; returns the undo.

    numba-cuda's simulator (0.30) makes a block's shared array when the first of its threads
    asks: it looks the caller's line up in a dict and, finding nothing, makes the array and
    stores it. Its threads are Python threads, so two that look before either stores each make
    their own, and the block's reduction splits (softmax once gave [0.5, inf, 0.5, 0.5] for a
    row of four equal values, in a CI run). The same lookup by the caller's file and line, with
    the look and the store under one lock. Device runs are untouched: the simulator only.
    """
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    shared = kernelapi.FakeCUDAShared
    original = shared.array
    lock = threading.Lock()

    def array(self: Any, shape: Any, dtype: Any, alignment: Any = None) -> Any:
        if shape == 0 or alignment is not None:  # dynamic shared memory, or refused: as before
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            found = self._allocations.get(key)
            if found is None:
                found = self._allocations[key] = kernelapi.np.empty(shape, dtype)
        return found

    shared.array = array

    def undo() -> None:
        shared.array = original

    return undo


@pytest.fixture(autouse=True, scope="module")
def _one_shared_array_per_block() -> Iterator[None]:
    undo = _atomic_shared_arrays() if SIMULATED else None
    yield
    if undo is not None:
        undo()


def on_device(a: Any) -> Any:
    return cuda.to_device(np.ascontiguousarray(a))


def host(d: Any) -> Any:
    return d.copy_to_host()


def per_column(n: int, elements: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    """n float64 values, or a single one that applies to every column."""
    return st.sampled_from([n, 1]).flatmap(
        lambda size: hnp.arrays(np.float64, size, elements=elements)
    )


@SIM
@given(
    x=st.tuples(st.integers(0, 6), st.integers(1, 12)).flatmap(float_arrays),
    data=st.data(),
)
def test_standardize(x: Any, data: st.DataObject) -> None:
    mean = data.draw(per_column(x.shape[1], st.floats(-100, 100, width=32)))
    std = data.draw(per_column(x.shape[1], st.sampled_from([0.0, 0.5, 1.0, 3.0])))
    args = device.upload({"mean": mean, "std": std})
    got = host(device.standardize(on_device(x), args["mean"], args["std"]))
    # Same float64 arithmetic and one rounding: bit-identical.
    np.testing.assert_array_equal(got, reference_of(reference.standardize, x, mean, std))
    assert got.dtype == np.float32


@SIM
@given(
    img=hnp.arrays(
        np.uint8,
        st.tuples(st.integers(0, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 3)),
    ),
    data=st.data(),
)
def test_normalize_image(img: Any, data: st.DataObject) -> None:
    mean = data.draw(per_column(img.shape[3], st.floats(0, 1, width=32)))
    std = data.draw(per_column(img.shape[3], st.floats(0.0625, 2, width=32)))
    args = device.upload({"mean": mean, "std": std})
    got = host(device.normalize_image(on_device(img), args["mean"], args["std"]))
    np.testing.assert_array_equal(got, reference.normalize_image(img, mean, std))
    assert got.dtype == np.float32


@SIM
@given(x=st.tuples(st.integers(0, 6), st.integers(1, 12)).flatmap(float_arrays))
def test_softmax(x: Any) -> None:
    assert_close(host(device.softmax(on_device(x))), reference_of(reference.softmax, x))


@SIM
@given(x=hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5).flatmap(float_arrays))
def test_sigmoid(x: Any) -> None:
    assert_close(host(device.sigmoid(on_device(x))), reference.sigmoid(x))


@SIM
@given(
    # Only edge values: many ties, NaN and infinities in every row.
    x=st.tuples(st.integers(0, 6), st.integers(0, 12)).flatmap(
        lambda s: st.sampled_from(FLOATS).flatmap(
            lambda dt: hnp.arrays(dt, s, elements=st.sampled_from(EDGE_VALUES))
        )
    ),
    k=st.integers(0, 12),
)
def test_topk(x: Any, k: int) -> None:
    values, indices = device.topk(on_device(x), k)
    want_values, want_indices = reference.topk(x, k)
    np.testing.assert_array_equal(host(indices), want_indices)
    np.testing.assert_array_equal(host(values), want_values)
    assert host(values).dtype == x.dtype


@pytest.mark.parametrize("columns", [33, 300])
def test_rows_longer_than_a_block(columns: int) -> None:
    """Rows over several warps, and wider than a block (300 > ROW_THREADS), where each thread
    reduces several elements before the tree."""
    rng = np.random.default_rng(columns)
    x = rng.normal(size=(2, columns)).astype(np.float32)
    x[1, ::7] = x[1, 0]  # ties across threads
    assert_close(host(device.softmax(on_device(x))), reference.softmax(x))
    values, indices = device.topk(on_device(x), 9)
    want_values, want_indices = reference.topk(x, 9)
    np.testing.assert_array_equal(host(indices), want_indices)
    np.testing.assert_array_equal(host(values), want_values)


def test_leading_axes_are_rows() -> None:
    """Arrays of more than two dimensions work along the last axis, as the CPU kernels do."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    mean = device.upload({"m": np.arange(4.0)})["m"]
    assert_close(host(device.softmax(on_device(x))), reference.softmax(x))
    assert_close(
        host(device.standardize(on_device(x), mean, mean)),
        reference.standardize(x, np.arange(4.0), np.arange(4.0)),
    )
    values, indices = device.topk(on_device(x), 2)
    np.testing.assert_array_equal(host(indices), reference.topk(x, 2)[1])
    assert host(values).shape == (2, 3, 2)


@pytest.mark.parametrize(
    ("call", "shape"),
    [
        (
            lambda x: device.standardize(x, *device.upload({"m": [0.0] * 5, "s": [1.0]}).values()),
            (0, 5),
        ),
        (lambda x: device.softmax(x), (0, 5)),
        (lambda x: device.sigmoid(x), (0, 5)),
        (lambda x: device.topk(x, 3)[1], (0, 3)),
    ],
)
def test_empty_batch(call: Callable[[Any], Any], shape: tuple[int, ...]) -> None:
    got = host(call(on_device(np.zeros((0, 5), np.float32))))
    assert got.shape == shape


def test_empty_image_batch() -> None:
    args = device.upload({"mean": [0.5, 0.5, 0.5], "std": [0.25]})
    img = on_device(np.zeros((0, 4, 5, 3), np.uint8))
    assert host(device.normalize_image(img, args["mean"], args["std"])).shape == (0, 3, 4, 5)


def test_runs_on_the_given_stream() -> None:
    stream = cuda.stream()
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(2, 6)
    out = device.sigmoid(cuda.to_device(x, stream=stream), stream=stream)
    got = out.copy_to_host(stream=stream)
    stream.synchronize()
    assert_close(got, reference.sigmoid(x))


def test_upload_converts_arrays_once_and_leaves_the_rest() -> None:
    already = cuda.to_device(np.ones(3))
    args = device.upload({"mean": [1, 2, 3], "std": 2.0, "n": 4, "dev": already})
    assert host(args["mean"]).dtype == np.float64
    np.testing.assert_array_equal(host(args["mean"]), [1.0, 2.0, 3.0])
    assert host(args["std"]).shape == (1,)
    assert args["n"] == 4
    assert args["dev"] is already


def test_launch_configuration() -> None:
    assert device.element_launch(1) == (1, 32)
    assert device.element_launch(33) == (1, 64)
    assert device.element_launch(1000) == (4, 256)
    assert [device.row_threads(c) for c in (1, 2, 5, 32, 33, 1000)] == [1, 2, 8, 32, 64, 128]


def test_device_kernels_are_cpu_kernels_with_a_device_version() -> None:
    assert set(kernels.KERNELS) >= device.DEVICE_KERNELS
    for name in device.DEVICE_KERNELS:
        assert callable(getattr(device, name))


def test_importing_needs_no_gpu() -> None:
    """Without a device or the simulator, kernels.cuda imports; kernels does not import it."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "import sys, kernels; assert 'kernels.cuda' not in sys.modules; "
        "import kernels.cuda; print(sorted(kernels.cuda.DEVICE_KERNELS))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "topk" in done.stdout


def _x(shape: tuple[int, ...] = (2, 3), dtype: Any = np.float32) -> Any:
    return cuda.to_device(np.zeros(shape, dtype))


def _f64(values: list[float]) -> Any:
    return on_device(np.asarray(values, np.float64))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: device.standardize(_x(), _f64([0, 0]), _f64([1, 1, 1])), ValueError, "mean has 2"),
        (lambda: device.standardize(_x(), _f64([0] * 3), _f64([1] * 4)), ValueError, "std has 4"),
        (
            lambda: device.standardize(_x(), on_device(np.zeros(3, np.float32)), _f64([1])),
            ValueError,
            "mean must be float64",
        ),
        (
            lambda: device.standardize(_x(dtype=np.int64), _f64([0]), _f64([1])),
            ValueError,
            "float32 or float64",
        ),
        (
            lambda: device.standardize(np.zeros((2, 3)), _f64([0]), _f64([1])),
            TypeError,
            "device array",
        ),
        (lambda: device.standardize(_x(), np.zeros(3), _f64([1])), TypeError, "device array"),
        (
            lambda: device.normalize_image(_x((1, 2, 2, 3), np.uint8), _f64([0, 0]), _f64([1])),
            ValueError,
            "mean has 2 values, expected 1 or 3",
        ),
        (
            lambda: device.normalize_image(_x((2, 2, 3), np.uint8), _f64([0]), _f64([1])),
            ValueError,
            "4 dimensions",
        ),
        (
            lambda: device.normalize_image(_x((1, 2, 2, 3)), _f64([0]), _f64([1])),
            ValueError,
            "uint8",
        ),
        (lambda: device.softmax(_x((2, 0))), ValueError, "at least one class"),
        (lambda: device.softmax(_x(())), ValueError, "2-D"),
        (lambda: device.softmax(_x((2, 3, 4))[:, :, ::2]), ValueError, "C-contiguous"),
        (lambda: device.sigmoid(_x((4, 4))[:, ::2]), ValueError, "C-contiguous"),
        (lambda: device.topk(_x(), -1), ValueError, "k must be"),
    ],
)
def test_shapes_the_kernels_would_read_past_are_refused(
    call: Callable[[], Any], error: type[Exception], match: str
) -> None:
    """The kernels index without bounds checks: a short mean or a bad shape never reaches them."""
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not SIMULATED, reason="a race of the simulator's, not of the device")
def test_a_blocks_threads_share_its_shared_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the simulator slow to make an array (every thread looks before one stores), the
    threads of a block still reduce over one array: a row of equal values gives 1/n each."""
    from numba.cuda.simulator import kernelapi

    class SlowEmpty:
        def __getattr__(self, name: str) -> Any:
            return getattr(np, name)

        @staticmethod
        def empty(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.002)  # lets the block's other threads run
            return np.empty(*args, **kwargs)

    monkeypatch.setattr(kernelapi, "np", SlowEmpty())
    x = np.zeros((2, 8), np.float32)
    np.testing.assert_allclose(host(device.softmax(on_device(x))), np.full_like(x, 1 / 8))


def test_threads_launch_at_once() -> None:
    """Several threads each run their own batches (the simulator takes them in turns)."""
    errors: list[str] = []

    def work(columns: int) -> None:
        x = np.random.default_rng(columns).normal(size=(3, columns)).astype(np.float32)
        for _ in range(3):
            got = host(device.softmax(on_device(x)))
            if not np.allclose(got, reference.softmax(x), rtol=1e-5, atol=1e-6):
                errors.append(f"{columns} columns: {got}")

    threads = [threading.Thread(target=work, args=(c,)) for c in (3, 9, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
