"""Finished request traces as OpenTelemetry spans, exported as OTLP over HTTP (protobuf).

Imported only when tracing turns on: the SDK is the `trace` extra.

Each request is one span, `InferRequest` (kind SERVER, the caller's span as parent when the
request carried a `traceparent`), with Triton's timestamp names as events: QUEUE_START,
COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END. An ensemble's steps
are child spans named after their models, with the same events.

How they leave. The event loop queues each finished root trace as it is (a deque append;
a full queue drops it, it never blocks a request), and this module's export thread turns
batches of them into one OTLP ExportTraceServiceRequest and posts it with the SDK's OTLP
exporter's HTTP client (its OTEL_EXPORTER_OTLP_* settings, compression and retries). The
SDK also gives the Resource (OTEL_RESOURCE_ATTRIBUTES and its own attributes) and encodes
the resource and scope, once. The batch settings are the SDK's BatchSpanProcessor's, with
its OTEL_BSP_* defaults.

Why not the SDK's own span objects, processor and encoder (written by hand here): measured
on a 2-core machine (BENCHMARKS.md, "Tracing"), building a ReadableSpan on the loop cost
7 µs, and the SDK's encoder 36 µs a span in the export thread, which holds the GIL the
loop needs: tracing every request over HTTP cost 40% of the throughput. The encoding here
writes the protobuf wire format of each span directly, with the parts every span shares
(field tags, event names, attribute pairs that repeat) encoded once; it costs a few µs a
span. `readable_spans` builds the SDK's spans of a trace: the tests check this encoding
against the SDK's encoder, and it is the export path where the exporter's client is not the
one this module expects (another SDK version).
"""

from __future__ import annotations

import collections
import logging
import os
import struct
import threading
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.environment_variables import (
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
    OTEL_BSP_MAX_QUEUE_SIZE,
    OTEL_BSP_SCHEDULE_DELAY,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from runtime import __version__
from runtime.monitoring.tracing import Parent, RequestTrace, TraceConfig

log = logging.getLogger(__name__)

SCOPE = InstrumentationScope("conveyor", __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_PHASES = (
    ("QUEUE_START", "queue_ns"),
    ("COMPUTE_START", "compute_ns"),
    ("COMPUTE_INPUT_END", "input_end_ns"),
    ("COMPUTE_OUTPUT_START", "output_start_ns"),
    ("COMPUTE_END", "compute_end_ns"),
)
ROOT_NAME = "InferRequest"
# The SDK's BatchSpanProcessor defaults, where neither --trace-config nor OTEL_BSP_* set one.
_BSP_DEFAULTS = {
    OTEL_BSP_MAX_QUEUE_SIZE: 2048,
    OTEL_BSP_SCHEDULE_DELAY: 5000,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 512,
}


class OtlpExporter:
    """RequestTraces -> a queue -> the export thread: OTLP protobuf -> the SDK's HTTP client."""

    def __init__(self, config: TraceConfig) -> None:
        self.resource = Resource.create(config.resource_attributes())
        self.exporter = OTLPSpanExporter(endpoint=config.url)
        self.max_queue = _setting(config.bsp_max_queue_size, OTEL_BSP_MAX_QUEUE_SIZE)
        self.batch = _setting(config.bsp_max_export_batch_size, OTEL_BSP_MAX_EXPORT_BATCH_SIZE)
        self.delay_s = _setting(config.bsp_schedule_delay_ms, OTEL_BSP_SCHEDULE_DELAY) / 1000
        # Monotonic phase times to the wall clock that spans carry.
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self.encoder = Encoder(self.resource, self.offset_ns)
        # The exporter's HTTP client, which takes encoded requests (a private part of the
        # SDK's exporter, pinned by the lock); without it, batches go through the SDK's
        # own spans and encoder.
        client = getattr(self.exporter, "_client", None)
        self._post = getattr(client, "export", None)
        self.dropped = 0
        self._queue: collections.deque[RequestTrace] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def export(self, trace: RequestTrace) -> None:
        """Queue a finished root trace (with its steps); on the event loop."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            if not self.dropped:
                log.warning("the trace export queue is full; traces are being dropped")
            self.dropped += 1
            return
        queue.append(trace)
        if len(queue) == self.batch:
            self._wake.set()

    def close(self, timeout_s: float) -> None:
        """Send what is queued (within `timeout_s`), then stop the export thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        self.exporter.shutdown()  # type: ignore[no-untyped-call]

    # -- the export thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            stopping = self._stopping
            while self._queue:
                traces = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                try:
                    self._send(traces)
                except Exception:
                    log.exception("a batch of %d traces could not be exported", len(traces))
            if stopping:
                return

    def _send(self, traces: list[RequestTrace]) -> None:
        if self._post is None:
            spans = [span for trace in traces for span in readable_spans(trace, self)]
            self.exporter.export(spans)
            return
        result = self._post(self.encoder.request(traces))
        if not getattr(result, "success", True):
            log.warning("the trace collector refused %d traces: %s", len(traces), result.error)


def _setting(value: int | None, env: str) -> int:
    if value is not None:
        return value
    try:
        return int(os.environ.get(env, _BSP_DEFAULTS[env]))
    except ValueError:
        return _BSP_DEFAULTS[env]


# -- OTLP protobuf, written directly -----------------------------------------------------------
# Field numbers and types from opentelemetry/proto/trace/v1/trace.proto and common.proto.

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_SMALL = [bytes([n]) for n in range(128)]
# Span.flags (fixed32, field 16): the SDK's SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, with
# SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK when the parent is remote (a caller's span).
_LOCAL_FLAGS = b"\x85\x01" + _fixed32(0x100)
_REMOTE_FLAGS = b"\x85\x01" + _fixed32(0x300)
_UNSET_STATUS = b"\x7a\x00"  # Span.status: an empty Status (code UNSET), as the SDK sends
_SERVER, _INTERNAL = 2, 1  # Span.SpanKind


def _varint(n: int) -> bytes:
    if 0 <= n < 128:
        return _SMALL[n]
    n &= (1 << 64) - 1  # an int64 below 0 is its two's complement, ten bytes
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); every tag here fits one byte (field < 16)."""
    return _SMALL[tag] + _varint(len(payload)) + payload


def _text(tag: int, value: str) -> bytes:
    return _field(tag, value.encode())


def _key_value(key: str, value: str | int) -> bytes:
    """KeyValue{key, AnyValue{string_value | int_value}} as a Span.attributes entry."""
    any_value = b"\x18" + _varint(value) if isinstance(value, int) else _text(0x0A, value)
    return _field(0x4A, _text(0x0A, key) + _field(0x12, any_value))


class Encoder:
    """Finished traces -> the bytes of one ExportTraceServiceRequest."""

    def __init__(self, resource: Resource, offset_ns: int) -> None:
        self.offset_ns = offset_ns
        # The resource and scope as the SDK encodes them, from a request with one span.
        probe = ReadableSpan(
            name="probe",
            context=SpanContext(1, 1, False, _SAMPLED),
            resource=resource,
            instrumentation_scope=SCOPE,
        )
        (resource_spans,) = encode_spans([probe]).resource_spans
        (scope_spans,) = resource_spans.scope_spans
        self._resource = _field(0x0A, resource_spans.resource.SerializeToString())
        schema = resource_spans.schema_url
        self._resource_schema = _text(0x1A, schema) if schema else b""
        self._scope = _field(0x0A, scope_spans.scope.SerializeToString())
        schema = scope_spans.schema_url
        self._scope_schema = _text(0x1A, schema) if schema else b""
        # Span.events: (the entry's tag, length and the time's tag; the name field).
        self._events = []
        for name, slot in _PHASES:
            named = _text(0x12, name)
            head = b"\x5a" + _varint(9 + len(named)) + b"\x09"
            self._events.append((slot, head, named))
        self._names: dict[str, bytes] = {}
        self._pairs: dict[tuple[str, str], bytes] = {}

    def request(self, traces: list[RequestTrace]) -> bytes:
        spans: list[bytes] = []
        for trace in traces:
            self._spans(trace, None, _state(trace), trace.end_ns, spans)
        scope_spans = self._scope + b"".join(spans) + self._scope_schema
        resource_spans = self._resource + _field(0x12, scope_spans) + self._resource_schema
        return _field(0x0A, resource_spans)

    def _spans(
        self,
        trace: RequestTrace,
        parent_span_id: int | None,
        state: bytes,
        root_end_ns: int,
        out: list[bytes],
    ) -> None:
        step = parent_span_id is not None
        remote = not step and isinstance(trace.parent, Parent)
        if remote:
            assert isinstance(trace.parent, Parent)
            parent_span_id = trace.parent.span_id
        off = self.offset_ns
        parts = [
            b"\x0a\x10",
            trace.trace_id.to_bytes(16, "big"),
            b"\x12\x08",
            trace.span_id.to_bytes(8, "big"),
            state,
        ]
        if parent_span_id is not None:
            parts += (b"\x22\x08", parent_span_id.to_bytes(8, "big"))
        parts += (
            self._name(trace.model if step else ROOT_NAME, _INTERNAL if step else _SERVER),
            b"\x39",
            _fixed64(trace.start_ns + off),
            b"\x41",
            _fixed64((trace.end_ns or root_end_ns) + off),
            self._pair("triton.model_name", trace.model),
            self._pair("triton.model_version", trace.version),
            _key_value("triton.request_id", trace.request_id),
            self._pair("conveyor.protocol", trace.protocol),
        )
        if trace.compute_end_ns:
            parts += (
                _key_value("conveyor.batch_size", trace.batch_size),
                _key_value("conveyor.batch_id", trace.batch_id),
            )
            for slot, head, named in self._events:
                parts += (head, _fixed64(getattr(trace, slot) + off), named)
        if trace.error:
            parts.append(_field(0x7A, _text(0x12, trace.error) + b"\x18\x02"))
        else:
            parts.append(_UNSET_STATUS)
        parts.append(_REMOTE_FLAGS if remote else _LOCAL_FLAGS)
        out.append(_field(0x12, b"".join(parts)))
        for child in trace.children:
            self._spans(child, trace.span_id, state, root_end_ns, out)

    def _name(self, name: str, kind: int) -> bytes:
        """Span.name and Span.kind (a step's name is its model's: a few distinct ones)."""
        key = f"{kind}{name}"
        encoded = self._names.get(key)
        if encoded is None:
            encoded = self._names[key] = _text(0x2A, name) + b"\x30" + _varint(kind)
        return encoded

    def _pair(self, key: str, value: str) -> bytes:
        encoded = self._pairs.get((key, value))
        if encoded is None:
            encoded = _key_value(key, value)
            if len(self._pairs) < 10_000:  # model names and versions: a bounded set
                self._pairs[(key, value)] = encoded
        return encoded


def _state(trace: RequestTrace) -> bytes:
    """Span.trace_state of every span of a trace: the caller's `tracestate`, as the SDK
    parses and writes it."""
    header = _tracestate(trace)
    if header is None:
        return b""
    text = ",".join(f"{key}={value}" for key, value in header.items())
    return _text(0x1A, text) if text else b""


# -- the SDK's spans of a trace ------------------------------------------------------------


def readable_spans(trace: RequestTrace, otlp: Any) -> list[ReadableSpan]:
    """The spans of a root trace and its steps, as the SDK's ReadableSpans."""
    out: list[ReadableSpan] = []
    _readable(trace, None, trace.end_ns, otlp.resource, otlp.offset_ns, out)
    return out


def _readable(
    trace: RequestTrace,
    parent: SpanContext | None,
    root_end_ns: int,
    resource: Resource,
    off: int,
    out: list[ReadableSpan],
) -> None:
    context = SpanContext(trace.trace_id, trace.span_id, False, _SAMPLED, _tracestate(trace))
    if parent is None and isinstance(trace.parent, Parent):
        parent = SpanContext(trace.trace_id, trace.parent.span_id, True, _SAMPLED)
    attributes: dict[str, str | int] = {
        "triton.model_name": trace.model,
        "triton.model_version": trace.version,
        "triton.request_id": trace.request_id,
        "conveyor.protocol": trace.protocol,
    }
    events: list[Event] = []
    if trace.compute_end_ns:
        attributes["conveyor.batch_size"] = trace.batch_size
        attributes["conveyor.batch_id"] = trace.batch_id
        events = [Event(name, None, getattr(trace, slot) + off) for name, slot in _PHASES]
    step = isinstance(trace.parent, RequestTrace)
    out.append(
        ReadableSpan(
            name=trace.model if step else ROOT_NAME,
            context=context,
            parent=parent,
            resource=resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.INTERNAL if step else SpanKind.SERVER,
            status=Status(StatusCode.ERROR, trace.error) if trace.error else _OK,
            start_time=trace.start_ns + off,
            end_time=(trace.end_ns or root_end_ns) + off,
            instrumentation_scope=SCOPE,
        )
    )
    for child in trace.children:
        _readable(child, context, root_end_ns, resource, off, out)


def _tracestate(trace: RequestTrace) -> TraceState | None:
    root = trace
    while isinstance(root.parent, RequestTrace):
        root = root.parent
    if isinstance(root.parent, Parent) and root.parent.tracestate:
        return TraceState.from_header([root.parent.tracestate])
    return None
