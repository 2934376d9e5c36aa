"""The server's end of one Python model worker process: its connection and its buffers.

runtime/worker.py is the other end. Messages on the connection are small tuples saying
where each tensor lies in a shared buffer (runtime/shared_buffer.py); the server creates
both buffers and removes their names once the worker has mapped them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime import pb_utils, tensors
from runtime.channel import Channel
from runtime.errors import (
    Cancelled,
    InternalError,
    InvalidInput,
    NotFound,
    ServingError,
    Unavailable,
    Unsupported,
)
from runtime.shared_buffer import SharedBuffer, size_for, split_objects
from runtime.types import InferenceRequest, InputTensor, RequestedOutput

# How long a worker may take to import and load its model before the load fails.
START_TIMEOUT_S = 120.0
# The served model of (name, version) ("" for the latest), raising NotFound.
Models = Callable[[str, str], Any]


class WorkerDied(Exception):
    """The worker process exited while it held a batch or was starting."""


class WorkerFailed(Exception):
    """The worker could not import or load the model; the message is the reason."""


class WorkerProcess:
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
        self.conn = Channel(ours)
        self.input: SharedBuffer | None = None
        self.output: SharedBuffer | None = None
        # Buffers whose names the worker has been sent but not yet answered after.
        self._unmapped: list[SharedBuffer] = []
        # The event loop watching the connection, and the answer it waits for.
        self._reader: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        # The server's models, which the model's code calls (BLS); the calls under way.
        self.models: Models | None = None
        self._calls: set[asyncio.Future[None]] = set()

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

    def start(
        self, path: Path, hello: Mapping[str, Any]
    ) -> tuple[list[Any], list[Any], dict[str, Any] | None]:
        """Import model.py; what its Model declares (inputs, outputs), and the config as the
        model completed it (Triton's auto_complete_config, when `hello` carries the config)."""
        self.send({"path": str(path), "name": self.model, **hello})
        answer = self.receive(START_TIMEOUT_S)
        if answer[0] == "failed":
            raise WorkerFailed(answer[1])
        return answer[1], answer[2], answer[3] if len(answer) > 3 else None

    def load(self, load: Mapping[str, Any]) -> None:
        self.send(dict(load))
        answer = self.receive(START_TIMEOUT_S)
        if answer[0] == "failed":
            raise WorkerFailed(answer[1])

    def run(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> Outputs:
        """One batch, waiting for the answer on this thread (the warm-up at load, when the
        models it could call are not yet served to it)."""
        self._request(inputs, names, rows)
        while True:
            answer = self.receive()
            if answer[0] == "call":
                reason = "calls to other models are not served during the warm-up at load"
                self.send(("answer", answer[1], (pb_utils.TritonError.UNAVAILABLE, reason)))
            elif (outputs := self._answered(answer)) is not None:
                return outputs

    async def run_async(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> Outputs:
        """One batch, waiting for the answer on the event loop."""
        self._request(inputs, names, rows)
        while True:
            answer = await self._readable_then_receive()
            if answer[0] == "call":  # the model calls another model, and waits for it
                call = asyncio.ensure_future(self._serve_call(*answer[1:]))
                self._calls.add(call)
                call.add_done_callback(self._calls.discard)
            elif (outputs := self._answered(answer)) is not None:
                return outputs

    async def _serve_call(
        self,
        call_id: int,
        model_name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        request_id: str,
        timeout_us: int,
    ) -> None:
        """Run one call of the model's code (BLS) through the called model's own batcher,
        and send its outputs or its error back to the worker."""
        outcome: dict[str, np.ndarray] | tuple[int, str]
        try:
            if model_name == self.model:
                # Its own batch waits for the call: with every instance busy it never runs.
                raise InvalidInput(f"model '{self.model}' cannot call itself")
            if self.models is None:
                raise Unavailable("this server does not let models call other models")
            request = InferenceRequest(
                model_name=model_name,
                model_version=version,
                id=request_id,
                inputs={
                    name: InputTensor(name, tensors.datatype_of(array.dtype), array)
                    for name, array in inputs.items()
                },
                outputs=[RequestedOutput(name) for name in outputs] or None,
                timeout_us=timeout_us,
            )
            response = await self.models(model_name, version).infer(request)
            outcome = {out.name: out.data for out in response.outputs}
        except ServingError as exc:
            outcome = (_code_of(exc), str(exc))
        except Exception as exc:
            outcome = (pb_utils.TritonError.INTERNAL, f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(WorkerDied):  # the worker is gone; its batch fails alone
            self.send(("answer", call_id, outcome))

    async def _readable_then_receive(self) -> Any:
        """The worker's answer, once its end of the connection is readable.

        The reader stays registered between batches (two system calls a batch fewer, some
        10 us each on the machines measured); it is dropped when it fires with no batch
        waiting (a worker that died while idle would otherwise wake the loop forever).
        """
        if self.conn.has_message():  # it came in with the previous one's read
            return self.receive()
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


def _code_of(exc: ServingError) -> int:
    """A server error as the TritonError code model code reads (the other way)."""
    for code, kind in _ERRORS.items():
        if isinstance(exc, kind):
            return code
    return pb_utils.TritonError.INTERNAL


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
