"""Finished request traces as OpenTelemetry spans, exported as OTLP over HTTP (protobuf).

Imported only when tracing turns on: the SDK is the `trace` extra. The SDK's
BatchSpanProcessor queues the spans (a full queue drops them, it never blocks a request)
and its thread encodes and posts them in batches, off the request path.

Each request is one span, `InferRequest` (kind SERVER, the caller's span as parent when the
request carried a `traceparent`), with Triton's timestamp names as events: QUEUE_START,
COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END. An ensemble's steps
are child spans named after their models, with the same events.
"""

from __future__ import annotations

import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from runtime import __version__
from runtime.monitoring.tracing import Parent, RequestTrace, TraceConfig

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


class OtlpExporter:
    """RequestTraces -> spans -> the SDK's BatchSpanProcessor -> OTLP/HTTP."""

    def __init__(self, config: TraceConfig) -> None:
        # Resource.create adds OTEL_RESOURCE_ATTRIBUTES and the SDK's own attributes.
        self.resource = Resource.create(config.resource_attributes())
        self.processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=config.url),
            max_queue_size=config.bsp_max_queue_size,
            schedule_delay_millis=config.bsp_schedule_delay_ms,
            max_export_batch_size=config.bsp_max_export_batch_size,
        )
        # Monotonic phase times to the wall clock that spans carry.
        self.offset_ns = time.time_ns() - time.monotonic_ns()

    def export(self, trace: RequestTrace) -> None:
        """Queue the spans of a finished root trace and of its steps."""
        self._queue(trace, None, trace.end_ns)

    def _queue(self, trace: RequestTrace, parent: SpanContext | None, root_end_ns: int) -> None:
        context = SpanContext(trace.trace_id, trace.span_id, False, _SAMPLED, _state(trace))
        if parent is None and isinstance(trace.parent, Parent):
            parent = SpanContext(trace.trace_id, trace.parent.span_id, True, _SAMPLED)
        off = self.offset_ns
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
        span = ReadableSpan(
            name=trace.model if step else "InferRequest",
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            events=events,
            kind=SpanKind.INTERNAL if step else SpanKind.SERVER,
            status=Status(StatusCode.ERROR, trace.error) if trace.error else _OK,
            start_time=trace.start_ns + off,
            end_time=(trace.end_ns or root_end_ns) + off,
            instrumentation_scope=SCOPE,
        )
        self.processor.on_end(span)
        for child in trace.children:
            self._queue(child, context, root_end_ns)

    def close(self, timeout_s: float) -> None:
        """Send what is queued (within `timeout_s`), then stop the export thread."""
        self.processor.force_flush(int(timeout_s * 1000))
        self.processor.shutdown()  # type: ignore[no-untyped-call]


def _state(trace: RequestTrace) -> TraceState | None:
    root = trace
    while isinstance(root.parent, RequestTrace):
        root = root.parent
    if isinstance(root.parent, Parent) and root.parent.tracestate:
        return TraceState.from_header([root.parent.tracestate])
    return None
