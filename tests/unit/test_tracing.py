"""Tracing without sockets: --trace-config, W3C traceparent, the settings and the sampling
decision, the batcher's hook, and the spans the OpenTelemetry SDK is handed."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from runtime.batching.batcher import DynamicBatcher
from runtime.cli import build_parser, server_config
from runtime.config import BatchingConfig, ModelConfig, TensorSpec
from runtime.errors import InvalidInput
from runtime.events import BatchDone
from runtime.monitoring.tracing import (
    Parent,
    RequestTrace,
    TraceConfig,
    Tracing,
    parse_traceparent,
)
from runtime.proto import model_config_pb2 as pb
from runtime.types import InferenceRequest, InputTensor

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SPAN_ID = "b7ad6b7169203331"
SAMPLED = {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-01"}


class Collected:
    """An exporter that keeps the root traces it is given."""

    def __init__(self) -> None:
        self.traces: list[RequestTrace] = []

    def export(self, trace: RequestTrace) -> None:
        self.traces.append(trace)

    def close(self, timeout_s: float) -> None:
        pass


def tracing(*specs: str) -> tuple[Tracing, Collected]:
    exporter = Collected()
    return Tracing(TraceConfig.parse(specs), exporter), exporter


def start(t: Tracing, model: str = "m", carrier: dict[str, str] | None = None) -> Any:
    return t.start(model, carrier or {}, 1, "http", "rid")


# -- --trace-config ----------------------------------------------------------------------


def test_trace_config_takes_tritons_specs() -> None:
    config = TraceConfig.parse([
        "mode=opentelemetry", "level=TIMESTAMPS", "rate=10", "count=-1",
        "opentelemetry,url=http://collector:4318/v1/traces",
        "opentelemetry,resource=service.name=scorer", "opentelemetry,resource=team=ml,ai",
        "opentelemetry,bsp_schedule_delay=100", "opentelemetry,bsp_max_queue_size=64",
        "opentelemetry,bsp_max_export_batch_size=32",
    ])  # fmt: skip
    assert (config.level, config.rate, config.count) == ("TIMESTAMPS", 10, -1)
    assert config.url == "http://collector:4318/v1/traces"
    assert config.resource_attributes() == {"service.name": "scorer", "team": "ml,ai"}
    assert (config.bsp_schedule_delay_ms, config.bsp_max_queue_size) == (100, 64)
    assert config.bsp_max_export_batch_size == 32
    assert TraceConfig.parse([]) == TraceConfig()  # Triton's defaults: OFF, 1 in 1000, no limit


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("colour=blue", "Bad option"),
        ("rate", "Bad option"),
        ("rate=-1", "rate=-1"),
        ("count=-2", "count=-2"),
        ("level=TENSORS", "TENSORS"),
        ("mode=triton", "opentelemetry"),
        ("triton,file=/tmp/t.json", "trace files"),
        ("opentelemetry,url=collector:4318", "http://"),
        ("opentelemetry,bsp_schedule_delay=0", "above 0"),
        ("opentelemetry,resource=nokey", "resource="),
        ("opentelemetry,colour=blue", "Bad option"),
    ],
)
def test_a_bad_trace_config_names_the_spec(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        TraceConfig.parse([spec])


def test_the_export_batch_must_fit_the_queue() -> None:
    with pytest.raises(ValueError, match="bsp_max_export_batch_size=64"):
        TraceConfig.parse(
            ["opentelemetry,bsp_max_queue_size=32", "opentelemetry,bsp_max_export_batch_size=64"]
        )


def test_the_flags_reach_the_settings() -> None:
    args = ["serve", "--model-repository", "/m", "--trace-config", "rate=5", "--log-requests",
            "--log-format", "json"]  # fmt: skip
    config = server_config(build_parser().parse_args(args))
    assert (config.trace_config, config.log_requests, config.log_format) == (
        ["rate=5"], True, "json"
    )  # fmt: skip
    config = server_config(build_parser().parse_args(["serve", "--log-requests", "false"]))
    assert not config.log_requests
    config = server_config(build_parser().parse_args(["serve"]))
    assert (config.trace_config, config.log_requests, config.log_format) == ([], False, "default")


def test_a_bad_flag_stops_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--trace-config", "rate=often"])
    assert "rate=often" in capsys.readouterr().err


# -- W3C traceparent -----------------------------------------------------------------------


def test_traceparent_is_read() -> None:
    parent = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-01", "k=v")
    assert parent == Parent(int(TRACE_ID, 16), int(SPAN_ID, 16), True, "k=v")
    unsampled = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-00")
    assert unsampled is not None
    assert not unsampled.sampled
    # A later version may add fields; version 00 may not.
    assert parse_traceparent(f"01-{TRACE_ID}-{SPAN_ID}-01-future") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"00-{TRACE_ID}-{SPAN_ID}",
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-0x",
    ],
)
def test_an_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


# -- sampling ----------------------------------------------------------------------------


def test_off_by_default_and_nothing_is_sampled() -> None:
    t, _ = tracing()
    assert not t.on
    assert start(t, carrier=SAMPLED) is None


def test_rate_samples_one_in_n() -> None:
    t, _ = tracing("level=TIMESTAMPS", "rate=4")
    assert t.on
    sampled = [start(t) is not None for _ in range(12)]
    assert sampled == [False, False, False, True] * 3


def test_a_sampled_caller_is_traced_in_its_trace_whatever_the_rate() -> None:
    t, _ = tracing("level=TIMESTAMPS", "rate=1000")
    trace = start(t, carrier=SAMPLED)
    assert trace is not None
    assert trace.trace_id_hex == TRACE_ID
    assert trace.parent == Parent(int(TRACE_ID, 16), int(SPAN_ID, 16), True)
    unsampled = {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"}
    assert start(t, carrier=unsampled) is None  # the rate decides


def test_count_stops_tracing_and_turns_it_off() -> None:
    t, _ = tracing("level=TIMESTAMPS", "rate=1", "count=2")
    assert [start(t) is not None for _ in range(3)] == [True, True, False]
    assert t.settings()["trace_count"] == "0"
    assert not t.on
    assert start(t, carrier=SAMPLED) is None


@pytest.mark.parametrize("off", [{"trace_rate": "0"}, {"trace_level": ["OFF"]}])
def test_rate_0_or_level_off_stops_tracing_at_once(off: dict[str, Any]) -> None:
    t, _ = tracing("level=TIMESTAMPS", "rate=1")
    asyncio.run(t.update("", off))
    assert not t.on
    assert start(t, carrier=SAMPLED) is None


def test_a_models_settings_start_as_the_global_ones_and_null_clears_one() -> None:
    t, _ = tracing("rate=7")
    assert not t.on
    shown = asyncio.run(t.update("m", {"trace_level": ["TIMESTAMPS"]}))
    assert (shown["trace_level"], shown["trace_rate"]) == (["TIMESTAMPS"], "7")
    assert t.on
    assert t.settings()["trace_level"] == ["OFF"]
    assert start(t, "other", SAMPLED) is None
    assert start(t, "m", SAMPLED) is not None
    asyncio.run(t.update("", {"trace_rate": "2"}))
    assert t.settings("m")["trace_rate"] == "7"  # its own copy
    shown = asyncio.run(t.update("m", {"trace_rate": None, "trace_level": None}))
    assert (shown["trace_level"], shown["trace_rate"]) == (["OFF"], "2")
    assert not t.on


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"trace_rate": "often"}, "trace_rate"),
        ({"trace_rate": True}, "trace_rate"),
        ({"trace_rate": 1.5}, "trace_rate"),
        ({"trace_count": "-2"}, "trace_count"),
        ({"trace_level": ["OFF", "TIMESTAMPS"]}, "trace_level"),
        ({"trace_level": [3]}, "trace_level"),
        ({"trace_level": None}, "trace_level"),  # no global default to fall back to
        ({"trace_file": "/etc/passwd"}, "trace_file"),
        ({"log_frequency": "1"}, "log_frequency"),
        ({"bsp_schedule_delay": "1"}, "bsp_schedule_delay"),
        ({"trace_mode": "triton"}, "trace_mode"),
        ({"sample_everything": "1"}, "sample_everything"),
    ],
)
def test_a_bad_update_names_the_setting_and_changes_nothing(
    changes: dict[str, Any], named: str
) -> None:
    t, _ = tracing("level=TIMESTAMPS", "rate=3")
    before = t.settings()
    with pytest.raises(InvalidInput, match=named):
        asyncio.run(t.update("", {"trace_rate": "9", **changes}))
    assert t.settings() == before


def test_the_settings_are_tritons_strings() -> None:
    t, _ = tracing("level=TIMESTAMPS", "opentelemetry,url=http://c:4318/v1/traces")
    assert t.settings() == {
        "trace_level": ["TIMESTAMPS"],
        "trace_rate": "1000",
        "trace_count": "-1",
        "trace_mode": "opentelemetry",
        "url": "http://c:4318/v1/traces",
        "resource": "service.name=conveyor",
    }


# -- the batcher's hook and the end of a trace -----------------------------------------------


def test_the_batcher_tells_each_sampled_request_its_batch() -> None:
    config = ModelConfig(
        name="m",
        platform="onnxruntime_onnx",
        max_batch_size=4,  # the four requests make one full batch: it leaves at once
        inputs=(TensorSpec("x", "FP32", (2,)),),
        outputs=(TensorSpec("y", "FP32", (2,)),),
        batching=BatchingConfig(enabled=True, max_queue_delay_us=60_000_000),
        instance_count=1,
        instance_kind="KIND_CPU",
        gpus=(),
        default_model_filename="model.onnx",
        parameters={},
        source=pb.ModelConfig(),
    )
    t, exporter = tracing("level=TIMESTAMPS", "rate=2")

    async def run() -> list[RequestTrace | None]:
        batcher = DynamicBatcher(config, lambda inputs: {"y": inputs["x"] * 2})
        batcher.start()
        requests = []
        for i in range(4):
            r = InferenceRequest("m", inputs={"x": InputTensor("x", "FP32", np.ones((1, 2)))})
            r.trace = t.start("m", {}, i, "grpc", f"r{i}")
            requests.append(r)
        await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        for r in requests:
            if r.trace is not None:
                r.trace.end("1")
        return [r.trace for r in requests]

    traces = asyncio.run(run())
    assert [x is not None for x in traces] == [False, True, False, True]
    assert exporter.traces == [x for x in traces if x is not None]
    for trace in exporter.traces:
        assert trace.batch_size == 4  # the batch of all four, traced or not
        assert trace.batch_id == 0
        assert trace.queue_ns <= trace.compute_ns <= trace.input_end_ns
        assert trace.input_end_ns <= trace.output_start_ns <= trace.compute_end_ns
        assert trace.compute_end_ns <= trace.end_ns
        assert (trace.version, trace.protocol, trace.error) == ("1", "grpc", "")


def test_a_step_is_exported_with_its_root_only() -> None:
    t, exporter = tracing("level=TIMESTAMPS", "rate=1")
    root = start(t, carrier=SAMPLED)
    step = root.child("inner")
    step.end("2", InvalidInput("bad"))
    assert exporter.traces == []
    root.end("1")
    assert exporter.traces == [root]
    assert root.children == [step]
    assert (step.trace_id, step.parent, step.error) == (root.trace_id, root, "bad")


# -- spans, through the OpenTelemetry SDK ----------------------------------------------------


OFFSET_NS = 1_700_000_000_000_000_000


def traced_requests() -> list[RequestTrace]:
    """Finished root traces: an ensemble whose step failed (with the caller's tracestate), a
    request that ran, one refused before it ran (its caller did not sample it)."""
    collected = Collected()
    t = Tracing(TraceConfig.parse(["level=TIMESTAMPS", "rate=1"]), collected)
    root = t.start("ens", {**SAMPLED, "tracestate": "vendor=1,other=x"}, 1_000, "http", "rid-1")
    assert root is not None
    step = root.child("inner")
    step.ran(step.start_ns, BatchDone(3, 10, 20, 5, step.start_ns + 1, [], True), 7)
    step.end("2", InvalidInput("bad input"))
    root.end("1")
    ran = t.start("mlp", {}, 2_000, "grpc", "rid-2")
    assert ran is not None
    ran.ran(ran.start_ns, BatchDone(2**40, 1, 2, 3, ran.start_ns + 5, [], True), 2**33)
    ran.end("3")
    refused = t.start("mlp", {"traceparent": f"00-{TRACE_ID}-{SPAN_ID}-00"}, 3_000, "grpc", "é")
    assert refused is not None
    refused.end("", RuntimeError("boom"))
    assert len(collected.traces) == 3
    return collected.traces


def test_the_encoded_request_is_what_the_sdks_encoder_makes_of_the_sdks_spans() -> None:
    """The export process writes OTLP protobuf itself (the SDK's encoder is too slow for the
    request rate); it must say exactly what the SDK would."""
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the `trace` extra")
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.resources import Resource

    from runtime.monitoring.otel import Encoder, readable_spans, span_records

    resource = Resource.create({"service.name": "conveyor", "team": "ml"})
    batch = [r for t in traced_requests() for r in span_records(t, OFFSET_NS)]
    assert len(batch) == 4
    ours = ExportTraceServiceRequest.FromString(Encoder(resource).request(batch))
    sdk = encode_spans(readable_spans(batch, resource))
    assert len(ours.resource_spans[0].scope_spans[0].spans) == 4
    assert ours == sdk
    # and the parsed message says the same again when the SDK's own bytes are parsed
    assert ours == ExportTraceServiceRequest.FromString(sdk.SerializeToString())


def test_spans_carry_the_callers_context_ids_events_and_status() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the `trace` extra")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanKind, StatusCode

    from runtime.monitoring.otel import readable_spans, span_records

    root = traced_requests()[0]
    resource = Resource.create({"service.name": "conveyor", "team": "ml"})
    spans = {s.name: s for s in readable_spans(span_records(root, OFFSET_NS), resource)}
    assert set(spans) == {"InferRequest", "inner"}
    top, inner = spans["InferRequest"], spans["inner"]
    assert top.context is not None
    assert inner.context is not None
    assert top.parent is not None
    assert format(top.context.trace_id, "032x") == TRACE_ID
    assert format(top.parent.span_id, "016x") == SPAN_ID
    assert top.parent.is_remote
    assert top.context.trace_state.get("vendor") == "1"
    assert top.kind == SpanKind.SERVER
    assert dict(top.attributes or {}) == {
        "triton.model_name": "ens",
        "triton.model_version": "1",
        "triton.request_id": "rid-1",
        "conveyor.protocol": "http",
    }
    assert top.events == ()
    assert top.status.status_code == StatusCode.UNSET
    assert inner.parent is not None
    assert inner.parent.span_id == top.context.span_id
    assert inner.kind == SpanKind.INTERNAL
    assert (inner.attributes or {})["conveyor.batch_size"] == 3
    assert (inner.attributes or {})["conveyor.batch_id"] == 7
    assert [e.name for e in inner.events] == [
        "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
        "COMPUTE_END",
    ]  # fmt: skip
    assert inner.status.status_code == StatusCode.ERROR
    assert inner.status.description == "bad input"
    assert top.resource.attributes["team"] == "ml"
    assert top.resource.attributes["service.name"] == "conveyor"
    assert top.start_time is not None
    assert top.end_time is not None
    assert top.start_time - OFFSET_NS == 1_000
    assert top.start_time <= inner.start_time <= inner.end_time <= top.end_time  # type: ignore[operator]


def test_a_full_queue_drops_traces_and_never_blocks() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="tracing needs the `trace` extra")
    import threading

    from runtime.monitoring.otel import OtlpExporter

    specs = ["bsp_schedule_delay=3600000", "bsp_max_queue_size=2", "bsp_max_export_batch_size=2"]
    otlp = OtlpExporter(TraceConfig.parse([f"opentelemetry,{s}" for s in specs]))
    stuck = threading.Event()
    otlp._send = lambda data: stuck.wait(10) and None  # type: ignore[method-assign]
    try:
        for rid in ("r0", "r1", "r2"):  # r0 and r1 are a batch, held by a stuck pipe
            otlp.export(RequestTrace(otlp, "m", "http", rid, 1, 1, None))
        assert otlp.dropped == 1
        assert otlp._pending == []
    finally:
        stuck.set()
        otlp.close(10.0)
