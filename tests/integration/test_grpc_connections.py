"""gRPC connection management: keepalive pings, ping policing and connection age.

tritonserver's flags (`--grpc-keepalive-*`, `--grpc-http2-*`, `--grpc-max-connection-age*`),
seen from the client's side of the connection. What tritonclient cannot do (stay silent
while the server pings, ping the server itself, read the frames) is done on a raw socket
with the `h2` library. Calls go through tritonclient.grpc. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import numpy as np
import pytest

from tests.integration.conftest import (
    ServerProcess,
    add_sub_inputs,
    inputs_of,
    make_client,
    running_server,
)

KEEPALIVE_MS = 200
KEEPALIVE_TIMEOUT_MS = 500
AGE_MS = 300


@pytest.fixture(scope="module")
def keepalive_server(test_repo: Path) -> Iterator[ServerProcess]:
    """Pings every idle connection, calls or not, and takes any client's pings."""
    flags = {
        "--grpc-keepalive-time": KEEPALIVE_MS,
        "--grpc-keepalive-timeout": KEEPALIVE_TIMEOUT_MS,
        "--grpc-keepalive-permit-without-calls": "true",
        "--grpc-http2-min-recv-ping-interval-without-data": 0,
    }
    with running_server(test_repo, *(str(x) for kv in flags.items() for x in kv)) as srv:
        yield srv


@pytest.fixture(scope="module")
def lenient_server(test_repo: Path) -> Iterator[ServerProcess]:
    """Bears any number of pings it considers too frequent."""
    with running_server(test_repo, "--grpc-http2-max-ping-strikes", "0") as srv:
        yield srv


@pytest.fixture(scope="module")
def aging_server(test_repo: Path) -> Iterator[ServerProcess]:
    """Sends each connection GOAWAY after AGE_MS, with time enough for calls in flight."""
    flags = ("--grpc-max-connection-age", str(AGE_MS), "--grpc-max-connection-age-grace", "10000")
    with running_server(test_repo, *flags) as srv:
        yield srv


class RawClient:
    """An HTTP/2 client connection on a socket of its own, frame by frame (h2).

    It answers the server's SETTINGS. It answers PINGs only with `answer_pings`: h2 queues
    the acknowledgement as it reads a PING, and a silent client drops what is queued then.
    """

    def __init__(self, srv: ServerProcess, answer_pings: bool = True) -> None:
        host, port = srv.grpc_url.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5.0)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.answer_pings = answer_pings
        self.pings_received = 0
        self.acks_received = 0
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = False

    def ping(self, count: int) -> None:
        for n in range(count):
            self.h2.ping(n.to_bytes(8, "big"))
        self.sock.sendall(self.h2.data_to_send())

    def read_for(self, seconds: float) -> None:
        """Read frames for `seconds`, or until the server closes the connection."""
        deadline = time.monotonic() + seconds
        while not self.closed and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            pinged = self._take(self.h2.receive_data(data))
            out = self.h2.data_to_send()
            if out and (self.answer_pings or not pinged):
                with contextlib.suppress(OSError):  # the server may have closed meanwhile
                    self.sock.sendall(out)

    def _take(self, events: list[h2.events.Event]) -> bool:
        """Count what arrived; whether it held a ping from the server."""
        pinged = False
        for event in events:
            if isinstance(event, h2.events.PingReceived):
                self.pings_received += 1
                pinged = True
            elif isinstance(event, h2.events.PingAckReceived):
                self.acks_received += 1
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = event
        return pinged

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def raw_client(srv: ServerProcess, answer_pings: bool = True) -> Iterator[RawClient]:
    client = RawClient(srv, answer_pings)
    try:
        yield client
    finally:
        client.close()


def test_keepalive_pings_an_idle_connection(keepalive_server: ServerProcess) -> None:
    with raw_client(keepalive_server) as client:
        client.read_for(8 * KEEPALIVE_MS / 1000)
        assert client.pings_received >= 3, "a ping every --grpc-keepalive-time"
        assert client.terminated is None, "answered pings keep it open"
        assert not client.closed


def test_keepalive_closes_a_connection_that_does_not_answer(
    keepalive_server: ServerProcess,
) -> None:
    with raw_client(keepalive_server, answer_pings=False) as client:
        client.read_for(10.0)
        assert client.pings_received >= 1
        assert client.closed, "closed --grpc-keepalive-timeout after an unanswered ping"


def test_no_keepalive_pings_by_default(server: ServerProcess) -> None:
    """tritonserver's default: the first ping after two hours."""
    with raw_client(server, answer_pings=False) as client:
        client.read_for(8 * KEEPALIVE_MS / 1000)
        assert client.pings_received == 0
        assert not client.closed


def test_frequent_pings_get_goaway_by_default(server: ServerProcess) -> None:
    """With no call open, pings more often than every 2 hours are strikes; past 2, GOAWAY."""
    with raw_client(server) as client:
        client.ping(5)
        client.read_for(5.0)
        assert client.terminated is not None, "GOAWAY after too many pings"
        assert client.terminated.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert b"too_many_pings" in (client.terminated.additional_data or b"")


# The minimum interval at 0 with pings allowed without calls, or no limit on strikes.
@pytest.mark.parametrize("server_name", ["keepalive_server", "lenient_server"])
def test_frequent_pings_allowed_by_the_flags(
    server_name: str, request: pytest.FixtureRequest
) -> None:
    srv: ServerProcess = request.getfixturevalue(server_name)
    with raw_client(srv) as client:
        client.ping(5)
        client.read_for(1.0)
        assert client.acks_received == 5
        assert client.terminated is None
        assert not client.closed


def _client_ports(server_port: int) -> set[int]:
    """The local ports of this machine's open TCP connections to `server_port` (loopback).

    Read from /proc/net/tcp and tcp6 (gRPC's client may open an IPv6 socket with a mapped
    IPv4 address): the standard library has no call for it, and reading two tables needs
    no dependency (psutil) for the tests.
    """
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == server_port:  # ESTABLISHED
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _calls_for(srv: ServerProcess, seconds: float) -> set[int]:
    """Call add_sub_fp32 over one tritonclient.grpc client for `seconds`, checking every
    answer; returns the client ports the calls went over (not those of connections other
    tests left open to the same server)."""
    port = int(srv.grpc_url.rsplit(":", 1)[1])
    arrays = add_sub_inputs(seed=7)
    expected = arrays["INPUT0"] + arrays["INPUT1"]
    others = _client_ports(port)
    client = make_client("grpc", srv)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            result = client.infer("add_sub_fp32", inputs_of("grpc", arrays))
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-6)
            seen |= _client_ports(port)
            time.sleep(0.02)
    finally:
        client.close()
    return seen - others


def test_connections_are_renewed_past_their_age(aging_server: ServerProcess) -> None:
    """Each connection gets GOAWAY after --grpc-max-connection-age and the client opens a new
    one; no call fails on the way."""
    ports = _calls_for(aging_server, 8 * AGE_MS / 1000)
    assert len(ports) >= 3, f"connections seen: {sorted(ports)}"


def test_connections_are_kept_without_an_age(server: ServerProcess) -> None:
    ports = _calls_for(server, 8 * AGE_MS / 1000)
    assert len(ports) == 1, f"connections seen: {sorted(ports)}"
