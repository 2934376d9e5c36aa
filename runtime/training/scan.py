"""Pass one over a data file: check every value, gather the statistics the model is built from,
hold rows out, and write the training rows to the cache the epochs read.

Each row is held out by a draw of its own: row i's is the i-th number of a PCG64 stream seeded
with the run's seed (`PCG64.advance` jumps to a batch's first row), so the split depends on the
seed and the row's position only, not on how the file is cut into batches. A draw under 0.1
puts the row in the test split, under 0.2 in the validation split; the rest train. Of each
held-out split up to HOLDOUT_ROWS rows are kept in memory (those with the smallest draws: a
uniform sample), and REFERENCE_ROWS training rows for the drift profile. The mean and std that
standardize the features are the training rows' only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from runtime.publish.errors import BadInput
from runtime.training.cache import CacheWriter
from runtime.training.table import Table

TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
HOLDOUT_ROWS = 100_000
REFERENCE_ROWS = 20_000
# Fewer held-out rows than this make the gate's figure noise.
MIN_HELD_OUT_ROWS = 10
MAX_CLASSES = 256
# Keeps the split's stream apart from any other use of the same seed.
_SPLIT_STREAM = 0x5B17


def cache_target_type(table: Table) -> pa.DataType:
    """How the cache stores targets: class codes (int64) or values (float64)."""
    return pa.int64() if table.task == "classification" else pa.float64()


def draws(seed: int, start: int, count: int) -> NDArray[np.float64]:
    """Rows start..start+count-1's draws in [0, 1): the same whatever the batches."""
    generator = np.random.PCG64(np.random.SeedSequence([seed, _SPLIT_STREAM]))
    # One double takes one 64-bit step of PCG64, so row i's draw is step i.
    generator.advance(start)
    return np.random.Generator(generator).random(count)


@dataclass(slots=True)
class Moments:
    """Running count, mean and sum of squared deviations per column (Chan et al.'s merge)."""

    width: int
    count: int = 0
    mean: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    m2: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def add(self, x: NDArray[np.float64]) -> None:
        if len(x) == 0:
            return
        n, mean = len(x), x.mean(axis=0)
        m2 = ((x - mean) ** 2).sum(axis=0)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> NDArray[np.float64]:
        """Population std per column; 0 where the column is constant."""
        if self.count == 0:
            return np.zeros(self.width)
        return np.sqrt(self.m2 / self.count)


class Smallest:
    """The `capacity` rows with the smallest keys seen: a uniform sample when the keys are
    uniform draws. Holds at most about twice the capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._keys: list[NDArray[np.float64]] = []
        self._x: list[NDArray[np.float32]] = []
        self._y: list[NDArray[Any]] = []
        self._held = 0
        self._bound = np.inf

    def add(self, keys: NDArray[np.float64], x: NDArray[np.float32], y: NDArray[Any]) -> None:
        keep = keys < self._bound
        if not keep.any():
            return
        self._keys.append(keys[keep])
        self._x.append(x[keep])
        self._y.append(y[keep])
        self._held += int(keep.sum())
        if self._held > 2 * self.capacity:
            self._compact()

    def _compact(self) -> None:
        keys = np.concatenate(self._keys)
        order = np.argsort(keys, kind="stable")[: self.capacity]
        self._keys = [keys[order]]
        self._x = [np.concatenate(self._x)[order]]
        self._y = [np.concatenate(self._y)[order]]
        self._held = len(order)
        if self._held == self.capacity:
            self._bound = float(self._keys[0][-1])

    def rows(self, width: int) -> tuple[NDArray[np.float32], NDArray[Any]]:
        """The kept rows in key order: features [n, width] and targets [n]."""
        if not self._keys:
            return np.zeros((0, width), np.float32), np.zeros(0)
        self._compact()
        return self._x[0], self._y[0]


class Labels:
    """Class labels as codes in first-seen order; `classes` sorts them at the end."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self._values: list[Any] = []
        self._index: dict[Any, int] = {}
        self.counts = np.zeros(0, np.int64)

    def codes(self, target: pa.Array) -> NDArray[np.int64]:
        for value in pc.unique(target).to_pylist():
            if value not in self._index:
                self._index[value] = len(self._values)
                self._values.append(value)
        if len(self._values) > MAX_CLASSES:
            raise BadInput(
                f"data '{self._table.path}': target '{self._table.target}' has more than "
                f"{MAX_CLASSES} distinct values, too many for classes (pass --task regression "
                "if it is a quantity)"
            )
        known = pa.array(self._values, type=self._table.target_type)
        found = pc.index_in(target, value_set=known).to_numpy(zero_copy_only=False)
        codes: NDArray[np.int64] = found.astype(np.int64)
        self.counts = np.bincount(codes, minlength=len(self._values)) + np.pad(
            self.counts, (0, len(self._values) - len(self.counts))
        )
        return codes

    def classes(self) -> tuple[list[Any], NDArray[np.int64]]:
        """(labels sorted, code -> index among the sorted labels)."""
        order = sorted(range(len(self._values)), key=lambda code: self._values[code])
        remap = np.empty(len(order), np.int64)
        remap[order] = np.arange(len(order))
        return [self._values[code] for code in order], remap


@dataclass(frozen=True, slots=True)
class Held:
    """Rows kept in memory: raw features [n, F] and targets [n] (class indices, or values)."""

    features: NDArray[np.float32]
    targets: NDArray[Any]

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True, slots=True)
class Scan:
    """What pass one learned. Targets in the cache are class codes (map them with `remap`)
    or values."""

    rows: int
    batches: int
    split_rows: dict[str, int]
    mean: NDArray[np.float32]
    std: NDArray[np.float32]
    validation: Held
    test: Held
    reference: NDArray[np.float32]
    # Classification: the labels, sorted, as in labels.txt; the rows of each.
    classes: tuple[str, ...] = ()
    class_rows: tuple[int, ...] = ()
    remap: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    # Regression: the training targets' mean and std.
    target_mean: float = 0.0
    target_std: float = 1.0


@dataclass(slots=True)
class _Pass:
    """The running state of pass one."""

    table: Table
    seed: int
    cache: CacheWriter
    features: Moments
    target: Moments = field(default_factory=lambda: Moments(1))
    labels: Labels | None = None
    rows: int = 0
    batches: int = 0
    split_rows: dict[str, int] = field(
        default_factory=lambda: {"train": 0, "validation": 0, "test": 0}
    )
    validation: Smallest = field(default_factory=lambda: Smallest(HOLDOUT_ROWS))
    test: Smallest = field(default_factory=lambda: Smallest(HOLDOUT_ROWS))
    reference: Smallest = field(default_factory=lambda: Smallest(REFERENCE_ROWS))


OnBatch = Callable[[int], None]


def scan(table: Table, seed: int, cache: CacheWriter, on_batch: OnBatch | None = None) -> Scan:
    """Read the whole file once, batch by batch; BadInput names a column with a missing value
    or a target that cannot be trained on. on_batch gets the rows read so far."""
    state = _Pass(table, seed, cache, Moments(len(table.features)))
    if table.task == "classification":
        state.labels = Labels(table)
    for batch in table.batches():
        _add(state, batch)
        if on_batch is not None:
            on_batch(state.rows)
    return _finish(state)


def _add(state: _Pass, batch: pa.RecordBatch) -> None:
    table = state.table
    x, target = table.arrays(batch)
    _check_features(table, x, state.rows)
    _check_target(table, target, state.rows)
    if state.labels is not None:
        y: NDArray[Any] = state.labels.codes(target)
    else:
        y = target.to_numpy(zero_copy_only=False).astype(np.float64)
    u = draws(state.seed, state.rows, len(x))
    train = u >= TEST_FRACTION + VALIDATION_FRACTION
    test = u < TEST_FRACTION
    validation = ~train & ~test
    x32 = x.astype(np.float32)
    state.features.add(x[train])
    if state.labels is None:
        state.target.add(y[train].reshape(-1, 1))
    state.cache.write(x32[train], y[train])
    state.test.add(u[test], x32[test], y[test])
    state.validation.add(u[validation], x32[validation], y[validation])
    state.reference.add(u[train], x32[train], y[train])
    for name, mask in (("train", train), ("validation", validation), ("test", test)):
        state.split_rows[name] += int(mask.sum())
    state.rows += len(x)
    state.batches += 1


def _check_features(table: Table, x: NDArray[np.float64], start: int) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise BadInput(
            f"data '{table.path}': feature '{table.features[column]}' has a missing or infinite "
            f"value (empty, null, NaN or inf) at data row {start + int(row) + 1}; expected a "
            "number in every row (fill or drop such rows, or leave the column out with "
            "--features)"
        )


def _check_target(table: Table, target: pa.Array, start: int) -> None:
    missing = pc.is_null(target, nan_is_null=True).to_numpy(zero_copy_only=False)
    if table.task == "regression":
        values = target.to_numpy(zero_copy_only=False).astype(np.float64)
        missing = missing | ~np.isfinite(values)
    if missing.any():
        raise BadInput(
            f"data '{table.path}': target '{table.target}' has no value (empty, null, NaN or "
            f"inf) at data row {start + int(np.argmax(missing)) + 1}, and "
            f"{int(missing.sum())} such rows in that batch; every row needs a target"
        )


def _finish(state: _Pass) -> Scan:
    table, width = state.table, len(state.table.features)
    _check_sizes(state)
    std = state.features.std()
    val_x, val_y = state.validation.rows(width)
    test_x, test_y = state.test.rows(width)
    ref_x, _ = state.reference.rows(width)
    common: dict[str, Any] = {
        "rows": state.rows,
        "batches": state.batches,
        "split_rows": dict(state.split_rows),
        "mean": state.features.mean.astype(np.float32),
        # Constant columns would divide by zero; with std 1 they standardize to 0.
        "std": np.where(std > 0, std, 1.0).astype(np.float32),
        "reference": ref_x,
    }
    if state.labels is None:
        target_std = float(state.target.std()[0])
        if target_std == 0:
            raise BadInput(
                f"data '{table.path}': target '{table.target}' has the same value in every "
                "training row; there is nothing to learn"
            )
        return Scan(
            **common, validation=Held(val_x, val_y), test=Held(test_x, test_y),
            target_mean=float(state.target.mean[0]), target_std=target_std,
        )  # fmt: skip
    labels, remap = state.labels.classes()
    if len(labels) < 2:
        raise BadInput(
            f"data '{table.path}': target '{table.target}' has one value ({labels[0]!r}); "
            "classification needs at least two classes"
        )
    counts = state.labels.counts[np.argsort(remap)]
    return Scan(
        **common, validation=Held(val_x, remap[val_y]), test=Held(test_x, remap[test_y]),
        classes=tuple(str(v) for v in labels), class_rows=tuple(int(c) for c in counts),
        remap=remap,
    )  # fmt: skip


def _check_sizes(state: _Pass) -> None:
    rows, split = state.rows, state.split_rows
    if rows == 0:
        raise BadInput(f"data '{state.table.path}': no data rows")
    smallest = min(split["validation"], split["test"])
    if smallest < MIN_HELD_OUT_ROWS or split["train"] == 0:
        raise BadInput(
            f"data '{state.table.path}': {rows} data rows give {split['validation']} validation "
            f"and {split['test']} test rows (10% each); at least {MIN_HELD_OUT_ROWS} of each are "
            "needed, so give at least a few hundred rows"
        )
