"""Queue policy and cancellation through the real clients, over HTTP and gRPC.

The model `queued_fp32` holds requests for up to 60 s until 8 rows make a batch and
queues at most 4, so what leaves the queue early is what these tests are about.
Short sleeps only give the server time to see what the client already did
(requests queued, a socket closed); no assertion is about time.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    expect_error,
    infer_input,
    make_client,
)

MODEL = "queued_fp32"
SETTLE_S = 0.3


def _rows(n: int, start: float) -> np.ndarray:
    return (start + np.arange(n * 4, dtype=np.float32)).reshape(n, 4)


def _counts(client: Any, protocol: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(MODEL)
    s = stats["model_stats"][0] if protocol == "http" else stats.model_stats[0]
    if protocol == "http":
        return int(s["inference_count"]), int(s["execution_count"])
    return int(s.inference_count), int(s.execution_count)


def _infer(client: Any, protocol: str, x: np.ndarray, **kw: Any) -> np.ndarray:
    result = client.infer(MODEL, [infer_input(protocol, "INPUT0", x)], **kw)
    out: np.ndarray = result.as_numpy("OUTPUT0")
    return out


def _full_batch_runs_alone(client: Any, protocol: str) -> None:
    """An 8-row request makes a batch by itself: exactly 8 more inferences, 1 execution."""
    before = _counts(client, protocol)
    x = _rows(8, 100)
    np.testing.assert_array_equal(_infer(client, protocol, x), x + 0.5)
    after = _counts(client, protocol)
    assert (after[0] - before[0], after[1] - before[1]) == (8, 1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_full_queue_refuses_at_once_and_queue_timeouts_answer_503(
    server: ServerProcess, protocol: str
) -> None:
    clients = [make_client(protocol, server) for _ in range(5)]
    try:
        with ThreadPoolExecutor(4) as pool:
            queued = [
                pool.submit(_infer, c, protocol, _rows(1, i), timeout=2_000_000)
                for i, c in enumerate(clients[:4])
            ]
            time.sleep(SETTLE_S)  # let the four reach the queue
            message = expect_error(
                protocol, ("UNAVAILABLE",), _infer, clients[4], protocol, _rows(1, 9)
            )
            assert "Exceeds maximum queue size" in message
            for fut in queued:
                with pytest.raises(InferenceServerException) as info:
                    fut.result(timeout=30)
                assert "Request timeout expired" in str(info.value.message())
                assert info.value.status() in ("503", "StatusCode.UNAVAILABLE")
        # Nothing expired ran, and the model still batches normally.
        _full_batch_runs_alone(clients[4], protocol)
    finally:
        for c in clients:
            c.close()


def test_http_client_that_disconnects_is_dropped_from_the_queue(server: ServerProcess) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(SETTLE_S)  # queued, waiting for a full batch
    time.sleep(SETTLE_S)  # the server sees the connection close
    client = make_client("http", server)
    try:
        # Had the one-row request stayed, the batch would have been that row alone.
        _full_batch_runs_alone(client, "http")
    finally:
        client.close()


def test_grpc_call_past_its_deadline_is_dropped_from_the_queue(server: ServerProcess) -> None:
    client = make_client("grpc", server)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.inner.infer(
                MODEL, [infer_input("grpc", "INPUT0", _rows(1, 0))], client_timeout=SETTLE_S
            )
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        _full_batch_runs_alone(client, "grpc")
    finally:
        client.close()
