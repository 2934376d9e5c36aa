"""The Backend protocol: what runs one batch of a model version; knows nothing of requests.

Each runtime is one module here (onnx.py, onnx_cuda.py) and one entry in
runtime/backends/__init__.py, which opens the backend a model's platform names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from runtime.config import GraphTensor
from runtime.errors import ServingError
from runtime.proto import model_config_pb2 as pb


class Backend(Protocol):
    """A loaded model version. `run` is synchronous, called from an instance thread or inline."""

    @property
    def thread_bound(self) -> bool:
        """True when batches must stay on the instance threads (per-thread device buffers),
        so the batcher never runs them on the event loop."""

    def graph_inputs(self) -> Sequence[GraphTensor]: ...

    def graph_outputs(self) -> Sequence[GraphTensor]: ...

    def prepare(self, completed: pb.ModelConfig) -> None:
        """Told the completed config (what config.pbtxt left out filled in from the graph)
        before the version's warm-up; a backend that needs it to load finishes loading here."""

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncBackend(Backend, Protocol):
    """A backend whose batches wait on another process: the batcher awaits `run_async` on
    the event loop instead of parking an instance thread on the wait (two thread hand-offs
    a batch fewer). `run` stays for calls made off the loop, such as the warm-up at load."""

    async def run_async(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], rows: Sequence[int]
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray] | ServingError]:
        """`rows`: each request's rows in the joined batch. The answer is the batch's outputs,
        or each request's own outputs or error (a model that answers requests one by one)."""
