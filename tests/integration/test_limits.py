"""Limits at the door: what a client can hold without sending work, and for how long.

HTTP: a request whose headers or body stall (or a connection that never sends one) is
answered 408 and closed once `--http-body-timeout-secs` runs out; past
`--http-max-connections` requests are answered 503 at once. gRPC: past
`--grpc-max-concurrent-rpcs` calls are answered RESOURCE_EXHAUSTED at once (a call is
read whole by grpc core before the servicer sees it, so only the bound applies there).
Stalls are made on raw sockets, which tritonclient cannot do; everything else goes
through tritonclient. Each wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    CLIENT_TIMEOUT_S,
    HOST,
    PROTOCOLS,
    ServerProcess,
    check_still_serving,
    http_request,
    inputs_of,
    make_client,
    running_server,
)

BODY_TIMEOUT_S = 1
MAX_CONNECTIONS = 3
MAX_RPCS = 2
# Bounds on the waits: far above the 1 s timeout, far below "forever".
ANSWER_WITHIN_S = 15.0
FREED_WITHIN_S = 10.0
INFER = "/v2/models/add_sub_fp32/infer"


@pytest.fixture(scope="module")
def limited(test_repo: Path) -> Iterator[ServerProcess]:
    flags = {
        "--http-body-timeout-secs": BODY_TIMEOUT_S,
        "--http-max-connections": MAX_CONNECTIONS,
        "--grpc-max-concurrent-rpcs": MAX_RPCS,
    }
    with running_server(test_repo, *(str(x) for kv in flags.items() for x in kv)) as server:
        yield server


def _connect(srv: ServerProcess) -> socket.socket:
    host, port = srv.http_url.split(":")
    sock = socket.create_connection((host, int(port)), timeout=ANSWER_WITHIN_S)
    sock.settimeout(ANSWER_WITHIN_S)
    return sock


def _read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a recv past ANSWER_WITHIN_S fails)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _infer_head(content_length: int) -> bytes:
    return (
        f"POST {INFER} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def _body() -> bytes:
    x = [0.5, 1.5, 2.5, 3.5]
    inputs = [
        {"name": n, "shape": [1, 4], "datatype": "FP32", "data": x} for n in ("INPUT0", "INPUT1")
    ]
    return json.dumps({"inputs": inputs}).encode()


def _check_408(answer: bytes, part: str) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"connection: close" in head.lower(), head
    message = json.loads(body)["error"]
    assert part in message, message
    assert "--http-body-timeout-secs" in message, message


def test_stalled_body_is_answered_408_and_closed(limited: ServerProcess) -> None:
    body = _body()
    with _connect(limited) as sock:
        sock.sendall(_infer_head(len(body)) + body[:10])
        _check_408(_read_to_close(sock), "body")
    check_still_serving(limited)


def test_trickled_body_is_answered_408_and_closed(limited: ServerProcess) -> None:
    """The timeout is on the whole body, so a byte now and then does not extend it."""
    body = _body()
    with _connect(limited) as sock:
        sock.sendall(_infer_head(len(body)))
        deadline = time.monotonic() + ANSWER_WITHIN_S
        sent = 0
        with contextlib.suppress(OSError):  # the server closes while bytes still go out
            while sent < len(body) - 1 and time.monotonic() < deadline:
                sock.sendall(body[sent : sent + 1])
                sent += 1
                time.sleep(0.2)
        assert sent < len(body) - 1, "the server read a body trickled for 15 s"
        _check_408(_read_to_close(sock), "body")
    check_still_serving(limited)


def test_stalled_headers_are_answered_408_and_closed(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: {HOST}\r\nContent-Le".encode())
        _check_408(_read_to_close(sock), "headers")
    check_still_serving(limited)


def test_silent_connection_is_closed(limited: ServerProcess) -> None:
    with _connect(limited) as sock:
        assert _read_to_close(sock) == b""


def test_body_in_time_is_served(limited: ServerProcess) -> None:
    """Two halves well within the timeout: an ordinary slow client is not cut off."""
    body = _body()
    with _connect(limited) as sock:
        sock.sendall(_infer_head(len(body)) + body[:20])
        time.sleep(BODY_TIMEOUT_S / 4)
        sock.sendall(body[20:])
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 "), head[:300]


@contextlib.contextmanager
def _held_http_connections(srv: ServerProcess, count: int) -> Iterator[list[socket.socket]]:
    """`count` open keep-alive connections, each past one request (so none is idle-new)."""
    socks = [_connect(srv) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(f"GET /v2/health/live HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        yield socks
    finally:
        for sock in socks:
            sock.close()


@contextlib.contextmanager
def _held_grpc_calls(srv: ServerProcess, count: int) -> Iterator[list[Any]]:
    """`count` open ModelStreamInfer calls, each known to the server (it answered on it)."""
    clients = []
    try:
        for i in range(count):
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            clients.append(client)
            answers: queue.Queue[Any] = queue.Queue()
            client.start_stream(callback=lambda result, error, q=answers: q.put((result, error)))
            x = np.full((1, 4), i, np.float32)
            client.async_stream_infer("add_sub_fp32", inputs_of("grpc", {"INPUT0": x, "INPUT1": x}))
            result, error = answers.get(timeout=CLIENT_TIMEOUT_S)
            assert error is None, error
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)
        yield clients
    finally:
        for client in clients:
            client.stop_stream()
            client.close()


def _infer(srv: ServerProcess, protocol: str) -> None:
    client = make_client(protocol, srv)
    x = np.ones((1, 4), np.float32)
    try:
        result = client.infer("add_sub_fp32", inputs_of(protocol, {"INPUT0": x, "INPUT1": x}))
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)
    finally:
        client.close()


def _infer_once_freed(srv: ServerProcess, protocol: str) -> None:
    """The server notices a freed slot a moment after the client lets go: bounded retries."""
    deadline = time.monotonic() + FREED_WITHIN_S
    while True:
        try:
            _infer(srv, protocol)
            return
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_over_the_limit_is_refused_at_once(limited: ServerProcess, protocol: str) -> None:
    held = (
        _held_http_connections(limited, MAX_CONNECTIONS)
        if protocol == "http"
        else _held_grpc_calls(limited, MAX_RPCS)
    )
    with held:
        with pytest.raises(InferenceServerException) as refused:
            _infer(limited, protocol)
        if protocol == "http":
            assert refused.value.status() == "503", refused.value
            assert "--http-max-connections" in str(refused.value.message())
        else:
            assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
    _infer_once_freed(limited, protocol)
    check_still_serving(limited)


def test_http_limit_answers_json(limited: ServerProcess) -> None:
    """The refusal is the server's usual `{"error": ...}`, and the connection is closed."""
    with _held_http_connections(limited, MAX_CONNECTIONS):
        status, headers, body = http_request(limited, "GET", "/v2/health/ready")
    assert status == 503, body
    assert headers.get("connection") == "close", headers
    assert str(MAX_CONNECTIONS) in json.loads(body)["error"]
