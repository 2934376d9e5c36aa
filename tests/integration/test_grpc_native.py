"""The native gRPC front end (`--grpc-frontend native`): what only it can get wrong.

The protocol itself is held to the same tests as grpc.aio by running the gRPC suite with
CONVEYOR_GRPC_FRONTEND=native; these tests cover the native server's own parts: every RPC
on its one port, calls arriving in groups, the two decoders, malformed and oversized
messages, clients that vanish, draining on SIGTERM, the limit on calls in flight, TLS
(plain and mutual) and the fallback to grpc.aio.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    CLIENT_TIMEOUT_S,
    SHUTDOWN_TIMEOUT_S,
    BoundedGrpcClient,
    ServerProcess,
    add_sub_inputs,
    check_still_serving,
    inputs_of,
    make_client,
    running_server,
    start_server,
)
from tests.integration.test_infer import assert_outputs
from tests.integration.test_tls import _issue as issue_certificate
from tests.models import reference

pytest.importorskip("conveyor_grpc_native", reason="the native extension is not built")

NATIVE = ("--grpc-frontend", "native")
SERVICE = "/inference.GRPCInferenceService"
QUEUED = "queued_fp32"  # holds requests up to 60 s until 8 rows make a batch; 4 at most
SETTLE_S = 0.3


@pytest.fixture(scope="module")
def native(test_repo: Path) -> Iterator[ServerProcess]:
    with running_server(test_repo, *NATIVE) as srv:
        yield srv


@pytest.fixture
def client(native: ServerProcess) -> Iterator[Any]:
    c = make_client("grpc", native)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def channel(native: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(native.grpc_url) as ch:
        yield ch


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> bytes:
    """One unary call with the bytes as they are: what no generated stub would send."""
    call = channel.unary_unary(f"{SERVICE}/{method}")
    answer: bytes = call(payload, timeout=CLIENT_TIMEOUT_S)
    return answer


def rpc_error(call: Any, *args: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value


def test_the_native_server_answers_every_rpc_on_its_port(
    native: ServerProcess, client: Any
) -> None:
    assert re.search(r"Started GRPCInferenceService at \S+ \(native\)", native.log_text())
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub_fp32")
    assert client.get_server_metadata().name == "conveyor"
    assert [t.name for t in client.get_model_metadata("add_sub_fp32").inputs] == [
        "INPUT0",
        "INPUT1",
    ]
    assert client.get_model_config("add_sub_fp32").config.max_batch_size == 8
    assert any(m.name == "add_sub_fp32" for m in client.get_model_repository_index().models)
    arrays = add_sub_inputs(seed=3, rows=2)
    assert_outputs(
        client.infer("add_sub_fp32", inputs_of("grpc", arrays)), reference("add_sub_fp32", arrays)
    )
    stats = client.get_inference_statistics("add_sub_fp32").model_stats[0]
    assert stats.inference_stats.success.count >= 1


def test_calls_arriving_together_each_get_their_own_answer(client: Any) -> None:
    answers: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
    sent = {}
    for i in range(200):
        arrays = add_sub_inputs(seed=1000 + i, rows=1 + i % 4)
        sent[str(i)] = arrays
        client.async_infer(
            "add_sub_fp32",
            inputs_of("grpc", arrays),
            lambda result, error, i=i: answers.put((str(i), result, error)),
            request_id=str(i),
        )
    for _ in range(len(sent)):
        key, result, error = answers.get(timeout=CLIENT_TIMEOUT_S)
        assert error is None, error
        assert result.get_response().id == key
        assert_outputs(result, reference("add_sub_fp32", sent.pop(key)))
    assert not sent


def test_typed_contents_and_raw_contents_give_the_same_answer(channel: grpc.Channel) -> None:
    row0 = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    row1 = np.array([[0.5, -0.5, 2.0, -2.0]], np.float32)
    answers = []
    for raw in (True, False):
        msg = service_pb2.ModelInferRequest(model_name="add_sub_fp32", id=f"raw={raw}")
        for name, row in (("INPUT0", row0), ("INPUT1", row1)):
            tensor = msg.inputs.add(name=name, datatype="FP32", shape=[1, 4])
            if raw:
                msg.raw_input_contents.append(row.tobytes())
            else:
                tensor.contents.fp32_contents.extend(row.ravel().tolist())
        reply = service_pb2.ModelInferResponse.FromString(
            raw_call(channel, "ModelInfer", msg.SerializeToString())
        )
        assert reply.id == f"raw={raw}"
        answers.append(list(reply.raw_output_contents))
    assert answers[0] == answers[1]
    assert np.frombuffer(answers[0][0], np.float32).tolist() == (row0 + row1).ravel().tolist()


@pytest.mark.parametrize(
    "method", [f"{SERVICE}/NoSuchRpc", "/grpc.health.v1.Health/Check", "/x.Y/Z"]
)
def test_unknown_methods_are_unimplemented(channel: grpc.Channel, method: str) -> None:
    call = channel.unary_unary(method)
    error: Any = rpc_error(call, b"", CLIENT_TIMEOUT_S)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_message_over_grpcs_default_4_mib_is_received(client: Any) -> None:
    """6 MiB of raw contents arrive and are checked (a size error, not RESOURCE_EXHAUSTED)."""
    big = np.zeros((393_216, 4), np.float32)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_sub_fp32", inputs_of("grpc", {"INPUT0": big, "INPUT1": big}))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT", info.value
    assert "batch" in str(info.value.message())


def test_wrong_sized_raw_contents_are_refused(native: ServerProcess, channel: grpc.Channel) -> None:
    msg = service_pb2.ModelInferRequest(model_name="add_sub_fp32")
    for name in ("INPUT0", "INPUT1"):
        msg.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        msg.raw_input_contents.append(b"\x00" * 15)
    error: Any = rpc_error(raw_call, channel, "ModelInfer", msg.SerializeToString())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 16 bytes, got 15" in error.details()
    check_still_serving(native)


def queue_depth(srv: ServerProcess, model: str) -> float:
    host, port = srv.metrics_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=CLIENT_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(rf'conveyor_queue_depth\{{model="{model}",version="1"\}} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def wait_for_depth(srv: ServerProcess, model: str, depth: float) -> None:
    deadline = time.monotonic() + CLIENT_TIMEOUT_S
    while queue_depth(srv, model) != depth:
        assert time.monotonic() < deadline, f"{model} never reached queue depth {depth}"
        time.sleep(0.05)


VANISHING_CLIENT = """
import os, sys, numpy as np, tritonclient.grpc as g
c = g.InferenceServerClient(sys.argv[1])
for i in range(3):
    x = g.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.full((1, 4), i, np.float32))
    c.async_infer("queued_fp32", [x], lambda result, error: None)
sys.stdin.readline()
os._exit(0)
"""


def test_calls_of_a_client_that_vanishes_leave_the_queue(test_repo: Path) -> None:
    with running_server(test_repo, *NATIVE) as srv:
        gone = subprocess.Popen(
            [sys.executable, "-c", VANISHING_CLIENT, srv.grpc_url], stdin=subprocess.PIPE
        )
        try:
            wait_for_depth(srv, QUEUED, 3)
        finally:
            gone.communicate(b"\n", timeout=CLIENT_TIMEOUT_S)
        time.sleep(SETTLE_S)  # the server sees the connection drop; dropped at dequeue
        c = make_client("grpc", srv)
        try:
            x = np.arange(32, dtype=np.float32).reshape(8, 4)
            result = c.infer(QUEUED, inputs_of("grpc", {"INPUT0": x}))
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + 0.5)
            stats = c.get_inference_statistics(QUEUED).model_stats[0]
            assert (stats.inference_count, stats.execution_count) == (8, 1)
        finally:
            c.close()


@pytest.mark.parametrize("frontend", ["native", "aio"])
def test_sigterm_answers_every_queued_call(test_repo: Path, frontend: str) -> None:
    """Calls waiting behind a 60 s queue delay when SIGTERM comes are answered, not lost."""
    srv = start_server(test_repo, "--grpc-frontend", frontend, "--exit-timeout-secs", "2")
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
        for i in range(3):
            c.async_infer(
                QUEUED,
                inputs_of("grpc", {"INPUT0": np.full((1, 4), i, np.float32)}),
                lambda result, error, i=i: answers.put((i, result, error)),
            )
        wait_for_depth(srv, QUEUED, 3)  # accepted and waiting for a batch
        srv.process.send_signal(signal.SIGTERM)
        for _ in range(3):
            i, result, error = answers.get(timeout=CLIENT_TIMEOUT_S)
            assert error is None, error
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 4), i + 0.5))
        assert srv.process.wait(SHUTDOWN_TIMEOUT_S) == 0, srv.log_text()
    finally:
        c.close()
        srv.stop()


def test_sigterm_ends_a_stream_left_open(test_repo: Path) -> None:
    """A stream its client keeps open does not hold the server past its exit timeout: the
    stream ends with an error status and the server exits 0."""
    srv = start_server(test_repo, *NATIVE, "--exit-timeout-secs", "1")
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    try:
        errors: queue.Queue[Any] = queue.Queue()
        c.start_stream(callback=lambda result, error: errors.put(error))
        x = np.ones((1, 4), np.float32)
        c.async_stream_infer("add_sub_fp32", inputs_of("grpc", {"INPUT0": x, "INPUT1": x}))
        assert errors.get(timeout=CLIENT_TIMEOUT_S) is None  # answered, and left open
        srv.process.send_signal(signal.SIGTERM)
        assert srv.process.wait(SHUTDOWN_TIMEOUT_S) == 0, srv.log_text()
        ended = errors.get(timeout=CLIENT_TIMEOUT_S)
        assert isinstance(ended, InferenceServerException)
        assert ended.status() in ("StatusCode.CANCELLED", "StatusCode.UNAVAILABLE"), ended
    finally:
        c.stop_stream()
        c.close()
        srv.stop()


def test_without_the_extension_grpc_falls_back_to_aio(test_repo: Path, tmp_path: Path) -> None:
    hidden = tmp_path / "conveyor_grpc_native"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('not built here')\n")
    with running_server(test_repo, *NATIVE, env={"PYTHONPATH": str(tmp_path)}) as srv:
        log = srv.log_text()
        assert "WARNING" in log
        assert "not built here" in log
        assert not re.search(r"GRPCInferenceService at \S+ \(native\)", log)
        check_still_serving(srv)


# -- the limit on calls in flight ------------------------------------------------------------

MAX_RPCS = 2
FREED_WITHIN_S = 10.0


@contextlib.contextmanager
def held_streams(srv: ServerProcess, count: int) -> Iterator[None]:
    """`count` open ModelStreamInfer calls, each known to the server (it answered on it)."""
    clients = []
    try:
        for i in range(count):
            client = grpcclient.InferenceServerClient(srv.grpc_url)
            clients.append(client)
            answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
            client.start_stream(callback=lambda result, error, q=answers: q.put((result, error)))
            x = np.full((1, 4), i, np.float32)
            client.async_stream_infer("add_sub_fp32", inputs_of("grpc", {"INPUT0": x, "INPUT1": x}))
            result, error = answers.get(timeout=CLIENT_TIMEOUT_S)
            assert error is None, error
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + x)
        yield
    finally:
        for client in clients:
            client.stop_stream()
            client.close()


def infer_once(srv: ServerProcess) -> None:
    c = make_client("grpc", srv)
    try:
        arrays = add_sub_inputs(seed=5, rows=1)
        assert_outputs(
            c.infer("add_sub_fp32", inputs_of("grpc", arrays)), reference("add_sub_fp32", arrays)
        )
    finally:
        c.close()


def infer_once_freed(srv: ServerProcess) -> None:
    """The server sees a stream end a moment after its client lets go: bounded retries."""
    deadline = time.monotonic() + FREED_WITHIN_S
    while True:
        try:
            infer_once(srv)
            return
        except InferenceServerException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def limited(test_repo: Path) -> Iterator[ServerProcess]:
    with running_server(test_repo, *NATIVE, "--grpc-max-concurrent-rpcs", str(MAX_RPCS)) as srv:
        yield srv


def test_calls_up_to_the_limit_are_served(limited: ServerProcess) -> None:
    with held_streams(limited, MAX_RPCS - 1):
        infer_once(limited)


@pytest.mark.parametrize("rpc", ["ModelInfer", "ServerLive"])
def test_calls_past_the_limit_are_refused_at_once(limited: ServerProcess, rpc: str) -> None:
    with held_streams(limited, MAX_RPCS):
        c = make_client("grpc", limited)
        try:
            if rpc == "ModelInfer":
                arrays = add_sub_inputs(seed=1, rows=1)
                call = functools.partial(c.infer, "add_sub_fp32", inputs_of("grpc", arrays))
            else:
                call = c.is_server_live
            with pytest.raises(InferenceServerException) as refused:
                call()
        finally:
            c.close()
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value
    assert f"--grpc-max-concurrent-rpcs {MAX_RPCS}" in str(refused.value.message())
    infer_once_freed(limited)
    check_still_serving(limited)


def test_a_limit_of_0_is_no_limit(test_repo: Path) -> None:
    with (
        running_server(test_repo, *NATIVE, "--grpc-max-concurrent-rpcs", "0") as srv,
        held_streams(srv, 4),
    ):
        infer_once(srv)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tls")
    ca = issue_certificate(tmp, "ca", None)
    issue_certificate(tmp, "server", ca)
    issue_certificate(tmp, "client", ca)
    issue_certificate(tmp, "stranger", None)  # trusted by nobody
    return tmp


def tls_flags(certs: Path, mutual: bool) -> tuple[str, ...]:
    return (
        "--grpc-use-ssl-mutual" if mutual else "--grpc-use-ssl", "true",
        "--grpc-server-cert", str(certs / "server.crt"),
        "--grpc-server-key", str(certs / "server.key"),
        *(("--grpc-root-cert", str(certs / "ca.crt")) if mutual else ()),
    )  # fmt: skip


def tls_client(srv: ServerProcess, certs: Path, roots: str, identity: str | None) -> Any:
    extra = {}
    if identity is not None:
        extra = {
            "private_key": str(certs / f"{identity}.key"),
            "certificate_chain": str(certs / f"{identity}.crt"),
        }
    inner = grpcclient.InferenceServerClient(
        srv.grpc_url, ssl=True, root_certificates=str(certs / f"{roots}.crt"), **extra
    )
    return BoundedGrpcClient(inner, CLIENT_TIMEOUT_S)


def check_tls_inference(client: Any) -> None:
    arrays = add_sub_inputs(seed=9, rows=2)
    assert_outputs(
        client.infer("add_sub_fp32", inputs_of("grpc", arrays)), reference("add_sub_fp32", arrays)
    )


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual"])
def test_tls_is_served_natively(test_repo: Path, certs: Path, mutual: bool) -> None:
    with running_server(test_repo, *NATIVE, *tls_flags(certs, mutual)) as srv:
        assert re.search(r"GRPCInferenceService at \S+ \(native\)", srv.log_text())
        assert "WARNING" not in srv.log_text()
        trusted = tls_client(srv, certs, "ca", "client" if mutual else None)
        try:
            check_tls_inference(trusted)
        finally:
            trusted.close()
        # (roots the client trusts, its certificate): one that does not trust the server;
        # with mutual TLS also one with no certificate and one whose certificate no CA signed.
        refused: list[tuple[str, str | None]] = [("stranger", None)]
        if mutual:
            refused += [("ca", None), ("ca", "stranger")]
        for roots, identity in refused:
            client = tls_client(srv, certs, roots, identity)
            try:
                with pytest.raises(InferenceServerException) as info:
                    client.is_server_ready(client_timeout=10)
                assert info.value.status() == "StatusCode.UNAVAILABLE", (roots, identity)
            finally:
                client.close()
        plain = make_client("grpc", srv)  # no TLS at all
        try:
            with pytest.raises(InferenceServerException) as info:
                plain.is_server_ready(client_timeout=10)
            assert info.value.status() == "StatusCode.UNAVAILABLE"
        finally:
            plain.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--grpc-use-ssl", "true"), "--grpc-use-ssl needs --grpc-server-cert"),
        (("--grpc-use-ssl-mutual", "true"), "--grpc-use-ssl needs --grpc-server-cert"),
    ],
)
def test_tls_without_its_files_stops_the_start(
    test_repo: Path, flags: tuple[str, ...], message: str
) -> None:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        start_server(test_repo, *NATIVE, *flags)


def test_mutual_tls_without_a_root_certificate_stops_the_start(
    test_repo: Path, certs: Path
) -> None:
    flags = [f for f in tls_flags(certs, mutual=True) if f != str(certs / "ca.crt")]
    flags.remove("--grpc-root-cert")
    with pytest.raises(RuntimeError, match="--grpc-use-ssl-mutual needs --grpc-root-cert"):
        start_server(test_repo, *NATIVE, *flags)


def test_a_key_that_is_not_the_certificates_stops_the_start(test_repo: Path, certs: Path) -> None:
    flags = [str(certs / "stranger.key") if f.endswith("server.key") else f
             for f in tls_flags(certs, mutual=False)]  # fmt: skip
    with pytest.raises(RuntimeError, match="over TLS"):
        start_server(test_repo, *NATIVE, *flags)
