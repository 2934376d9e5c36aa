"""A user's CSV or Parquet file as a stream of record batches, and what its columns mean.

The file is never read whole: CSV through `pyarrow.csv.open_csv` (one block at a time),
Parquet through `ParquetFile.iter_batches`. `open_table` decides which columns are the
features and which the target, the task, and the type each column is read as; a column that
does not fit raises BadInput naming it.

Categorical (string) feature columns are refused, not one-hot encoded. The served model takes
one FP32 tensor `input` [n_features], as every published model does, and the drift monitor
profiles that one tensor: a string cannot travel in it. Encoding categories in the graph would
need either a second, BYTES input per such column (a different contract for clients and for
the drift monitor) or clients sending category codes whose vocabulary lives only inside the
model, which fails silently when a code is wrong. Encoding them before training (one 0/1 column
per category is what a one-hot step in the graph would compute) keeps the contract and puts the
vocabulary where the user can see it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from runtime.publish.errors import BadInput

Task = Literal["classification", "regression"]
TASKS: tuple[Task, ...] = ("classification", "regression")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2")
PARQUET_SUFFIXES = (".parquet", ".pq")
# One CSV block is parsed at a time (pyarrow's default size): ~5,000 rows of 20 numbers.
CSV_BLOCK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 16_384
_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_SHOWN_COLUMNS = 12


@dataclass(frozen=True, slots=True)
class Table:
    """A data file, the columns it is trained on, and the types they are read as."""

    path: Path
    format: Literal["csv", "parquet"]
    target: str
    features: tuple[str, ...]
    task: Task
    # The target's type as read: int64, bool, string or float64.
    target_type: pa.DataType
    # Every column of the file in order (a CSV conversion error names a column by position).
    columns: tuple[str, ...]

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Record batches of the features and the target; BadInput names a column whose value
        cannot be read as the type decided from the file's start."""
        try:
            yield from self._csv() if self.format == "csv" else self._parquet()
        except pa.ArrowInvalid as exc:
            raise BadInput(self._explain(str(exc))) from None
        except (OSError, pa.ArrowException) as exc:
            raise BadInput(f"data '{self.path}': cannot be read ({_first_line(exc)})") from None

    def arrays(self, batch: pa.RecordBatch) -> tuple[NDArray[np.float64], pa.Array]:
        """The batch's features as float64 [n, F] and its target column."""
        columns = [
            pc.cast(batch.column(name), pa.float64()).to_numpy(zero_copy_only=False)
            for name in self.features
        ]
        x = np.column_stack(columns) if columns else np.zeros((batch.num_rows, 0))
        target = batch.column(self.target)
        if target.type != self.target_type:
            target = pc.cast(target, self.target_type)
        return x, target

    def _csv(self) -> Iterator[pa.RecordBatch]:
        types = {name: pa.float64() for name in self.features}
        types[self.target] = self.target_type
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                include_columns=[*self.features, self.target],
                column_types=types,
                strings_can_be_null=True,
            ),
        )
        with reader:
            yield from reader

    def _parquet(self) -> Iterator[pa.RecordBatch]:
        with pq.ParquetFile(self.path) as source:
            yield from source.iter_batches(
                batch_size=PARQUET_BATCH_ROWS, columns=[*self.features, self.target]
            )

    def _explain(self, message: str) -> str:
        """pyarrow's conversion error, with the column's name and what was expected."""
        match = _CSV_COLUMN.search(message)
        detail = _first_line(message).split(": ", 1)[-1]
        if match is None or int(match.group(1)) >= len(self.columns):
            return f"data '{self.path}': cannot be read ({detail})"
        name = self.columns[int(match.group(1))]
        if name == self.target:
            expected = f"{self.task} labels read as {self.target_type}"
            return f"data '{self.path}': target '{name}': {detail}; expected {expected}"
        return (
            f"data '{self.path}': feature '{name}': {detail}; expected numbers in every row "
            "(the type is decided by the file's first block)"
        )


def open_table(
    path: Path, target: str, features: Sequence[str] | None = None, task: Task | None = None
) -> Table:
    """The table of path with its columns decided; BadInput names what does not fit."""
    kind = _format(path)
    schema = _schema(path, kind)
    columns = tuple(schema.names)
    chosen = _features(path, columns, target, features)
    target_type, resolved = _target(path, target, _field(path, schema, target).type, task)
    table = Table(path, kind, target, chosen, resolved, target_type, columns)
    _check_features(table, schema)
    return table


def _format(path: Path) -> Literal["csv", "parquet"]:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    expected = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise BadInput(f"data '{path}': expected a {expected} file")


def _schema(path: Path, kind: str) -> pa.Schema:
    """The file's columns and types: Parquet's own, or those pyarrow infers from a CSV's first
    block (a header row naming the columns is required)."""
    if not path.is_file():
        raise BadInput(f"data '{path}': no such file")
    try:
        if kind == "parquet":
            return pq.read_schema(path)
        options = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
        with pacsv.open_csv(path, read_options=options) as reader:
            return reader.schema
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"data '{path}': cannot be read as {kind} ({_first_line(exc)})") from None


def _features(
    path: Path, columns: tuple[str, ...], target: str, features: Sequence[str] | None
) -> tuple[str, ...]:
    """The named feature columns (each present, once, not the target), or all but the target."""
    if target not in columns:
        raise BadInput(f"data '{path}': no target column '{target}'; {_listing(columns)}")
    if features is None:
        chosen = tuple(c for c in columns if c != target)
    else:
        chosen = tuple(features)
        missing = [c for c in chosen if c not in columns]
        if missing:
            raise BadInput(f"data '{path}': no feature column '{missing[0]}'; {_listing(columns)}")
        if target in chosen:
            raise BadInput(f"data '{path}': '{target}' is the target; it cannot be a feature")
        repeated = sorted({c for c in chosen if chosen.count(c) > 1})
        if repeated:
            raise BadInput(f"data '{path}': feature '{repeated[0]}' is named more than once")
    if not chosen:
        raise BadInput(f"data '{path}': no feature columns beside the target '{target}'")
    return chosen


def _listing(columns: Sequence[str]) -> str:
    shown = ", ".join(f"'{c}'" for c in columns[:_SHOWN_COLUMNS])
    more = f" and {len(columns) - _SHOWN_COLUMNS} more" if len(columns) > _SHOWN_COLUMNS else ""
    return f"the file's columns: {shown}{more}"


def _field(path: Path, schema: pa.Schema, name: str) -> pa.Field:
    index = schema.get_all_field_indices(name)
    if len(index) != 1:
        raise BadInput(f"data '{path}': {len(index)} columns are named '{name}'; expected one")
    return schema.field(index[0])


def _is_numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)  # a CSV column empty in the first block: checked per row
    )


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_text(kind.value_type)
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _target(
    path: Path, name: str, kind: pa.DataType, task: Task | None
) -> tuple[pa.DataType, Task]:
    """(type the target is read as, task). Without a task: decimals are a quantity
    (regression); integers, booleans and strings are class labels (classification)."""
    quantity = pa.types.is_floating(kind) or pa.types.is_decimal(kind) or pa.types.is_null(kind)
    labels = pa.types.is_integer(kind) or pa.types.is_boolean(kind) or _is_text(kind)
    if not (quantity or labels):
        raise BadInput(
            f"data '{path}': target '{name}' is {kind}; expected numbers or class labels"
        )
    resolved: Task = task or ("regression" if quantity else "classification")
    if resolved == "regression":
        if _is_text(kind) or pa.types.is_boolean(kind):
            raise BadInput(
                f"data '{path}': target '{name}' is {kind}: regression needs numbers "
                "(pass --task classification for class labels)"
            )
        return pa.float64(), resolved
    if quantity and not pa.types.is_null(kind):
        raise BadInput(
            f"data '{path}': target '{name}' is {kind}: classification takes integer, boolean "
            "or string class labels (pass --task regression for a quantity)"
        )
    if _is_text(kind) or pa.types.is_null(kind):
        return pa.string(), resolved
    return (pa.bool_() if pa.types.is_boolean(kind) else pa.int64()), resolved


def _check_features(table: Table, schema: pa.Schema) -> None:
    """Every feature is numeric; string columns are refused (see the module's docstring)."""
    text = [n for n in table.features if _is_text(_field(table.path, schema, n).type)]
    if text:
        examples = ", ".join(f"'{v}'" for v in _examples(table, text[0]))
        named = ", ".join(f"'{n}'" for n in text)
        raise BadInput(
            f"data '{table.path}': categorical (string) feature column {named} "
            f"(values such as {examples}): the served model takes one FP32 tensor 'input', so "
            "strings cannot be sent to it, and categorical columns are not encoded in the "
            "graph. Encode them as numbers before training (one 0/1 column per category), or "
            "leave them out with --features"
        )
    kinds = [(n, _field(table.path, schema, n).type) for n in table.features]
    other = [(n, kind) for n, kind in kinds if not _is_numeric(kind)]
    if other:
        name, kind = other[0]
        raise BadInput(
            f"data '{table.path}': feature '{name}' is {kind}; expected numeric feature columns"
        )


def _examples(table: Table, column: str, count: int = 3) -> list[Any]:
    """A few distinct values of a column, from the file's first batch."""
    try:
        if table.format == "parquet":
            with pq.ParquetFile(table.path) as source:
                first = next(source.iter_batches(batch_size=1000, columns=[column]))
        else:
            options = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
            convert = pacsv.ConvertOptions(include_columns=[column])
            with pacsv.open_csv(table.path, read_options=options, convert_options=convert) as r:
                first = r.read_next_batch()
    except (StopIteration, OSError, pa.ArrowException):
        return []
    values: list[Any] = pc.unique(first.column(0).drop_null()).to_pylist()
    return values[:count]


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
