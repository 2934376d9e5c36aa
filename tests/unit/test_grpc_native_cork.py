"""The native server's corked answers: a group of answers on one connection goes out
corked, and the connection is uncorked once they are written.

The extension's own Server, in this process, with a real gRPC client; the test plays the
Python side (drain, then finish), so the group is exactly the calls it answers together.
"""

from __future__ import annotations

import os
import select
import socket
from typing import Any

import grpc
import pytest

native = pytest.importorskip("conveyor_grpc_native", reason="the native extension is not built")

INFER = "/inference.GRPCInferenceService/ModelInfer"
CALLS = 16
TIMEOUT_S = 30.0


def take_events(server: Any, count: int) -> list[tuple[Any, ...]]:
    events: list[tuple[Any, ...]] = []
    while len(events) < count:
        readable, _, _ = select.select([server.fileno()], [], [], TIMEOUT_S)
        assert readable, f"{len(events)} of {count} calls arrived"
        events += server.drain()
    return events


def corked_connections(port: int) -> dict[int, int]:
    """TCP_CORK of each of this process's connected sockets on the server's port."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.type != socket.SOCK_STREAM or sock.getsockname()[1] != port:
                continue
            sock.getpeername()
            found[fd] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)
        except OSError:
            continue
        finally:
            sock.detach()  # the descriptor stays the server's
    return found


@pytest.mark.parametrize("groups", [1, 3])
def test_a_group_of_answers_goes_out_corked_and_the_connection_is_uncorked(groups: int) -> None:
    server = native.Server([], 1 << 20, 0)
    port = server.start("127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")  # one connection for every call
    infer = channel.unary_unary(INFER)
    try:
        for group in range(groups):
            calls = [infer.future(b"", timeout=TIMEOUT_S) for _ in range(CALLS)]
            events = take_events(server, CALLS)
            ids = [event[1] for event in events]
            server.finish([(call_id, 1, b"answer %d" % call_id) for call_id in ids])
            answers = sorted(call.result() for call in calls)
            assert answers == sorted(b"answer %d" % call_id for call_id in ids)
            assert server.corked_groups() == group + 1
            # The answers arrived, so they left the socket: nothing holds the next ones.
            assert list(corked_connections(port).values()) == [0]
    finally:
        channel.close()
        server.shutdown(1.0)


def test_a_lone_answer_is_sent_without_corking() -> None:
    server = native.Server([], 1 << 20, 0)
    port = server.start("127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        call = channel.unary_unary(INFER).future(b"", timeout=TIMEOUT_S)
        (event,) = take_events(server, 1)
        server.finish([(event[1], 1, b"alone")])
        assert call.result() == b"alone"
        assert server.corked_groups() == 0
    finally:
        channel.close()
        server.shutdown(1.0)
