"""SLO-adaptive batching against Triton's fixed delay, where a fixed delay costs latency.

    .venv/bin/python benchmarks/slo.py [--duration 10] [--rates 1600,2000,2200]

The model is a small CNN (three 3x3 convolutions of 32 channels on 3x32x32 images, global
pooling, a 32x10 layer) on one ONNX Runtime thread: about 0.35 ms per image whatever the
batch size, so batching buys no throughput and a deliberate wait is pure latency. Two
copies serve side by side: `cnn_fixed` with `max_queue_delay_microseconds: 5000` (what a
Triton user would write for throughput) and `cnn_slo`, the same plus
`latency_slo_ms: 10`. Each rate runs as an open loop (Poisson arrivals, latency counted
from the scheduled send) over HTTP, one model after the other, so that both see the same
machine; the table gives the client's p50/p99 and the server's batch sizes and times.
Writes benchmarks/results/slo.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess, batch_delta

from runtime.loadtest.client import HttpPool, http_request_bytes, run_open_loop

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32
TARGET_MS = 10
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 5000 }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
{extra}"""
MODELS = {
    "cnn_fixed": "",
    "cnn_slo": f'parameters {{ key: "latency_slo_ms" value: {{ string_value: "{TARGET_MS}" }} }}',
}


def cnn(channels: int, seed: int = 0) -> onnx.ModelProto:
    """Three conv+relu layers, global average pooling, a linear layer: FP32 [b,3,S,S] -> [b,10]."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous, channels_in = "INPUT0", 3
    for i in range(3):
        w = rng.normal(size=(channels, channels_in, 3, 3)) / np.sqrt(channels_in * 9)
        weights.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        nodes += [
            helper.make_node("Conv", [previous, f"w{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]),
        ]
        previous, channels_in = f"relu{i}", channels
    fc = (rng.normal(size=(channels, 10)) * 0.1).astype(np.float32)
    weights.append(numpy_helper.from_array(fc, "fc"))
    nodes += [
        helper.make_node("GlobalAveragePool", [previous], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["OUTPUT0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["b", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["b", 10])],
        initializer=weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def build_repository(root: Path, channels: int) -> Path:
    model = cnn(channels)
    for name, extra in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        onnx.save(model, root / name / "1" / "model.onnx")
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name, size=SIZE, extra=extra))
    return root


def under_target(server: ServerProcess, model: str) -> tuple[float, float]:
    """(requests the server answered within the target, all it answered) so far, from its
    request-duration histogram: the target is one of its bucket bounds, so this is exact."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    within = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "conveyor_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name.endswith("_bucket") and float(sample.labels["le"]) == TARGET_MS / 1e3:
                within += sample.value
            elif sample.name.endswith("_count"):
                total += sample.value
    return within, total


async def open_loop(server: ServerProcess, model: str, rate: float, duration: float) -> Any:
    x = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    request = http_request_bytes("127.0.0.1", model, {"INPUT0": x}, {"INPUT0": "FP32"})
    before, within_before = server.stats(model), under_target(server, model)
    pool = HttpPool("127.0.0.1", server.http_port, request)
    try:
        step = await run_open_loop("http", pool.call, rate, duration, 2.0)
    finally:
        pool.close()
    within, total = under_target(server, model)
    share = (within - within_before[0]) / max(total - within_before[1], 1.0)
    return {
        "model": model,
        **step.summary(),
        **batch_delta(before, server.stats(model)),
        "server_share_within_target": share,
    }


async def sweep(server: ServerProcess, rates: list[float], duration: float) -> list[Any]:
    rows = []
    for rate in rates:
        for model in MODELS:
            rows.append(await open_loop(server, model, rate, duration))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rates", default="300,450,550")
    parser.add_argument(
        "--channels", type=int, default=64, help="conv width: 32 is ~0.35 ms, 64 ~1.35 ms/image"
    )
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="the server's GIL switch interval (Python's default: 5)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/slo.json")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    extra = []
    if args.switch_interval_ms is not None:
        extra = ["--gil-switch-interval-ms", str(args.switch_interval_ms)]
    repo = build_repository(Path(tempfile.mkdtemp()) / "repo", args.channels)
    server = ServerProcess(repo, *extra)
    try:
        rows = asyncio.run(sweep(server, rates, args.duration))
    finally:
        server.stop()
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "target_ms": TARGET_MS,
        "channels": args.channels,
        "switch_interval_ms": args.switch_interval_ms,
        "duration_s": args.duration,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(
        title=f"CNN, one image per request, open loop over HTTP; target p99 {TARGET_MS} ms"
    )
    for label in ("model", "offered/s", "served/s", "p50 ms", "p99 ms", "avg batch",
                  "server ms", f"server <= {TARGET_MS} ms", "errors"):  # fmt: skip
        table.add_column(label, justify="right")
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['offered_rps']:.0f}",
            f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['avg_batch']:.1f}",
            f"{r['server_ms']:.2f}",
            f"{r['server_share_within_target']:.1%}",
            str(sum(r["errors"].values())),
        )
    Console(width=140).print(table)
    print(f"wrote {args.out} ({report['machine']})")


if __name__ == "__main__":
    main()
