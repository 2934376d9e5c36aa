"""Conveyor's native gRPC front end against PyTriton's, on "simple" and the MLP, paired.

    make perf-analyzer && bash benchmarks/install_peers.sh   # once
    .venv/bin/python benchmarks/grpc_peers.py [--models mlp,simple] [--duration 3] [--rounds 2]
        [--server-cpus 0-1 --client-cpus 2-5]

The issue's goal: on Triton's "simple" (INT32 [1, 16] add/sub) and on the bundled MLP
(64-256-256-10 FP32), one row per request at concurrency 16, perf_analyzer over gRPC measures
Conveyor at >= 3x PyTriton's throughput, with Conveyor's gRPC p99 no worse than its HTTP p99.

Two servers, each started in turn on 127.0.0.1 with free ports, serve the same two models:

- Conveyor: `conveyor serve` (`python -m runtime serve`) on the bundled example repository
  (runtime/examples.py), `--grpc-frontend native` (the default, named so that a server that
  fell back to grpc.aio is refused). ONNX Runtime, one intra-op thread for the MLP,
  `dynamic_batching { max_queue_delay_microseconds: 0 }`; "simple"'s config is completed by
  the server (it batches up to 4).
- PyTriton (nvidia-pytriton in .tools/pytriton-venv: Triton Inference Server's own C++ HTTP
  and gRPC front ends, with Python functions as the models): one `@batch` function per model,
  `ModelConfig(max_batch_size=<Conveyor's>, batcher=DynamicBatcher(
  max_queue_delay_microseconds=0))`, the same input and output names, datatypes and dims, so
  that one perf_analyzer command line serves both. "simple" is `INPUT0 + INPUT1`,
  `INPUT0 - INPUT1` on the int32 arrays. The MLP is numpy: `x @ W + B` per ONNX Gemm (its
  defaults: alpha = beta = 1, no transposes) and `np.maximum(x, 0)` per Relu, with the weights
  of the example repository's model.onnx read here with the `onnx` package and handed over as
  an .npz. Numpy rather than ONNX Runtime in the peer's venv: PyTriton 0.7 pins numpy<2 and
  install_peers.sh installs nothing else there, so the benchmark needs no extra install, and
  a plain numpy function is what a PyTriton user writes. OpenBLAS gets one thread
  (OPENBLAS_NUM_THREADS=1 and the like), as ONNX Runtime does in Conveyor.

Checked before any load, on every server start: both servers' model configs have the same
inputs and outputs and max_batch_size, and each answers one fixed request (gRPC; Conveyor over
HTTP too) with the reference computed here: "simple" exactly, the MLP within float32 rounding
(the summation order of two GEMM libraries differs); the largest difference between the two
servers' MLP answers is recorded.

Measured: perf_analyzer (`make perf-analyzer`), `-i grpc` against both servers and `-i http`
(binary tensors) against Conveyor, `--concurrency-range 16`, batch 1 (one row per request),
`--measurement-interval` = --duration, stable within 50% over the last three windows (at most
8 windows); the figures are perf_analyzer's over those three windows (throughput, p50, p99 from
its CSV). Each step follows --warmup seconds of the same load from runtime/loadtest. Paired:
round 1 runs Conveyor and then PyTriton, round 2 PyTriton and then Conveyor (every step of
round 2 in the reverse order of round 1), and so on, each round on fresh server processes,
so that per model and protocol the order is A B B A. Pooled figures are means over the
rounds; the rounds' own figures are kept.

Per step, from /proc and the statistics extension (both servers have it), over the
perf_analyzer run only: the CPU time of the server's whole process tree (Conveyor: the server
and its Python model workers, idle here; PyTriton: the Python process that runs the
functions, tritonserver and the Python backend's stubs) and of perf_analyzer, each per
inference the server counted; the server's average batch (inferences / executions); and the
cores busy with other work (machine busy time from /proc/stat less server and perf_analyzer,
plus steal), since the machine may be shared.

Where the servers and perf_analyzer run: each server starts in a session of its own (so that
stopping it reaches every process it started), which on a kernel that groups tasks by session
for scheduling (autogroup) makes it a scheduling entity apart from perf_analyzer. On two
cores shared with perf_analyzer that placement decides a good part of the tails (BENCHMARKS.md,
"Native gRPC front end"). `--server-cpus` and `--client-cpus` pin each side to CPUs of its
own (taskset; a server's children inherit it), on a machine with cores to spare.

Writes benchmarks/results/grpc_peers.json and prints a table and the ratios: Conveyor gRPC /
PyTriton gRPC throughput per model, and Conveyor's gRPC p99 / its HTTP p99.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
from grpc_native import MODELS, PERF_ANALYZER, request_inputs
from onnx import numpy_helper
from python_peers import (
    HOST,
    PYTRITON_PYTHON,
    Server,
    conveyor_source,
    free_port,
    machine,
    machine_cpu_s,
    package_version,
    peer_env,
)
from rich.console import Console
from rich.table import Table

from runtime.examples import build_example_repository
from runtime.loadtest.client import (
    MODEL_INFER,
    grpc_request_bytes,
    http_request_bytes,
    run_grpc,
    run_http,
)
from runtime.proto import grpc_service_pb2 as pb
from runtime.tensors import numpy_dtype

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("conveyor", "pytriton")
LABELS = {"conveyor": "Conveyor", "pytriton": "PyTriton"}
# Every server is measured over gRPC; Conveyor over HTTP too, for the p99 comparison.
PROTOCOLS = {"conveyor": ("grpc", "http"), "pytriton": ("grpc",)}
CONCURRENCY = 16
STABILITY_PERCENT = 50
MAX_TRIALS = 8
DESCRIPTIONS = {
    "mlp": "MLP 64-256-256-10 FP32 (example repository), one row per request",
    "simple": 'Triton\'s "simple": INT32 [1, 16] add/sub, one row per request',
}
# Numpy and ONNX Runtime differ in the summation order of their GEMMs.
MLP_RTOL, MLP_ATOL = 1e-4, 1e-5
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

# Run by the PyTriton venv's python: serve.py HTTP_PORT GRPC_PORT METRICS_PORT WORKSPACE SPEC,
# SPEC a JSON file: {model: {"max_batch_size": n, "weights": npz path (the MLP)}}.
PYTRITON_SCRIPT = '''"""PyTriton serving Triton's "simple" (INT32 add/sub) and the example MLP."""

import json
import os
import signal
import sys
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

HOST = "127.0.0.1"


@batch
def simple(INPUT0, INPUT1):
    return {"OUTPUT0": INPUT0 + INPUT1, "OUTPUT1": INPUT0 - INPUT1}


def mlp_function(weights_path):
    weights = np.load(weights_path)
    layers = [(weights[f"W{i}"], weights[f"B{i}"]) for i in range(len(weights.files) // 2)]
    last = len(layers) - 1

    @batch
    def mlp(INPUT0):
        x = INPUT0
        for i, (w, b) in enumerate(layers):
            x = x @ w + b  # ONNX Gemm with its defaults: A @ B + C
            if i < last:
                x = np.maximum(x, 0)  # Relu
        return {"OUTPUT0": x}

    return mlp


def tensors(spec):
    return [Tensor(name=n, dtype=np.dtype(t), shape=(d,)) for n, t, d in spec]


IO = {
    "simple": (
        [("INPUT0", "int32", 16), ("INPUT1", "int32", 16)],
        [("OUTPUT0", "int32", 16), ("OUTPUT1", "int32", 16)],
    ),
    "mlp": ([("INPUT0", "float32", 64)], [("OUTPUT0", "float32", 10)]),
}


def main():
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    spec = json.loads(open(sys.argv[5]).read())
    # The Python backend's stub links libpython3.11; it must load this interpreter's, whose
    # standard library it runs, rather than the system's (a different 3.11 patch release).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = TritonConfig(
        http_address=HOST,
        http_port=http_port,
        grpc_address=HOST,
        grpc_port=grpc_port,
        metrics_address=HOST,
        metrics_port=metrics_port,
    )
    # PyTriton 0.7 puts the statistics extension (read for the batch sizes) behind a token by
    # default; inference itself is never restricted.
    security = TritonSecurityConfig(restricted_endpoints=[])
    with Triton(config=config, workspace=sys.argv[4], security_config=security) as triton:
        for name, model in spec.items():
            func = simple if name == "simple" else mlp_function(model["weights"])
            inputs, outputs = IO[name]
            triton.bind(
                model_name=name,
                infer_func=func,
                inputs=tensors(inputs),
                outputs=tensors(outputs),
                config=ModelConfig(
                    max_batch_size=model["max_batch_size"],
                    batcher=DynamicBatcher(max_queue_delay_microseconds=0),
                ),
            )
        triton.serve()


main()
'''


# ---- the models, their reference answers, and the checks ------------------------------------


def mlp_layers(repo: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(W, B) per Gemm of the example MLP's model.onnx, after checking that the graph is
    Gemm (default attributes) and Relu alternately, ending in a Gemm."""
    model = onnx.load(str(repo / "mlp" / "1" / "model.onnx"))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    if ops != ["Gemm", "Relu"] * (len(ops) // 2) + ["Gemm"]:
        raise RuntimeError(f"the example MLP is not Gemm/Relu alternately: {ops}")
    layers = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            if node.attribute:
                raise RuntimeError(f"Gemm with attributes {node.attribute}: not x @ W + B")
            layers.append((init[node.input[1]], init[node.input[2]]))
    return layers


def reference(
    model: str, inputs: dict[str, np.ndarray], layers: list[tuple[np.ndarray, np.ndarray]]
) -> dict[str, np.ndarray]:
    """What both servers should answer, in numpy here."""
    if model == "simple":
        a, b = inputs["INPUT0"], inputs["INPUT1"]
        return {"OUTPUT0": a + b, "OUTPUT1": a - b}
    x = inputs["INPUT0"]
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return {"OUTPUT0": x}


def infer_once(server: Server, model: str, protocol: str) -> dict[str, np.ndarray]:
    """The server's outputs for the fixed request of `model`: over gRPC with raw contents,
    over HTTP as JSON."""
    inputs, types = request_inputs(model)
    if protocol == "grpc":
        with grpc.insecure_channel(f"{HOST}:{server.grpc_port}") as channel:
            call = channel.unary_unary(
                MODEL_INFER, response_deserializer=pb.ModelInferResponse.FromString
            )
            reply = call(grpc_request_bytes(model, inputs, types), timeout=10)
        if len(reply.raw_output_contents) != len(reply.outputs):
            raise RuntimeError(f"{server.name} {model}: no raw_output_contents in {reply}")
        return {
            out.name: np.frombuffer(raw, numpy_dtype(out.datatype)).reshape(list(out.shape))
            for out, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)
        }
    body = {
        "inputs": [
            {"name": k, "shape": list(v.shape), "datatype": types[k], "data": v.ravel().tolist()}
            for k, v in inputs.items()
        ]
    }
    request = urllib.request.Request(
        f"http://{HOST}:{server.http_port}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        outputs = json.load(r)["outputs"]
    return {
        o["name"]: np.array(o["data"], numpy_dtype(o["datatype"])).reshape(o["shape"])
        for o in outputs
    }


def compare(
    label: str, got: dict[str, np.ndarray], want: dict[str, np.ndarray], exact: bool
) -> float:
    """Largest absolute difference of `got` from `want`; raises where they do not agree."""
    if sorted(got) != sorted(want):
        raise RuntimeError(f"{label}: outputs {sorted(got)}, expected {sorted(want)}")
    worst = 0.0
    for name, expected in want.items():
        actual = got[name]
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            raise RuntimeError(
                f"{label} {name}: {actual.dtype}{list(actual.shape)}, "
                f"expected {expected.dtype}{list(expected.shape)}"
            )
        same = (
            np.array_equal(actual, expected)
            if exact
            else np.allclose(actual, expected, rtol=MLP_RTOL, atol=MLP_ATOL)
        )
        if not same:
            raise RuntimeError(f"{label} {name}: {actual.ravel()[:4]}, expected {expected}")
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        worst = max(worst, float(diff.max()))
    return worst


def model_config(server: Server, model: str) -> dict[str, Any]:
    url = f"http://{HOST}:{server.http_port}/v2/models/{model}/config"
    with urllib.request.urlopen(url, timeout=10) as r:
        config: dict[str, Any] = json.load(r)
    return config


def signature(config: dict[str, Any]) -> dict[str, Any]:
    """What one perf_analyzer command line depends on: the tensors and the batch size."""

    def tensors(key: str) -> list[tuple[str, str, list[int]]]:
        return [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config[key]]

    return {
        "max_batch_size": int(config["max_batch_size"]),
        "inputs": tensors("input"),
        "outputs": tensors("output"),
        "max_queue_delay_microseconds": int(
            config.get("dynamic_batching", {}).get("max_queue_delay_microseconds", -1)
        ),
    }


@dataclass
class Checks:
    """What the checks found, kept across server starts."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    signatures: dict[str, dict[str, Any]]  # model -> Conveyor's
    answers: dict[str, dict[str, np.ndarray]]  # model -> Conveyor's gRPC answer
    max_abs_diff: dict[str, dict[str, float]]  # model -> what -> largest difference

    def run(self, server: Server, models: list[str]) -> None:
        """Configs alike, and every answer right; the first server started is Conveyor."""
        for model in models:
            sig = signature(model_config(server, model))
            want_sig = self.signatures.setdefault(model, sig)
            if sig != want_sig:
                raise RuntimeError(f"{server.name} {model}: config {sig}, Conveyor's {want_sig}")
            inputs, _ = request_inputs(model)
            want = reference(model, inputs, self.layers)
            exact = model == "simple"
            diffs = self.max_abs_diff.setdefault(model, {})
            for protocol in PROTOCOLS[server.name]:
                got = infer_once(server, model, protocol)
                label = f"{server.name} {protocol}"
                key = f"{label} vs numpy here"
                diff = compare(f"{label} {model}", got, want, exact)
                diffs[key] = max(diffs.get(key, 0.0), diff)
                if server.name == "conveyor" and protocol == "grpc":
                    self.answers.setdefault(model, got)
                elif model in self.answers:
                    key = f"{label} vs conveyor grpc"
                    diff = compare(f"{label} {model}", got, self.answers[model], exact)
                    diffs[key] = max(diffs.get(key, 0.0), diff)


# ---- the servers -----------------------------------------------------------------------------


def pinned(cpus: str | None) -> list[str]:
    """A command's prefix that keeps it and its children on `cpus` (taskset's list), if any."""
    return ["taskset", "-c", cpus] if cpus else []


def start_conveyor(folder: Path, repo: Path, cpus: str | None) -> Server:
    http, grpc_, metrics = free_port(), free_port(), free_port()
    cmd = [
        *pinned(cpus),
        *(sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo)),
        *("--host", HOST, "--http-port", str(http), "--grpc-port", str(grpc_)),
        *("--metrics-port", str(metrics), "--grpc-frontend", "native"),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return Server("conveyor", cmd, ROOT, env, http, grpc_, folder / "server.log")


def start_pytriton(folder: Path, spec: dict[str, dict[str, Any]], cpus: str | None) -> Server:
    (folder / "serve.py").write_text(PYTRITON_SCRIPT)
    (folder / "spec.json").write_text(json.dumps(spec))
    http, grpc_, metrics = free_port(), free_port(), free_port()
    cmd = [*pinned(cpus), str(PYTRITON_PYTHON), "serve.py", str(http), str(grpc_), str(metrics)]
    cmd += [str(folder / "workspace"), str(folder / "spec.json")]
    env = peer_env() | ONE_THREAD
    return Server("pytriton", cmd, folder, env, http, grpc_, folder / "server.log")


def model_stats(server: Server, model: str) -> dict[str, Any]:
    """The model's statistics extension record (its latest version)."""
    url = f"http://{HOST}:{server.http_port}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as r:
        records: list[dict[str, Any]] = json.load(r)["model_stats"]
    return max(records, key=lambda s: int(s["version"]))


# ---- one measured step -----------------------------------------------------------------------


def perf_analyzer(
    model: str, protocol: str, port: int, seconds: float, cpus: str | None = None
) -> dict[str, Any]:
    """perf_analyzer's figures for one step, from its CSV."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pa.csv"
        cmd = [
            *pinned(cpus),
            str(PERF_ANALYZER),
            "-m", model,
            "-u", f"{HOST}:{port}",
            "-i", protocol,
            "-b", "1",
            f"--concurrency-range={CONCURRENCY}",
            "--measurement-interval", str(int(seconds * 1000)),
            "--stability-percentage", str(STABILITY_PERCENT),
            "--max-trials", str(MAX_TRIALS),
            "-f", str(out),
        ]  # fmt: skip
        limit = seconds * (MAX_TRIALS + 2) + 60
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        if run.returncode != 0 or not out.exists():
            raise RuntimeError(f"perf_analyzer failed ({run.returncode}):\n{run.stdout[-3000:]}")
        (row,) = list(csv.DictReader(io.StringIO(out.read_text())))
    us = {k: float(v) for k, v in row.items() if k not in ("Concurrency", "Inferences/Second")}
    return {
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": us["p50 latency"] / 1e3,
        "p90_ms": us["p90 latency"] / 1e3,
        "p99_ms": us["p99 latency"] / 1e3,
        "server_queue_ms": us["Server Queue"] / 1e3,
        "server_compute_ms": sum(
            us[f"Server Compute {k}"] for k in ("Input", "Infer", "Output")
        ) / 1e3,
        "perf_analyzer_csv": row,
    }  # fmt: skip


def warm_up(server: Server, model: str, protocol: str, seconds: float) -> None:
    """The same load for a while before the step, from runtime/loadtest."""
    if seconds <= 0:
        return
    inputs, types = request_inputs(model)
    if protocol == "grpc":
        request = grpc_request_bytes(model, inputs, types)
        asyncio.run(run_grpc(f"{HOST}:{server.grpc_port}", request, CONCURRENCY, seconds, 0.0))
    else:
        request = http_request_bytes(HOST, model, inputs, types)
        asyncio.run(run_http(HOST, server.http_port, request, CONCURRENCY, seconds, 0.0))


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have been waited for (perf_analyzer)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    server: Server, model: str, protocol: str, round_: int, args: argparse.Namespace
) -> dict[str, Any]:
    warm_up(server, model, protocol, args.warmup)
    load_before = os.getloadavg()[0]
    stats0, cpu0, client0 = model_stats(server, model), server.tree_cpu_s(), children_cpu_s()
    (busy0, steal0), wall0 = machine_cpu_s(), time.monotonic()
    port = server.grpc_port if protocol == "grpc" else server.http_port
    row = perf_analyzer(model, protocol, port, args.duration, args.client_cpus)
    (busy1, steal1), wall = machine_cpu_s(), time.monotonic() - wall0
    stats1, cpu1, client = model_stats(server, model), server.tree_cpu_s(), children_cpu_s()
    client -= client0
    server_cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
    inferences = stats1["inference_count"] - stats0["inference_count"]
    executions = stats1["execution_count"] - stats0["execution_count"]
    other = max(busy1 - busy0 - sum(server_cpu.values()) - client, 0.0) + steal1 - steal0
    return {
        "server": server.name,
        "model": model,
        "protocol": protocol,
        "round": round_,
        **row,
        "inferences": inferences,
        "executions": executions,
        "server_cpu_s": server_cpu,
        "client_cpu_s": client,
        "wall_s": wall,
        "other_cores": other / wall,
        "load_average_1m": [load_before, os.getloadavg()[0]],
    }


# ---- the rounds ------------------------------------------------------------------------------


def start(
    name: str, folder: Path, repo: Path, checks: Checks, models: list[str], cpus: str | None
) -> Server:
    """A fresh server, ready and checked."""
    if name == "conveyor":
        server = start_conveyor(folder, repo, cpus)
    else:
        spec: dict[str, dict[str, Any]] = {
            m: {"max_batch_size": checks.signatures[m]["max_batch_size"]} for m in models
        }
        if "mlp" in spec:
            weights: dict[str, np.ndarray] = {}
            for i, (w, b) in enumerate(checks.layers):
                weights |= {f"W{i}": w, f"B{i}": b}
            np.savez(folder / "mlp.npz", **weights)  # type: ignore[arg-type]
            spec["mlp"]["weights"] = str(folder / "mlp.npz")
        server = start_pytriton(folder, spec, cpus)
    try:
        server.wait_ready(tuple(models))
        if name == "conveyor" and "(native)" not in server.log_path.read_text():
            raise RuntimeError(
                f"Conveyor is not on the native gRPC front end:\n{server.log_tail()}"
            )
        checks.run(server, models)
    except BaseException:
        server.stop()
        raise
    return server


def run_rounds(
    args: argparse.Namespace, folder: Path, repo: Path, checks: Checks
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Round 1: Conveyor's steps, then PyTriton's; round 2 the reverse, step by step."""
    console = Console(width=120, stderr=True)
    steps: list[dict[str, Any]] = []
    versions: dict[str, str] = {}
    for round_ in range(1, args.rounds + 1):
        forward = round_ % 2 == 1
        for name in SERVERS if forward else SERVERS[::-1]:
            plan = [(m, p) for m in args.models for p in PROTOCOLS[name]]
            where = folder / f"{round_}_{name}"
            where.mkdir()
            t0 = time.monotonic()
            server = start(name, where, repo, checks, args.models, args.server_cpus)
            try:
                versions[name] = server.version
                console.print(
                    f"round {round_}: {LABELS[name]} ready and checked in "
                    f"{time.monotonic() - t0:.1f} s ({server.version})"
                )
                for model, protocol in plan if forward else plan[::-1]:
                    step = measure(server, model, protocol, round_, args)
                    console.print(
                        f"  {model} {protocol}: {step['throughput_rps']:,.0f} infer/s, p99 "
                        f"{step['p99_ms']:.2f} ms, batch "
                        f"{step['inferences'] / max(step['executions'], 1):.2f}, other work "
                        f"{step['other_cores']:.2f} cores"
                    )
                    steps.append(step)
            finally:
                server.stop()
    return steps, versions


def pooled(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One server, model and protocol over the rounds: means, and the rounds' own figures."""
    inferences = max(sum(s["inferences"] for s in steps), 1)
    by_process: dict[str, float] = {}
    for s in steps:
        for k, v in s["server_cpu_s"].items():
            by_process[k] = by_process.get(k, 0.0) + v

    def mean(key: str) -> float:
        return float(np.mean([s[key] for s in steps]))

    return {
        "server": steps[0]["server"],
        "model": steps[0]["model"],
        "protocol": steps[0]["protocol"],
        "concurrency": CONCURRENCY,
        "throughput_rps": mean("throughput_rps"),
        "p50_ms": mean("p50_ms"),
        "p99_ms": mean("p99_ms"),
        "rounds_rps": [s["throughput_rps"] for s in steps],
        "rounds_p50_ms": [s["p50_ms"] for s in steps],
        "rounds_p99_ms": [s["p99_ms"] for s in steps],
        "server_queue_ms": mean("server_queue_ms"),
        "server_compute_ms": mean("server_compute_ms"),
        "avg_batch": inferences / max(sum(s["executions"] for s in steps), 1),
        "server_cpu_us": sum(by_process.values()) / inferences * 1e6,
        "server_cpu_us_by_process": {k: v / inferences * 1e6 for k, v in by_process.items()},
        "perf_analyzer_cpu_us": sum(s["client_cpu_s"] for s in steps) / inferences * 1e6,
        "other_cores": [s["other_cores"] for s in steps],
    }


def ratios(rows: list[dict[str, Any]], models: list[str], goal: float) -> list[dict[str, Any]]:
    """Per model: Conveyor gRPC / PyTriton gRPC throughput, Conveyor gRPC p99 / HTTP p99."""
    by = {(r["server"], r["model"], r["protocol"]): r for r in rows}
    out = []
    for model in models:
        ours, theirs = by[("conveyor", model, "grpc")], by[("pytriton", model, "grpc")]
        http = by[("conveyor", model, "http")]
        ratio = ours["throughput_rps"] / max(theirs["throughput_rps"], 1e-9)
        pairs = zip(ours["rounds_rps"], theirs["rounds_rps"], strict=True)
        p99_ratio = ours["p99_ms"] / max(http["p99_ms"], 1e-9)
        out.append(
            {
                "model": model,
                "throughput_ratio": ratio,
                "rounds_throughput_ratio": [a / max(b, 1e-9) for a, b in pairs],
                "throughput_goal_met": ratio >= goal,
                "grpc_p99_ms": ours["p99_ms"],
                "http_p99_ms": http["p99_ms"],
                "p99_ratio": p99_ratio,
                "p99_goal_met": p99_ratio <= 1.0,
            }
        )
    return out


# ---- the report ------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    console = Console(width=160)
    table = Table(
        title=f"perf_analyzer, c={CONCURRENCY}, one row per request ({report['machine']})"
    )
    cols = ("model", "server", "protocol", "infer/s", "rounds infer/s", "p50 ms", "p99 ms",
            "rounds p99 ms", "avg batch", "server CPU us/inf", "perf_analyzer CPU us/inf",
            "other load")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for r in report["rows"]:
        table.add_row(
            r["model"], LABELS[r["server"]], r["protocol"], f"{r['throughput_rps']:,.0f}",
            " / ".join(f"{v:,.0f}" for v in r["rounds_rps"]), f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}", " / ".join(f"{v:.2f}" for v in r["rounds_p99_ms"]),
            f"{r['avg_batch']:.2f}", f"{r['server_cpu_us']:.0f}",
            f"{r['perf_analyzer_cpu_us']:.0f}",
            " / ".join(f"{v:.2f}" for v in r["other_cores"]),
        )  # fmt: skip
    console.print(table)
    goal = report["goal_throughput_ratio"]
    ratio_table = Table(
        title=f"goals: Conveyor gRPC >= {goal:g}x PyTriton gRPC; Conveyor gRPC p99 <= HTTP p99"
    )
    for col in ("model", "gRPC infer/s ratio", "rounds", "met", "gRPC p99 / HTTP p99",
                "gRPC p99 ms", "HTTP p99 ms", "met"):  # fmt: skip
        ratio_table.add_column(col, justify="right")
    for q in report["ratios"]:
        ratio_table.add_row(
            q["model"], f"{q['throughput_ratio']:.2f}x",
            " / ".join(f"{v:.2f}x" for v in q["rounds_throughput_ratio"]),
            "yes" if q["throughput_goal_met"] else "no", f"{q['p99_ratio']:.2f}",
            f"{q['grpc_p99_ms']:.2f}", f"{q['http_p99_ms']:.2f}",
            "yes" if q["p99_goal_met"] else "no",
        )  # fmt: skip
    console.print(ratio_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,simple")
    parser.add_argument(
        "--duration", type=float, default=3.0, help="perf_analyzer's window, seconds"
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each step")
    parser.add_argument("--rounds", type=int, default=2, help="rounds alternate which goes first")
    parser.add_argument("--goal", type=float, default=3.0, help="throughput ratio to meet")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/grpc_peers.json")
    parser.add_argument(
        "--server-cpus", help="CPUs for the server and its children (taskset -c list)"
    )
    parser.add_argument("--client-cpus", help="CPUs for perf_analyzer (taskset -c list)")
    args = parser.parse_args()
    args.models = args.models.split(",")
    if unknown := set(args.models) - set(MODELS):
        sys.exit(f"unknown models {sorted(unknown)}: choose from {sorted(MODELS)}")
    for path, how in ((PYTRITON_PYTHON, "bash benchmarks/install_peers.sh"),
                      (PERF_ANALYZER, "make perf-analyzer")):  # fmt: skip
        if not path.exists():
            sys.exit(f"{path} is missing: run {how} first")
    # A SIGTERM to this script unwinds it like Ctrl-C, so that the running server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    source = conveyor_source()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="grpc_peers_") as tmp:
        repo = build_example_repository(Path(tmp) / "repo")
        checks = Checks(mlp_layers(repo), {}, {}, {})
        steps, versions = run_rounds(args, Path(tmp), repo, checks)
    load_after = os.getloadavg()
    versions["nvidia-pytriton"] = package_version(PYTRITON_PYTHON, "nvidia-pytriton")
    rows = [
        pooled([s for s in steps if (s["server"], s["model"], s["protocol"]) == key])
        for key in ((n, m, p) for m in args.models for n in SERVERS for p in PROTOCOLS[n])
    ]
    report = {
        "benchmark": "grpc_peers",
        "machine": machine(),
        "started": started,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "models": {m: DESCRIPTIONS[m] for m in args.models},
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": CONCURRENCY,
        "placement": {"server_cpus": args.server_cpus, "client_cpus": args.client_cpus},
        "perf_analyzer": f"-b 1 --concurrency-range {CONCURRENCY} --measurement-interval "
        f"{args.duration * 1000:.0f} --stability-percentage {STABILITY_PERCENT} "
        f"--max-trials {MAX_TRIALS}",
        "versions": versions,
        "conveyor_source": source,
        "model_configs": checks.signatures,
        "answer_max_abs_diff": checks.max_abs_diff,
        "settings": {
            "conveyor": "example repository, --grpc-frontend native, ONNX Runtime",
            "pytriton": "@batch numpy functions, DynamicBatcher(max_queue_delay_microseconds=0), "
            "OpenBLAS on one thread",
        },
        "goal_throughput_ratio": args.goal,
        "rows": rows,
        "steps": steps,
        "ratios": ratios(rows, args.models, args.goal),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(report)
    Console().print(
        f"Conveyor: {source}; load average before {load_before}, after {load_after}\n"
        f"wrote {args.out}"
    )


if __name__ == "__main__":
    main()
