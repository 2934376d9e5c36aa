"""Logging through the real server: Triton's logging extension over both protocols, JSON
logs, the access log, request ids in answers and error lines, and the `trace` and `logging`
restriction groups."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from runtime.proto import grpc_service_pb2 as pb
from runtime.proto import grpc_service_pb2_grpc as pb_grpc
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    add_sub_inputs,
    expect_error,
    http_request,
    infer_input,
    inputs_of,
    make_client,
    running_server,
)

WAIT_S = 20.0
DEFAULTS = {
    "log_file": "",
    "log_info": True,
    "log_warning": True,
    "log_error": True,
    "log_verbose_level": 0,
    "log_format": "json",
}
ISO8601_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z INFO runtime\.access: ")
# ONNX Runtime's own C++ logger writes to stderr beside Python's logging (its lines are
# not the server's to format).
ORT_LINE = re.compile(r"\[[EWIV]:onnxruntime:")


@pytest.fixture(scope="module")
def logged(test_repo: Path) -> Iterator[ServerProcess]:
    with running_server(test_repo, "--log-format", "json", "--log-requests") as server:
        yield server


@pytest.fixture
def lclient(protocol: str, logged: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, logged)
    try:
        yield c
    finally:
        c.close()


def log_settings(client: Any, protocol: str) -> dict[str, Any]:
    got = client.get_log_settings()
    return _plain(got, protocol)


def _plain(got: Any, protocol: str) -> dict[str, Any]:
    if protocol == "http":
        return dict(got)
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in got.settings.items()}


def wait_for_line(server: ServerProcess, text: str) -> str:
    """The one log line containing `text`, once it is written (bounded wait)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lines = [line for line in list(server.log) if text in line]
        if lines:
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r} within {WAIT_S} s")


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def infer(client: Any, protocol: str, rid: str, header: str = "x-request-id") -> None:
    client.infer("add_sub_fp32", inputs_of(protocol, add_sub_inputs()), headers={header: rid})


def test_settings_round_trip_and_apply_at_once(
    lclient: Any, protocol: str, logged: ServerProcess
) -> None:
    assert log_settings(lclient, protocol) == DEFAULTS
    try:
        changed = lclient.update_log_settings({"log_format": "ISO8601", "log_verbose_level": 2})
        assert _plain(changed, protocol) == {
            **DEFAULTS, "log_format": "ISO8601", "log_verbose_level": 2
        }  # fmt: skip
        assert log_settings(lclient, protocol) == _plain(changed, protocol)
        rid = new_id("iso")
        infer(lclient, protocol, rid)
        assert ISO8601_LINE.match(wait_for_line(logged, rid))
        lclient.update_log_settings({"log_info": False})
        hidden = new_id("hidden")
        infer(lclient, protocol, hidden)
        lclient.update_log_settings({"log_info": True})
        shown = new_id("shown")
        infer(lclient, protocol, shown)
        wait_for_line(logged, shown)
        assert not [line for line in logged.log if hidden in line]
    finally:
        lclient.update_log_settings({"log_format": "json", "log_verbose_level": 0})
    assert log_settings(lclient, protocol) == DEFAULTS


def test_log_file_is_refused(lclient: Any, protocol: str, tmp_path: Path) -> None:
    target = tmp_path / "server.log"
    message = expect_error(
        protocol, ("INVALID_ARGUMENT",), lclient.update_log_settings, {"log_file": str(target)}
    )
    assert "log_file" in message
    assert not target.exists()
    assert log_settings(lclient, protocol)["log_file"] == ""


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"log_format": "xml"}, "log_format"),
        ({"log_level": True}, "log_level"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    lclient: Any, protocol: str, settings: dict[str, Any], named: str
) -> None:
    message = expect_error(protocol, ("INVALID_ARGUMENT",), lclient.update_log_settings, settings)
    assert named in message
    assert log_settings(lclient, protocol) == DEFAULTS


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"log_verbose_level": -1}', "log_verbose_level"),
        (b'{"log_verbose_level": "1"}', "log_verbose_level"),
        (b'{"log_info": "yes"}', "log_info"),
    ],
)
def test_a_mistyped_setting_is_refused_over_http(
    logged: ServerProcess, body: bytes, named: str
) -> None:
    # gRPC's typed SettingValue (tritonclient types it) cannot carry these.
    status, _, answer = http_request(logged, "POST", "/v2/logging", body)
    assert status == 400
    assert named in json.loads(answer)["error"]


def test_json_lines_parse_and_the_access_log_has_the_calls_fields(
    lclient: Any, protocol: str, logged: ServerProcess
) -> None:
    rid = new_id("json")
    infer(lclient, protocol, rid)
    line = json.loads(wait_for_line(logged, rid))
    assert line["logger"] == "runtime.access"
    assert line["level"] == "INFO"
    assert line["request_id"] == rid
    assert line["protocol"] == protocol
    assert (line["model"], line["version"], line["status"]) == ("add_sub_fp32", "1", "OK")
    assert line["duration_ms"] > 0
    assert "trace_id" not in line  # not traced
    for text in list(logged.log):
        # Beside JSON: ONNX Runtime's own lines, and those written while another test had
        # set log_format ISO8601.
        if not ORT_LINE.search(text) and not ISO8601_LINE.match(text):
            doc = json.loads(text)
            assert {"time", "level", "logger", "message"} <= doc.keys(), text


def test_triton_request_id_is_taken_when_x_request_id_is_absent(
    lclient: Any, protocol: str, logged: ServerProcess
) -> None:
    rid = new_id("triton")
    infer(lclient, protocol, rid, header="triton-request-id")
    assert json.loads(wait_for_line(logged, rid))["request_id"] == rid


def test_a_failure_inside_the_server_is_an_error_line_with_the_request_id(
    lclient: Any, protocol: str, logged: ServerProcess
) -> None:
    rid = new_id("fault")
    bad = infer_input(protocol, "INPUT0", np.array([[30]], dtype=np.int64))
    expect_error(protocol, ("INTERNAL",), lclient.infer, "faulty_gather", [bad],
                 headers={"x-request-id": rid})  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in list(logged.log) if rid in x]
        if len(lines) == 2:
            break
        time.sleep(0.05)
    (error,) = [x for x in lines if x["level"] == "ERROR"]
    assert error["request_id"] == rid
    assert error["status"] == "INTERNAL"
    assert error["model"] == "faulty_gather"
    assert f"[request id: {rid}]" in error["message"]
    (access,) = [x for x in lines if x["logger"] == "runtime.access"]
    assert access["status"] == "INTERNAL"


# -- request ids in answers ------------------------------------------------------------


def http_infer(server: ServerProcess, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    body = json.dumps({
        "inputs": [
            {"name": n, "shape": [1, 4], "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in add_sub_inputs().items()
        ]
    }).encode()  # fmt: skip
    status, answer, _ = http_request(server, "POST", "/v2/models/add_sub_fp32/infer", body, headers)
    return status, answer


def grpc_infer(server: ServerProcess, metadata: tuple[tuple[str, str], ...], model: str) -> Any:
    """The trailing metadata of a raw ModelInfer call (the answer or the error's)."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in add_sub_inputs().items():
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            _, call = stub.ModelInfer.with_call(request, metadata=metadata, timeout=30)
            return dict(call.trailing_metadata())
        except grpc.RpcError as exc:
            return dict(exc.trailing_metadata())  # type: ignore[attr-defined]


def test_the_answer_carries_the_clients_request_id(logged: ServerProcess) -> None:
    status, headers = http_infer(logged, {"X-Request-ID": "client-id-1"})
    assert (status, headers["x-request-id"]) == (200, "client-id-1")
    status, headers = http_infer(logged, {"triton-request-id": "client-id-2"})
    assert headers["x-request-id"] == "client-id-2"
    assert grpc_infer(logged, (("x-request-id", "client-id-3"),), "add_sub_fp32") == {
        "x-request-id": "client-id-3"
    }
    # An error's answer too.
    assert grpc_infer(logged, (("x-request-id", "client-id-4"),), "nowhere") == {
        "x-request-id": "client-id-4"
    }
    status, headers, _ = http_request(
        logged, "POST", "/v2/models/nowhere/infer", b"{}", {"X-Request-ID": "client-id-5"}
    )
    assert status == 400  # no inputs
    assert headers["x-request-id"] == "client-id-5"


def test_without_one_each_answer_gets_a_new_request_id(logged: ServerProcess) -> None:
    made = [http_infer(logged, {})[1]["x-request-id"] for _ in range(2)]
    made += [grpc_infer(logged, (), "add_sub_fp32")["x-request-id"] for _ in range(2)]
    # Too long, or not printable: replaced rather than written into logs and headers.
    made.append(http_infer(logged, {"X-Request-ID": "x" * 129})[1]["x-request-id"])
    assert all(made)
    assert len(set(made)) == 5
    assert "x" * 129 not in made


# -- the extensions in metadata and behind their restriction groups --------------------------


def test_server_metadata_lists_trace_and_logging(lclient: Any, protocol: str) -> None:
    meta = lclient.get_server_metadata()
    extensions = meta["extensions"] if protocol == "http" else list(meta.extensions)
    assert {"trace", "logging"} <= set(extensions)


KEY, VALUE = "admin-key", "s3cret"


@pytest.fixture(scope="module")
def restricted(test_repo: Path) -> Iterator[ServerProcess]:
    spec = f"trace,logging:{KEY}={VALUE}"
    with running_server(
        test_repo,
        "--http-restricted-api", spec,
        "--grpc-restricted-protocol", spec,
    ) as server:  # fmt: skip
        yield server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_trace_and_logging_are_restriction_groups(restricted: ServerProcess, protocol: str) -> None:
    client = make_client(protocol, restricted)
    try:
        for call in (client.get_log_settings, client.get_trace_settings):
            message = expect_error(protocol, ("PERMISSION_DENIED",), call)
            assert KEY in message
            call(headers={KEY: VALUE})
        expect_error(protocol, ("PERMISSION_DENIED",), client.update_log_settings,
                     {"log_info": False})  # fmt: skip
        infer(client, protocol, new_id("unrestricted"))  # inference is not in the groups
    finally:
        client.close()
