"""The front ends' own ceiling: how many requests/s grpc.aio and uvicorn answer on this
machine when the handler does nothing, next to Conveyor without and with batching.

    .venv/bin/python benchmarks/front_end_ceiling.py [--duration 4] [--concurrency 64]

A second process runs bare servers on the same stack as `conveyor serve` (uvloop; grpc.aio
with a generic handler that returns a fixed ModelInferResponse; uvicorn with httptools and
an ASGI app that returns a fixed body). The load generator is the one every other
benchmark uses, sending the MLP's one-row request. No batcher can make Conveyor answer
more requests than its front end can carry, so `ceiling / no batching` (no batching as
Triton runs it, every batch on an instance thread: `mlp_off_threads`) bounds the speed-up
batching can show here. Writes benchmarks/results/front_end_ceiling.json and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from serverproc import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from batching import build_repository, requests_for  # noqa: E402

from runtime.loadtest.client import run_grpc, run_http  # noqa: E402
from runtime.proto import grpc_service_pb2 as pb  # noqa: E402

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def fixed_response() -> bytes:
    """What the MLP answers to one row: ten FP32 values."""
    msg = pb.ModelInferResponse(model_name="mlp_off", model_version="1", id="")
    msg.outputs.add(name="OUTPUT0", datatype="FP32", shape=[1, 10])
    msg.raw_output_contents.append(bytes(40))
    return bytes(msg.SerializeToString())


async def serve_bare() -> None:
    """Bare gRPC and HTTP servers in this process; prints their ports, runs until killed."""
    import grpc
    import uvicorn

    answer = fixed_response()

    async def infer(request: bytes, context: Any) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    body = b'{"model_name":"mlp_off","outputs":[]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, loop="none", http="httptools", lifespan="off",
        access_log=False, log_config=None,
    )  # fmt: skip
    http = uvicorn.Server(config)
    task = asyncio.create_task(http.serve())
    while not http.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped during startup")
        await asyncio.sleep(0.01)
    http_port = http.servers[0].sockets[0].getsockname()[1]
    print(f"PORTS {http_port} {grpc_port}", flush=True)
    await task


def start_bare() -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("PORTS "):
            http_port, grpc_port = (int(p) for p in line.split()[1:])
            return proc, http_port, grpc_port
    raise RuntimeError("the bare servers did not start")


async def measure(
    label: str, http_port: int, grpc_port: int, model: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    http_req, grpc_req = requests_for(model, 1)
    rows = []
    for protocol in ("grpc", "http"):
        if protocol == "http":
            step = await run_http("127.0.0.1", http_port, http_req, args.concurrency,
                                  args.duration, 1.0)  # fmt: skip
        else:
            step = await run_grpc(f"127.0.0.1:{grpc_port}", grpc_req, args.concurrency,
                                  args.duration, 1.0)  # fmt: skip
        rows.append({"server": label, **step.summary()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/front_end_ceiling.json"
    )
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve_bare())
        return

    rows: list[dict[str, Any]] = []
    bare, http_port, grpc_port = start_bare()
    try:
        rows += asyncio.run(measure("bare front end", http_port, grpc_port, "mlp_off", args))
    finally:
        bare.kill()
        bare.wait()
    server = ServerProcess(build_repository(Path(tempfile.mkdtemp()) / "repo"))
    try:
        for model in ("mlp_off_threads", "mlp_off", "mlp_fixed"):
            label = f"conveyor {model}"
            rows += asyncio.run(measure(label, server.http_port, server.grpc_port, model, args))
    finally:
        server.stop()

    by = {(r["server"], r["protocol"]): r["throughput_rps"] for r in rows}
    for r in rows:
        r["of_ceiling"] = r["throughput_rps"] / by[("bare front end", r["protocol"])]
    bounds = {
        p: by[("bare front end", p)] / by[("conveyor mlp_off_threads", p)] for p in ("grpc", "http")
    }
    report = {
        "rows": rows,
        "batching_bound": bounds,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "duration_s": args.duration,
        "concurrency": args.concurrency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title=f"One-row requests at concurrency {args.concurrency}")
    for col in ("server", "protocol", "req/s", "p50 ms", "p99 ms", "of ceiling"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["server"], r["protocol"], f"{r['throughput_rps']:.0f}", f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}", f"{r['of_ceiling']:.0%}",
        )  # fmt: skip
    console = Console(width=120)
    console.print(table)
    for p, bound in bounds.items():
        console.print(f"{p}: ceiling / no batching = {bound:.2f}x (the most batching can show)")
    print(f"wrote {args.out} ({report['machine']})")


if __name__ == "__main__":
    main()
