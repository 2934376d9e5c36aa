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
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from runtime import config as cfg
from runtime import pb_utils, tensors
from runtime.config import ConfigError, GraphTensor
from runtime.errors import (
    Cancelled,
    InternalError,
    InvalidInput,
    NotFound,
    ServingError,
    Unavailable,
    Unsupported,
)
from runtime.proto import model_config_pb2 as pb
from runtime.shared_buffer import SharedBuffer, size_for, split_objects

log = logging.getLogger(__name__)

PYTHON_BACKEND = "python"
DEFAULT_FILENAME = "model.py"
# How long a worker may take to import and load its model before the load fails.
START_TIMEOUT_S = 120.0
# How long a batch may wait for a worker that is being started again after a crash.
RESTART_WAIT_S = 120.0


class WorkerDied(Exception):
    """The worker process exited while it held a batch or was starting."""


class WorkerFailed(Exception):
    """The worker could not import or load the model; the message is the reason."""


class _Worker:
    """The server's end of one worker process: its connection and its input buffer."""

    def __init__(self, model: str, instance: int) -> None:
        self.model = model
        self.instance = instance
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime.worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.input: SharedBuffer | None = None
        self.output: SharedBuffer | None = None
        # Buffers whose names the worker has been sent but not yet answered after.
        self._unmapped: list[SharedBuffer] = []
        # The event loop watching the connection, and the answer it waits for.
        self._reader: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None

    def send(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except OSError:  # the worker is gone: its end of the socket closed
            raise WorkerDied(self._exit_reason()) from None

    def receive(self, timeout_s: float | None = None) -> Any:
        try:
            if timeout_s is not None and not self.conn.poll(timeout_s):
                raise WorkerFailed(f"the worker did not answer within {timeout_s:.0f} s")
            return self.conn.recv()
        except (EOFError, OSError):
            raise WorkerDied(self._exit_reason()) from None

    def _exit_reason(self) -> str:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return "its connection closed"
        return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"

    def start(self, path: Path, hello: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
        """Import model.py; what its Model declares (inputs, outputs)."""
        self.send({"path": str(path), "name": self.model, **hello})
        answer = self.receive(START_TIMEOUT_S)
        if answer[0] == "failed":
            raise WorkerFailed(answer[1])
        return answer[1], answer[2]

    def load(self, load: Mapping[str, Any]) -> None:
        self.send(dict(load))
        answer = self.receive(START_TIMEOUT_S)
        if answer[0] == "failed":
            raise WorkerFailed(answer[1])

    def run(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> Outputs:
        """One batch, waiting for the answer on this thread."""
        self._request(inputs, names, rows)
        while (outputs := self._answered(self.receive())) is None:
            pass
        return outputs

    async def run_async(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> Outputs:
        """One batch, waiting for the answer on the event loop."""
        self._request(inputs, names, rows)
        while (outputs := self._answered(await self._readable_then_receive())) is None:
            pass
        return outputs

    async def _readable_then_receive(self) -> Any:
        """The worker's answer, once its end of the connection is readable.

        The reader stays registered between batches (two system calls a batch fewer, some
        10 us each on the machines measured); it is dropped when it fires with no batch
        waiting (a worker that died while idle would otherwise wake the loop forever).
        """
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        if self._reader is None:
            loop.add_reader(self.conn.fileno(), self._readable)
            self._reader = loop
        try:
            await self._ready
        finally:
            self._ready = None
        return self.receive()

    def _readable(self) -> None:
        if self._ready is None:
            self.detach()
        elif not self._ready.done():
            self._ready.set_result(None)

    def detach(self) -> None:
        """Stop watching the connection (on the loop that watches it), before it closes."""
        if self._reader is not None:
            self._reader.remove_reader(self.conn.fileno())
            self._reader = None

    def _request(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> None:
        numeric, objects = split_objects(inputs)
        need = size_for(numeric)
        if self.input is None or self.input.size < need:
            if self.input is not None:
                self.input.close()
            self.input = SharedBuffer.create(need, f"conveyor-{self.model}-in")
            self._unmapped.append(self.input)
        placed = self.input.write(numeric)
        self.send(("run", self.input.describe(), placed, objects, list(names), list(rows)))

    def _answered(self, answer: Any) -> Outputs | None:
        """The batch's outputs from the worker's answer; None when it asked for a larger
        output buffer (sent now) and its answer is still to come."""
        for buffer in self._unmapped:  # the worker has mapped every buffer it was sent
            buffer.unlink()
        self._unmapped.clear()
        if answer[0] == "grow":
            if self.output is not None:
                self.output.close()
            self.output = SharedBuffer.create(answer[1], f"conveyor-{self.model}-out")
            self._unmapped.append(self.output)
            self.send(self.output.describe())
            return None
        if answer[0] == "error":
            raise InternalError(f"model '{self.model}' failed to run: {answer[1]}")
        views = self.output.read(answer[1]) if self.output is not None and answer[1] else {}
        # The buffer is this worker's next answer too: the batch's outputs leave it now.
        outputs = {name: np.array(view) for name, view in views.items()}
        del views
        outputs.update(answer[2])
        if answer[0] == "each":
            return _each(self.model, outputs, answer[3])
        return outputs

    def stop(self, timeout_s: float = 10.0) -> None:
        try:
            self.send(("stop",))
            self.receive(timeout_s)
        except (WorkerDied, WorkerFailed, OSError):
            pass
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()
        for buffer in (self.input, self.output):
            if buffer is not None:
                buffer.close()


# A batch's outputs, or each request's own outputs or error (Triton's execute answers
# every request on its own).
Outputs = dict[str, np.ndarray] | list[dict[str, np.ndarray] | ServingError]

_ERRORS: dict[int, type[ServingError]] = {
    pb_utils.TritonError.INVALID_ARG: InvalidInput,
    pb_utils.TritonError.NOT_FOUND: NotFound,
    pb_utils.TritonError.UNAVAILABLE: Unavailable,
    pb_utils.TritonError.UNSUPPORTED: Unsupported,
    pb_utils.TritonError.CANCELLED: Cancelled,
}


def _each(
    model: str, outputs: Mapping[str, np.ndarray], errors: Sequence[tuple[int, str] | None]
) -> list[dict[str, np.ndarray] | ServingError]:
    """Each request's outputs (sent as "<index>/<name>") or its error as the server's."""
    per_request: list[dict[str, np.ndarray] | ServingError] = []
    for i, error in enumerate(errors):
        if error is not None:
            code, message = error
            per_request.append(_ERRORS.get(code, InternalError)(f"model '{model}': {message}"))
            continue
        prefix = f"{i}/"
        per_request.append(
            {k.removeprefix(prefix): v for k, v in outputs.items() if k.startswith(prefix)}
        )
    return per_request


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
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._load: dict[str, Any] = {}
        self._closed = False
        first = _Worker(self.name, 0)
        try:
            inputs, outputs = first.start(self.path, {})
        except (WorkerDied, WorkerFailed) as exc:
            first.stop(1.0)
            raise ConfigError(f"model '{self.name}' cannot be imported: {exc}") from None
        self._first: _Worker | None = first
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
            started: list[_Worker] = []
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

    def _started(self, instance: int) -> _Worker:
        if instance == 0 and self._first is not None:
            worker = self._first
            self._first = None
        else:
            worker = _Worker(self.name, instance)
            try:
                worker.start(self.path, {})
            except (WorkerDied, WorkerFailed):
                worker.stop(1.0)
                raise
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

    def _take(self) -> _Worker:
        try:
            return self._idle.get(timeout=RESTART_WAIT_S)
        except queue.Empty:
            raise InternalError(f"model '{self.name}' has no running instance") from None

    def _lost(self, worker: _Worker, exc: WorkerDied) -> InternalError:
        """Start a dead worker again (off this thread); the error its batch fails with."""
        worker.detach()
        threading.Thread(target=self._restart, args=(worker,), daemon=True).start()
        return InternalError(
            f"model '{self.name}' instance {worker.instance}: the worker process died "
            f"while running the batch ({exc}); it is being started again"
        )

    def _restart(self, dead: _Worker) -> None:
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
