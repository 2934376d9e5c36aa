"""What leaving the drift monitor on costs: the MLP at concurrency 32, on vs off.

    .venv/bin/python benchmarks/drift_cost.py [--protocol grpc|http] [--duration 2]
        [--rounds 16] [--control]

One server holds two copies of the bundled MLP (64-256-256-10), identical except that
`mlp_drift` carries a drift profile of its inputs and `mlp_plain` none. Rounds alternate
between them (plain, drift, plain, ...) so that the machine's drift in speed falls on
both alike; the median ratio of the two adjacent measurements of each round is the
cost, and `--control` (no monitor on either) shows how far two identical models differ
here. The window is set to 1000 rows so that windows close and are judged during the
run. Writes benchmarks/results/drift_cost[_http].json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess, batch_delta

from runtime.examples import mlp_model
from runtime.loadtest.client import grpc_request_bytes, http_request_bytes, run_grpc, run_http
from runtime.monitoring import profile

ROOT = Path(__file__).resolve().parent.parent
SIZES = (64, 256, 256, 10)
CONCURRENCY = 32
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
"""
MODELS = ("mlp_plain", "mlp_drift")


def inputs(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, SIZES[0]), dtype=np.float32)


def build_repository(root: Path, control: bool) -> Path:
    model = mlp_model(SIZES)
    for name in MODELS:
        version = root / name / "1"
        version.mkdir(parents=True)
        onnx.save(model, version / "model.onnx")
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    if not control:
        built = profile.build(inputs(20_000, seed=0), "INPUT0")
        profile.save(built, root / "mlp_drift" / "1" / profile.FILENAME)
    return root


async def measure(
    server: ServerProcess, model: str, duration: float, protocol: str
) -> dict[str, Any]:
    tensors, types = {"INPUT0": inputs(1, seed=1)}, {"INPUT0": "FP32"}
    before = server.stats(model)
    cpu0 = server.cpu_s()
    if protocol == "http":
        request = http_request_bytes("127.0.0.1", model, tensors, types)
        step = await run_http("127.0.0.1", server.http_port, request, CONCURRENCY, duration, 1.0)
    else:
        request = grpc_request_bytes(model, tensors, types)
        url = f"127.0.0.1:{server.grpc_port}"
        step = await run_grpc(url, request, CONCURRENCY, duration, 1.0)
    cpu = server.cpu_s() - cpu0
    row = {"model": model, **step.summary(), **batch_delta(before, server.stats(model))}
    row["server_cpu_us_per_req"] = cpu / max(step.requests, 1) * 1e6
    return row


def drift_windows(server: ServerProcess) -> int:
    url = f"http://127.0.0.1:{server.http_port}/v2/models/mlp_drift/drift"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(json.load(r)["windows_judged"])
    except urllib.error.HTTPError as exc:  # --control: no monitor
        exc.close()
        return 0


async def run(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for i in range(args.rounds):
        # Alternate which model goes first, so that an order effect falls on both.
        for model in MODELS if i % 2 == 0 else MODELS[::-1]:
            rows.append(await measure(server, model, args.duration, args.protocol))
    by_model = {m: [r for r in rows if r["model"] == m] for m in MODELS}
    mean = {m: statistics.fmean(r["throughput_rps"] for r in by_model[m]) for m in MODELS}
    cpu = {m: statistics.fmean(r["server_cpu_us_per_req"] for r in by_model[m]) for m in MODELS}
    # Each round's two measurements are adjacent in time: their ratio cancels the slow
    # drift in this machine's speed, and the spread of the ratios shows what is left.
    paired = sorted(
        d["throughput_rps"] / p["throughput_rps"]
        for p, d in zip(by_model["mlp_plain"], by_model["mlp_drift"], strict=True)
    )
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return {
        "rounds": rows,
        "mean_rps": mean,
        "throughput_ratio": statistics.median(paired),
        "throughput_ratio_quartiles": [quartiles[0], quartiles[2]],
        "server_cpu_us_per_req": cpu,
        "drift_windows_judged": drift_windows(server),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument(
        "--control",
        action="store_true",
        help="A/A run: neither model has a monitor, to show the noise between the two",
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--out", type=Path, help="default: results/drift_cost[_http].json")
    args = parser.parse_args()
    suffix = "_http" if args.protocol == "http" else ""
    args.out = args.out or ROOT / f"benchmarks/results/drift_cost{suffix}.json"
    repo = build_repository(Path(tempfile.mkdtemp()) / "repo", args.control)
    server = ServerProcess(repo, "--drift-window-samples", "1000")
    try:
        report = asyncio.run(run(server, args))
    finally:
        server.stop()
    report["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}"
    report["duration_s"] = args.duration
    report["control"] = args.control
    report["protocol"] = args.protocol
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    over = "HTTP" if args.protocol == "http" else "gRPC"
    table = Table(title=f"MLP over {over}, concurrency {CONCURRENCY}: drift monitor off vs on")
    for label in ("model", "req/s", "p50 ms", "p99 ms", "avg batch", "server CPU µs/req"):
        table.add_column(label, justify="right")
    for r in report["rounds"]:
        table.add_row(
            r["model"],
            f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['avg_batch']:.1f}",
            f"{r['server_cpu_us_per_req']:.0f}",
        )
    console = Console(width=120)
    console.print(table)
    low, high = report["throughput_ratio_quartiles"]
    console.print(
        f"throughput with drift on / off: median {report['throughput_ratio']:.3f} "
        f"(quartiles {low:.3f}-{high:.3f}) over {args.rounds} paired rounds; "
        "server CPU per request "
        f"{report['server_cpu_us_per_req']['mlp_plain']:.0f} -> "
        f"{report['server_cpu_us_per_req']['mlp_drift']:.0f} µs; "
        f"{report['drift_windows_judged']} drift windows judged"
    )
    print(f"wrote {args.out} ({report['machine']})")


if __name__ == "__main__":
    main()
