"""Does `conveyor bench` agree with perf_analyzer, and where is its own ceiling?

    .venv/bin/python benchmarks/bench_agreement.py [--duration 5]

On one server (the bundled examples), the same model and concurrency are measured by
`conveyor bench` (runtime.loadtest) and by Triton's perf_analyzer, over HTTP and gRPC;
the ratio should be within 15%. The client's ceiling is measured against the trivial
`simple` model (16 int32 adds): requests per second per core of client CPU.
Writes benchmarks/results/bench_agreement.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess

from runtime.examples import build_example_repository
from runtime.loadtest.bench import Target, sweep

ROOT = Path(__file__).resolve().parent.parent
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"


def perf_analyzer(protocol: str, url: str, model: str, conc: int, seconds: float) -> float:
    cmd = [
        str(PERF_ANALYZER), "-m", model, "-u", url, "-i", protocol,
        f"--concurrency-range={conc}", "-p", str(int(seconds * 1000)), "-s", "50", "-r", "10",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300).stdout
    found = re.findall(r"Concurrency: \d+, throughput: ([\d.]+) infer/sec", out)
    if not found:
        raise RuntimeError(f"perf_analyzer gave no figure:\n{out[-2000:]}")
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/bench_agreement.json"
    )
    args = parser.parse_args()
    server = ServerProcess(build_example_repository(Path(tempfile.mkdtemp()) / "repo"))
    rows: list[dict[str, Any]] = []
    try:
        for protocol, port in (("http", server.http_port), ("grpc", server.grpc_port)):
            for model, conc in (("mlp", 8), ("mlp", 32), ("simple", 32)):
                target = Target("127.0.0.1", port, protocol, model)
                ours = asyncio.run(sweep(target, [conc], [], args.duration, 1.0, 1, None))[0]
                theirs = perf_analyzer(protocol, target.url, model, conc, args.duration)
                rows.append({
                    "protocol": protocol, "model": model, "concurrency": conc,
                    "conveyor_bench_rps": ours["throughput_rps"], "perf_analyzer_rps": theirs,
                    "ratio": ours["throughput_rps"] / theirs,
                    "client_cpu_us_per_request": ours["client_cpu_us_per_request"],
                    "client_ceiling_rps": ours["client_ceiling_rps"],
                })  # fmt: skip
    finally:
        server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=2))
    table = Table(title="conveyor bench vs perf_analyzer (same server, same load)")
    for col in ("protocol", "model", "conc", "conveyor bench req/s", "perf_analyzer req/s",
                "ratio", "client CPU us/req", "client ceiling req/s/core"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["protocol"], r["model"], str(r["concurrency"]), f"{r['conveyor_bench_rps']:.0f}",
            f"{r['perf_analyzer_rps']:.0f}", f"{r['ratio']:.2f}",
            f"{r['client_cpu_us_per_request']:.0f}", f"{r['client_ceiling_rps']:.0f}",
        )  # fmt: skip
    Console(width=160).print(table)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
