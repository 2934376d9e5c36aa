"""Python models: `backend: "python"` and `<version>/model.py`, each instance in its own process.

model.py defines `class Model` with `predict(self, inputs) -> outputs` on whole batches (dicts
of numpy arrays, rows on axis 0) and optionally `load(self, context)`, `unload(self)` and the
`inputs` / `outputs` it takes and gives, as (name, datatype, dims) without the batch dimension,
which complete a missing config; or Triton's `class TritonPythonModel`
(runtime/triton_model.py). Each instance (instance_group count) is one worker process
(runtime/worker.py): model code never blocks the event loop, N instances use N cores, and a
crash costs only the batch that worker held: it fails with an error naming the model, and the
worker is started again. Tensors cross through shared buffers (runtime/shared_buffer.py).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format

from runtime import config as cfg
from runtime import tensors
from runtime.backends.worker_process import (
    Models,
    Outputs,
    WorkerDied,
    WorkerFailed,
    WorkerProcess,
)
from runtime.config import ConfigError, GraphTensor
from runtime.errors import (
    InternalError,
    ServingError,
)
from runtime.proto import model_config_pb2 as pb

log = logging.getLogger(__name__)

PYTHON_BACKEND = "python"
DEFAULT_FILENAME = "model.py"
# How long a batch may wait for a worker that is being started again after a crash.
RESTART_WAIT_S = 120.0


def _graph(entries: Sequence[Any], batched: bool) -> list[GraphTensor]:
    return [
        GraphTensor(name, datatype, ((None,) if batched else ()) + tuple(
            None if d == -1 else d for d in dims))
        for name, datatype, dims in entries
    ]  # fmt: skip


def _configured(tensors_: Any) -> list[tuple[str, str, list[int]]]:
    return [
        (t.name, tensors.from_config_type(pb.DataType.Name(t.data_type)), list(t.dims))
        for t in tensors_
    ]


def _parsed(name: str, completed: Mapping[str, Any]) -> pb.ModelConfig:
    """The config a model's auto_complete_config returned, as the message it stands for."""
    try:
        message = pb.ModelConfig()
        json_format.ParseDict(completed, message)
        return message
    except json_format.ParseError as exc:
        raise ConfigError(
            f"model '{name}': auto_complete_config returned a bad config: {exc}"
        ) from None


class PythonBackend:
    """A Python model's instances, one worker process each, taken in turn by the batches."""

    # The batcher awaits run_async on the loop; the blocking `run` (the warm-up) must never
    # be run there.
    thread_bound = True

    def __init__(self, model_dir: Path, version: int, message: pb.ModelConfig) -> None:
        self.name = model_dir.name
        self.version = version
        self.path = model_dir / str(version) / (message.default_model_filename or DEFAULT_FILENAME)
        if not self.path.is_file():
            raise ConfigError(f"model file '{self.path}' does not exist")
        self.model_dir = model_dir
        self.count = max(1, sum(g.count for g in message.instance_group) or 1)
        self._idle: queue.Queue[WorkerProcess] = queue.Queue()
        self._load: dict[str, Any] = {}
        self._closed = False
        self._models: Models | None = None
        first = WorkerProcess(self.name, 0)
        try:
            given = pb.ModelConfig()
            given.CopyFrom(message)
            given.name = self.name
            inputs, outputs, completed = first.start(self.path, {"config": cfg.to_json(given)})
            if completed is not None:
                message = _parsed(self.name, completed)
        except (WorkerDied, WorkerFailed) as exc:
            first.stop(1.0)
            raise ConfigError(f"model '{self.name}' cannot start: {exc}") from None
        except ConfigError:
            first.stop(1.0)
            raise
        self._first: WorkerProcess | None = first
        # The config the model completed (Triton's auto_complete_config), else None.
        self.model_config = message if completed is not None else None
        batched = message.max_batch_size > 0 or len(message.input) == 0
        self._inputs = _graph(_configured(message.input) or inputs, batched)
        self._outputs = _graph(_configured(message.output) or outputs, batched)
        if not self._inputs or not self._outputs:
            first.stop(1.0)
            raise ConfigError(
                f"model '{self.name}' declares no inputs or outputs: list them in "
                "config.pbtxt, or as Model.inputs and Model.outputs in model.py"
            )

    def graph_inputs(self) -> Sequence[GraphTensor]:
        return self._inputs

    def graph_outputs(self) -> Sequence[GraphTensor]:
        return self._outputs

    def bind_models(self, models: Models) -> None:
        """The server's models, which the model's code may call (Triton's BLS)."""
        self._models = models

    def prepare(self, completed: pb.ModelConfig) -> None:
        """Load the model in every instance, in parallel, with its completed config."""
        config = cfg.to_json(completed)
        outputs = {
            o["name"]: str(tensors.numpy_dtype(tensors.from_config_type(o["data_type"])))
            for o in config.get("output", [])
        }
        self._load = {"output_dtypes": outputs, "config": config}
        with ThreadPoolExecutor(self.count) as pool:
            futures = [pool.submit(self._started, i) for i in range(self.count)]
            started: list[WorkerProcess] = []
            errors: list[str] = []
            for future in futures:
                try:
                    started.append(future.result())
                except (WorkerDied, WorkerFailed) as exc:
                    errors.append(str(exc))
        if errors:
            for worker in started:
                worker.stop(1.0)
            raise ConfigError(f"model '{self.name}' failed to load: {errors[0]}")
        for worker in started:
            self._idle.put(worker)

    def _started(self, instance: int) -> WorkerProcess:
        if instance == 0 and self._first is not None:
            worker = self._first
            self._first = None
        else:
            worker = WorkerProcess(self.name, instance)
            try:
                worker.start(self.path, {})
            except (WorkerDied, WorkerFailed):
                worker.stop(1.0)
                raise
        worker.models = self._models
        context = {
            "model_name": self.name,
            "model_version": str(self.version),
            "model_dir": self.model_dir,
            "version_dir": self.path.parent,
            "config": self._load["config"],
            "instance": instance,
        }
        try:
            worker.load({"output_dtypes": self._load["output_dtypes"], "context": context})
        except (WorkerDied, WorkerFailed):
            worker.stop(1.0)
            raise
        return worker

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """A batch from a thread, as one request (the warm-up at load)."""
        rows = [len(next(iter(inputs.values())))] if inputs else [1]
        worker = self._take()
        try:
            outputs = worker.run(inputs, output_names, rows)
        except WorkerDied as exc:
            raise self._lost(worker, exc) from None
        except BaseException:
            self._idle.put(worker)
            raise
        self._idle.put(worker)
        if isinstance(outputs, list):  # a Triton model's answer to its one request
            if isinstance(outputs[0], ServingError):
                raise outputs[0]
            return outputs[0]
        return outputs

    async def run_async(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], rows: Sequence[int]
    ) -> Outputs:
        """A batch from the batcher: the worker's answer is awaited on the event loop."""
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:  # one is being started again after a crash
            worker = await asyncio.to_thread(self._take)
        try:
            outputs = await worker.run_async(inputs, output_names, rows)
        except WorkerDied as exc:
            raise self._lost(worker, exc) from None
        except asyncio.CancelledError:
            # Its answer would be read as the next batch's: that worker cannot go on.
            worker.process.kill()
            self._lost(worker, WorkerDied("its batch was cancelled"))
            raise
        except BaseException:
            self._idle.put(worker)
            raise
        self._idle.put(worker)
        return outputs

    def _take(self) -> WorkerProcess:
        try:
            return self._idle.get(timeout=RESTART_WAIT_S)
        except queue.Empty:
            raise InternalError(f"model '{self.name}' has no running instance") from None

    def _lost(self, worker: WorkerProcess, exc: WorkerDied) -> InternalError:
        """Start a dead worker again (off this thread); the error its batch fails with."""
        worker.detach()
        threading.Thread(target=self._restart, args=(worker,), daemon=True).start()
        return InternalError(
            f"model '{self.name}' instance {worker.instance}: the worker process died "
            f"while running the batch ({exc}); it is being started again"
        )

    def _restart(self, dead: WorkerProcess) -> None:
        """Start a dead worker's instance again; its model stays ready meanwhile."""
        dead.stop(1.0)
        if self._closed:
            return
        log.warning("model '%s' instance %d: starting its worker again", self.name, dead.instance)
        try:
            worker = self._started(dead.instance)
        except (WorkerDied, WorkerFailed) as exc:
            log.error(
                "model '%s' instance %d cannot start again: %s", self.name, dead.instance, exc
            )
            return
        if self._closed:
            worker.stop(1.0)
            return
        self._idle.put(worker)
        log.info("model '%s' instance %d is running again", self.name, dead.instance)

    def close(self) -> None:
        """Stop every worker (each calls Model.unload); the batcher drained them first."""
        self._closed = True
        if self._first is not None:
            self._first.stop(1.0)
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return
            worker.detach()
            worker.stop()


def open_python(
    model_dir: Path, version: int, message: pb.ModelConfig, device: str
) -> PythonBackend:
    """Import a Python model version in its first worker; `prepare` starts them all."""
    return PythonBackend(model_dir, version, message)
