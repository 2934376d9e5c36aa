"""Running a model written for Triton's Python backend (`class TritonPythonModel`) in a worker.

The batch the server joined is handed to `execute` as the requests it was made of, each
with its own tensors (views of the batch's rows), as Triton does under dynamic batching;
each returned response answers its own request, with its outputs or its error.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from runtime import pb_utils

TRITON_CLASS = "TritonPythonModel"
MODULE_NAME = "triton_python_backend_utils"

# One request's result: its outputs, or (TritonError code, message).
Outcome = dict[str, np.ndarray] | tuple[int, str]


def install() -> None:
    """Make `import triton_python_backend_utils` find Conveyor's module, before model.py loads."""
    sys.modules.setdefault(MODULE_NAME, pb_utils)


def defines(module: ModuleType) -> bool:
    return isinstance(getattr(module, TRITON_CLASS, None), type)


class TritonAdapter:
    """A TritonPythonModel instance behind the worker's batch interface."""

    def __init__(self, module: ModuleType, context: Mapping[str, Any]) -> None:
        self.name = str(context["model_name"])
        self.instance = f"{self.name}_0_{context['instance']}"
        self.batched = int(context["config"].get("max_batch_size", 0)) > 0
        self.model = getattr(module, TRITON_CLASS)()
        self._loop: asyncio.AbstractEventLoop | None = None
        initialize = getattr(self.model, "initialize", None)
        if initialize is not None:
            self._call(initialize, self.arguments(context))

    def arguments(self, context: Mapping[str, Any]) -> dict[str, str]:
        """The `args` Triton passes to `initialize`, all strings."""
        return {
            "model_config": json.dumps(context["config"]),
            "model_instance_kind": "CPU",
            "model_instance_name": self.instance,
            "model_instance_device_id": "0",
            "model_repository": str(context["model_dir"]),
            "model_version": str(context["model_version"]),
            "model_name": self.name,
        }

    def _call(self, function: Any, *args: Any) -> Any:
        result = function(*args)
        if inspect.isawaitable(result):  # `async def execute`, run to completion here
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
            result = self._loop.run_until_complete(result)
        return result

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        names: Sequence[str],
        rows: Sequence[int],
        dtypes: Mapping[str, np.dtype],
    ) -> list[Outcome]:
        """`execute` on the batch's requests; raises with Triton's message when it fails."""
        requests = self._requests(inputs, names, rows)
        try:
            responses = self._call(self.model.execute, requests)
        except Exception as exc:
            raise RuntimeError(
                f"Failed to process the request(s) for model '{self.instance}', message: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._check(responses, len(requests))
        return [_outcome(r, names, dtypes) for r in responses]

    def _requests(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> list[pb_utils.InferenceRequest]:
        if not self.batched:
            rows = [1]
        requests, start = [], 0
        for count in rows:
            tensors = [
                pb_utils.Tensor(name, arr[start : start + count] if self.batched else arr)
                for name, arr in inputs.items()
            ]
            requests.append(pb_utils.InferenceRequest(tensors, requested_output_names=names))
            start += count
        return requests

    @staticmethod
    def _check(responses: Any, expected: int) -> None:
        if not isinstance(responses, list):
            raise RuntimeError(
                f"Expected a list in the execute return, found type '{type(responses).__name__}'."
            )
        if len(responses) != expected:
            raise RuntimeError(
                "Number of InferenceResponse objects do not match the number of "
                f"InferenceRequest objects. InferenceRequest(s) size is:{expected}, and "
                f"InferenceResponse(s) size is:{len(responses)}"
            )
        for response in responses:
            if not isinstance(response, pb_utils.InferenceResponse):
                raise RuntimeError(
                    "Expected an 'InferenceResponse' object in the execute function return "
                    f"list, found type '{type(response).__name__}'."
                )

    def finalize(self) -> None:
        finalize = getattr(self.model, "finalize", None)
        if finalize is not None:
            self._call(finalize)


def _outcome(
    response: pb_utils.InferenceResponse, names: Sequence[str], dtypes: Mapping[str, np.dtype]
) -> Outcome:
    error = response.error()
    if error is not None:
        return (error.code(), error.message())
    given = {t.name(): t.as_numpy() for t in response.output_tensors()}
    missing = [n for n in names if n not in given]
    if missing:
        return (pb_utils.TritonError.INTERNAL, f"the response has no output {missing}")
    return {n: np.asarray(given[n], dtype=dtypes.get(n)) for n in names}
