"""Python models side by side: Conveyor, PyTriton and MLServer serving y = 2 * x, paired.

    bash benchmarks/install_peers.sh        # once: .tools/pytriton-venv, .tools/mlserver-venv
    .venv/bin/python benchmarks/python_peers.py [--duration 5] [--warmup 1]

The same function, y = 2 * x on FP32 [64] rows, behind three servers, each started in turn on
127.0.0.1 with free ports, and driven by the same closed-loop generator (runtime/loadtest, in
this process) at concurrency 16, one row per request. Each server gets one Python process
running the function and dynamic batching up to 8 rows:

- Conveyor: `backend: "python"`, `model.py` defining `class Model` whose `predict` returns
  `{"y": inputs["x"] * 2}`; `max_batch_size: 8`, `dynamic_batching {
  max_queue_delay_microseconds: 0 }`, `instance_group [ { count: 1 } ]` (one worker process).
- PyTriton (nvidia-pytriton; Triton Inference Server's own HTTP and gRPC front ends, requests
  handed to the Python function through Triton's Python backend): one `@batch` function bound
  with `triton.bind`, `ModelConfig(max_batch_size=8,
  batcher=DynamicBatcher(max_queue_delay_microseconds=0))`, server defaults otherwise.
- MLServer: a custom `MLModel` whose `predict` decodes `x` with NumpyCodec and returns `2 * x`;
  adaptive batching `max_batch_size: 8`, `max_batch_time` 1 ms (`--mlserver-batch-time-us`;
  0 turns MLServer's batcher off, so it cannot take just what is queued as the other two do;
  it waits up to this long for a full batch; in a trial on a 2-core machine 1 ms served more
  gRPC requests than 100 us, and with a lower p99 over both protocols), `parallel_workers: 1`
  (one inference worker process, its default), `debug: false` (no access log), defaults
  otherwise.

Protocols (the `protocol` column):

- `http`: KServe v2 over HTTP/1.1 keep-alive with Triton's binary tensor extension (input and
  output as raw bytes after a JSON header) for Conveyor and PyTriton. MLServer does not
  implement the extension (it answers such a request with 500), so its `http` rows are JSON:
  each server with its best HTTP encoding.
- `http_json`: JSON bodies for all three, the like-for-like HTTP comparison.
- `grpc`: ModelInfer with `raw_input_contents`, pre-serialised, over one channel.

Paired: the servers run in the order Conveyor, PyTriton, MLServer, MLServer, PyTriton,
Conveyor, each a fresh process, with the protocols in reverse order in the second half, so
that the drift of a shared machine falls on all three alike; each figure pools both rounds,
and the rounds' own throughputs are kept to show the noise. Before its load, every server's
answer to the exact request bytes is checked against 2 * x.

Server CPU per request is the CPU time of the server's whole process tree, read from /proc
(Conveyor: the server and its worker; PyTriton: the Python process that holds the function,
tritonserver, the Python backend's stub and the processes the stub starts; MLServer: the main
process and its inference worker), over the warm-up and the step, per request answered in
the step, as benchmarks/python_models.py counts it. Client CPU is this process's own, the
same way.
`other load` is what the machine's cores did besides: cores busy with other processes plus cores
stolen by the hypervisor during each round's step (from /proc/stat), since figures taken on a
shared machine move with it.

Writes benchmarks/results/python_peers.json and prints the figures and the ratios
Conveyor / PyTriton and Conveyor / MLServer per protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.table import Table

from runtime.loadtest.client import (
    MODEL_INFER,
    StepResult,
    grpc_request_bytes,
    http_request_bytes,
    run_grpc,
    run_http,
)
from runtime.proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
PYTRITON_PYTHON = TOOLS / "pytriton-venv" / "bin" / "python"
MLSERVER_BIN = TOOLS / "mlserver-venv" / "bin" / "mlserver"
HOST = "127.0.0.1"
MODEL = "double"
WIDTH = 64
MAX_BATCH = 8
CONCURRENCY = 16
SERVERS = ("conveyor", "pytriton", "mlserver")
LABELS = {"conveyor": "Conveyor", "pytriton": "PyTriton", "mlserver": "MLServer"}
PROTOCOLS = ("http", "grpc", "http_json")
READY_TIMEOUT_S = 180.0
TICK = os.sysconf("SC_CLK_TCK")

CONVEYOR_CONFIG = f"""name: "{MODEL}"
backend: "python"
max_batch_size: {MAX_BATCH}
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {WIDTH} ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 0 }}
"""
CONVEYOR_MODEL = """
class Model:
    def predict(self, inputs):
        return {"y": inputs["x"] * 2}
"""
# Run by the PyTriton venv's python: serve.py HTTP_PORT GRPC_PORT METRICS_PORT WORKSPACE.
PYTRITON_SCRIPT = f'''"""PyTriton serving y = 2 * x on FP32 [{WIDTH}] rows."""

import os
import signal
import sys
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def infer(x):
    return {{"y": x * 2}}


def main():
    http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
    # The Python backend's stub links libpython3.11; it must load this interpreter's, whose
    # standard library it runs, rather than the system's (a different 3.11 patch release).
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = TritonConfig(
        http_address="{HOST}",
        http_port=http_port,
        grpc_address="{HOST}",
        grpc_port=grpc_port,
        metrics_address="{HOST}",
        metrics_port=metrics_port,
    )
    with Triton(config=config, workspace=sys.argv[4]) as triton:
        triton.bind(
            model_name="{MODEL}",
            infer_func=infer,
            inputs=[Tensor(name="x", dtype=np.float32, shape=({WIDTH},))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=({WIDTH},))],
            config=ModelConfig(
                max_batch_size={MAX_BATCH},
                batcher=DynamicBatcher(max_queue_delay_microseconds=0),
            ),
        )
        triton.serve()


main()
'''
MLSERVER_MODEL = """from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Double(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = NumpyCodec.encode_output("y", x * 2)
        return InferenceResponse(model_name=self.name, outputs=[y])
"""


def free_port() -> int:
    """A port on the loopback address that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def peer_env() -> dict[str, str]:
    """This environment without what points a Python at .venv."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONUNBUFFERED": "1"}


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone while we looked
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        table[int(entry.name)] = (int(fields[1]), comm, cpu)
    return table


@dataclass
class Server:
    """One server's process group, started in a session of its own so that stopping it
    reaches every process it started."""

    name: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    http_port: int
    grpc_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    version: str = ""

    def __post_init__(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, models: tuple[str, ...] = (MODEL,)) -> None:
        """Until the models answer ready over HTTP; the server's metadata gives its version."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = f"http://{HOST}:{self.http_port}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                for model in models:
                    with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=2):
                        pass
                with urllib.request.urlopen(f"{url}/v2", timeout=2) as r:
                    meta = json.load(r)
                self.version = f"{meta.get('name', '')} {meta.get('version', '')}".strip()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}")

    def tree_cpu_s(self) -> dict[str, float]:
        """CPU seconds of the server's process tree so far, by process: `main` for the one
        started, the command name for each descendant (summed where names repeat)."""
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out: dict[str, float] = {}
        stack = [self.proc.pid]
        while stack:
            pid = stack.pop()
            if pid in table:
                label = "main" if pid == self.proc.pid else table[pid][1]
                out[label] = out.get(label, 0.0) + table[pid][2]
            stack.extend(children.get(pid, []))
        return out

    def stop(self) -> None:
        """SIGTERM to the server (each shuts down cleanly on it), then SIGKILL to whatever of
        its process group is left."""
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(45)
        # ProcessLookupError: the whole group has exited already.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def start_conveyor(folder: Path, args: argparse.Namespace) -> Server:
    version = folder / "repo" / MODEL / "1"
    version.mkdir(parents=True)
    (folder / "repo" / MODEL / "config.pbtxt").write_text(CONVEYOR_CONFIG)
    (version / "model.py").write_text(CONVEYOR_MODEL)
    http, grpc_, metrics = free_port(), free_port(), free_port()
    cmd = [
        *(sys.executable, "-m", "runtime", "serve", "--model-repository", str(folder / "repo")),
        *("--host", HOST, "--http-port", str(http), "--grpc-port", str(grpc_)),
        *("--metrics-port", str(metrics)),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return Server("conveyor", cmd, ROOT, env, http, grpc_, folder / "server.log")


def start_pytriton(folder: Path, args: argparse.Namespace) -> Server:
    (folder / "serve.py").write_text(PYTRITON_SCRIPT)
    http, grpc_, metrics = free_port(), free_port(), free_port()
    cmd = [str(PYTRITON_PYTHON), "serve.py", str(http), str(grpc_), str(metrics)]
    cmd.append(str(folder / "workspace"))
    return Server("pytriton", cmd, folder, peer_env(), http, grpc_, folder / "server.log")


def start_mlserver(folder: Path, args: argparse.Namespace) -> Server:
    model_dir = folder / MODEL
    model_dir.mkdir()
    http, grpc_, metrics = free_port(), free_port(), free_port()
    settings = {
        "debug": False,
        "host": HOST,
        "http_port": http,
        "grpc_port": grpc_,
        "metrics_port": metrics,
        "parallel_workers": 1,
    }
    tensor = {"datatype": "FP32", "shape": [-1, WIDTH]}
    model_settings = {
        "name": MODEL,
        "implementation": "model.Double",
        "max_batch_size": MAX_BATCH,
        "max_batch_time": args.mlserver_batch_time_us / 1e6,
        "inputs": [{"name": "x", **tensor}],
        "outputs": [{"name": "y", **tensor}],
    }
    (model_dir / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    (model_dir / "model.py").write_text(MLSERVER_MODEL)
    cmd = [str(MLSERVER_BIN), "start", str(model_dir)]
    return Server("mlserver", cmd, folder, peer_env(), http, grpc_, folder / "server.log")


LAUNCHERS: dict[str, Callable[[Path, argparse.Namespace], Server]] = {
    "conveyor": start_conveyor,
    "pytriton": start_pytriton,
    "mlserver": start_mlserver,
}


def json_request_bytes(x: np.ndarray) -> bytes:
    """A complete HTTP/1.1 infer request with the tensor as JSON numbers."""
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\n"
        f"Host: {HOST}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def encoding(server: str, protocol: str) -> str:
    """How the tensors travel: MLServer has no binary tensor extension over HTTP."""
    if protocol == "grpc":
        return "raw"
    if protocol == "http_json" or server == "mlserver":
        return "json"
    return "binary"


def request_for(server: str, protocol: str, x: np.ndarray) -> bytes:
    if protocol == "grpc":
        return grpc_request_bytes(MODEL, {"x": x}, {"x": "FP32"})
    if encoding(server, protocol) == "json":
        return json_request_bytes(x)
    return http_request_bytes(HOST, MODEL, {"x": x}, {"x": "FP32"})


def _http_once(port: int, request: bytes) -> tuple[dict[str, str], bytes]:
    """Send one complete request and read the answer: (lower-cased headers, body)."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed before the answer's headers")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed inside the answer's body")
            body += chunk
    if lines[0].split()[1] != "200":
        raise RuntimeError(f"{lines[0]}: {body[:300]!r}")
    return headers, body


def answer_http(port: int, request: bytes) -> np.ndarray:
    """Output `y` of one HTTP infer request, JSON or binary tensor extension."""
    headers, body = _http_once(port, request)
    json_len = int(headers.get("inference-header-content-length", len(body)))
    out = json.loads(body[:json_len])["outputs"][0]
    if "data" in out:
        return np.array(out["data"], np.float32).reshape(out["shape"])
    size = int(out["parameters"]["binary_data_size"])
    return np.frombuffer(body[json_len : json_len + size], np.float32).reshape(out["shape"])


def answer_grpc(port: int, request: bytes) -> np.ndarray:
    """Output `y` of one ModelInfer call, raw or typed contents."""
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary(
            MODEL_INFER, response_deserializer=pb.ModelInferResponse.FromString
        )
        reply = call(request, timeout=10)
    out = reply.outputs[0]
    if reply.raw_output_contents:
        y = np.frombuffer(reply.raw_output_contents[0], np.float32)
    else:
        y = np.array(out.contents.fp32_contents, np.float32)
    return y.reshape(list(out.shape))


def check(server: Server, protocol: str, request: bytes, x: np.ndarray) -> None:
    """The server's answer to the exact bytes the load will send is 2 * x."""
    if protocol == "grpc":
        y = answer_grpc(server.grpc_port, request)
    else:
        y = answer_http(server.http_port, request)
    if y.shape != x.shape or not np.array_equal(y, x * 2):
        raise RuntimeError(f"{server.name} {protocol}: wrong answer {y.ravel()[:4]}...")


@dataclass
class Step:
    """One measured step of one server and protocol in one round."""

    server: str
    protocol: str
    round: int
    result: StepResult
    warmup_s: float
    server_cpu_s: dict[str, float]
    client_cpu_s: float
    wall_s: float
    machine_busy_s: float
    steal_s: float

    def other_cores(self) -> float:
        """Cores busy on work other than the server and this client during the step."""
        ours = sum(self.server_cpu_s.values()) + self.client_cpu_s
        return max(self.machine_busy_s - ours, 0.0) / self.wall_s


def machine_cpu_s() -> tuple[float, float]:
    """CPU seconds all cores have spent busy so far, and stolen by the hypervisor."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


async def measure(
    server: Server, protocol: str, request: bytes, seconds: float, warmup: float, round_: int
) -> Step:
    cpu0, client0 = server.tree_cpu_s(), time.process_time()
    (busy0, steal0), wall0 = machine_cpu_s(), time.monotonic()
    if protocol == "grpc":
        url = f"{HOST}:{server.grpc_port}"
        result = await run_grpc(url, request, CONCURRENCY, seconds, warmup)
    else:
        result = await run_http(HOST, server.http_port, request, CONCURRENCY, seconds, warmup)
    client = time.process_time() - client0
    cpu1 = server.tree_cpu_s()
    (busy1, steal1), wall = machine_cpu_s(), time.monotonic() - wall0
    delta = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
    return Step(
        server.name, protocol, round_, result, warmup, delta, client,
        wall, busy1 - busy0, steal1 - steal0,
    )  # fmt: skip


def run_rounds(
    args: argparse.Namespace, folder: Path, x: np.ndarray
) -> tuple[list[Step], dict[str, str]]:
    """A B C C B A: each server a fresh process per round, every protocol on it."""
    order = [*SERVERS, *reversed(SERVERS)]
    steps: list[Step] = []
    versions: dict[str, str] = {}
    console = Console(width=120, stderr=True)
    for i, name in enumerate(order):
        protocols = PROTOCOLS if i < len(SERVERS) else PROTOCOLS[::-1]
        round_ = 1 if i < len(SERVERS) else 2
        where = folder / f"{i}_{name}"
        where.mkdir()
        t0 = time.monotonic()
        server = LAUNCHERS[name](where, args)
        try:
            server.wait_ready()
            versions[name] = server.version
            console.print(
                f"{LABELS[name]} ready in {time.monotonic() - t0:.1f} s ({server.version})"
            )
            for protocol in protocols:
                request = request_for(name, protocol, x)
                check(server, protocol, request, x)
                step = asyncio.run(
                    measure(server, protocol, request, args.duration, args.warmup, round_)
                )
                console.print(
                    f"  round {round_} {protocol}: {step.result.requests / args.duration:,.0f} "
                    f"req/s, errors {step.result.errors or 'none'}, other work "
                    f"{step.other_cores():.2f} cores, steal {step.steal_s / step.wall_s:.2f}"
                )
                steps.append(step)
        finally:
            server.stop()
    return steps, versions


def pooled(steps: list[Step], duration: float) -> dict[str, Any]:
    """The figures of both rounds of one server and protocol together."""
    latencies = np.array([t for s in steps for t in s.result.latencies_s]) * 1e3
    if latencies.size == 0:
        latencies = np.zeros(1)
    requests = sum(s.result.requests for s in steps)
    # CPU over warm-up and step, per request answered in the step (rate taken as steady).
    answered = max(requests, 1) * (duration + steps[0].warmup_s) / duration
    server_cpu: dict[str, float] = {}
    for s in steps:
        for k, v in s.server_cpu_s.items():
            server_cpu[k] = server_cpu.get(k, 0.0) + v
    errors: dict[str, int] = {}
    for s in steps:
        for k, n in s.result.errors.items():
            errors[k] = errors.get(k, 0) + n
    return {
        "server": steps[0].server,
        "protocol": steps[0].protocol,
        "encoding": encoding(steps[0].server, steps[0].protocol),
        "concurrency": CONCURRENCY,
        "requests": requests,
        "throughput_rps": requests / (duration * len(steps)),
        "rounds_rps": [s.result.requests / duration for s in steps],
        "p50_ms": float(np.percentile(latencies, 50)),
        "p90_ms": float(np.percentile(latencies, 90)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "p999_ms": float(np.percentile(latencies, 99.9)),
        "server_cpu_us": sum(server_cpu.values()) / answered * 1e6,
        "server_cpu_us_by_process": {k: v / answered * 1e6 for k, v in server_cpu.items()},
        "client_cpu_us": sum(s.client_cpu_s for s in steps) / answered * 1e6,
        # Load on the two cores from elsewhere: other processes, and the hypervisor's steal.
        "other_work_cores": [s.other_cores() for s in steps],
        "steal_cores": [s.steal_s / s.wall_s for s in steps],
        "errors": errors,
    }


def ratios(rows: list[dict[str, Any]], goal: float) -> list[dict[str, Any]]:
    """Conveyor over each peer per protocol: throughput ratio, and p99 side by side."""
    by = {(r["server"], r["protocol"]): r for r in rows}
    out = []
    for protocol in PROTOCOLS:
        ours = by[("conveyor", protocol)]
        for peer in ("pytriton", "mlserver"):
            theirs = by[(peer, protocol)]
            ratio = ours["throughput_rps"] / max(theirs["throughput_rps"], 1e-9)
            p99_ok = ours["p99_ms"] <= theirs["p99_ms"]
            out.append(
                {
                    "protocol": protocol,
                    "peer": peer,
                    "peer_encoding": theirs["encoding"],
                    "throughput_ratio": ratio,
                    "conveyor_p99_ms": ours["p99_ms"],
                    "peer_p99_ms": theirs["p99_ms"],
                    "p99_no_worse": p99_ok,
                    "goal_met": ratio >= goal and p99_ok,
                }
            )
    return out


def package_version(python: Path, package: str) -> str:
    """A package's version as the given interpreter sees it."""
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or "unknown"


def conveyor_source() -> str:
    """The commit of the Conveyor measured, and its uncommitted changes under runtime/ and
    kernels/ (others may be editing the working tree while the benchmark runs)."""
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    try:
        rev = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "diff", "--name-only", "HEAD", "--", "runtime", "kernels"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        added = subprocess.run(
            [*git, "ls-files", "--others", "--exclude-standard", "--", "runtime", "kernels"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    if changed or added:
        return f"{rev} with uncommitted changes: {', '.join(changed + added)}"
    return rev


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {os.cpu_count()} cpus ({model}), {platform.platform()}"


def print_report(report: dict[str, Any]) -> None:
    console = Console(width=150)
    table = Table(title=f"Python models, y = 2x, c={CONCURRENCY} ({report['machine']})")
    cols = ("server", "protocol", "encoding", "req/s", "rounds req/s", "p50 ms", "p99 ms",
            "server CPU us/req", "client CPU us/req", "other load", "errors")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    for r in report["rows"]:
        pairs = zip(r["other_work_cores"], r["steal_cores"], strict=True)
        other = " / ".join(f"{o + t:.2f}" for o, t in pairs)
        table.add_row(
            LABELS[r["server"]], r["protocol"], r["encoding"], f"{r['throughput_rps']:,.0f}",
            " / ".join(f"{v:,.0f}" for v in r["rounds_rps"]), f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}", f"{r['server_cpu_us']:.0f}", f"{r['client_cpu_us']:.0f}",
            other,
            str(sum(r["errors"].values())),
        )  # fmt: skip
    console.print(table)
    goal = report["goal_throughput_ratio"]
    ratio_table = Table(title=f"Conveyor / peer (goal: >= {goal:g}x throughput, p99 no worse)")
    for col in ("protocol", "peer", "req/s ratio", "Conveyor p99 ms", "peer p99 ms", "goal met"):
        ratio_table.add_column(col, justify="right")
    for q in report["ratios"]:
        ratio_table.add_row(
            q["protocol"], f"{LABELS[q['peer']]} ({q['peer_encoding']})",
            f"{q['throughput_ratio']:.2f}x", f"{q['conveyor_p99_ms']:.2f}",
            f"{q['peer_p99_ms']:.2f}", "yes" if q["goal_met"] else "no",
        )  # fmt: skip
    console.print(ratio_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each step")
    parser.add_argument("--mlserver-batch-time-us", type=float, default=1000.0)
    parser.add_argument("--goal", type=float, default=3.0, help="throughput ratio to meet")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/python_peers.json")
    args = parser.parse_args()
    for path in (PYTRITON_PYTHON, MLSERVER_BIN):
        if not path.exists():
            sys.exit(f"{path} is missing: run bash benchmarks/install_peers.sh first")
    # A SIGTERM to this script unwinds it like Ctrl-C, so that the running server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    source = conveyor_source()
    load_before = os.getloadavg()
    x = np.random.default_rng(0).random((1, WIDTH), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="python_peers_") as tmp:
        steps, versions = run_rounds(args, Path(tmp), x)
    versions["nvidia-pytriton"] = package_version(PYTRITON_PYTHON, "nvidia-pytriton")
    versions["mlserver-package"] = package_version(MLSERVER_BIN.with_name("python"), "mlserver")
    rows = [
        pooled([s for s in steps if s.server == name and s.protocol == protocol], args.duration)
        for name in SERVERS
        for protocol in PROTOCOLS
    ]
    report = {
        "benchmark": "python_peers",
        "machine": machine(),
        "started": started,
        "load_average_before": load_before,
        "order": [*SERVERS, *reversed(SERVERS)],
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": CONCURRENCY,
        "versions": versions,
        "conveyor_source": source,
        "settings": {
            "max_batch_size": MAX_BATCH,
            "conveyor": "dynamic_batching { max_queue_delay_microseconds: 0 }, 1 instance",
            "pytriton": "DynamicBatcher(max_queue_delay_microseconds=0), 1 infer function",
            "mlserver": f"max_batch_time {args.mlserver_batch_time_us:g} us, parallel_workers 1",
        },
        "goal_throughput_ratio": args.goal,
        "rows": rows,
        "ratios": ratios(rows, args.goal),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_report(report)
    Console().print(f"Conveyor: {source}; load average before the run: {load_before}")
    Console().print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
