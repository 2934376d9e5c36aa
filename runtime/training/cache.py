"""The training rows of pass one in an Arrow IPC file on local disk, dealt out in a new shuffled
order each epoch.

Reading the source for every epoch would parse a CSV again, and a CSV cannot be read from the
middle, so its batches could only come in file order. The cache holds just the training rows,
features as float32, in record batches that can be read in any order
(`RecordBatchFileReader.get_batch`), through ordinary reads rather than a memory map: only the
batches in use occupy memory. An epoch visits the batches in a random order and deals rows out
of a bounded shuffle buffer, so rows that sit together in the file (sorted by the target, say)
are spread over many minibatches.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray

# Rows the shuffle buffer mixes before dealing out half of them: 5 MB at 20 features.
SHUFFLE_ROWS = 65_536

Rows = tuple[NDArray[np.float32], NDArray[Any]]


def _schema(features: int, target: pa.DataType) -> pa.Schema:
    return pa.schema([("x", pa.list_(pa.float32(), features)), ("y", target)])


class CacheWriter:
    """Appends rows (features [n, F] float32, targets [n]) to a new cache file."""

    def __init__(self, path: Path, features: int, target: pa.DataType) -> None:
        self.path = path
        self.features = features
        self.rows = 0
        self._schema = _schema(features, target)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, self._schema)

    def write(self, x: NDArray[np.float32], y: NDArray[Any]) -> None:
        if len(x) == 0:
            return
        flat = pa.array(np.ascontiguousarray(x, np.float32).reshape(-1))
        batch = pa.record_batch(
            [
                pa.FixedSizeListArray.from_arrays(flat, self.features),
                pa.array(y, self._schema.field("y").type),
            ],
            schema=self._schema,
        )
        self._writer.write_batch(batch)
        self.rows += len(x)

    def close(self) -> None:
        self._writer.close()
        self._sink.close()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Cache:
    """A cache file opened for reading batches in any order."""

    def __init__(self, path: Path) -> None:
        self._source = pa.OSFile(str(path), "rb")
        self._reader = pa.ipc.open_file(self._source)
        self.features = int(self._reader.schema.field("x").type.list_size)

    @property
    def batches(self) -> int:
        return int(self._reader.num_record_batches)

    def read(self, index: int) -> Rows:
        """Batch index as (features [n, F] float32, targets [n])."""
        batch = self._reader.get_batch(index)
        x = batch.column(0).flatten().to_numpy().reshape(batch.num_rows, self.features)
        return x, batch.column(1).to_numpy()

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def minibatches(
    cache: Cache, rng: np.random.Generator, batch_size: int, buffer_rows: int = SHUFFLE_ROWS
) -> Iterator[Rows]:
    """Every row of the cache once, in minibatches of batch_size (the last may be smaller):
    batches in a random order, rows mixed in a buffer of at least buffer_rows rows."""
    held_x: list[NDArray[np.float32]] = []
    held_y: list[NDArray[Any]] = []
    count = 0
    for index in rng.permutation(cache.batches):
        x, y = cache.read(int(index))
        held_x.append(x)
        held_y.append(y)
        count += len(x)
        if count < buffer_rows:
            continue
        xs, ys = _mixed(held_x, held_y, rng)
        # Keep half the buffer to mix with the batches still to come.
        dealt = (count - buffer_rows // 2) // batch_size * batch_size
        yield from _split(xs[:dealt], ys[:dealt], batch_size)
        held_x, held_y, count = [xs[dealt:]], [ys[dealt:]], count - dealt
    if count:
        xs, ys = _mixed(held_x, held_y, rng)
        yield from _split(xs, ys, batch_size)


def _mixed(xs: list[NDArray[np.float32]], ys: list[NDArray[Any]], rng: np.random.Generator) -> Rows:
    order = rng.permutation(sum(len(x) for x in xs))
    return np.concatenate(xs)[order], np.concatenate(ys)[order]


def _split(x: NDArray[np.float32], y: NDArray[Any], batch_size: int) -> Iterator[Rows]:
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
