"""What a served model version tells the world: the events its monitors subscribe to.

The batcher and the model instance publish; statistics, metrics, autoscale signals and the
drift monitor subscribe, each to the events it needs. Monitors see these events and the
read-only views they are handed, never the queue's items or the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]


class QueuedRequest(Protocol):
    """What a monitor may read of a request the batcher queued."""

    @property
    def rows(self) -> int: ...

    @property
    def enqueued_ns(self) -> int:
        """time.monotonic_ns() when it was queued."""


@dataclass(slots=True)
class BatchDone:
    """One batch left the model: its rows, its times in nanoseconds and its requests."""

    size: int
    input_ns: int
    infer_ns: int
    output_ns: int
    dispatched_ns: int
    requests: Sequence[QueuedRequest]
    ok: bool


class Subscriber:
    """Override the events a monitor needs; the others cost nothing (they are never called).

    All but `batch_ran` are called on the event loop, so plain counters suffice.
    """

    def arrived(self) -> None:
        """A request for this version was taken, before any check."""

    def batch_ran(self, inputs: Arrays, outputs: Arrays) -> None:
        """On the thread that ran the batch, after it was timed: what went in and came out."""

    def batch_done(self, batch: BatchDone) -> None:
        """A batch was answered (ok) or failed, on the loop."""

    def rejected(self, request: QueuedRequest, error: BaseException) -> None:
        """A queued request failed before it reached the model (timeout, client gone)."""

    def request_done(self, duration_ns: int, error: BaseException | None, protocol: str) -> None:
        """A request's answer is ready; `error` is None on success."""


def _overriding(subscribers: Sequence[Subscriber], name: str) -> tuple[Callable[..., Any], ...]:
    base = getattr(Subscriber, name)
    return tuple(getattr(s, name) for s in subscribers if getattr(type(s), name) is not base)


class Events:
    """Fans each event out to the subscribers that override it, in the order given."""

    def __init__(self, subscribers: Sequence[Subscriber] = ()) -> None:
        self.subscribers = tuple(subscribers)
        self._arrived = _overriding(self.subscribers, "arrived")
        self._batch_ran = _overriding(self.subscribers, "batch_ran")
        self._batch_done = _overriding(self.subscribers, "batch_done")
        self._rejected = _overriding(self.subscribers, "rejected")
        self._request_done = _overriding(self.subscribers, "request_done")

    @property
    def watches_batches(self) -> bool:
        """Whether anyone wants each batch's tensors (the batcher skips the call if not)."""
        return bool(self._batch_ran)

    def arrived(self) -> None:
        for handler in self._arrived:
            handler()

    def batch_ran(self, inputs: Arrays, outputs: Arrays) -> None:
        """A watcher that fails is logged and never fails the requests it watches."""
        for handler in self._batch_ran:
            try:
                handler(inputs, outputs)
            except Exception:
                log.exception("%r failed", getattr(handler, "__self__", handler))

    def batch_done(self, batch: BatchDone) -> None:
        for handler in self._batch_done:
            handler(batch)

    def rejected(self, request: QueuedRequest, error: BaseException) -> None:
        for handler in self._rejected:
            handler(request, error)

    def request_done(self, duration_ns: int, error: BaseException | None, protocol: str) -> None:
        for handler in self._request_done:
            handler(duration_ns, error, protocol)
