"""`conveyor bench`: a latency-throughput sweep against any KServe v2 server.

Inputs come from the model's metadata (random within each datatype) or from a JSON file
in perf_analyzer's format. Each step runs closed loop (a fixed concurrency) or open loop
(Poisson arrivals at a rate, latency from the scheduled send), and reads the server's
statistics extension before and after for its queue and compute times.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import tensors
from runtime.loadtest.client import (
    HttpPool,
    StepResult,
    grpc_call,
    grpc_request_bytes,
    http_request_bytes,
    run_grpc,
    run_http,
    run_open_loop,
)

MAX_MESSAGE = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Target:
    """Where the load goes: `host:port`, protocol and model."""

    host: str
    port: int
    protocol: str
    model: str

    @classmethod
    def parse(cls, url: str, protocol: str, model: str) -> Target:
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--url must be HOST:PORT, got '{url}'")
        if protocol not in ("http", "grpc"):
            raise ValueError(f"--protocol must be http or grpc, got '{protocol}'")
        return cls(host, int(port), protocol, model)

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


async def _grpc_unary(target: Target, method: str, request: Any, response_type: Any) -> Any:
    import grpc

    async with grpc.aio.insecure_channel(target.url) as channel:
        call = channel.unary_unary(
            f"/inference.GRPCInferenceService/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        return await call(request, timeout=30)


async def metadata(target: Target) -> dict[str, Any]:
    """The model's inputs: name, datatype and shape (with -1 for the batch dimension)."""
    if target.protocol == "http":
        url = f"http://{target.url}/v2/models/{target.model}"
        return dict(await asyncio.to_thread(_get_json, url))
    from google.protobuf import json_format

    from runtime.proto import grpc_service_pb2 as pb

    reply = await _grpc_unary(
        target,
        "ModelMetadata",
        pb.ModelMetadataRequest(name=target.model),
        pb.ModelMetadataResponse,
    )
    doc: dict[str, Any] = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    for tensor in doc.get("inputs", []):
        tensor["shape"] = [int(d) for d in tensor.get("shape", [])]
    return doc


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


async def statistics(target: Target) -> dict[str, int] | None:
    """Queue and compute totals of the model's statistics (None if the server has none)."""
    keys = ("queue", "compute_input", "compute_infer", "compute_output", "success")
    try:
        if target.protocol == "http":
            url = f"http://{target.url}/v2/models/{target.model}/stats"
            doc = await asyncio.to_thread(_get_json, url)
            s = doc["model_stats"]
            inf = [m["inference_stats"] for m in s]
            return {
                f"{k}_{f}": sum(int(i[k][f]) for i in inf) for k in keys for f in ("count", "ns")
            }
        from runtime.proto import grpc_service_pb2 as pb

        reply = await _grpc_unary(
            target,
            "ModelStatistics",
            pb.ModelStatisticsRequest(name=target.model),
            pb.ModelStatisticsResponse,
        )
        result = {}
        for k in keys:
            for f in ("count", "ns"):
                result[f"{k}_{f}"] = sum(
                    int(getattr(getattr(m.inference_stats, k), f)) for m in reply.model_stats
                )
        return result
    except Exception:  # a server without the statistics extension still gets measured
        return None


def random_inputs(meta: dict[str, Any], batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random data within each input's datatype; -1 dims become the batch size, then 1."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in meta["inputs"]:
        shape = [int(d) for d in tensor["shape"]]
        if shape and shape[0] == -1:
            shape[0] = batch_size
        shape = [1 if d == -1 else d for d in shape]
        inputs[tensor["name"]] = _random(tensor["datatype"], shape, rng)
    return inputs


def _random(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if datatype == "BYTES":
        count = int(np.prod(shape))
        flat = np.empty(count, dtype=object)
        flat[:] = [bytes(rng.integers(97, 123, 8, dtype=np.uint8)) for _ in range(count)]
        return flat.reshape(shape)
    dtype = tensors.numpy_dtype(datatype)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 100, shape).astype(dtype)


def file_inputs(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The first entry of a perf_analyzer JSON input file.

    Its form: {"data": [{"<input>": [values...] or {"content": [...], "shape": [...]}}]}.
    """
    entry = json.loads(path.read_text())["data"][0]
    inputs = {}
    for tensor in meta["inputs"]:
        value = entry[tensor["name"]]
        content = value["content"] if isinstance(value, dict) else value
        shape = value.get("shape") if isinstance(value, dict) else None
        if shape is None:
            shape = [d for d in tensor["shape"] if d != -1] or [len(content)]
        if tensor["shape"] and tensor["shape"][0] == -1:
            shape = [1, *shape]
        arr = tensors.from_json(content, tensor["datatype"], shape, tensor["name"])
        inputs[tensor["name"]] = arr
    return inputs


async def run_step(
    target: Target, inputs: dict[str, np.ndarray], datatypes: dict[str, str],
    concurrency: int, rate: float, duration_s: float, warmup_s: float,
) -> StepResult:  # fmt: skip
    """One closed-loop (rate 0) or open-loop step."""
    if target.protocol == "http":
        request = http_request_bytes(target.host, target.model, inputs, datatypes)
        if not rate:
            return await run_http(
                target.host, target.port, request, concurrency, duration_s, warmup_s
            )
        pool = HttpPool(target.host, target.port, request)
        try:
            return await run_open_loop("http", pool.call, rate, duration_s, warmup_s)
        finally:
            pool.close()
    request = grpc_request_bytes(target.model, inputs, datatypes)
    if not rate:
        return await run_grpc(target.url, request, concurrency, duration_s, warmup_s)
    import grpc

    options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(target.url, options=options) as channel:
        return await run_open_loop("grpc", grpc_call(channel, request), rate, duration_s, warmup_s)


def server_times(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float]:
    """Mean server-side queue and compute time per request over a step, in ms."""
    if before is None or after is None:
        return {}
    out = {}
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        count = after[f"{key}_count"] - before[f"{key}_count"]
        ns = after[f"{key}_ns"] - before[f"{key}_ns"]
        out[f"server_{key}_ms"] = ns / count / 1e6 if count else 0.0
    return out


async def sweep(
    target: Target,
    concurrency: Sequence[int],
    rates: Sequence[float],
    duration_s: float,
    warmup_s: float,
    batch_size: int,
    input_data: Path | None,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Every step in turn; returns one summary row per step."""
    meta = await metadata(target)
    inputs = file_inputs(input_data, meta) if input_data else random_inputs(meta, batch_size)
    datatypes = {t["name"]: t["datatype"] for t in meta["inputs"]}
    steps = [(c, 0.0) for c in concurrency] + [(0, r) for r in rates]
    rows = []
    for conc, rate in steps:
        before = await statistics(target)
        cpu_start = time.process_time()
        step = await run_step(target, inputs, datatypes, conc, rate, duration_s, warmup_s)
        cpu_s = time.process_time() - cpu_start
        row = step.summary()
        # The client's own cost, warm-up included: its ceiling is 1 / that (one core).
        sent = max(1.0, row["throughput_rps"] * (duration_s + warmup_s))
        row["client_cpu_us_per_request"] = 1e6 * cpu_s / sent
        row["client_ceiling_rps"] = sent / cpu_s if cpu_s > 0 else None
        row["mode"] = "open" if rate else "closed"
        row["batch_size"] = batch_size
        row.update(server_times(before, await statistics(target)))
        rows.append(row)
        if progress is not None:
            progress()
    return rows
