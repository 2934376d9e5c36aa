"""Tracing through the real server: spans of HTTP and gRPC requests reach an OTLP receiver.

The receiver is a small OTLP/HTTP endpoint on 127.0.0.1 that decodes each export with
opentelemetry-proto. The server exports through the OpenTelemetry SDK with a 50 ms batch
delay, and spans leave in the order their requests ended, so a test that must show that a
request was *not* traced sends a traced marker request after it and waits for the marker.
The trace settings are the shared server's: each test sets those it relies on first.
"""

from __future__ import annotations

import http.server
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    add_sub_inputs,
    expect_error,
    inputs_of,
    make_client,
    running_server,
)
from tests.models import add_sub_fp32

pytest.importorskip("opentelemetry.sdk", reason="tracing needs the `trace` extra")
trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

WAIT_S = 20.0
MODEL = "add_sub_fp32"
ENSEMBLE = "add_sub_twice"
PHASES = ["QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END"]  # fmt: skip


@dataclass(frozen=True)
class Span:
    """One received span, its ids as hex."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int]]
    status_code: int
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


class OtlpReceiver:
    """An OTLP/HTTP trace endpoint in a thread; collects the spans it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.receive(self.path, self.headers["Content-Type"], body)
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def receive(self, path: str, content_type: str, body: bytes) -> None:
        assert path == "/v1/traces"
        assert content_type == "application/x-protobuf"
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "conveyor"
                received += [_span(s, resource) for s in scope_spans.spans]
        with self.changed:
            self.spans += received
            self.changed.notify_all()

    def wait_for(self, found: Callable[[list[Span]], bool]) -> list[Span]:
        """The spans so far, once `found` says they are complete (bounded wait)."""
        deadline = time.monotonic() + WAIT_S
        with self.changed:
            while not found(self.spans):
                left = deadline - time.monotonic()
                assert left > 0, f"spans not received within {WAIT_S} s: {self.spans[-5:]}"
                self.changed.wait(left)
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _span(s: Any, resource: dict[str, Any]) -> Span:
    return Span(
        name=s.name,
        kind=s.kind,
        trace_id=s.trace_id.hex(),
        span_id=s.span_id.hex(),
        parent_span_id=s.parent_span_id.hex(),
        start_ns=s.start_time_unix_nano,
        end_ns=s.end_time_unix_nano,
        attributes={a.key: _value(a.value) for a in s.attributes},
        events=[(e.name, e.time_unix_nano) for e in s.events],
        status_code=s.status.code,
        resource=resource,
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    yield r
    r.close()


def _ensemble_config() -> str:
    tensor = 'name: "{}" data_type: TYPE_FP32 dims: [ 4 ]'
    step = (
        '{{ model_name: "add_sub_fp32" model_version: -1 '
        'input_map {{ key: "INPUT0" value: "{a}" }} input_map {{ key: "INPUT1" value: "{b}" }} '
        'output_map {{ key: "OUTPUT0" value: "{out}" }} }}'
    )
    return (
        f'name: "{ENSEMBLE}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
        f"input [ {{ {tensor.format('INPUT0')} }}, {{ {tensor.format('INPUT1')} }} ]\n"
        f"output [ {{ {tensor.format('OUTPUT0')} }} ]\n"
        "ensemble_scheduling { step [ "
        + step.format(a="INPUT0", b="INPUT1", out="sum")
        + ", "
        + step.format(a="sum", b="INPUT1", out="OUTPUT0")
        + " ] }\n"
    )


@pytest.fixture(scope="module")
def traced(receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server that traces every request from the start, with JSON logs and an access log."""
    root = tmp_path_factory.mktemp("traced_repo")
    add_sub_fp32(root)
    (root / ENSEMBLE / "1").mkdir(parents=True)
    (root / ENSEMBLE / "config.pbtxt").write_text(_ensemble_config())
    with running_server(
        root,
        "--trace-config", "mode=opentelemetry",
        "--trace-config", f"opentelemetry,url={receiver.url}",
        "--trace-config", "level=TIMESTAMPS",
        "--trace-config", "rate=1",
        "--trace-config", "opentelemetry,resource=deployment.environment=test",
        "--trace-config", "opentelemetry,bsp_schedule_delay=50",
        "--log-format", "json",
        "--log-requests",
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
def tclient(protocol: str, traced: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, traced)
    # Every test starts from the start settings: every request traced.
    c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1",
                                      "trace_count": "-1"})  # fmt: skip
    try:
        yield c
    finally:
        c.close()


def traceparent() -> tuple[str, str, str]:
    """A caller's (trace id, span id) and the `traceparent` header carrying them, sampled."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def infer(client: Any, protocol: str, model: str = MODEL, **headers: str) -> np.ndarray:
    arrays = add_sub_inputs(seed=7)
    result = client.infer(model, inputs_of(protocol, arrays), headers=headers or None)
    out: np.ndarray = result.as_numpy("OUTPUT0")
    return out


def with_request_id(rid: str) -> Callable[[list[Span]], bool]:
    return lambda spans: any(s.attributes.get("triton.request_id") == rid for s in spans)


def marker(receiver: OtlpReceiver, client: Any, protocol: str) -> list[Span]:
    """Send a traced request and wait for its span: every earlier span has arrived by then."""
    _, _, header = traceparent()
    rid = f"marker-{os.urandom(4).hex()}"
    infer(client, protocol, traceparent=header, **{"x-request-id": rid})
    return receiver.wait_for(with_request_id(rid))


def test_a_request_with_traceparent_is_a_child_of_the_callers_span(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    trace_id, span_id, header = traceparent()
    rid = f"parented-{protocol}"
    before = time.time_ns()
    infer(tclient, protocol, traceparent=header, **{"x-request-id": rid})
    after = time.time_ns()
    (span,) = [s for s in receiver.wait_for(with_request_id(rid)) if s.trace_id == trace_id]
    assert span.parent_span_id == span_id
    assert span.span_id not in (span_id, "0" * 16)
    assert span.name == "InferRequest"
    assert span.kind == 2  # SPAN_KIND_SERVER
    assert span.status_code == 0  # unset: no error
    assert span.attributes == {
        "triton.model_name": MODEL,
        "triton.model_version": "1",
        "triton.request_id": rid,
        "conveyor.protocol": protocol,
        "conveyor.batch_size": 1,
        "conveyor.batch_id": span.attributes["conveyor.batch_id"],
    }
    assert [name for name, _ in span.events] == PHASES
    times = [span.start_ns, *(t for _, t in span.events), span.end_ns]
    assert times == sorted(times)
    assert before - 5_000_000 <= span.start_ns <= span.end_ns <= after + 5_000_000
    assert span.resource["service.name"] == "conveyor"
    assert span.resource["deployment.environment"] == "test"


def test_requests_without_traceparent_start_their_own_traces(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    rids = [f"own-{protocol}-{i}" for i in range(3)]
    for rid in rids:
        infer(tclient, protocol, **{"x-request-id": rid})
    spans = receiver.wait_for(lambda got: all(with_request_id(r)(got) for r in rids))
    mine = [s for s in spans if s.attributes.get("triton.request_id") in rids]
    assert len(mine) == 3
    assert all(s.parent_span_id == "" for s in mine)
    assert len({s.trace_id for s in mine}) == 3


def test_an_ensembles_steps_are_child_spans(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    trace_id, span_id, header = traceparent()
    out = infer(tclient, protocol, ENSEMBLE, traceparent=header)
    arrays = add_sub_inputs(seed=7)
    np.testing.assert_allclose(out, arrays["INPUT0"] + 2 * arrays["INPUT1"], rtol=1e-6)
    spans = receiver.wait_for(lambda got: sum(s.trace_id == trace_id for s in got) == 3)
    mine = [s for s in spans if s.trace_id == trace_id]
    (root,) = [s for s in mine if s.name == "InferRequest"]
    steps = [s for s in mine if s is not root]
    assert root.parent_span_id == span_id
    assert root.attributes["triton.model_name"] == ENSEMBLE
    assert [s.name for s in steps] == [MODEL, MODEL]
    for step in steps:
        assert step.parent_span_id == root.span_id
        assert step.kind == 1  # SPAN_KIND_INTERNAL
        assert step.attributes["triton.model_name"] == MODEL
        assert [name for name, _ in step.events] == PHASES
        assert root.start_ns <= step.start_ns <= step.end_ns <= root.end_ns
    assert steps[0].end_ns <= steps[1].start_ns  # the second step reads the first's output


def test_a_failed_request_is_a_span_with_an_error_status(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    trace_id, _, header = traceparent()
    arrays = {"INPUT0": np.zeros((1, 3), np.float32), "INPUT1": np.zeros((1, 3), np.float32)}
    expect_error(protocol, ("INVALID_ARGUMENT",), tclient.infer, MODEL,
                 inputs_of(protocol, arrays), headers={"traceparent": header})  # fmt: skip
    (span,) = [s for s in receiver.wait_for(lambda got: any(s.trace_id == trace_id for s in got))
               if s.trace_id == trace_id]  # fmt: skip
    assert span.status_code == 2  # STATUS_CODE_ERROR
    assert span.events == []  # refused before it was queued


def test_each_message_of_a_grpc_stream_is_a_span_in_the_streams_trace(
    traced: ServerProcess, receiver: OtlpReceiver
) -> None:
    """ModelStreamInfer: the stream's metadata carries the trace context and request id."""
    client = make_client("grpc", traced)
    client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1",
                                           "trace_count": "-1"})  # fmt: skip
    trace_id, span_id, header = traceparent()
    rid = f"stream-{os.urandom(4).hex()}"
    answers: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put(error or result),
                        stream_timeout=WAIT_S, headers={"traceparent": header,
                                                        "x-request-id": rid})  # fmt: skip
    try:
        arrays = add_sub_inputs(seed=7)
        for i in range(3):
            client.async_stream_infer(MODEL, inputs_of("grpc", arrays), request_id=f"m{i}")
        got = [answers.get(timeout=WAIT_S) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    assert sorted(r.get_response().id for r in got) == ["m0", "m1", "m2"]
    spans = receiver.wait_for(lambda got: len([s for s in got if s.trace_id == trace_id]) >= 3)
    mine = [s for s in spans if s.trace_id == trace_id]
    assert len(mine) == 3
    assert {s.parent_span_id for s in mine} == {span_id}
    assert len({s.span_id for s in mine}) == 3
    assert {s.attributes["triton.request_id"] for s in mine} == {rid}
    assert all([name for name, _ in s.events] == PHASES for s in mine)


def test_rate_samples_one_request_in_n(tclient: Any, protocol: str, receiver: OtlpReceiver) -> None:
    tclient.update_trace_settings(settings={"trace_rate": "3"})
    rids = [f"rate-{protocol}-{i}" for i in range(9)]
    for rid in rids:
        infer(tclient, protocol, **{"x-request-id": rid})
    tclient.update_trace_settings(settings={"trace_rate": "1"})
    spans = marker(receiver, tclient, protocol)
    assert len([s for s in spans if s.attributes.get("triton.request_id") in rids]) == 3


def test_count_stops_tracing_after_n_traces(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    tclient.update_trace_settings(settings={"trace_count": "2"})
    rids = [f"count-{protocol}-{i}" for i in range(5)]
    for rid in rids:
        infer(tclient, protocol, **{"x-request-id": rid})
    assert settings_of(tclient, protocol)["trace_count"] == ["0"]
    tclient.update_trace_settings(settings={"trace_count": "-1"})
    spans = marker(receiver, tclient, protocol)
    traced = [s.attributes["triton.request_id"] for s in spans]
    assert [r for r in rids if r in traced] == rids[:2]


@pytest.mark.parametrize(
    "off", [{"trace_level": ["OFF"]}, {"trace_rate": "0"}], ids=["level_off", "rate_0"]
)
def test_turning_tracing_off_over_the_api_stops_spans_at_once(
    tclient: Any, protocol: str, receiver: OtlpReceiver, off: dict[str, Any]
) -> None:
    tclient.update_trace_settings(settings=off)
    trace_id, _, header = traceparent()
    infer(tclient, protocol, traceparent=header)  # even a caller's sampled context
    infer(tclient, protocol, **{"x-request-id": f"off-{protocol}"})
    tclient.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
    spans = marker(receiver, tclient, protocol)
    assert not [s for s in spans if s.trace_id == trace_id]
    assert not with_request_id(f"off-{protocol}")(spans)


def test_a_models_own_settings_apply_to_it_alone(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    tclient.update_trace_settings(settings={"trace_level": ["OFF"]})
    tclient.update_trace_settings(model_name=MODEL, settings={"trace_level": ["TIMESTAMPS"]})
    try:
        own = settings_of(tclient, protocol, MODEL)
        assert own["trace_level"] == ["TIMESTAMPS"]
        assert own["trace_rate"] == ["1"]  # copied from the global settings
        assert settings_of(tclient, protocol)["trace_level"] == ["OFF"]
        spans = marker(receiver, tclient, protocol)  # traced by the model's own setting
        trace_id, _, header = traceparent()
        infer(tclient, protocol, ENSEMBLE, traceparent=header)  # off: the global setting
        spans = marker(receiver, tclient, protocol)
        assert not [s for s in spans if s.trace_id == trace_id]
    finally:
        cleared = dict.fromkeys(("trace_level", "trace_rate", "trace_count"))
        tclient.update_trace_settings(model_name=MODEL, settings=cleared)
    assert settings_of(tclient, protocol, MODEL)["trace_level"] == ["OFF"]  # the global again


def settings_of(client: Any, protocol: str, model: str = "") -> dict[str, list[str]]:
    """Trace settings with every value a list of strings, as gRPC carries them."""
    got = client.get_trace_settings(model_name=model or None)
    if protocol == "grpc":
        return {k: list(v.value) for k, v in got.settings.items()}
    return {k: v if isinstance(v, list) else [v] for k, v in got.items()}


def test_settings_show_triton_names_and_string_values(
    tclient: Any, protocol: str, receiver: OtlpReceiver
) -> None:
    assert settings_of(tclient, protocol) == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": ["1"],
        "trace_count": ["-1"],
        "trace_mode": ["opentelemetry"],
        "url": [receiver.url],
        "resource": ["service.name=conveyor,deployment.environment=test"],
        "bsp_schedule_delay": ["50"],
    }
    assert settings_of(tclient, protocol, MODEL) == settings_of(tclient, protocol)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"trace_file": "/tmp/trace.json"}, "trace_file"),
        ({"trace_rate": "often"}, "trace_rate"),
        ({"trace_count": "-2"}, "trace_count"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level"),
        ({"trace_level": ["TENSORS"]}, "trace_level"),
        ({"url": "http://elsewhere:4318/v1/traces"}, "url"),
        ({"log_frequency": "10"}, "log_frequency"),
        ({"trace_colour": "blue"}, "trace_colour"),
    ],
)
def test_a_bad_setting_is_refused_naming_it(
    tclient: Any, protocol: str, settings: dict[str, Any], named: str
) -> None:
    message = expect_error(protocol, ("INVALID_ARGUMENT",), tclient.update_trace_settings,
                           settings=settings)  # fmt: skip
    assert named in message
    assert settings_of(tclient, protocol)["trace_rate"] == ["1"]  # nothing changed


def test_an_unknown_model_has_no_trace_settings(tclient: Any, protocol: str) -> None:
    message = expect_error(protocol, ("NOT_FOUND",), tclient.get_trace_settings,
                           model_name="nowhere")  # fmt: skip
    assert "nowhere" in message


def test_the_access_log_carries_the_trace_id(
    tclient: Any, protocol: str, traced: ServerProcess, receiver: OtlpReceiver
) -> None:
    trace_id, _, header = traceparent()
    rid = f"logged-{protocol}"
    infer(tclient, protocol, traceparent=header, **{"x-request-id": rid})
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in traced.log if f'"{rid}"' in x]
        if lines:
            break
        time.sleep(0.05)
    (line,) = lines
    assert line["trace_id"] == trace_id
    assert line["request_id"] == rid
    assert line["status"] == "OK"


def test_tracing_can_start_over_the_api_on_a_server_started_without_it(
    test_repo: Path, receiver: OtlpReceiver
) -> None:
    with running_server(
        test_repo,
        "--trace-config", f"opentelemetry,url={receiver.url}",
        "--trace-config", "opentelemetry,bsp_schedule_delay=50",
    ) as server:  # fmt: skip
        for protocol in PROTOCOLS:
            client = make_client(protocol, server)
            try:
                assert settings_of(client, protocol)["trace_level"] == ["OFF"]
                trace_id, _, header = traceparent()
                infer(client, protocol, traceparent=header)
                client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
                spans = marker(receiver, client, protocol)
                assert not [s for s in spans if s.trace_id == trace_id]
                client.update_trace_settings(settings={"trace_level": ["OFF"]})
            finally:
                client.close()


def _export_processes(url: str) -> list[int]:
    """Pids of export processes posting to `url` (its spec is on their command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "runtime.monitoring.otel" in cmdline and url in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_sigterm_sends_the_spans_still_queued_and_ends_the_export_process(
    test_repo: Path, protocol: str
) -> None:
    """Spans waiting for a batch (the delay is an hour) leave as the server stops."""
    receiver = OtlpReceiver()
    try:
        with running_server(
            test_repo,
            "--trace-config", f"opentelemetry,url={receiver.url}",
            "--trace-config", "opentelemetry,bsp_schedule_delay=3600000",
            "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=1",
        ) as server:  # fmt: skip
            assert len(_export_processes(receiver.url)) == 1
            client = make_client(protocol, server)
            rids = [f"sigterm-{protocol}-{i}" for i in range(3)]
            try:
                for rid in rids:
                    infer(client, protocol, **{"x-request-id": rid})
            finally:
                client.close()
            time.sleep(0.2)
            assert not receiver.spans  # still queued
        spans = receiver.wait_for(lambda got: all(with_request_id(r)(got) for r in rids))
        assert len(spans) == 3
        assert _export_processes(receiver.url) == []
    finally:
        receiver.close()


def test_the_export_process_sends_batches_and_the_rest_at_close(receiver: OtlpReceiver) -> None:
    """OtlpExporter in this process: a full batch leaves at once, the rest at close."""
    from runtime.monitoring.otel import OtlpExporter
    from runtime.monitoring.tracing import TraceConfig, Tracing

    specs = [f"url={receiver.url}", "bsp_schedule_delay=3600000", "bsp_max_export_batch_size=4"]
    otlp = OtlpExporter(TraceConfig.parse([f"opentelemetry,{s}" for s in specs]))
    tracing = Tracing(TraceConfig.parse(["level=TIMESTAMPS", "rate=1"]), otlp)
    prefix = f"process-{os.urandom(3).hex()}"
    rids = [f"{prefix}-{i}" for i in range(6)]
    try:
        for rid in rids:
            trace = tracing.start("m", {}, time.monotonic_ns(), "http", rid)
            assert trace is not None
            trace.end("1")
        # a batch of 4 leaves at once; the last 2 only at close (the delay is an hour)
        receiver.wait_for(lambda got: all(with_request_id(r)(got) for r in rids[:4]))
    finally:
        otlp.close(10.0)
    assert otlp._process is not None
    assert otlp._process.returncode == 0
    spans = receiver.wait_for(lambda got: all(with_request_id(r)(got) for r in rids))
    mine = [s for s in spans if s.attributes.get("triton.request_id") in rids]
    assert sorted(s.attributes["triton.request_id"] for s in mine) == rids
    assert all(s.name == "InferRequest" and s.kind == 2 and s.events == [] for s in mine)


def test_without_the_expected_client_spans_go_through_the_sdks_encoder(
    receiver: OtlpReceiver,
) -> None:
    from opentelemetry.sdk.resources import Resource

    from runtime.monitoring.otel import Sender, span_records
    from runtime.monitoring.tracing import TraceConfig, Tracing

    sender = Sender(receiver.url, Resource.create({"service.name": "conveyor"}))
    sender.post = None
    collected: list[Any] = []
    exporter = type("Collect", (), {"export": lambda self, t: collected.append(t)})()
    tracing = Tracing(TraceConfig.parse(["level=TIMESTAMPS", "rate=1"]), exporter)
    rid = f"sdk-{os.urandom(3).hex()}"
    trace = tracing.start("m", {}, time.monotonic_ns(), "http", rid)
    assert trace is not None
    trace.end("1")
    sender.send(span_records(collected[0], 0))
    sender.close()
    (span,) = [s for s in receiver.wait_for(with_request_id(rid))
               if s.attributes.get("triton.request_id") == rid]  # fmt: skip
    assert span.name == "InferRequest"
