"""Rows of features read from `.npy`, `.csv` or `.parquet`: the sample and the reference of a
publish."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from runtime.publish.errors import BadInput

FORMATS = (".npy", ".csv", ".parquet")


def read_rows(path: Path, role: str) -> NDArray[np.float32]:
    """A [N, F] float32 array from path; BadInput names the file and what was expected."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise BadInput(f"{role} '{path}': expected a {', '.join(FORMATS)} file of feature rows")
    try:
        readers = {".npy": _read_npy, ".csv": _read_csv, ".parquet": _read_parquet}
        rows = readers[suffix](path)
    except BadInput:
        raise
    except (OSError, ValueError) as exc:
        raise BadInput(f"{role} '{path}': cannot be read as {suffix} ({exc})") from None
    return check_rows(rows, f"{role} '{path}'")


def check_rows(rows: object, what: str) -> NDArray[np.float32]:
    """rows as a finite-shaped [N, F] float32 array with N, F > 0; BadInput otherwise."""
    try:
        array = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{what}: expected numeric feature rows ({exc})") from None
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise BadInput(f"{what}: expected rows [N, n_features], got shape {array.shape}")
    return array


def _read_npy(path: Path) -> NDArray[np.float32]:
    # allow_pickle=False: a data file must never run code when read.
    array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise BadInput(f"sample '{path}': expected a numeric array, got {array.dtype}")
    return array.astype(np.float32)


def _read_parquet(path: Path) -> NDArray[np.float32]:
    """Every column, in order, as a feature; a column that is not numeric is named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        kind = field.type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind)
        if not (numeric or pa.types.is_boolean(kind)):
            raise BadInput(
                f"sample '{path}': column '{field.name}' is {kind}; expected numeric feature "
                "columns only"
            )
        if column.null_count:
            raise BadInput(f"sample '{path}': column '{field.name}' has {column.null_count} nulls")
        columns.append(column.to_numpy().astype(np.float32))
    if not columns:
        raise BadInput(f"sample '{path}': no columns")
    return np.column_stack(columns)


def _read_csv(path: Path) -> NDArray[np.float32]:
    with open(path, newline="", encoding="utf-8") as f:
        lines = [row for row in csv.reader(f) if row]
    if lines and not _numeric(lines[0]):
        lines = lines[1:]  # a header row
    for number, row in enumerate(lines, start=1):
        if not _numeric(row):
            raise ValueError(f"data row {number} holds a value that is not a number")
    if len({len(row) for row in lines}) > 1:
        raise ValueError("rows have different numbers of columns")
    return np.array([[float(v) for v in row] for row in lines], dtype=np.float32)


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True
