"""The classification extension: each row's top-k classes as Triton formats them.

Float scores are ranked by the topk kernel (a partial selection per row, not a sort), so
this sits beside the kernels rather than in the core vocabulary of tensors and types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

import kernels
from runtime.errors import InvalidInput, Unsupported


def classify(
    arr: np.ndarray, class_count: int, labels: Sequence[str] | None, batched: bool = True
) -> np.ndarray:
    """Top-k classes of each row as b"<value>:<index>[:<label>]", highest first.

    Ties go to the lower index. Batched: [batch, k] over axis 0; else the whole array, [k].
    """
    if class_count < 1:
        raise InvalidInput(f"classification count must be positive, got {class_count}")
    rows = _class_rows(arr, batched)
    k = min(class_count, rows.shape[1])
    if rows.dtype.kind == "f":
        # The topk kernel: a partial selection per row instead of a full sort.
        order = kernels.topk(rows, k)[1]
    else:
        order = np.argsort(_descending_key(rows), axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(rows, order, axis=1)
    entries = [
        _class_entry(text, index, labels)
        for text, index in zip(_format_values(values), order.ravel().tolist(), strict=True)
    ]
    out = np.empty(len(entries), dtype=object)
    out[:] = entries
    return out.reshape(order.shape if batched else (k,))


def _class_rows(arr: np.ndarray, batched: bool) -> np.ndarray:
    """The scores as a 2-D [rows, classes] array."""
    if arr.dtype.kind not in "biuf":
        raise Unsupported(f"classification needs a numeric output, got dtype {arr.dtype}")
    if not batched:
        return arr.reshape(1, arr.size)
    if arr.ndim == 0:
        raise InvalidInput("batched classification needs an output with a batch dimension")
    return arr.reshape(arr.shape[0], math.prod(arr.shape[1:]))


def _descending_key(rows: np.ndarray) -> np.ndarray:
    """A key whose ascending order is descending score order; NaN sorts last."""
    if rows.dtype.kind == "f":
        return -rows
    # ~x reverses the order of signed and unsigned integers alike, without overflow.
    return ~(rows.astype(np.uint8) if rows.dtype.kind == "b" else rows)


def _format_values(values: np.ndarray) -> list[str]:
    """Scores printed as Triton does (std::to_string): six decimals, or an integer."""
    if values.dtype.kind == "f":
        return [f"{v:f}" for v in values.ravel().tolist()]
    return [str(int(v)) for v in values.ravel().tolist()]


def _class_entry(text: str, index: int, labels: Sequence[str] | None) -> bytes:
    if labels is not None and index < len(labels):
        return f"{text}:{index}:{labels[index]}".encode()
    return f"{text}:{index}".encode()
