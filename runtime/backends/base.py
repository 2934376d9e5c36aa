"""The Backend protocol: runs one batch of numpy arrays; knows nothing of requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from runtime.config import GraphTensor


class Backend(Protocol):
    """A loaded model version. `run` is synchronous and called from an executor thread."""

    def graph_inputs(self) -> Sequence[GraphTensor]: ...

    def graph_outputs(self) -> Sequence[GraphTensor]: ...

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
