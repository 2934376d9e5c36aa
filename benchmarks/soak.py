"""Soak: a steady open-loop load for ten minutes; does memory grow or latency drift?

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--rate 2000]

Serves the bundled MLP, sends Poisson arrivals over HTTP at `--rate` requests/s (choose
about 70% of what benchmarks/http_grpc.py measured, less the load generator's own CPU on
a small machine), and records per minute the throughput, p50/p99 latency (from each
request's scheduled send) and the server's resident memory. Not run in CI.
Writes benchmarks/results/soak.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from serverproc import ServerProcess

from runtime.examples import build_example_repository
from runtime.loadtest.client import HttpPool, http_request_bytes, run_open_loop

ROOT = Path(__file__).resolve().parent.parent


def rss_mib(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(
    server: ServerProcess, minutes: int, rate: float, seconds: float = 60.0
) -> list[dict[str, Any]]:
    x = np.random.default_rng(0).random((1, 64), dtype=np.float32)
    request = http_request_bytes("127.0.0.1", "mlp", {"INPUT0": x}, {"INPUT0": "FP32"})
    pool = HttpPool("127.0.0.1", server.http_port, request)
    rows = []
    try:
        for minute in range(minutes):
            step = await run_open_loop("http", pool.call, rate, seconds, 0.0, seed=minute)
            row = {"minute": minute + 1, **step.summary(), "rss_mib": rss_mib(server)}
            rows.append(row)
            print(
                f"minute {row['minute']:2d}: {row['throughput_rps']:.0f} req/s, "
                f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                f"RSS {row['rss_mib']:.1f} MiB, errors {sum(row['errors'].values())}",
                flush=True,
            )
    finally:
        pool.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/soak.json")
    args = parser.parse_args()
    server = ServerProcess(build_example_repository(Path(tempfile.mkdtemp()) / "repo"))
    try:
        start_rss = rss_mib(server)
        rows = asyncio.run(soak(server, args.minutes, args.rate))
    finally:
        server.stop()
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "rate_rps": args.rate,
        "rss_at_start_mib": start_rss,
        "rss_growth_mib": rows[-1]["rss_mib"] - rows[0]["rss_mib"],
        "p99_first_last_ms": [rows[0]["p99_ms"], rows[-1]["p99_ms"]],
        "minutes": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        f"RSS {start_rss:.1f} MiB at start, {report['rss_growth_mib']:+.1f} MiB from minute 1 "
        f"to {args.minutes}; p99 {rows[0]['p99_ms']:.2f} -> {rows[-1]['p99_ms']:.2f} ms"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
