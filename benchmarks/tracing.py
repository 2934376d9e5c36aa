"""What tracing costs: the MLP at concurrency 16, traced vs untraced, paired rounds.

    .venv/bin/python benchmarks/tracing.py --mode rate1|rate1000|control [--protocol grpc|http]
        [--grpc-frontend native|aio]
        [--duration 2] [--rounds 12]
    .venv/bin/python benchmarks/tracing.py --mode off --baseline DIR [--protocol ...]

rate1 / rate1000 / control: one server holds two identical copies of the bundled MLP
(64-256-256-10) and exports to an OTLP/HTTP sink in another process; `mlp_traced` gets
its own trace settings over the trace extension (TIMESTAMPS, 1 in 1 or 1 in 1000),
`mlp_plain` none (the global level stays OFF). Rounds alternate which model goes first, so
the machine's drift in speed falls on both alike; the median of the per-round ratios is
the cost. `control` traces neither: how far two identical models differ here.

off: tracing off (no --trace-config) in this tree against the same server from another
source tree (`--baseline DIR`, e.g. `git worktree add /tmp/base HEAD`), both running,
rounds alternating between the two servers on the same model.

micro: in-process, no server: the median cost of one call's request id and trace decision
(tracing off, on but not sampled), of one sampled call up to its records being queued and of
pickling them (on the event loop), and of encoding one span in the export process, next to
the SDK's own spans and encoder.

Writes benchmarks/results/tracing_<mode>[_http].json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess, batch_delta, median_us

from runtime.examples import mlp_model
from runtime.loadtest.client import grpc_request_bytes, http_request_bytes, run_grpc, run_http

ROOT = Path(__file__).resolve().parent.parent
SIZES = (64, 256, 256, 10)
CONCURRENCY = 16
WARMUP_S = 1.0
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 64 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ }}
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
"""
MODELS = ("mlp_plain", "mlp_traced")
RATES = {"rate1": "1", "rate1000": "1000"}
# An OTLP/HTTP endpoint that answers at once and counts spans only when asked (GET): the
# collector's decoding is not the server's cost.
SINK = r"""
import http.server, sys
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
bodies = []
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def do_GET(self):
        spans = 0
        for body in bodies:
            for rs in pb.ExportTraceServiceRequest.FromString(body).resource_spans:
                spans += sum(len(ss.spans) for ss in rs.scope_spans)
        answer = str(spans).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(answer)))
        self.end_headers(); self.wfile.write(answer)
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def build_repository(root: Path) -> Path:
    model = mlp_model(SIZES)
    for name in MODELS:
        version = root / name / "1"
        version.mkdir(parents=True)
        onnx.save(model, version / "model.onnx")
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    return root


class Target:
    """One model on one server: what a round measures."""

    def __init__(self, label: str, server: ServerProcess, model: str) -> None:
        self.label, self.server, self.model = label, server, model


async def measure(target: Target, duration: float, protocol: str) -> dict[str, Any]:
    tensors, types = (
        {"INPUT0": np.random.default_rng(1).random((1, 64), np.float32)},
        {"INPUT0": "FP32"},
    )
    server, model = target.server, target.model
    before = server.stats(model)
    cpu0 = server.cpu_s()
    main0, other0 = server.thread_cpu_s()
    if protocol == "http":
        request = http_request_bytes("127.0.0.1", model, tensors, types)
        port = server.http_port
        step = await run_http("127.0.0.1", port, request, CONCURRENCY, duration, WARMUP_S)
    else:
        request = grpc_request_bytes(model, tensors, types)
        url = f"127.0.0.1:{server.grpc_port}"
        step = await run_grpc(url, request, CONCURRENCY, duration, WARMUP_S)
    cpu = server.cpu_s() - cpu0
    main1, other1 = server.thread_cpu_s()
    row = {"target": target.label, **step.summary(), **batch_delta(before, server.stats(model))}
    # Over the warm-up and the measured time together: per request, what both took.
    requests = max(step.requests * (duration + WARMUP_S) / duration, 1)
    row["server_cpu_us_per_req"] = cpu / requests * 1e6
    row["loop_thread_cpu_us_per_req"] = (main1 - main0) / requests * 1e6
    row["other_threads_cpu_us_per_req"] = (other1 - other0) / requests * 1e6
    return row


async def run(targets: tuple[Target, Target], args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for i in range(args.rounds):
        # Alternate which goes first, so that an order effect falls on both.
        for target in targets if i % 2 == 0 else targets[::-1]:
            rows.append(await measure(target, args.duration, args.protocol))
    labels = [t.label for t in targets]
    by = {label: [r for r in rows if r["target"] == label] for label in labels}
    paired = sorted(
        b["throughput_rps"] / a["throughput_rps"] for a, b in zip(*by.values(), strict=True)
    )
    quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return {
        "rounds": rows,
        "mean_rps": {k: statistics.fmean(r["throughput_rps"] for r in v) for k, v in by.items()},
        "server_cpu_us_per_req": {
            k: statistics.fmean(r["server_cpu_us_per_req"] for r in v) for k, v in by.items()
        },
        "throughput_ratio": statistics.median(paired),
        "throughput_ratio_quartiles": [quartiles[0], quartiles[2]],
    }


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}{path}", json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        r.read()


def inferences(target: Target) -> int:
    """The model's successful inferences since the server started (statistics extension)."""
    url = f"http://127.0.0.1:{target.server.http_port}/v2/models/{target.model}/stats"
    with urllib.request.urlopen(url, timeout=10) as answer:
        stats = json.load(answer)["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"])


def sink_spans(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=120) as r:
        return int(r.read())


def start_sink() -> tuple[subprocess.Popen[str], int]:
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    return sink, int(sink.stdout.readline())


def traced_pair(repo: Path, args: argparse.Namespace, stack: contextlib.ExitStack) -> Any:
    sink, port = start_sink()
    stack.callback(sink.kill)
    server = ServerProcess(
        repo,
        "--grpc-frontend",
        args.grpc_frontend,
        "--trace-config",
        f"opentelemetry,url=http://127.0.0.1:{port}/v1/traces",
        *(f"--trace-config=opentelemetry,{s}" for s in args.bsp),
    )
    stack.callback(server.stop)
    if args.mode in RATES:
        post(
            server,
            "/v2/models/mlp_traced/trace/setting",
            {"trace_level": ["TIMESTAMPS"], "trace_rate": RATES[args.mode]},
        )
    targets = (Target("plain", server, "mlp_plain"), Target("traced", server, "mlp_traced"))
    return targets, port


def head_pair(repo: Path, args: argparse.Namespace, stack: contextlib.ExitStack) -> Any:
    baseline = Path(args.baseline).resolve()
    with contextlib.chdir(baseline):  # `python -m runtime` imports the tree it starts in
        base = ServerProcess(repo, "--grpc-frontend", args.grpc_frontend)
    stack.callback(base.stop)
    this = ServerProcess(repo, "--grpc-frontend", args.grpc_frontend)
    stack.callback(this.stop)
    return (Target("baseline", base, "mlp_plain"), Target("this tree", this, "mlp_plain")), 0


def micro() -> dict[str, float]:
    """Median µs of the pieces a call pays, measured in this process."""
    import pickle

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource

    from runtime.events import BatchDone
    from runtime.logs import CallLog
    from runtime.monitoring.otel import Encoder, OtlpExporter, readable_spans, span_records
    from runtime.monitoring.tracing import TraceConfig, Tracing

    # Traces stay pending (no batch fills, no delay ends while the calls are timed); they
    # are then taken from there to time their pickling and encoding.
    big = [
        "bsp_max_queue_size=10000000",
        "bsp_max_export_batch_size=10000000",
        "bsp_schedule_delay=100000000",
    ]
    otlp = OtlpExporter(TraceConfig.parse([f"opentelemetry,{s}" for s in big]))
    results: dict[str, float] = {}
    carrier = {"content-type": "application/json", "content-length": "300"}
    batch = BatchDone(16, 20_000, 40_000, 5_000, 0, [], True)
    for label, specs in (
        ("call, tracing off", []),
        ("call, tracing on, not sampled (rate 1000)", ["level=TIMESTAMPS", "rate=1000"]),
        ("sampled call to its queued records (event loop)", ["level=TIMESTAMPS", "rate=1"]),
    ):
        calls = CallLog(Tracing(TraceConfig.parse(specs), otlp))

        def one(calls: CallLog = calls) -> None:
            call = calls.begin("http", "mlp", "", carrier, time.monotonic_ns())
            if call.trace is not None:
                call.trace.ran(call.received_ns, batch, 1)
            calls.end(call, "1")

        results[label] = median_us(one, 2.0, warmup=100, most=20_000)
    pending = otlp._pending[:512]
    results["pickling one span's records (event loop)"] = median_us(
        lambda: pickle.dumps(pending, protocol=pickle.HIGHEST_PROTOCOL), 2.0, 3, 200
    ) / len(pending)
    otlp._pending.clear()
    otlp.close(1.0)
    resource = Resource.create({"service.name": "conveyor"})
    encoder = Encoder(resource)
    collected: list[Any] = []
    sink = type("Collect", (), {"export": lambda self, t: collected.append(t)})()
    tracing = Tracing(TraceConfig.parse(["level=TIMESTAMPS", "rate=1"]), sink)
    for i in range(512):
        trace = tracing.start("mlp", {}, time.monotonic_ns(), "http", f"rid-{i}")
        assert trace is not None
        trace.ran(trace.start_ns, batch, i)
        trace.end("1")
    records = [r for t in collected for r in span_records(t, 0)]
    results["encoding one span (export process)"] = median_us(
        lambda: encoder.request(records), 2.0, 3, 200
    ) / len(records)
    results["the same with the SDK's spans and encoder"] = median_us(
        lambda: encode_spans(readable_spans(records, resource)).SerializePartialToString(),
        2.0,
        3,
        200,
    ) / len(records)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--mode", choices=("rate1", "rate1000", "control", "off", "micro"), default="rate1"
    )
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--grpc-frontend", choices=("native", "aio"), default="native")
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--baseline", help="with --mode off: the source tree to compare with")
    parser.add_argument(
        "--bsp",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="an opentelemetry,bsp_* trace setting for the server (repeatable)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.mode == "off" and not args.baseline:
        parser.error("--mode off needs --baseline DIR")
    suffix = "_http" if args.protocol == "http" and args.mode != "micro" else ""
    args.out = args.out or ROOT / f"benchmarks/results/tracing_{args.mode}{suffix}.json"
    if args.mode == "micro":
        costs = micro()
        machine = f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}"
        args.out.write_text(json.dumps({"median_us": costs, "machine": machine}, indent=2))
        for label, us in costs.items():
            print(f"{label:45s} {us:8.2f} µs")
        print(f"wrote {args.out} ({machine})")
        return
    repo = build_repository(Path(tempfile.mkdtemp()) / "repo")
    with contextlib.ExitStack() as stack:
        pair = head_pair if args.mode == "off" else traced_pair
        targets, sink_port = pair(repo, args, stack)
        started = time.time()
        report = asyncio.run(run(targets, args))
        report["wall_s"] = round(time.time() - started, 1)
        if sink_port:
            time.sleep(1.0)
            report["spans_exported"] = sink_spans(sink_port)
            report["traced_model_inferences"] = inferences(targets[1])
    traced_requests = sum(r["requests"] for r in report["rounds"] if r["target"] == "traced")
    report["traced_model_requests"] = traced_requests
    report["machine"] = f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}"
    report["grpc_frontend"] = args.grpc_frontend
    report.update(
        mode=args.mode,
        protocol=args.protocol,
        duration_s=args.duration,
        concurrency=CONCURRENCY,
        bsp=args.bsp,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(report, args)


def print_report(report: dict[str, Any], args: argparse.Namespace) -> None:
    over = "HTTP" if args.protocol == "http" else "gRPC"
    table = Table(title=f"MLP over {over}, concurrency {CONCURRENCY}: tracing {args.mode}")
    columns = ("target", "req/s", "p50 ms", "p99 ms", "avg batch", "CPU µs/req", "loop", "others")
    for label in columns:
        table.add_column(label, justify="right")
    for r in report["rounds"]:
        table.add_row(
            r["target"],
            f"{r['throughput_rps']:.0f}",
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['avg_batch']:.1f}",
            f"{r['server_cpu_us_per_req']:.0f}",
            f"{r['loop_thread_cpu_us_per_req']:.0f}",
            f"{r['other_threads_cpu_us_per_req']:.0f}",
        )
    console = Console(width=120)
    console.print(table)
    low, high = report["throughput_ratio_quartiles"]
    cpu = " -> ".join(f"{v:.0f}" for v in report["server_cpu_us_per_req"].values())
    console.print(
        f"throughput {' / '.join(reversed(list(report['mean_rps'])))}: median "
        f"{report['throughput_ratio']:.3f} (quartiles {low:.3f}-{high:.3f}) over {args.rounds} "
        f"paired rounds; server CPU per request {cpu} µs"
    )
    if "spans_exported" in report:
        console.print(
            f"spans received by the sink: {report['spans_exported']} for "
            f"{report['traced_model_requests']} measured requests to the traced model; "
            f"{report['traced_model_inferences']} inferences of it in all, warm-ups included"
        )
    print(f"wrote {args.out} ({report['machine']})")


if __name__ == "__main__":
    main()
