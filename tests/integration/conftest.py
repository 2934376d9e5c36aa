"""The real server as a subprocess on 127.0.0.1, and tritonclient clients for both protocols.

Every protocol test takes the `client` fixture, which is parametrized over HTTP and gRPC,
so the two adapters are held to the same behaviour. All waits are bounded.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import inspect
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests.models import build_test_repository

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0
CLIENT_TIMEOUT_S = 30.0
PROTOCOLS = ("http", "grpc")

_PORT_LINE = re.compile(
    r"Started (HTTPService|GRPCInferenceService|Metrics Service) at 127\.0\.0\.1:(\d+)"
)
_SERVICES = 3


@dataclass
class ServerProcess:
    """A running `python -m runtime serve` and what it logged."""

    repo: Path
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    tls_ca: Path | None = None  # when the HTTP port serves HTTPS, the CA to trust
    _port_event: threading.Event = field(default_factory=threading.Event)
    _drainer: threading.Thread | None = None

    @property
    def http_url(self) -> str:
        return f"{HOST}:{self.ports['HTTPService']}"

    @property
    def metrics_url(self) -> str:
        return f"{HOST}:{self.ports['Metrics Service']}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.ports['GRPCInferenceService']}"

    def log_text(self) -> str:
        return "".join(self.log)

    def drain(self) -> None:
        """Read stderr until EOF (on a thread): keeps the pipe from filling, records ports."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = _PORT_LINE.search(line)
            if match:
                self.ports[match.group(1)] = int(match.group(2))
                if len(self.ports) == _SERVICES:
                    self._port_event.set()
        self._port_event.set()  # EOF: wake the waiter, which then sees the exit

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        if not self._port_event.wait(STARTUP_TIMEOUT_S) or len(self.ports) < _SERVICES:
            raise RuntimeError(f"the server did not report its three ports:\n{self.log_text()}")
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited during startup:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                if http_request(self, "GET", "/v2/health/ready", timeout_s=2.0)[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(
            f"the server was not ready within {STARTUP_TIMEOUT_S} s:\n{self.log_text()}"
        )

    def start_draining(self) -> None:
        self._drainer = threading.Thread(target=self.drain, name="server-stderr", daemon=True)
        self._drainer.start()

    def stop(self) -> int:
        """SIGTERM, then a bounded wait; kill only if it hangs. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
        finally:
            if self._drainer is not None:
                self._drainer.join(5)
            if self.process.stderr is not None:
                self.process.stderr.close()


def start_server(
    repo: Path | None,
    *extra: str,
    env: dict[str, str] | None = None,
    tls_ca: Path | None = None,
) -> ServerProcess:
    """Start the server on ephemeral ports and wait until it is ready.

    Without a repo the server picks its bundled example repository.
    """
    command = [
        sys.executable,
        *("-m", "runtime", "serve"),
        *(("--model-repository", str(repo)) if repo is not None else ()),
        *("--host", HOST, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"),
        *extra,
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(repo or Path(), process, tls_ca=tls_ca)
    server.start_draining()
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_server(
    repo: Path | None, *extra: str, env: dict[str, str] | None = None, tls_ca: Path | None = None
) -> Iterator[ServerProcess]:
    """A server for the duration of the block; it must exit 0 on SIGTERM."""
    server = start_server(repo, *extra, env=env, tls_ca=tls_ca)
    try:
        yield server
    finally:
        code = server.stop()
        assert code == 0, f"server exited with {code} on SIGTERM:\n{server.log_text()}"


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session")
def server(test_repo: Path) -> Iterator[ServerProcess]:
    """The default-mode server (every model loaded at start), shared by the whole session."""
    with running_server(test_repo) as srv:
        yield srv


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class BoundedGrpcClient:
    """A tritonclient.grpc client whose calls get `client_timeout` unless given one."""

    def __init__(self, inner: grpcclient.InferenceServerClient, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if callable(attr) and "client_timeout" in inspect.signature(attr).parameters:
            return functools.partial(attr, client_timeout=self.timeout_s)
        return attr


def make_client(protocol: str, srv: ServerProcess) -> Any:
    """A tritonclient client for the protocol, with bounded network waits."""
    if protocol == "http":
        return httpclient.InferenceServerClient(
            srv.http_url,
            connection_timeout=CLIENT_TIMEOUT_S,
            network_timeout=CLIENT_TIMEOUT_S,
        )
    return BoundedGrpcClient(grpcclient.InferenceServerClient(srv.grpc_url), CLIENT_TIMEOUT_S)


@pytest.fixture
def client(protocol: str, server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, server)
    try:
        yield c
    finally:
        c.close()


def module(protocol: str) -> ModuleType:
    """tritonclient.http or tritonclient.grpc (the same class names in each)."""
    return httpclient if protocol == "http" else grpcclient


def infer_input(protocol: str, name: str, array: np.ndarray, binary: bool = True) -> Any:
    """An InferInput holding `array`; binary=False sends JSON data (HTTP only)."""
    dtype = "BYTES" if array.dtype.kind in "OSU" else np_to_triton_dtype(array.dtype)
    tensor = module(protocol).InferInput(name, list(array.shape), dtype)
    if protocol == "http":
        tensor.set_data_from_numpy(array, binary_data=binary)
    else:
        tensor.set_data_from_numpy(array)
    return tensor


def inputs_of(protocol: str, arrays: dict[str, np.ndarray], binary: bool = True) -> list[Any]:
    return [infer_input(protocol, n, a, binary) for n, a in arrays.items()]


def requested_output(protocol: str, name: str, class_count: int = 0, binary: bool = True) -> Any:
    """An InferRequestedOutput; binary=False asks for JSON data (HTTP only)."""
    if protocol == "http":
        return httpclient.InferRequestedOutput(name, binary_data=binary, class_count=class_count)
    return grpcclient.InferRequestedOutput(name, class_count=class_count)


# Canonical code -> (HTTP status, gRPC status) as tritonclient reports them in status().
STATUS = {
    "INVALID_ARGUMENT": ("400", "StatusCode.INVALID_ARGUMENT"),
    "NOT_FOUND": ("404", "StatusCode.NOT_FOUND"),
    "UNAVAILABLE": ("503", "StatusCode.UNAVAILABLE"),
    "PERMISSION_DENIED": ("403", "StatusCode.PERMISSION_DENIED"),
    "INTERNAL": ("500", "StatusCode.INTERNAL"),
}


def expect_error(protocol: str, codes: tuple[str, ...], call: Any, *args: Any, **kw: Any) -> str:
    """Run the call, require InferenceServerException with one of `codes`; return its message."""
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kw)
    index = 0 if protocol == "http" else 1
    allowed = [STATUS[c][index] for c in codes]
    assert info.value.status() in allowed, info.value
    message = info.value.message()
    assert message
    return str(message)


def model_index(client: Any, protocol: str) -> dict[str, dict[str, str]]:
    """The repository index by model name (its last row per name), whichever the protocol."""
    rows = client.get_model_repository_index()
    if protocol == "grpc":
        rows = [{"name": m.name, "state": m.state, "reason": m.reason} for m in rows.models]
    return {r["name"]: r for r in rows}


def http_request(
    srv: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = CLIENT_TIMEOUT_S,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP exchange with the server: (status, lower-cased headers, body)."""
    host, port = srv.http_url.split(":")
    conn: http.client.HTTPConnection
    if srv.tls_ca is not None:
        context = ssl.create_default_context(cafile=str(srv.tls_ca))
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def add_sub_inputs(seed: int = 0, rows: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "INPUT0": rng.standard_normal((rows, 4)).astype(np.float32),
        "INPUT1": rng.standard_normal((rows, 4)).astype(np.float32),
    }


def check_still_serving(srv: ServerProcess) -> None:
    """A valid add_sub_fp32 request over both protocols gets the right answer."""
    arrays = add_sub_inputs(seed=1234)
    expected = arrays["INPUT0"] + arrays["INPUT1"]
    for protocol in PROTOCOLS:
        c = make_client(protocol, srv)
        try:
            result = c.infer("add_sub_fp32", inputs_of(protocol, arrays))
            np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-6)
        finally:
            c.close()


@pytest.fixture
def still_serving(server: ServerProcess) -> Iterator[None]:
    """After the test (an error case), the server must still answer a valid request."""
    yield
    check_still_serving(server)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the tail of every server log the test used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    for name, value in funcargs.items():
        if isinstance(value, ServerProcess):
            tail = "".join(value.log[-80:])
            report.sections.append((f"server log ({name}, last 80 lines)", tail))


def infer_in_batches(
    srv: ServerProcess,
    protocol: str,
    model: str,
    rows: np.ndarray,
    outputs: Sequence[str],
    batch: int,
    input_name: str = "input",
) -> dict[str, np.ndarray]:
    """The named outputs of `model` over `rows`, sent `batch` rows a request."""
    client = make_client(protocol, srv)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
    try:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            result = client.infer(model, inputs_of(protocol, {input_name: chunk}))
            for name in outputs:
                parts[name].append(result.as_numpy(name))
    finally:
        client.close()
    return {name: np.concatenate(p) for name, p in parts.items()}
