"""What the benchmark scripts share: `conveyor serve` in a subprocess, the ORT ceiling, and
the median timer of the micro-benchmarks."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class ServerProcess:
    """Start the server on a repository and learn its ports from the log."""

    def __init__(self, repo: Path, *extra: str) -> None:
        cmd = [
            *(sys.executable, "-m", "runtime", "serve", "--model-repository", str(repo)),
            *("--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"),
            *extra,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        self.http_port = self.grpc_port = self.metrics_port = 0
        self.log: list[str] = []
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        if not ready.wait(120):
            self.proc.kill()
            raise RuntimeError("server did not become ready:\n" + "".join(self.log[-30:]))

    def _drain(self, ready: threading.Event) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if m := re.search(r"Started HTTPService at [^:]+:(\d+)", line):
                self.http_port = int(m.group(1))
            if m := re.search(r"Started GRPCInferenceService at [^:]+:(\d+)", line):
                self.grpc_port = int(m.group(1))
            if m := re.search(r"Started Metrics Service at [^:]+:(\d+)", line):
                self.metrics_port = int(m.group(1))
            if "server is ready" in line:
                ready.set()
        ready.set()

    def stats(self, model: str) -> dict[str, Any]:
        """The model's statistics extension record (its latest version)."""
        url = f"http://127.0.0.1:{self.http_port}/v2/models/{model}/stats"
        with urllib.request.urlopen(url, timeout=10) as r:
            records: list[dict[str, Any]] = json.load(r)["model_stats"]
        return max(records, key=lambda s: int(s["version"]))

    def cpu_s(self) -> float:
        """CPU seconds the server process has used (Linux /proc), to show cost per request."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def thread_cpu_s(self) -> tuple[float, float]:
        """CPU seconds of the server's main thread (the event loop: sockets, parsing, the
        batcher) and of all its other threads together (model instances, ONNX Runtime's pool,
        grpc's pollers), from /proc; threads that already exited are not counted."""
        main = other = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for stat in Path(f"/proc/{self.proc.pid}/task").glob("*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the thread ended between the listing and the read
            cpu = (int(fields[11]) + int(fields[12])) / tick
            if stat.parent.name == str(self.proc.pid):
                main += cpu
            else:
                other += cpu
        return main, other

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def batch_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Average batch size and server-side time per request between two stats records."""
    execs = after["execution_count"] - before["execution_count"]
    infers = after["inference_count"] - before["inference_count"]

    def per_request(key: str) -> float:
        a, b = after["inference_stats"][key], before["inference_stats"][key]
        count = a["count"] - b["count"]
        return (a["ns"] - b["ns"]) / count / 1e6 if count else 0.0

    server_ms = sum(per_request(k) for k in ("queue", "compute_input", "compute_infer"))
    return {
        "avg_batch": infers / execs if execs else 0.0,
        "server_queue_ms": per_request("queue"),
        "server_ms": server_ms + per_request("compute_output"),
    }


def busy_ns(record: dict[str, Any]) -> int:
    """Nanoseconds the model's instances spent running batches, from the statistics record."""
    return sum(int(b["compute_infer"]["ns"]) for b in record.get("batch_stats", []))


def ort_rows_per_s(
    path: Path, width: int, batch: int, threads: int = 0, seconds: float = 2.0
) -> float:
    """In-process ONNX Runtime at one batch size: the ceiling for the server."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, width), dtype=np.float32)
    for _ in range(10):
        session.run(None, {"INPUT0": x})
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, {"INPUT0": x})
        runs += 1
    return runs * batch / (time.perf_counter() - t0)


def median_us(fn: Callable[[], Any], budget_s: float, warmup: int = 1, most: int = 2000) -> float:
    """Median microseconds of repeated calls of fn after `warmup` untimed ones: at least 5,
    at most `most`, for about `budget_s`."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < most):
        start = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - start) / 1e3)
    return statistics.median(samples)


def workers_cpu_s(parent_pid: int) -> float:
    """CPU seconds used so far by the worker processes (runtime.worker) of `parent_pid`,
    read from /proc: a Python model's instances run there, not in the server's process."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone while we looked
            continue
        if int(stat[1]) == parent_pid and b"runtime.worker" in command:
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total
