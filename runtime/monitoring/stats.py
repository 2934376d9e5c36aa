"""Per model-version statistics in the shape of Triton's statistics extension.

Everything here is updated on the event loop thread only, so plain integers suffice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import Cancelled, InternalError, Rejected
from runtime.events import BatchDone, QueuedRequest, Subscriber

FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


def failure_reason(error: BaseException) -> str:
    """Triton's failure reason for an error: queue refusal, cancellation, model fault, other."""
    if isinstance(error, Rejected):
        return "REJECTED"
    if isinstance(error, Cancelled | asyncio.CancelledError):
        return "CANCELED"
    if isinstance(error, InternalError):
        return "BACKEND"
    return "OTHER"


@dataclass(slots=True)
class Duration:
    """A count and a total in nanoseconds (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchSizeStats:
    """Executions of one batch size and their compute times."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStatistics(Subscriber):
    """Counters for one model version; `to_dict` renders Triton's JSON."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.batches: dict[int, BatchSizeStats] = {}
        # Triton's nv_inference_request_failure reasons.
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)

    def batch_done(self, times: BatchDone) -> None:
        n = len(times.requests)
        for request in times.requests:
            self.queue.add(times.dispatched_ns - request.enqueued_ns)
        if not times.ok:
            return
        self.execution_count += 1
        self.inference_count += times.size
        self.last_inference_ms = time.time_ns() // 1_000_000
        self.compute_input.add(times.input_ns * n, n)
        self.compute_infer.add(times.infer_ns * n, n)
        self.compute_output.add(times.output_ns * n, n)
        stats = self.batches.get(times.size)
        if stats is None:
            stats = self.batches[times.size] = BatchSizeStats()
        stats.compute_input.add(times.input_ns)
        stats.compute_infer.add(times.infer_ns)
        stats.compute_output.add(times.output_ns)

    def rejected(self, request: QueuedRequest, error: BaseException) -> None:
        self.queue.add(time.monotonic_ns() - request.enqueued_ns)

    def request_done(self, duration_ns: int, error: BaseException | None, protocol: str) -> None:
        """Called by the data plane when a request's answer is ready (or failed)."""
        if error is None:
            self.success.add(duration_ns)
            return
        self.fail.add(duration_ns)
        self.failures[failure_reason(error)] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
                "compute_input": self.compute_input.to_dict(),
                "compute_infer": self.compute_infer.to_dict(),
                "compute_output": self.compute_output.to_dict(),
                "cache_hit": Duration().to_dict(),
                "cache_miss": Duration().to_dict(),
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": s.compute_input.to_dict(),
                    "compute_infer": s.compute_infer.to_dict(),
                    "compute_output": s.compute_output.to_dict(),
                }
                for size, s in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
