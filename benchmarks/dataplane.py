"""The request path below the protocols, in-process: DataPlane.infer per call, no network.

    .venv/bin/python benchmarks/dataplane.py [--calls 5000] [--rounds 7]

Four rows, each the median of `--rounds` rounds of `--calls` one-row requests awaited one
after another on uvloop:
- `mlp`: the bundled 64-256-256-10 MLP on ONNX Runtime (runs inline on the loop), through
  `DataPlane.infer`;
- `python`: a Python model computing y = 2 * x on FP32 [64] rows, in one worker process
  (the batch crosses to it and back through shared memory), through its served version's
  `infer`: checks, batcher, events, response;
- `in_process`: the same y = 2 * x with the same config through the same `infer`, checks,
  batcher and events, its batch awaited as a worker's is, but run in the server's process;
- `function`: the same y = 2 * x called bare, the floor of everything.

`python - in_process` is the worker hop: the time per request that the process boundary
costs, and the CPU it costs (the server's process and its worker's together, and the
server's alone). Writes benchmarks/results/dataplane.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from rich.console import Console
from rich.table import Table
from serverproc import workers_cpu_s

from runtime import loader
from runtime.dataplane import DataPlane
from runtime.examples import build_example_repository
from runtime.loader import InstanceSettings
from runtime.pipeline import Pipeline
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


class InProcessDouble:
    """y = 2 * x in the server's own process, its batches awaited as a worker's are."""

    thread_bound = True

    def graph_inputs(self) -> list[Any]:
        return []

    def graph_outputs(self) -> list[Any]:
        return []

    def prepare(self, completed: Any) -> None:
        pass

    def run(self, inputs: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
        return {"y": inputs["x"] * 2}

    async def run_async(
        self, inputs: Mapping[str, np.ndarray], names: Sequence[str], rows: Sequence[int]
    ) -> dict[str, Any]:
        return {"y": inputs["x"] * 2}

    def close(self) -> None:
        pass


async def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = InstanceSettings(device="cpu")
    registry = Registry([repository()], settings)
    await registry.load("mlp")
    await registry.load("double")
    dp = DataPlane(registry)
    dp.ready = True
    worker = registry.get("double")
    # The loader's own wiring of a version (private: this benchmark is its one other user).
    pipeline = Pipeline((), InProcessDouble(), (), ["y"])
    in_process = loader._instance(worker.config, 1, pipeline, None, settings)
    in_process.start()
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)

    def request(model: str, name: str) -> InferenceRequest:
        return InferenceRequest(model, inputs={name: InputTensor(name, "FP32", x)})

    async def function() -> dict[str, np.ndarray]:
        return {"y": x * 2}

    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "mlp": lambda: dp.infer(request("mlp", "INPUT0")),
        "python": lambda: worker.infer(request("double", "x")),
        "in_process": lambda: in_process.infer(request("double", "x")),
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
        await in_process.close()
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
    server_cpu = {r["case"]: r["server_cpu_us"] for r in rows}
    report = {
        "benchmark": "dataplane",
        "machine": f"{platform.machine()} {platform.platform()}",
        "rows": rows,
        "worker_hop_us": by_case["python"] - by_case["in_process"],
        "worker_hop_cpu_us": cpu["python"] - cpu["in_process"],
        "worker_hop_server_cpu_us": server_cpu["python"] - server_cpu["in_process"],
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
        f"worker hop (python - in_process): {report['worker_hop_us']:.1f} us per request, "
        f"{report['worker_hop_cpu_us']:.1f} us of CPU (server and worker), "
        f"{report['worker_hop_server_cpu_us']:.1f} us of the server's; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
