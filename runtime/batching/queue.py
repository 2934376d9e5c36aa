"""The batcher's queue: one FIFO per priority level, bounded, with per-request deadlines."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.config import BatchingConfig
from runtime.errors import Unavailable


@dataclass(slots=True, eq=False)
class Pending:
    """One queued request: its inputs, its row count and the future its caller awaits."""

    inputs: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future[Any]
    enqueued_ns: int
    deadline_ns: int = 0
    level: int = 0
    shape_key: tuple[tuple[int, ...], ...] = field(default=())


class PriorityQueue:
    """Requests by priority level (1 = highest), FIFO within a level.

    Admission happens at `put`: a level whose queue is full refuses at once, as Triton does.
    """

    def __init__(self, config: BatchingConfig) -> None:
        self._config = config
        levels = max(config.priority_levels, 1)
        self._levels: list[deque[Pending]] = [deque() for _ in range(levels)]
        self._limits = [config.policy(i + 1).max_queue_size for i in range(levels)]
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
        queue = self._levels[item.level]
        limit = self._limits[item.level]
        if limit and len(queue) >= limit:
            raise Unavailable(
                f"[request id: {request_id or '<id_unknown>'}] Exceeds maximum queue size"
            )
        queue.append(item)
        self._size += 1

    def oldest_ns(self) -> int:
        """Enqueue time of the oldest pending request (the delay is measured from it)."""
        return min(q[0].enqueued_ns for q in self._levels if q)

    def __iter__(self) -> Iterator[Pending]:
        for q in self._levels:
            yield from q

    def popleft_matching(self, count: int) -> list[Pending]:
        """Remove the first `count` requests in priority order."""
        taken: list[Pending] = []
        for q in self._levels:
            while q and len(taken) < count:
                taken.append(q.popleft())
        self._size -= len(taken)
        return taken

    def remove(self, item: Pending) -> None:
        self._levels[item.level].remove(item)
        self._size -= 1
