"""The batcher's queue: one FIFO per priority level, bounded, with per-request deadlines."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.config import BatchingConfig
from runtime.errors import Rejected


@dataclass(slots=True, eq=False)
class Pending:
    """One queued request: its inputs, its row count and the future its caller awaits."""

    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[Any]
    enqueued_ns: int
    deadline_ns: int = 0
    level: int = 0
    delayed: int = 0
    client_gone: Callable[[], bool] | None = None
    # The request's RequestTrace when it is sampled (runtime/monitoring/tracing.py).
    trace: Any = None
    shape_key: tuple[tuple[int, ...], ...] = field(default=())

    def is_dead(self, now: int) -> bool:
        """Cancelled, past its queue deadline, or its client went away."""
        return (
            self.future.done()
            or bool(self.deadline_ns and self.deadline_ns <= now)
            or (self.client_gone is not None and self.client_gone())
        )


def resolve(
    fut: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
) -> None:
    """Answer a request once: a caller that went away leaves a cancelled future, and that must
    never break the batch loop."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class PriorityQueue:
    """Requests by priority level (1 = highest), FIFO within a level.

    Each level keeps a second FIFO for requests whose queue timeout ran out under
    `timeout_action: DELAY`: they are served after every live request of their level.
    Admission happens at `put`: a level whose queue is full refuses at once, as Triton does.
    """

    def __init__(self, config: BatchingConfig, default_limit: int = 0) -> None:
        self._config = config
        levels = max(config.priority_levels, 1)
        # Serving order: level 1 live, level 1 delayed, level 2 live, ...
        self._order: list[deque[Pending]] = [deque() for _ in range(2 * levels)]
        # A level's own max_queue_size wins; else the server's default (0 = unbounded).
        self._limits = [config.policy(i + 1).max_queue_size or default_limit for i in range(levels)]
        self.delay_on_timeout = [config.policy(i + 1).timeout_action_delay for i in range(levels)]
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def level_for(self, priority: int) -> int:
        """Map a request's priority to a level index; 0 or out of range takes the default."""
        levels = self._config.priority_levels
        if levels == 0:
            return 0
        if priority < 1 or priority > levels:
            priority = self._config.default_priority_level
        return priority - 1

    def put(self, item: Pending, request_id: str) -> None:
        live, delayed = self._order[2 * item.level], self._order[2 * item.level + 1]
        limit = self._limits[item.level]
        if limit and len(live) + len(delayed) >= limit:
            raise Rejected(
                f"[request id: {request_id or '<id_unknown>'}] Exceeds maximum queue size"
            )
        live.append(item)
        self._size += 1

    def oldest_ns(self) -> int:
        """Enqueue time of the oldest pending request (the delay is measured from it)."""
        return min(q[0].enqueued_ns for q in self._order if q)

    def __iter__(self) -> Iterator[Pending]:
        for q in self._order:
            yield from q

    def popleft_matching(self, count: int) -> list[Pending]:
        """Remove the first `count` requests in serving order."""
        taken: list[Pending] = []
        for q in self._order:
            while q and len(taken) < count:
                taken.append(q.popleft())
        self._size -= len(taken)
        return taken

    def remove(self, item: Pending) -> None:
        self._order[2 * item.level + item.delayed].remove(item)
        self._size -= 1

    def delay(self, item: Pending) -> None:
        """Move an expired request behind the live ones of its level; it no longer expires."""
        self._order[2 * item.level].remove(item)
        item.delayed = 1
        item.deadline_ns = 0
        self._order[2 * item.level + 1].append(item)
