"""gRPC on the native front end vs grpc.aio, with HTTP as the yardstick, on two models.

Starts `conveyor serve` once per front end (`--grpc-frontend aio`, then `native`) on the
bundled example repository and drives, with one-row requests at each concurrency over gRPC
and HTTP, the 64-256-256-10 MLP and Triton's "simple" INT32 [1, 16] add/sub model. For each
step it records throughput, p50/p99 latency and the server's CPU per inference: user+system
time of the server process (/proc) over the inferences the statistics extension counted in
the same interval, load generator's warm-up included on both sides; the same split by thread
(the event loop; the native server's own thread, which runs gRPC's transport and decodes
requests; gRPC's internal threads; the model's executor threads); and the load average,
since the machine may be shared. The load generator is perf_analyzer when installed (`make
perf-analyzer`), else Conveyor's own (`--client python`), which costs more client CPU on
the same cores.

    .venv/bin/python benchmarks/grpc_native.py [--models mlp,simple] [--concurrency 1,16]

Writes benchmarks/results/grpc_native.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess

from runtime.examples import build_example_repository
from runtime.loadtest.client import grpc_request_bytes, http_request_bytes, run_grpc, run_http

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"
FRONTENDS = ("aio", "native")
# One request's inputs per model: (name, datatype, shape) and how to draw the values.
MODELS: dict[str, list[tuple[str, str, tuple[int, ...]]]] = {
    "mlp": [("INPUT0", "FP32", (1, 64))],
    "simple": [("INPUT0", "INT32", (1, 16)), ("INPUT1", "INT32", (1, 16))],
}
DESCRIPTIONS = {
    "mlp": "MLP 64-256-256-10 FP32, one row per request",
    "simple": 'Triton\'s "simple": INT32 [1, 16] add/sub, one row per request',
}
# Thread groups of the CPU split (names as /proc shows them; the main thread is the loop's).
NATIVE_THREAD = "conveyor-grpc"
GRPC_THREADS = ("default-executo", "nexting_thread", "grpc_global_tim", "event_engine")


def perf_analyzer_step(
    model: str, protocol: str, port: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """perf_analyzer's throughput and latency percentiles for one concurrency."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [
            str(PERF_ANALYZER),
            "-m", model,
            "-u", f"127.0.0.1:{port}",
            "-i", protocol,
            f"--concurrency-range={concurrency}",
            "-p", str(int(seconds * 1000)),
            # This machine is shared and noisy: stable within 50% over up to 10 windows.
            "-s", "50",
            "-r", "10",
            "-f", str(out),
        ]  # fmt: skip
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if not out.exists():
            raise RuntimeError(f"perf_analyzer gave no figures:\n{run.stdout}\n{run.stderr}")
        (row,) = list(csv.DictReader(io.StringIO(out.read_text())))
    return {
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1e3,
        "p99_ms": float(row["p99 latency"]) / 1e3,
    }


def request_inputs(model: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    rng = np.random.default_rng(1)
    inputs: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for name, datatype, shape in MODELS[model]:
        if datatype == "FP32":
            inputs[name] = rng.random(shape, dtype=np.float32)
        else:
            inputs[name] = rng.integers(-100, 100, shape, dtype=np.int32)
        types[name] = datatype
    return inputs, types


async def python_step(
    server: ServerProcess, model: str, protocol: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    inputs, types = request_inputs(model)
    if protocol == "http":
        request = http_request_bytes("127.0.0.1", model, inputs, types)
        step = await run_http(
            "127.0.0.1", server.http_port, request, concurrency, args.duration, args.warmup
        )
    else:
        request = grpc_request_bytes(model, inputs, types)
        url = f"127.0.0.1:{server.grpc_port}"
        step = await run_grpc(url, request, concurrency, args.duration, args.warmup)
    summary = step.summary()
    keys = ("throughput_rps", "p50_ms", "p99_ms", "errors")
    return {k: summary[k] for k in keys}


def thread_cpu_s(server: ServerProcess) -> dict[str, float]:
    """CPU seconds by thread group (see the module docstring), from /proc."""
    groups = {"loop": 0.0, "native": 0.0, "grpc": 0.0, "executors": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended between the listing and the read
        if task.name == str(server.proc.pid):
            group = "loop"
        elif name == NATIVE_THREAD:
            group = "native"
        elif name.startswith(GRPC_THREADS):
            group = "grpc"
        else:
            group = "executors"
        groups[group] += (int(fields[11]) + int(fields[12])) / tick
    return groups


def measure(
    server: ServerProcess, model: str, protocol: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    before, cpu_before, threads_before = server.stats(model), server.cpu_s(), thread_cpu_s(server)
    if args.client == "perf_analyzer":
        port = server.http_port if protocol == "http" else server.grpc_port
        row = perf_analyzer_step(model, protocol, port, concurrency, args.duration)
    else:
        row = asyncio.run(python_step(server, model, protocol, concurrency, args))
    cpu_s = server.cpu_s() - cpu_before
    threads = thread_cpu_s(server)
    inferences = server.stats(model)["inference_count"] - before["inference_count"]
    per_inference = 1e6 / max(inferences, 1)
    row["server_cpu_us_per_inference"] = cpu_s * per_inference
    row["server_cpu_us_per_inference_by_thread"] = {
        group: (threads[group] - threads_before[group]) * per_inference for group in threads
    }
    row["inferences_counted"] = inferences
    row["load_average_1m"] = [load_before, os.getloadavg()[0]]
    return {"model": model, "protocol": protocol, "concurrency": concurrency, **row}


def run_frontend(repo: Path, frontend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    server = ServerProcess(repo, "--grpc-frontend", frontend)
    try:
        native = any("(native)" in line for line in server.log)
        if native != (frontend == "native"):
            raise RuntimeError(f"asked for {frontend}, the server runs the other front end")
        rows = []
        for model in args.models:
            for protocol in args.protocols:
                for concurrency in args.concurrency:
                    step = measure(server, model, protocol, concurrency, args)
                    rows.append({"frontend": frontend, **step})
        return rows
    finally:
        server.stop()


def table(report: dict[str, Any]) -> Table:
    t = Table(title=f"one row per request, client {report['client']}")
    for col in (
        "model",
        "front end",
        "protocol",
        "conc",
        "infer/s",
        "p50 ms",
        "p99 ms",
        "server CPU us/inf",
        "loop/native/grpc/exec",
        "load",
    ):
        t.add_column(col, justify="right")
    for r in report["rows"]:
        split = "/".join(f"{v:.0f}" for v in r["server_cpu_us_per_inference_by_thread"].values())
        t.add_row(
            r["model"], r["frontend"], r["protocol"], str(r["concurrency"]),
            f"{r['throughput_rps']:.0f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
            f"{r['server_cpu_us_per_inference']:.0f}", split,
            f"{r['load_average_1m'][0]:.1f}",
        )  # fmt: skip
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,simple")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--protocols", default="grpc,http")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="python client only")
    parser.add_argument(
        "--client",
        choices=("perf_analyzer", "python"),
        default="perf_analyzer" if PERF_ANALYZER.exists() else "python",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "grpc_native.json"
    )
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.protocols = args.protocols.split(",")

    repo = build_example_repository(Path(tempfile.mkdtemp()) / "repo")
    rows = [row for frontend in FRONTENDS for row in run_frontend(repo, frontend, args)]
    report = {
        "benchmark": "grpc_native",
        "models": {m: DESCRIPTIONS[m] for m in args.models},
        "client": args.client,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "cpu_split": "us per inference: loop = the event loop's thread; native = the native "
        "server's thread (gRPC transport, request decoding); grpc = gRPC's own threads; "
        "executors = every other thread (model runs)",
        "duration_s": args.duration,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console = Console(width=140)
    console.print(table(report))
    console.print(f"wrote {args.out} ({report['machine']})")


if __name__ == "__main__":
    main()
