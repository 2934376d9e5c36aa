"""The native gRPC front end (`--grpc-frontend native`): what only it can get wrong.

The protocol itself is held to the same tests as grpc.aio by running the gRPC suite with
CONVEYOR_GRPC_FRONTEND=native; these tests cover the native server's own parts: every RPC
on its one port, calls arriving in groups, the two decoders, malformed and oversized
messages, clients that vanish, draining on SIGTERM, and the fallback to grpc.aio.
"""

from __future__ import annotations

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
    ServerProcess,
    add_sub_inputs,
    check_still_serving,
    inputs_of,
    make_client,
    running_server,
    start_server,
)
from tests.integration.test_infer import assert_outputs
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


@pytest.mark.parametrize("method", ["ModelInfer", "ModelMetadata", "ModelConfig"])
@pytest.mark.parametrize("payload", [b"\xff\xff\xff", b"\x0a\x05ab"])
def test_malformed_protobuf_is_an_invalid_argument(
    native: ServerProcess, channel: grpc.Channel, method: str, payload: bytes
) -> None:
    error: Any = rpc_error(raw_call, channel, method, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "malformed protobuf" in error.details()
    check_still_serving(native)


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


def test_a_stream_answers_each_message_and_ends_on_a_malformed_one(
    channel: grpc.Channel,
) -> None:
    good = service_pb2.ModelInferRequest(model_name="add_sub_fp32", id="s1")
    for name in ("INPUT0", "INPUT1"):
        good.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        good.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    stream = channel.stream_stream(f"{SERVICE}/ModelStreamInfer")
    replies = stream(iter([good.SerializeToString()]), timeout=CLIENT_TIMEOUT_S)
    (only,) = [service_pb2.ModelStreamInferResponse.FromString(r) for r in replies]
    assert only.error_message == ""
    assert only.infer_response.id == "s1"
    broken = stream(iter([good.SerializeToString(), b"\xff\xff"]), timeout=CLIENT_TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as info:
        list(broken)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


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
