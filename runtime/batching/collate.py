"""Joining requests into one batch and checking what the model gave back: pure numpy."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from runtime.batching.queue import Pending
from runtime.errors import InternalError


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
