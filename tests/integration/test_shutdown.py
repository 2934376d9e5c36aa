"""Stopping under load: SIGTERM while requests are in flight.

Which requests the server has accepted at the moment of the signal cannot be known from
outside, so the test asks for what holds whatever the interleaving: every caller gets an
answer (no hang), each answer is either its own correct rows or a clean refusal, never an
internal error or someone else's data, and the process exits 0. Clean refusals: UNAVAILABLE
(arrived after the signal); over gRPC, CANCELLED for calls grpc core had not yet handed to
the servicer; over HTTP, a refused or closed connection for a request the server had not
read yet (from outside that cannot be told apart from a dropped accepted request).
"""

from __future__ import annotations

import http.client
import queue
import signal
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    CLIENT_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
    ServerProcess,
    inputs_of,
    make_client,
    start_server,
)

REQUESTS = 48
Answer = tuple[int, Any, Exception | None]
CLEAN_REFUSALS = {"503", "StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
CONNECTION_ERRORS = (OSError, http.client.HTTPException)


def rows(i: int) -> np.ndarray:
    return np.full((1, 4), i, np.float32)


def load_then_stop_grpc(srv: ServerProcess) -> list[Answer]:
    answers: queue.Queue[Answer] = queue.Queue()
    c = make_client("grpc", srv)
    try:
        for i in range(REQUESTS):
            c.async_infer(
                "slow_fp32",
                inputs_of("grpc", {"INPUT0": rows(i)}),
                lambda result, error, i=i: answers.put((i, result, error)),
            )
        first = answers.get(timeout=CLIENT_TIMEOUT_S)
        srv.process.send_signal(signal.SIGTERM)
        return [first] + [answers.get(timeout=CLIENT_TIMEOUT_S) for _ in range(REQUESTS - 1)]
    finally:
        c.close()


def load_then_stop_http(srv: ServerProcess) -> list[Answer]:
    c = httpclient.InferenceServerClient(
        srv.http_url,
        concurrency=REQUESTS,
        connection_timeout=CLIENT_TIMEOUT_S,
        network_timeout=CLIENT_TIMEOUT_S,
    )
    try:
        pending = [
            c.async_infer("slow_fp32", inputs_of("http", {"INPUT0": rows(i)}))
            for i in range(REQUESTS)
        ]
        got: list[Answer] = []
        for i, request in enumerate(pending):
            try:
                got.append((i, request.get_result(timeout=CLIENT_TIMEOUT_S), None))
            except (InferenceServerException, *CONNECTION_ERRORS) as error:
                got.append((i, None, error))
            if i == 0:
                srv.process.send_signal(signal.SIGTERM)
        return got
    finally:
        c.close()


def check_answers(got: list[Answer]) -> None:
    assert sorted(i for i, _, _ in got) == list(range(REQUESTS))
    assert any(error is None for _, _, error in got), "no request succeeded at all"
    for i, result, error in got:
        if error is None:
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), rows(i))
        elif isinstance(error, InferenceServerException):
            assert error.status() in CLEAN_REFUSALS, (i, str(error))
        else:
            assert isinstance(error, CONNECTION_ERRORS), (i, repr(error))


def test_sigterm_under_load_grpc(test_repo: Path) -> None:
    srv = start_server(test_repo)
    try:
        check_answers(load_then_stop_grpc(srv))
        assert srv.process.wait(SHUTDOWN_TIMEOUT_S) == 0, srv.log_text()
        assert "server stopped" in srv.log_text()
    finally:
        srv.stop()


def test_sigterm_under_load_http(test_repo: Path) -> None:
    srv = start_server(test_repo)
    try:
        check_answers(load_then_stop_http(srv))
        assert srv.process.wait(SHUTDOWN_TIMEOUT_S) == 0, srv.log_text()
        assert "server stopped" in srv.log_text()
    finally:
        srv.stop()
