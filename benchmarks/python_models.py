"""Python models through the real server: the y = 2 * x model, and CPU-bound instances.

    .venv/bin/python benchmarks/python_models.py [--duration 5]

1. `double`: y = 2 * x on FP32 [64] rows, one worker, closed loop at concurrency 16 over
   HTTP (binary tensors) and gRPC (raw contents), one row per request: throughput, latency,
   and the CPU per request of the server and of its worker; `double_batched` is the same
   model with `dynamic_batching { }`, so requests that queue together cross as one batch.
2. `spin_1` and `spin_2`: about 1 ms of pure-Python work per request (`--spin-ms`; the loop's
   length is calibrated in this process first), with instance_group count 1 and 2, over
   HTTP at concurrency 8: what a second worker process adds on a machine with two cores.
   Paired: spin_1, spin_2, spin_2, spin_1 (`--spin-rounds` pairs), the ratio from the
   pooled throughputs.

Writes benchmarks/results/python_models.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess, workers_cpu_s

from runtime.loadtest.client import grpc_request_bytes, http_request_bytes, run_grpc, run_http

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 64 ] }} ]
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
{extra}"""
DOUBLE = """
class Model:
    def predict(self, inputs):
        return {{"y": inputs["x"] * 2}}
"""
# About 1 ms of interpreter work per request: the kind of model one process's GIL limits.
SPIN = """
class Model:
    def predict(self, inputs):
        total = 0
        for i in range({iterations} * len(inputs["x"])):
            total += i % 7
        return {{"y": inputs["x"] + (total % 2)}}
"""


def spin_iterations(ms: float) -> int:
    """The loop length that takes `ms` of CPU per row here (the median of 9 timings)."""
    probe = 20_000
    times = []
    for _ in range(9):
        start = time.process_time()
        total = 0
        for i in range(probe):
            total += i % 7
        times.append(time.process_time() - start)
    return max(1, round(probe * ms / 1000 / statistics.median(times)))


MODELS = {
    "double": (DOUBLE, 1, ""),
    "double_batched": (DOUBLE, 1, "dynamic_batching { }\n"),
    "spin_1": (SPIN, 1, ""),
    "spin_2": (SPIN, 2, ""),
}


def repository(iterations: int) -> Path:
    root = Path(tempfile.mkdtemp()) / "repo"
    for name, (code, count, extra) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        config = CONFIG.format(name=name, count=count, extra=extra)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(code.format(iterations=iterations))
    return root


async def step(
    server: ServerProcess, model: str, protocol: str, conc: int, seconds: float
) -> dict[str, Any]:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    inputs, types = {"x": x}, {"x": "FP32"}
    cpu0, workers0 = server.cpu_s(), workers_cpu_s(server.proc.pid)
    if protocol == "http":
        request = http_request_bytes("127.0.0.1", model, inputs, types)
        result = await run_http("127.0.0.1", server.http_port, request, conc, seconds, 1.0)
    else:
        request = grpc_request_bytes(model, inputs, types)
        result = await run_grpc(f"127.0.0.1:{server.grpc_port}", request, conc, seconds, 1.0)
    row = {"model": model, **result.summary()}
    # CPU over the warm-up and the step together, per request answered in the step.
    answered = max(row["requests"], 1) * (seconds + 1.0) / seconds
    row["server_cpu_us"] = (server.cpu_s() - cpu0) / answered * 1e6
    row["worker_cpu_us"] = (workers_cpu_s(server.proc.pid) - workers0) / answered * 1e6
    return row


async def sweep(server: ServerProcess, seconds: float, spin_rounds: int) -> list[dict[str, Any]]:
    rows = [
        await step(server, m, p, 16, seconds)
        for m in ("double", "double_batched")
        for p in ("http", "grpc")
    ]
    for _ in range(spin_rounds):
        rows += [
            await step(server, m, "http", 8, seconds)
            for m in ("spin_1", "spin_2", "spin_2", "spin_1")
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--spin-ms", type=float, default=1.0, help="CPU per request of spin_*")
    parser.add_argument("--spin-rounds", type=int, default=1, help="pairs of spin_1/spin_2 steps")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/python_models.json")
    args = parser.parse_args()
    iterations = spin_iterations(args.spin_ms)
    server = ServerProcess(repository(iterations))
    try:
        rows = asyncio.run(sweep(server, args.duration, args.spin_rounds))
    finally:
        server.proc.terminate()
        server.proc.wait(30)
    spin = {
        m: statistics.mean(r["throughput_rps"] for r in rows if r["model"] == m)
        for m in ("spin_1", "spin_2")
    }
    report = {
        "benchmark": "python_models",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "duration_s": args.duration,
        "rows": rows,
        "spin_iterations_per_row": iterations,
        "spin_ms": args.spin_ms,
        "two_instances_over_one": spin["spin_2"] / spin["spin_1"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"Python models ({report['machine']})")
    cols = (
        "model",
        "protocol",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "server CPU us",
        "worker CPU us",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["model"], r["protocol"], str(r["concurrency"]), f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['server_cpu_us']:.0f}",
            f"{r['worker_cpu_us']:.0f}",
        )  # fmt: skip
    console = Console(width=140)
    console.print(table)
    console.print(f"count 2 / count 1: {report['two_instances_over_one']:.2f}x; wrote {args.out}")


if __name__ == "__main__":
    main()
