"""A worker's calls to the other models of its server: Triton's BLS, `InferenceRequest.exec`.

Model code in a worker (runtime/worker.py) calls `exec()` while its batch runs; the call
travels on the worker's connection as ("call", id, model, version, inputs, outputs,
request id, timeout in us) and the server answers ("answer", id, outcome) once the called
model has run, through that model's own batcher, as any request does. The outcome is the
outputs by name, or (TritonError code, message): a callee's error comes back in the
response, as in Triton, never as an exception.

Several threads of one worker may wait at once (`async_exec` runs `exec` on a thread, as
Triton's does): whichever is free reads the connection and hands each answer to the
thread that waits for it. The call's tensors are pickled on the connection rather than
placed in the shared buffers, which belong to the batch being run; BLS tensors are the
model's own intermediate values, usually small.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from runtime.channel import Channel

# The called model's outputs, or (TritonError code, message).
Outcome = dict[str, np.ndarray] | tuple[int, str]


class ModelCalls:
    """The worker's end of its calls to other models, open only while a batch runs."""

    def __init__(self, conn: Channel) -> None:
        self.conn = conn
        # Triton serves BLS only inside `execute`; this is True while a batch runs.
        self.open = False
        self._ids = itertools.count(1)
        self._sending = threading.Lock()
        self._answers: dict[int, Outcome] = {}
        self._changed = threading.Condition()
        self._reading = False

    def call(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        request_id: str = "",
        timeout_us: int = 0,
    ) -> Outcome:
        """Run `model` on `inputs` in the server; blocks this thread until it answers."""
        call_id = next(self._ids)
        message = ("call", call_id, model, version, dict(inputs), list(outputs), request_id)
        with self._sending:
            self.conn.send((*message, timeout_us))
        return self._answer(call_id)

    def _answer(self, call_id: int) -> Outcome:
        while True:
            with self._changed:
                while self._reading and call_id not in self._answers:
                    self._changed.wait()
                if call_id in self._answers:
                    return self._answers.pop(call_id)
                self._reading = True  # this thread reads the next answer, for whomever
            answer: Any = None
            try:
                answer = self.conn.recv()
            finally:
                with self._changed:
                    self._reading = False
                    if answer is not None:
                        self._answers[answer[1]] = answer[2]
                    self._changed.notify_all()
