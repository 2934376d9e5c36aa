"""HTTP vs gRPC throughput and latency on the 64-256-256-10 MLP, next to in-process ORT.

Starts `conveyor serve` on the bundled example repository, drives it closed-loop at
each concurrency over HTTP (binary tensors) and gRPC (raw contents), reads the batch
sizes the server formed from the statistics extension, and measures in-process ONNX
Runtime at that batch size as the ceiling. perf_analyzer runs too when installed.

    .venv/bin/python benchmarks/http_grpc.py [--concurrency 1,8,32] [--duration 5]

Writes benchmarks/results/http_grpc.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess, batch_delta, ort_rows_per_s

from runtime.examples import build_example_repository
from runtime.loadtest.client import grpc_request_bytes, http_request_bytes, run_grpc, run_http

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"
MODEL = "mlp"


def perf_analyzer(protocol: str, port: int, concurrency: int, seconds: float) -> float | None:
    """Throughput (infer/s) perf_analyzer reports, or None when it is not installed."""
    if not PERF_ANALYZER.exists():
        return None
    # Stability within 50% over up to 10 windows: this machine is shared and noisy, and
    # perf_analyzer prints no figure at all for a concurrency it could not stabilise.
    cmd = [
        str(PERF_ANALYZER),
        "-m", MODEL,
        "-u", f"127.0.0.1:{port}",
        "-i", protocol,
        f"--concurrency-range={concurrency}",
        "-p", str(int(seconds * 1000)),
        "-s", "50",
        "-r", "10",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.findall(r"Concurrency: \d+, throughput: ([\d.]+) infer/sec", out.stdout)
    return float(m[-1]) if m else None


async def sweep(server: ServerProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    x = np.random.default_rng(1).random((1, 64), dtype=np.float32)
    inputs, types = {"INPUT0": x}, {"INPUT0": "FP32"}
    http_req = http_request_bytes("127.0.0.1", MODEL, inputs, types)
    grpc_req = grpc_request_bytes(MODEL, inputs, types)
    rows = []
    for protocol in args.protocols:
        for c in args.concurrency:
            before, cpu_before = server.stats(MODEL), server.cpu_s()
            if protocol == "http":
                step = await run_http(
                    "127.0.0.1", server.http_port, http_req, c, args.duration, args.warmup
                )
            else:
                step = await run_grpc(
                    f"127.0.0.1:{server.grpc_port}", grpc_req, c, args.duration, args.warmup
                )
            after, cpu = server.stats(MODEL), server.cpu_s() - cpu_before
            row = step.summary()
            # The CPU time includes the warm-up requests, which are not counted: scale it.
            measured = cpu * args.duration / (args.duration + args.warmup)
            row["server_cpu_us_per_request"] = 1e6 * measured / max(row["requests"], 1)
            row.update(batch_delta(before, after))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--protocols", default="http,grpc")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--no-perf-analyzer", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "http_grpc.json"
    )
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.protocols = args.protocols.split(",")

    repo = build_example_repository(Path(tempfile.mkdtemp()) / "repo")
    server = ServerProcess(repo)
    try:
        rows = asyncio.run(sweep(server, args))
        if not args.no_perf_analyzer:
            for row in rows:
                port = server.http_port if row["protocol"] == "http" else server.grpc_port
                row["perf_analyzer_rps"] = perf_analyzer(
                    row["protocol"], port, row["concurrency"], args.duration
                )
    finally:
        server.stop()
    model_path = repo / MODEL / "1" / "model.onnx"
    ceilings: dict[int, float] = {}
    for row in rows:
        b = max(1, round(row["avg_batch"]))
        if b not in ceilings:
            ceilings[b] = ort_rows_per_s(model_path, 64, b)
        row["ort_ceiling_rps"] = ceilings[b]
    report = {
        "benchmark": "http_grpc",
        "model": "mlp 64-256-256-10 FP32, batch 1 per request",
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "duration_s": args.duration,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"Conveyor, {MODEL} ({report['machine']})")
    for col in (
        "protocol",
        "conc",
        "req/s",
        "p50 ms",
        "p99 ms",
        "avg batch",
        "server CPU us/req",
        "perf_analyzer req/s",
        "ORT ceiling rows/s",
        "errors",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        pa = r.get("perf_analyzer_rps")
        table.add_row(
            r["protocol"],
            str(r["concurrency"]),
            f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['avg_batch']:.1f}",
            f"{r['server_cpu_us_per_request']:.0f}",
            "-" if pa is None else f"{pa:.0f}",
            f"{r['ort_ceiling_rps']:.0f}",
            str(sum(r["errors"].values())),
        )
    Console(width=160).print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
