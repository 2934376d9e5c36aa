"""Joining requests into one batch, and handing each request its part of the answer."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from runtime.batching.queue import Pending, resolve
from runtime.errors import InternalError, ServingError

# A batch's outputs, or each request's own outputs or error, in the batch's order.
BatchOutputs = dict[str, np.ndarray] | list[dict[str, np.ndarray] | ServingError]


def joined(batch: list[Pending]) -> dict[str, np.ndarray]:
    """The batch's inputs: one request's as they are, several concatenated (one copy)."""
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}


def check_rows(model: str, outputs: Mapping[str, np.ndarray], rows: int) -> None:
    """Every output has the batch's rows first, so each request can get its own back."""
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != rows:
            raise InternalError(
                f"model '{model}' returned output '{name}' with shape "
                f"{list(arr.shape)} for a batch of {rows} rows"
            )


def scatter(outputs: BatchOutputs, batch: list[Pending]) -> None:
    """Answer each request with its own rows of the outputs (views), or with its own answer."""
    if isinstance(outputs, list):
        for item, answer in zip(batch, outputs, strict=True):
            if isinstance(answer, ServingError):
                resolve(item.future, error=answer)
            else:
                resolve(item.future, answer)
        return
    if len(batch) == 1:
        resolve(batch[0].future, outputs)
        return
    start = 0
    for item in batch:
        stop = start + item.rows
        resolve(item.future, {k: v[start:stop] for k, v in outputs.items()})
        start = stop
