"""Stopping under load: SIGTERM while requests are in flight, and every request counted.

A burst of requests is sent and SIGTERM follows the first answer. Each request then ends
one of three ways:
- answered: its own correct rows, or a refusal the server sent (503 / UNAVAILABLE with
  the server's "not ready" message);
- not accepted: the connection was refused before the server took the request (over
  gRPC, the client's "failed to connect");
- lost: anything else (a connection reset or closed under a sent request, CANCELLED,
  another status, a timeout, someone else's rows).
None may be lost, and the process exits 0.

Over HTTP each request has its own http.client connection and no retry: tritonclient.http
(geventhttpclient) sends a request again when its connection closes without an answer,
which would make a dropped request look like a refused connection.
"""

from __future__ import annotations

import http.client
import json
import queue
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    CLIENT_TIMEOUT_S,
    PROTOCOLS,
    SHUTDOWN_TIMEOUT_S,
    ServerProcess,
    inputs_of,
    make_client,
    start_server,
)

REQUESTS = 64
MODEL = "slow_fp32"
NOT_READY = "the server is not ready"
# Outcome = (request index, "answered" | "not accepted" | "lost", detail).
Outcome = tuple[int, str, str]


def rows(i: int) -> np.ndarray:
    return np.full((1, 4), i, np.float32)


def http_one(srv: ServerProcess, i: int) -> Outcome:
    tensor = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    tensor.set_data_from_numpy(rows(i))
    body, header_length = httpclient.InferenceServerClient.generate_request_body([tensor])
    headers = {"Inference-Header-Content-Length": str(header_length)}
    host, port = srv.http_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT_S)
    try:
        conn.connect()
    except ConnectionRefusedError as exc:
        return i, "not accepted", repr(exc)
    try:
        conn.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return i, "lost", repr(exc)
    finally:
        conn.close()
    if response.status == 503 and NOT_READY in json.loads(data)["error"]:
        return i, "answered", "503 not ready"
    if response.status != 200:
        return i, "lost", f"{response.status} {data[:200]!r}"
    length = int(response.getheader("Inference-Header-Content-Length", "0"))
    out = np.frombuffer(data[length:], np.float32).reshape(1, 4)
    return (i, "answered", "ok") if np.array_equal(out, rows(i)) else (i, "lost", "wrong rows")


def burst_http(srv: ServerProcess) -> list[Outcome]:
    outcomes: queue.Queue[Outcome] = queue.Queue()
    threads = [
        threading.Thread(target=lambda i=i: outcomes.put(http_one(srv, i)), daemon=True)
        for i in range(REQUESTS)
    ]
    for thread in threads:
        thread.start()
    first = outcomes.get(timeout=CLIENT_TIMEOUT_S)
    srv.process.send_signal(signal.SIGTERM)
    return [first] + [outcomes.get(timeout=CLIENT_TIMEOUT_S) for _ in range(REQUESTS - 1)]


def grpc_outcome(i: int, result: Any, error: InferenceServerException | None) -> Outcome:
    if error is None:
        ok = np.array_equal(result.as_numpy("OUTPUT0"), rows(i))
        return (i, "answered", "ok") if ok else (i, "lost", "wrong rows")
    status, message = error.status(), str(error.message())
    if status == "StatusCode.UNAVAILABLE" and NOT_READY in message:
        return i, "answered", "UNAVAILABLE not ready"
    if status == "StatusCode.UNAVAILABLE" and "failed to connect" in message:
        return i, "not accepted", message
    return i, "lost", f"{status} {message}"


def burst_grpc(srv: ServerProcess) -> list[Outcome]:
    outcomes: queue.Queue[Outcome] = queue.Queue()
    client = make_client("grpc", srv)
    try:
        for i in range(REQUESTS):
            client.async_infer(
                MODEL,
                inputs_of("grpc", {"INPUT0": rows(i)}),
                lambda result, error, i=i: outcomes.put(grpc_outcome(i, result, error)),
            )
        first = outcomes.get(timeout=CLIENT_TIMEOUT_S)
        srv.process.send_signal(signal.SIGTERM)
        return [first] + [outcomes.get(timeout=CLIENT_TIMEOUT_S) for _ in range(REQUESTS - 1)]
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_under_load_loses_nothing(test_repo: Path, protocol: str) -> None:
    srv = start_server(test_repo)
    try:
        outcomes = burst_http(srv) if protocol == "http" else burst_grpc(srv)
        assert srv.process.wait(SHUTDOWN_TIMEOUT_S) == 0, srv.log_text()
        assert "server stopped" in srv.log_text()
    finally:
        srv.stop()
    assert sorted(i for i, _, _ in outcomes) == list(range(REQUESTS))
    counts = Counter(kind for _, kind, _ in outcomes)
    lost = [(i, detail) for i, kind, detail in outcomes if kind == "lost"]
    assert not lost, f"{len(lost)} of {REQUESTS} requests lost ({dict(counts)}): {lost[:5]}"
    assert counts["answered"] >= 1
    assert counts["answered"] + counts["not accepted"] == REQUESTS


QUEUED = "queued_fp32"  # holds requests up to 60 s for a batch of 8 rows
QUEUED_REQUESTS = 3
EXIT_TIMEOUT_S = 5


def queued_depth(srv: ServerProcess) -> int:
    """The model's queue depth as the metrics port reports it."""
    url = f"http://{srv.metrics_url}/metrics"
    with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT_S) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nv_inference_pending_request_count" and (
                sample.labels.get("model") == QUEUED
            ):
                return int(sample.value)
    return 0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_runs_requests_waiting_for_a_batch(test_repo: Path, protocol: str) -> None:
    """Requests waiting out a batching delay longer than the exit timeout still run."""
    srv = start_server(test_repo, "--exit-timeout-secs", str(EXIT_TIMEOUT_S))
    outcomes: queue.Queue[tuple[int, Any]] = queue.Queue()

    def call(i: int) -> None:
        client = make_client(protocol, srv)
        x = np.full((1, 4), i, np.float32)
        try:
            result = client.infer(QUEUED, inputs_of(protocol, {"INPUT0": x}))
            outcomes.put((i, result.as_numpy("OUTPUT0")))
        except InferenceServerException as exc:
            outcomes.put((i, f"{exc.status()} {exc.message()}"))
        finally:
            client.close()

    try:
        threads = [
            threading.Thread(target=call, args=(i,), daemon=True) for i in range(QUEUED_REQUESTS)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while queued_depth(srv) < QUEUED_REQUESTS:
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.05)
        srv.process.send_signal(signal.SIGTERM)
        answers = dict(outcomes.get(timeout=CLIENT_TIMEOUT_S) for _ in range(QUEUED_REQUESTS))
        assert srv.process.wait(SHUTDOWN_TIMEOUT_S) == 0, srv.log_text()
    finally:
        srv.stop()
    for i in range(QUEUED_REQUESTS):
        expected = np.full((1, 4), i + 0.5, np.float32)
        got = answers[i]
        assert isinstance(got, np.ndarray), f"request {i} was not run: {got}"
        np.testing.assert_array_equal(got, expected)
