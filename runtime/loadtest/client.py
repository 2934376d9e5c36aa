"""A closed-loop load generator light enough not to be the bottleneck on a small machine.

Requests are serialised once and replayed: over HTTP on raw keep-alive connections
(a hand-written HTTP/1.1 exchange, because a general client library costs more CPU per
request than the server under test), over gRPC as pre-serialised bytes on one channel.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from runtime import tensors
from runtime.proto import grpc_service_pb2 as pb

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


@dataclass(slots=True)
class StepResult:
    """What one load step measured (latencies in seconds)."""

    protocol: str
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    rate_rps: float = 0.0  # the offered rate of an open loop; 0 for a closed loop

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def summary(self) -> dict[str, Any]:
        lat = np.array(self.latencies_s) * 1e3 if self.latencies_s else np.zeros(1)
        return {
            "protocol": self.protocol,
            "concurrency": self.concurrency,
            "offered_rps": self.rate_rps,
            "requests": self.requests,
            "throughput_rps": self.requests / self.duration_s if self.duration_s else 0.0,
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "p999_ms": float(np.percentile(lat, 99.9)),
            "errors": dict(self.errors),
        }


def http_request_bytes(
    host: str, model: str, inputs: dict[str, np.ndarray], datatypes: dict[str, str]
) -> bytes:
    """A complete HTTP/1.1 infer request using the binary tensor extension."""
    blobs = [tensors.to_raw(arr, datatypes[name]) for name, arr in inputs.items()]
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(arr.shape),
                    "datatype": datatypes[name],
                    "parameters": {"binary_data_size": len(blob)},
                }
                for (name, arr), blob in zip(inputs.items(), blobs, strict=True)
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    body = header + b"".join(blobs)
    head = (
        f"POST /v2/models/{model}/infer HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def grpc_request_bytes(
    model: str, inputs: dict[str, np.ndarray], datatypes: dict[str, str]
) -> bytes:
    """A serialised ModelInferRequest with raw_input_contents."""
    msg = pb.ModelInferRequest(model_name=model)
    for name, arr in inputs.items():
        msg.inputs.add(name=name, datatype=datatypes[name], shape=arr.shape)
        msg.raw_input_contents.append(tensors.to_raw(arr, datatypes[name]))
    return bytes(msg.SerializeToString())


Call = Callable[[], Awaitable[str | None]]


async def _http_caller(host: str, port: int, request: bytes) -> tuple[Call, Callable[[], None]]:
    reader, writer = await asyncio.open_connection(host, port)

    async def call() -> str | None:
        return await _http_exchange(reader, writer, request)

    return call, writer.close


async def _run_workers(
    callers: Sequence[Call], duration_s: float, warmup_s: float, result: StepResult
) -> None:
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker(call: Call) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                error = await call()
            except Exception as exc:
                error = type(exc).__name__
            t1 = time.perf_counter()
            if t0 >= measure_from:
                if error is None:
                    result.latencies_s.append(t1 - t0)
                else:
                    result.errors[error] = result.errors.get(error, 0) + 1

    await asyncio.gather(*(worker(c) for c in callers))


async def run_http(
    host: str, port: int, request: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> StepResult:
    """Closed loop: `concurrency` connections, each sending its next request on an answer."""
    pairs = [await _http_caller(host, port, request) for _ in range(concurrency)]
    result = StepResult("http", concurrency, duration_s)
    try:
        await _run_workers([c for c, _ in pairs], duration_s, warmup_s, result)
    finally:
        for _, close in pairs:
            close()
    return result


async def run_grpc(
    url: str, request: bytes, concurrency: int, duration_s: float, warmup_s: float
) -> StepResult:
    """Closed loop over one HTTP/2 channel with `concurrency` calls outstanding."""
    import grpc

    result = StepResult("grpc", concurrency, duration_s)
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    async with grpc.aio.insecure_channel(url, options=options) as channel:
        call = grpc_call(channel, request)
        await _run_workers([call] * concurrency, duration_s, warmup_s, result)
    return result


async def _http_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> str | None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    status = head[9:12].decode()
    return None if status == "200" else f"HTTP {status}"


class HttpPool:
    """Keep-alive connections for an open loop: one per request in flight, reused when idle.

    A connection idle longer than `max_idle_s` is closed rather than reused: servers drop
    idle keep-alive connections (uvicorn after 5-30 s), and a request written to one the
    server already closed fails without ever reaching it.
    """

    def __init__(self, host: str, port: int, request: bytes, max_idle_s: float = 4.0) -> None:
        self.host, self.port, self.request = host, port, request
        self.max_idle_s = max_idle_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = time.monotonic()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self.max_idle_s and not writer.is_closing():
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._all.append(writer)
        return reader, writer

    async def call(self) -> str | None:
        reader, writer = await self._connection()
        error = await _http_exchange(reader, writer, self.request)
        self._idle.append((reader, writer, time.monotonic()))
        return error

    def close(self) -> None:
        for writer in self._all:
            writer.close()


async def run_open_loop(
    protocol: str,
    call: Call,
    rate_rps: float,
    duration_s: float,
    warmup_s: float,
    seed: int = 0,
) -> StepResult:
    """Poisson arrivals at `rate_rps`; latency counts from each request's scheduled time.

    Measuring from the schedule rather than the send keeps a slow server from hiding its
    queueing by slowing the client down (no coordinated omission).
    """
    loop = asyncio.get_running_loop()
    rng = np.random.default_rng(seed)
    result = StepResult(protocol, 0, duration_s)
    result.rate_rps = rate_rps
    start = loop.time()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        try:
            error = await call()
        except Exception as exc:
            error = type(exc).__name__
        if scheduled < measure_from:
            return
        if error is None:
            result.latencies_s.append(loop.time() - scheduled)
        else:
            result.errors[error] = result.errors.get(error, 0) + 1

    scheduled = start
    while True:
        scheduled += rng.exponential(1.0 / rate_rps)
        if scheduled >= stop_at:
            break
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    return result


def grpc_call(channel: Any, request: bytes) -> Call:
    """One pre-serialised ModelInfer call on a grpc.aio channel."""
    import grpc

    method = channel.unary_unary(MODEL_INFER)

    async def call() -> str | None:
        try:
            await method(request)
        except grpc.aio.AioRpcError as exc:
            return str(exc.code())
        return None

    return call
