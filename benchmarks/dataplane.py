"""The request path below the protocols, in-process: DataPlane.infer per call, no network.

    .venv/bin/python benchmarks/dataplane.py [--calls 5000] [--rounds 7]

Three rows, each the median of `--rounds` rounds of `--calls` one-row requests awaited one
after another on uvloop:
- `mlp`: the bundled 64-256-256-10 MLP on ONNX Runtime (runs inline on the loop);
- `python`: a Python model computing y = 2 * x on FP32 [64] rows, in one worker process
  (the batch crosses to it and back through shared memory);
- `function`: the same y = 2 * x called in-process, the floor the worker hop is measured from.

`python - function` is the worker hop: the time per request that the process boundary
costs, and the CPU it costs (the server's process and its worker's together). Writes
benchmarks/results/dataplane.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from rich.console import Console
from rich.table import Table
from serverproc import workers_cpu_s

from runtime.dataplane import DataPlane
from runtime.examples import build_example_repository
from runtime.loader import InstanceSettings
from runtime.registry import Registry
from runtime.types import InferenceRequest, InputTensor

ROOT = Path(__file__).resolve().parent.parent
DOUBLE = """
class Model:
    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
"""
DOUBLE_CONFIG = """name: "double"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 64 ] } ]
"""


def repository() -> Path:
    root = build_example_repository(Path(tempfile.mkdtemp()) / "repo")
    (root / "double" / "1").mkdir(parents=True)
    (root / "double" / "config.pbtxt").write_text(DOUBLE_CONFIG)
    (root / "double" / "1" / "model.py").write_text(DOUBLE)
    return root


async def rounds(
    call: Callable[[], Awaitable[Any]], calls: int, n: int
) -> tuple[list[float], float, float]:
    """Microseconds per call, one figure per round, after a warm-up round; and the server's
    and its workers' CPU microseconds per call over all rounds."""
    for _ in range(calls // 4):
        await call()
    out = []
    cpu0, workers0 = time.process_time(), workers_cpu_s(os.getpid())
    for _ in range(n):
        start = time.perf_counter()
        for _ in range(calls):
            await call()
        out.append((time.perf_counter() - start) / calls * 1e6)
    cpu = (time.process_time() - cpu0) / (calls * n) * 1e6
    return out, cpu, (workers_cpu_s(os.getpid()) - workers0) / (calls * n) * 1e6


async def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    registry = Registry([repository()], InstanceSettings(device="cpu"))
    await registry.load("mlp")
    await registry.load("double")
    dp = DataPlane(registry)
    dp.ready = True
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)

    def request(model: str, name: str) -> InferenceRequest:
        return InferenceRequest(model, inputs={name: InputTensor(name, "FP32", x)})

    async def function() -> dict[str, np.ndarray]:
        return {"y": x * 2}

    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "mlp": lambda: dp.infer(request("mlp", "INPUT0")),
        "python": lambda: dp.infer(request("double", "x")),
        "function": function,
    }
    rows = []
    try:
        for name, call in cases.items():
            times, cpu, workers = await rounds(call, args.calls, args.rounds)
            rows.append(
                {
                    "case": name,
                    "us_per_call": statistics.median(times),
                    "rounds": times,
                    "server_cpu_us": cpu,
                    "worker_cpu_us": workers,
                }
            )
    finally:
        await registry.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dataplane.json")
    args = parser.parse_args()
    rows = uvloop.run(sweep(args))
    by_case = {r["case"]: r["us_per_call"] for r in rows}
    cpu = {r["case"]: r["server_cpu_us"] + r["worker_cpu_us"] for r in rows}
    report = {
        "benchmark": "dataplane",
        "machine": f"{platform.machine()} {platform.platform()}",
        "rows": rows,
        "worker_hop_us": by_case["python"] - by_case["function"],
        "worker_hop_cpu_us": cpu["python"] - cpu["function"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title="DataPlane.infer in-process, one row per request")
    for col in ("case", "us/call (median)", "rounds", "server CPU us", "worker CPU us"):
        table.add_column(col, justify="right")
    for r in rows:
        spread = f"{min(r['rounds']):.1f}-{max(r['rounds']):.1f}"
        cpu, workers = f"{r['server_cpu_us']:.1f}", f"{r['worker_cpu_us']:.1f}"
        table.add_row(r["case"], f"{r['us_per_call']:.1f}", spread, cpu, workers)
    console = Console()
    console.print(table)
    console.print(
        f"worker hop: {report['worker_hop_us']:.1f} us per request, "
        f"{report['worker_hop_cpu_us']:.1f} us of CPU (server and worker); wrote {args.out}"
    )


if __name__ == "__main__":
    main()
