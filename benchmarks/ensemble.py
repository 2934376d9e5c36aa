"""An ensemble against a client that chains the calls: the example repository's `mlp_pipeline`.

    .venv/bin/python benchmarks/ensemble.py [--duration 5] [--warmup 1]

One server on the bundled example repository. At concurrency 16, closed loop, one 8x8 UINT8
image (one row) per pipeline, over HTTP (binary tensors, keep-alive connections) and gRPC
(raw contents, one channel):

- `ensemble`: one request to `mlp_pipeline` (IMAGE -> mlp_pre -> mlp -> mlp_post);
- `sequential`: the client calls mlp_pre, then mlp, then mlp_post, each with the previous
  answer: one pipeline is three requests.

Both use the same small asyncio client, which encodes every request and decodes every answer
into numpy arrays (the sequential client needs the answers to go on, so the ensemble's are
decoded too). Each protocol runs ensemble, sequential, sequential, ensemble, so that a drift
of the shared machine falls on both modes alike. Per pipeline: throughput, latency, the CPU of
the server process, of its Python workers and of this client process (over the warm-up and
the step, divided by every pipeline answered in them), and the batch sizes the three models
formed (statistics extension).

Writes benchmarks/results/ensemble.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import orjson
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess, batch_delta, workers_cpu_s

from runtime import tensors
from runtime.examples import build_example_repository
from runtime.loadtest.client import MODEL_INFER, StepResult
from runtime.proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 16
HOST = "127.0.0.1"
STEPS = ("mlp_pre", "mlp", "mlp_post")
ORDER = ("ensemble", "sequential", "sequential", "ensemble")
# Each step's (input, datatype) and the outputs the next step or the caller reads.
CALLS = {
    "mlp_pre": (("IMAGE", "UINT8"), ("FEATURES",)),
    "mlp": (("INPUT0", "FP32"), ("OUTPUT0",)),
    "mlp_post": (("LOGITS", "FP32"), ("PROBABILITIES", "LABEL")),
    "mlp_pipeline": (("IMAGE", "UINT8"), ("PROBABILITIES", "LABEL")),
}

Outputs = dict[str, np.ndarray]
# (model, input array) -> the model's outputs.
Infer = Callable[[str, np.ndarray], Awaitable[Outputs]]


class Refused(Exception):
    """The server answered with an error status."""


def http_infer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Infer:
    """Infer over one keep-alive HTTP/1.1 connection, binary tensors both ways."""

    async def infer(model: str, x: np.ndarray) -> Outputs:
        (name, datatype), _ = CALLS[model]
        blob = tensors.to_raw(x, datatype)
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": name,
                        "shape": list(x.shape),
                        "datatype": datatype,
                        "parameters": {"binary_data_size": len(blob)},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        )
        writer.write(
            (
                f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {HOST}\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Inference-Header-Content-Length: {len(header)}\r\n"
                f"Content-Length: {len(header) + len(blob)}\r\n\r\n"
            ).encode()
            + header
            + blob
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length, json_length = 0, -1
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            key = key.strip().lower()
            if key == b"content-length":
                length = int(value)
            elif key == b"inference-header-content-length":
                json_length = int(value)
        body = await reader.readexactly(length)
        if head[9:12] != b"200":
            raise Refused(f"HTTP {head[9:12].decode()}")
        if json_length < 0:
            json_length = len(body)
        answer = orjson.loads(body[:json_length])
        outputs, offset = {}, json_length
        for out in answer["outputs"]:
            size = out["parameters"]["binary_data_size"]
            raw = body[offset : offset + size]
            outputs[out["name"]] = tensors.from_raw(raw, out["datatype"], out["shape"], out["name"])
            offset += size
        return outputs

    return infer


def grpc_infer(channel: grpc.aio.Channel) -> Infer:
    """Infer over a grpc.aio channel, raw contents both ways."""
    method = channel.unary_unary(
        MODEL_INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )

    async def infer(model: str, x: np.ndarray) -> Outputs:
        (name, datatype), _ = CALLS[model]
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name=name, datatype=datatype, shape=x.shape)
        request.raw_input_contents.append(tensors.to_raw(x, datatype))
        try:
            answer = await method(request)
        except grpc.aio.AioRpcError as exc:
            raise Refused(str(exc.code())) from None
        return {
            out.name: tensors.from_raw(raw, out.datatype, out.shape, out.name)
            for out, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)
        }

    return infer


async def ensemble(infer: Infer, image: np.ndarray) -> Outputs:
    return await infer("mlp_pipeline", image)


async def sequential(infer: Infer, image: np.ndarray) -> Outputs:
    features = (await infer("mlp_pre", image))["FEATURES"]
    logits = (await infer("mlp", features))["OUTPUT0"]
    return await infer("mlp_post", logits)


PIPELINES = {"ensemble": ensemble, "sequential": sequential}


def client_cpu_s() -> float:
    """CPU seconds of this process (the client: encoding, decoding, the sockets)."""
    return time.process_time()


async def closed_loop(
    infers: list[Infer], mode: str, images: list[np.ndarray], duration_s: float, warmup_s: float
) -> tuple[StepResult, int]:
    """`len(infers)` pipelines in flight; the step's latencies and every pipeline answered
    from the start of the warm-up to the end (the CPU figures divide by it)."""
    run = PIPELINES[mode]
    result = StepResult("", len(infers), duration_s)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    answered = 0

    async def worker(infer: Infer, image: np.ndarray) -> None:
        nonlocal answered
        while (t0 := time.perf_counter()) < stop_at:
            try:
                await run(infer, image)
                error = None
            except Exception as exc:
                error = str(exc) if isinstance(exc, Refused) else type(exc).__name__
            t1 = time.perf_counter()
            answered += error is None
            if t0 < measure_from:
                continue
            if error is None:
                result.latencies_s.append(t1 - t0)
            else:
                result.errors[error] = result.errors.get(error, 0) + 1

    await asyncio.gather(*(worker(i, x) for i, x in zip(infers, images, strict=True)))
    return result, answered


async def step(
    server: ServerProcess,
    protocol: str,
    infers: list[Infer],
    mode: str,
    images: list[np.ndarray],
    duration_s: float,
    warmup_s: float,
) -> dict[str, Any]:
    stats0 = {m: server.stats(m) for m in STEPS}
    cpu0, workers0, client0 = server.cpu_s(), workers_cpu_s(server.proc.pid), client_cpu_s()
    result, answered = await closed_loop(infers, mode, images, duration_s, warmup_s)
    cpu1, workers1, client1 = server.cpu_s(), workers_cpu_s(server.proc.pid), client_cpu_s()
    stats1 = {m: server.stats(m) for m in STEPS}
    result.protocol = protocol
    summary = result.summary()
    per = 1e6 / max(answered, 1)
    return {
        "mode": mode,
        "protocol": protocol,
        "concurrency": len(infers),
        "pipelines": summary["requests"],
        "pipelines_per_s": summary["throughput_rps"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "server_cpu_us": (cpu1 - cpu0) * per,
        "workers_cpu_us": (workers1 - workers0) * per,
        "client_cpu_us": (client1 - client0) * per,
        "avg_batch": {m: batch_delta(stats0[m], stats1[m])["avg_batch"] for m in STEPS},
    }


def check_agreement(ens: Outputs, seq: Outputs) -> None:
    """Both modes must answer the same before either is timed."""
    np.testing.assert_allclose(ens["PROBABILITIES"], seq["PROBABILITIES"], rtol=1e-5)
    np.testing.assert_array_equal(ens["LABEL"], seq["LABEL"])


@contextlib.asynccontextmanager
async def clients(server: ServerProcess, protocol: str) -> AsyncIterator[list[Infer]]:
    """One client per pipeline in flight: a connection each over HTTP, one channel for gRPC."""
    if protocol == "http":
        pairs = [await asyncio.open_connection(HOST, server.http_port) for _ in range(CONCURRENCY)]
        try:
            yield [http_infer(reader, writer) for reader, writer in pairs]
        finally:
            for _, writer in pairs:
                writer.close()
        return
    options = [("grpc.max_receive_message_length", 2**31 - 1)]
    async with grpc.aio.insecure_channel(f"{HOST}:{server.grpc_port}", options=options) as ch:
        yield [grpc_infer(ch)] * CONCURRENCY


async def protocol_runs(
    server: ServerProcess, protocol: str, duration_s: float, warmup_s: float
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 17, (1, 8, 8), dtype=np.uint8) for _ in range(CONCURRENCY)]
    async with clients(server, protocol) as infers:
        for infer, image in zip(infers, images, strict=True):
            check_agreement(await ensemble(infer, image), await sequential(infer, image))
        return [
            await step(server, protocol, infers, mode, images, duration_s, warmup_s)
            for mode in ORDER
        ]


async def sweep(server: ServerProcess, duration_s: float, warmup_s: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for protocol in ("http", "grpc"):
        rows += await protocol_runs(server, protocol, duration_s, warmup_s)
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per protocol: the mean of each mode's two runs, and ensemble over sequential."""
    out: dict[str, dict[str, float]] = {}
    for protocol in ("http", "grpc"):

        def mean(mode: str, key: str, protocol: str = protocol) -> float:
            values = [r[key] for r in rows if r["protocol"] == protocol and r["mode"] == mode]
            return float(np.mean(values))

        ens, seq = mean("ensemble", "pipelines_per_s"), mean("sequential", "pipelines_per_s")
        out[protocol] = {
            "ensemble_pipelines_per_s": ens,
            "sequential_pipelines_per_s": seq,
            "ensemble_over_sequential": ens / seq if seq else 0.0,
            "ensemble_cpu_us": mean("ensemble", "server_cpu_us")
            + mean("ensemble", "workers_cpu_us"),
            "sequential_cpu_us": mean("sequential", "server_cpu_us")
            + mean("sequential", "workers_cpu_us"),
        }
    return out


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ensemble.json")
    args = parser.parse_args()
    repo = build_example_repository(Path(tempfile.mkdtemp()) / "repo")
    # Eight runs, each warm-up plus duration, and room for the agreement checks and stats.
    bound_s = 2 * len(ORDER) * (args.duration + args.warmup) + 60
    load_before = os.getloadavg()
    server = ServerProcess(repo)
    try:
        rows = asyncio.run(asyncio.wait_for(sweep(server, args.duration, args.warmup), bound_s))
    finally:
        server.proc.terminate()
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
    summary = ratios(rows)
    report = {
        "benchmark": "ensemble",
        "machine": f"{cpu_model()}, {os.cpu_count()} cpus, {platform.platform()}",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "concurrency": CONCURRENCY,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "order": list(ORDER),
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"Ensemble vs chained calls, c={CONCURRENCY} ({report['machine']})")
    cols = (
        "protocol", "mode", "pipelines/s", "p50 ms", "p99 ms", "server CPU us",
        "workers CPU us", "client CPU us", "avg batch pre/mlp/post", "errors",
    )  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        batches = "/".join(f"{r['avg_batch'][m]:.1f}" for m in STEPS)
        table.add_row(
            r["protocol"], r["mode"], f"{r['pipelines_per_s']:.0f}", f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}", f"{r['server_cpu_us']:.0f}", f"{r['workers_cpu_us']:.0f}",
            f"{r['client_cpu_us']:.0f}", batches, str(sum(r["errors"].values())),
        )  # fmt: skip
    console = Console(width=160)
    console.print(table)
    for protocol, s in summary.items():
        console.print(
            f"{protocol}: ensemble {s['ensemble_pipelines_per_s']:.0f} / sequential "
            f"{s['sequential_pipelines_per_s']:.0f} pipelines/s = "
            f"{s['ensemble_over_sequential']:.2f}x"
        )
    console.print(f"load average before {load_before}, after {report['load_average_after']}")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
