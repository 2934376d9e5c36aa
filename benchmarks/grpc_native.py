"""gRPC on the native front end vs grpc.aio, with HTTP as the yardstick, on the example MLP.

Starts `conveyor serve` once per front end (`--grpc-frontend aio`, then `native`) on the
bundled example repository and drives the 64-256-256-10 MLP with one-row requests at each
concurrency over gRPC and HTTP. For each step it records throughput, p50/p99 latency and
the server's CPU per inference: user+system time of the server process (/proc) over the
inferences the statistics extension counted in the same interval, load generator's warm-up
included on both sides. The load generator is perf_analyzer when installed (`make
perf-analyzer`), else Conveyor's own (`--client python`), which costs more client CPU on
the same cores.

    .venv/bin/python benchmarks/grpc_native.py [--concurrency 1,16] [--duration 5]

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
MODEL = "mlp"
FRONTENDS = ("aio", "native")


def perf_analyzer_step(
    protocol: str, port: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """perf_analyzer's throughput and latency percentiles for one concurrency."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [
            str(PERF_ANALYZER),
            "-m", MODEL,
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


async def python_step(
    server: ServerProcess, protocol: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    x = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    inputs, types = {"INPUT0": x}, {"INPUT0": "FP32"}
    if protocol == "http":
        request = http_request_bytes("127.0.0.1", MODEL, inputs, types)
        step = await run_http(
            "127.0.0.1", server.http_port, request, concurrency, args.duration, args.warmup
        )
    else:
        request = grpc_request_bytes(MODEL, inputs, types)
        url = f"127.0.0.1:{server.grpc_port}"
        step = await run_grpc(url, request, concurrency, args.duration, args.warmup)
    summary = step.summary()
    keys = ("throughput_rps", "p50_ms", "p99_ms", "errors")
    return {k: summary[k] for k in keys}


def measure(
    server: ServerProcess, protocol: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    before, cpu_before = server.stats(MODEL), server.cpu_s()
    if args.client == "perf_analyzer":
        port = server.http_port if protocol == "http" else server.grpc_port
        row = perf_analyzer_step(protocol, port, concurrency, args.duration)
    else:
        row = asyncio.run(python_step(server, protocol, concurrency, args))
    cpu_s = server.cpu_s() - cpu_before
    inferences = server.stats(MODEL)["inference_count"] - before["inference_count"]
    row["server_cpu_us_per_inference"] = 1e6 * cpu_s / max(inferences, 1)
    row["inferences_counted"] = inferences
    return {"protocol": protocol, "concurrency": concurrency, **row}


def run_frontend(repo: Path, frontend: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    server = ServerProcess(repo, "--grpc-frontend", frontend)
    try:
        native = any("(native)" in line for line in server.log)
        if native != (frontend == "native"):
            raise RuntimeError(f"asked for {frontend}, the server runs the other front end")
        rows = []
        for protocol in args.protocols:
            for concurrency in args.concurrency:
                rows.append({"frontend": frontend, **measure(server, protocol, concurrency, args)})
        return rows
    finally:
        server.stop()


def table(report: dict[str, Any]) -> Table:
    t = Table(title=f"{MODEL}, one row per request, client {report['client']}")
    for col in (
        "front end",
        "protocol",
        "conc",
        "infer/s",
        "p50 ms",
        "p99 ms",
        "server CPU us/inf",
    ):
        t.add_column(col, justify="right")
    for r in report["rows"]:
        t.add_row(
            r["frontend"], r["protocol"], str(r["concurrency"]), f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['server_cpu_us_per_inference']:.0f}",
        )  # fmt: skip
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.protocols = args.protocols.split(",")

    repo = build_example_repository(Path(tempfile.mkdtemp()) / "repo")
    rows = [row for frontend in FRONTENDS for row in run_frontend(repo, frontend, args)]
    report = {
        "benchmark": "grpc_native",
        "model": "mlp 64-256-256-10 FP32, batch 1 per request",
        "client": args.client,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
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
