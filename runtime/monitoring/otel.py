"""Finished request traces as OpenTelemetry spans, exported as OTLP over HTTP (protobuf).

Imported only when tracing turns on: the SDK is the `trace` extra.

Each request is one span, `InferRequest` (kind SERVER, the caller's span as parent when the
request carried a `traceparent`), with Triton's timestamp names as events: QUEUE_START,
COMPUTE_START, COMPUTE_INPUT_END, COMPUTE_OUTPUT_START, COMPUTE_END. An ensemble's steps
are child spans named after their models, with the same events.

How they leave: from another process. On the event loop a finished trace becomes plain
records (a tuple per span) and joins a batch; a full batch, or the batch delay, sends it
pickled down a pipe (a writer thread does the write) to an export process,
`python -m runtime.monitoring.otel`, which encodes each batch as one
ExportTraceServiceRequest and posts it with the SDK's OTLP exporter's HTTP client (its
OTEL_EXPORTER_OTLP_* settings, compression and retries). The SDK gives the Resource there
(OTEL_RESOURCE_ATTRIBUTES and its own attributes) and encodes the resource and scope, once.
The batch settings are the SDK's BatchSpanProcessor's, with its OTEL_BSP_* defaults; a full
queue drops traces, it never holds a request.

Why not the SDK's own span objects, processor and encoder in this process (measured on a
2-core machine, BENCHMARKS.md, "Tracing"): building a ReadableSpan on the loop cost 7 µs,
and the SDK's encoder 36 µs a span, in a thread that takes the GIL whenever the loop
releases it (an ONNX Runtime run does) and keeps it up to the switch interval; tracing
every request over HTTP cost 40% of the throughput. An export thread with a faster
encoder still cost 34%: the GIL hand-overs were the cost. Here this process pays about
3.5 µs a span and shares no interpreter with the exporting, which runs at a lower
priority (NICE). The encoder writes the protobuf
wire format directly (the SDK's costs 36 µs a span), with what every span shares (field
tags, event names, attribute pairs that repeat) encoded once. `readable_spans` makes the
SDK's spans of the same records: the tests check this encoding against the SDK's encoder,
and the export process falls back to them where the exporter's client is not the one
this module expects (another SDK version).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, NamedTuple

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
PHASES = ("QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
          "COMPUTE_END")  # fmt: skip
ROOT_NAME = "InferRequest"
# The SDK's BatchSpanProcessor defaults, where neither --trace-config nor OTEL_BSP_* set one.
_BSP_DEFAULTS = {
    OTEL_BSP_MAX_QUEUE_SIZE: 2048,
    OTEL_BSP_SCHEDULE_DELAY: 5000,
    OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 512,
}
_LENGTH = struct.Struct("<I")
RESTART_AFTER_S = 10.0
# The export process's niceness: under CPU contention the requests go first, and traces
# the process cannot keep up with wait in the queue, which drops them when full (counted,
# and logged once), as the SDK's processor does; they never hold a request.
NICE = 10


class SpanRecord(NamedTuple):
    """One span as it crosses to the export process; times are wall-clock ns."""

    trace_id: int
    span_id: int
    parent_span_id: int  # 0: none
    remote_parent: bool  # the parent is the caller's span (from its traceparent)
    tracestate: str  # the caller's `tracestate` header, as it came
    step: bool  # an ensemble's step (INTERNAL, named after its model), else the request
    model: str
    version: str
    request_id: str
    protocol: str
    start_ns: int
    end_ns: int
    batch_size: int
    batch_id: int
    phases: tuple[int, ...]  # the five PHASES' times, or () when the request never ran
    error: str


def records(trace: RequestTrace, offset_ns: int) -> list[tuple[object, ...]]:
    """The spans of a finished root trace and of its steps, with monotonic times made wall:
    SpanRecord's fields as plain tuples (a third of the pickling cost of named ones); the
    export process makes them SpanRecords again."""
    out: list[tuple[object, ...]] = []
    root = trace.parent
    caller = root if isinstance(root, Parent) else None
    _records(trace, caller, caller.tracestate if caller else "", trace.end_ns, offset_ns, out)
    return out


def _records(
    trace: RequestTrace,
    caller: Parent | None,
    state: str,
    root_end_ns: int,
    off: int,
    out: list[tuple[object, ...]],
) -> None:
    step = isinstance(trace.parent, RequestTrace)
    if step:
        assert isinstance(trace.parent, RequestTrace)
        parent_span_id = trace.parent.span_id
    else:
        parent_span_id = caller.span_id if caller is not None else 0
    phases: tuple[int, ...] = ()
    if trace.compute_end_ns:
        phases = (
            trace.queue_ns + off,
            trace.compute_ns + off,
            trace.input_end_ns + off,
            trace.output_start_ns + off,
            trace.compute_end_ns + off,
        )
    out.append(
        (
            trace.trace_id,
            trace.span_id,
            parent_span_id,
            not step and caller is not None,
            state,
            step,
            trace.model,
            trace.version,
            trace.request_id,
            trace.protocol,
            trace.start_ns + off,
            (trace.end_ns or root_end_ns) + off,
            trace.batch_size,
            trace.batch_id,
            phases,
            trace.error,
        )
    )
    for child in trace.children:
        _records(child, caller, state, root_end_ns, off, out)


def span_records(trace: RequestTrace, offset_ns: int) -> list[SpanRecord]:
    """`records` as SpanRecords."""
    return [SpanRecord._make(r) for r in records(trace, offset_ns)]


class BatchSettings(NamedTuple):
    max_queue: int
    batch: int
    delay_s: float

    @classmethod
    def of(cls, config: TraceConfig) -> BatchSettings:
        return cls(
            _setting(config.bsp_max_queue_size, OTEL_BSP_MAX_QUEUE_SIZE),
            _setting(config.bsp_max_export_batch_size, OTEL_BSP_MAX_EXPORT_BATCH_SIZE),
            _setting(config.bsp_schedule_delay_ms, OTEL_BSP_SCHEDULE_DELAY) / 1000,
        )


def _setting(value: int | None, env: str) -> int:
    if value is not None:
        return value
    try:
        return int(os.environ.get(env, _BSP_DEFAULTS[env]))
    except ValueError:
        return _BSP_DEFAULTS[env]


class OtlpExporter:
    """RequestTraces -> batches of SpanRecords -> the export process, through a pipe."""

    def __init__(self, config: TraceConfig) -> None:
        self.config = config
        self.settings = BatchSettings.of(config)
        # Monotonic phase times to the wall clock that spans carry.
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self.dropped = 0
        self._pending: list[tuple[object, ...]] = []
        # Records handed to the writer and not yet written: with _pending, the queue the
        # SDK's max_queue_size bounds.
        self._queued = 0
        self._batches: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._process: subprocess.Popen[bytes] | None = None
        self._started_s = 0.0
        self._start_process()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # _pending: the loop appends, the timer flushes
        self._writer = threading.Thread(target=self._write, name="otlp-pipe", daemon=True)
        self._writer.start()

    # -- on the event loop ------------------------------------------------------------------

    def export(self, trace: RequestTrace) -> None:
        """Queue a finished root trace (with its steps)."""
        if len(self._pending) + self._queued >= self.settings.max_queue:
            if not self.dropped:
                log.warning("the trace export queue is full; traces are being dropped")
            self.dropped += 1
            return
        spans = records(trace, self.offset_ns)
        with self._lock:
            self._pending += spans
            first = len(self._pending) == len(spans)
            full = len(self._pending) >= self.settings.batch
        if full:
            self.flush()
        elif first:
            self._arm()

    def _arm(self) -> None:
        """The batch delay starts with a batch's first trace (a timer thread, not the loop:
        export may be called where no loop runs)."""
        timer = threading.Timer(self.settings.delay_s, self.flush)
        timer.daemon = True
        self._timer = timer
        timer.start()

    def flush(self) -> None:
        """Send the pending records down the pipe (pickled here, written by the writer)."""
        with self._lock:
            batch, self._pending = self._pending, []
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if batch:
            self._queued += len(batch)
            self._batches.put((len(batch), pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)))

    def close(self, timeout_s: float) -> None:
        """Send what is queued, then end the export process (within `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        self.flush()
        self._batches.put(None)
        self._writer.join(timeout_s)
        process = self._process
        if process is None:
            return
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("the trace export process did not finish in %.1f s; stopped", timeout_s)
            process.kill()
            process.wait()

    # -- the writer thread ------------------------------------------------------------------

    def _write(self) -> None:
        while (item := self._batches.get()) is not None:
            count, data = item
            try:
                self._send(data)
            except OSError as exc:
                log.error("the trace export process is gone (%s); traces are dropped", exc)
                self._restart()
            finally:
                self._queued -= count
        process = self._process
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _send(self, data: bytes) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise BrokenPipeError("no export process")
        process.stdin.write(_LENGTH.pack(len(data)) + data)
        process.stdin.flush()

    def _start_process(self) -> None:
        spec = {
            "url": self.config.url,
            "resource": self.config.resource_attributes(),
        }
        self._started_s = time.monotonic()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "runtime.monitoring.otel", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )

    def _restart(self) -> None:
        if time.monotonic() - self._started_s < RESTART_AFTER_S:
            return  # at most one start in RESTART_AFTER_S; batches meanwhile are dropped
        process = self._process
        if process is not None:
            process.kill()
            process.wait()
        self._start_process()


# -- the export process -----------------------------------------------------------------------


class Sender:
    """Batches of SpanRecords -> one OTLP request each -> the collector."""

    def __init__(self, url: str, resource: Resource) -> None:
        self.resource = resource
        self.exporter = OTLPSpanExporter(endpoint=url)
        self.encoder = Encoder(resource)
        # The exporter's HTTP client, which takes encoded requests (a private part of the
        # SDK's exporter, pinned by the lock); without it, batches go through the SDK's
        # own spans and encoder.
        client = getattr(self.exporter, "_client", None)
        self.post = getattr(client, "export", None)

    def send(self, batch: list[SpanRecord]) -> None:
        if self.post is None:
            self.exporter.export(readable_spans(batch, self.resource))
            return
        result = self.post(self.encoder.request(batch))
        if not getattr(result, "success", True):
            log.warning("the trace collector refused %d spans: %s", len(batch), result.error)

    def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]


def read_batches(stream: IO[bytes]) -> Iterator[list[SpanRecord]]:
    """Length-prefixed pickled batches until the stream ends."""
    while len(head := stream.read(_LENGTH.size)) == _LENGTH.size:
        (size,) = _LENGTH.unpack(head)
        data = stream.read(size)
        if len(data) < size:
            return
        yield [SpanRecord._make(r) for r in pickle.loads(data)]


def main(argv: list[str]) -> None:
    """The export process: batches from stdin until it closes, then exit."""
    # The server ends this process by closing the pipe, after its last batch; a signal to
    # the whole process group (Ctrl-C) must not lose what is still on its way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.nice(NICE)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(argv[0])
    sender = Sender(spec["url"], Resource.create(spec["resource"]))
    for batch in read_batches(sys.stdin.buffer):
        try:
            sender.send(batch)
        except Exception:
            log.exception("a batch of %d spans could not be exported", len(batch))
    sender.close()


# -- OTLP protobuf, written directly -----------------------------------------------------------
# Field numbers and types from opentelemetry/proto/trace/v1/trace.proto and common.proto.

_fixed32 = struct.Struct("<I").pack
_SMALL = [bytes([n]) for n in range(128)]
# Span.flags (fixed32, field 16): the SDK's SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, with
# SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK when the parent is remote (a caller's span).
_LOCAL_FLAGS = b"\x85\x01" + _fixed32(0x100)
_REMOTE_FLAGS = b"\x85\x01" + _fixed32(0x300)
_UNSET_STATUS = b"\x7a\x00"  # Span.status: an empty Status (code UNSET), as the SDK sends
_SERVER, _INTERNAL = 2, 1  # Span.SpanKind
_LOW64 = (1 << 64) - 1
_IDS = struct.Struct(">2sQQ2sQ")  # trace_id (16 bytes, two halves) and span_id, big-endian
_PARENT = struct.Struct(">2sQ")  # parent_span_id
_TIMES = struct.Struct("<cQcQ")  # start_time_unix_nano and end_time_unix_nano, fixed64


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


def _key_field(key: str) -> bytes:
    return _text(0x0A, key)


_REQUEST_ID = _key_field("triton.request_id")
_BATCH_SIZE = _key_field("conveyor.batch_size")
_BATCH_ID = _key_field("conveyor.batch_id")


def _attribute(key_field: bytes, tag: bytes, value: bytes) -> bytes:
    """A Span.attributes entry from its encoded key and one AnyValue field: string_value
    (tag 0x0A, `value` the UTF-8 bytes) or int_value (tag 0x18, `value` the varint)."""
    any_value = tag + _varint(len(value)) + value if tag == b"\x0a" else tag + value
    entry = key_field + b"\x12" + _varint(len(any_value)) + any_value
    return b"\x4a" + _varint(len(entry)) + entry


def _key_value(key: str, value: str | int) -> bytes:
    """KeyValue{key, AnyValue{string_value | int_value}} as a Span.attributes entry."""
    any_value = b"\x18" + _varint(value) if isinstance(value, int) else _text(0x0A, value)
    return _field(0x4A, _text(0x0A, key) + _field(0x12, any_value))


class Encoder:
    """Batches of SpanRecords -> the bytes of one ExportTraceServiceRequest."""

    def __init__(self, resource: Resource) -> None:
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
        # Span.events, packed by one struct: per event, the entry's tag and length with
        # the time's tag, the time, and the name field.
        formats = ["<"]
        self._event_args: list[bytes | int] = []
        for name in PHASES:
            named = _text(0x12, name)
            head = b"\x5a" + _varint(9 + len(named)) + b"\x09"
            formats.append(f"{len(head)}sQ{len(named)}s")
            self._event_args += (head, 0, named)
        self._event_struct = struct.Struct("".join(formats))
        self._commons: dict[tuple[bool, str, str], bytes] = {}
        self._protocols: dict[str, bytes] = {}
        self._states: dict[str, bytes] = {}

    def request(self, batch: list[SpanRecord]) -> bytes:
        spans = b"".join([_field(0x12, self.span(r)) for r in batch])
        scope_spans = self._scope + spans + self._scope_schema
        resource_spans = self._resource + _field(0x12, scope_spans) + self._resource_schema
        return _field(0x0A, resource_spans)

    def span(self, r: SpanRecord) -> bytes:
        tid = r.trace_id
        parts = [_IDS.pack(b"\x0a\x10", tid >> 64, tid & _LOW64, b"\x12\x08", r.span_id)]
        if r.tracestate:
            parts.append(self._state(r.tracestate))
        if r.parent_span_id:
            parts.append(_PARENT.pack(b"\x22\x08", r.parent_span_id))
        parts += (
            self._common(r.step, r.model, r.version),
            _TIMES.pack(b"\x39", r.start_ns, b"\x41", r.end_ns),
            _attribute(_REQUEST_ID, b"\x0a", r.request_id.encode()),
            self._protocol(r.protocol),
        )
        if r.phases:
            parts += (
                _attribute(_BATCH_SIZE, b"\x18", _varint(r.batch_size)),
                _attribute(_BATCH_ID, b"\x18", _varint(r.batch_id)),
            )
            args = self._event_args.copy()
            args[1::3] = r.phases
            parts.append(self._event_struct.pack(*args))
        if r.error:
            parts.append(_field(0x7A, _text(0x12, r.error) + b"\x18\x02"))
        else:
            parts.append(_UNSET_STATUS)
        parts.append(_REMOTE_FLAGS if r.remote_parent else _LOCAL_FLAGS)
        return b"".join(parts)

    def _common(self, step: bool, model: str, version: str) -> bytes:
        """What the spans of one model version share: Span.name, Span.kind and two
        attributes (a bounded set: cached)."""
        key = (step, model, version)
        encoded = self._commons.get(key)
        if encoded is None:
            name, kind = (model, _INTERNAL) if step else (ROOT_NAME, _SERVER)
            encoded = b"".join(
                (
                    _text(0x2A, name),
                    b"\x30",
                    _varint(kind),
                    _key_value("triton.model_name", model),
                    _key_value("triton.model_version", version),
                )
            )
            if len(self._commons) < 10_000:
                self._commons[key] = encoded
        return encoded

    def _protocol(self, protocol: str) -> bytes:
        encoded = self._protocols.get(protocol)
        if encoded is None:
            encoded = self._protocols[protocol] = _key_value("conveyor.protocol", protocol)
        return encoded

    def _state(self, header: str) -> bytes:
        """Span.trace_state: the caller's `tracestate` as the SDK parses and writes it."""
        encoded = self._states.get(header)
        if encoded is None:
            state = TraceState.from_header([header])
            text = ",".join(f"{key}={value}" for key, value in state.items())
            encoded = _text(0x1A, text) if text else b""
            if len(self._states) < 10_000:
                self._states[header] = encoded
        return encoded


# -- the SDK's spans of the same records ---------------------------------------------------------


def readable_spans(batch: list[SpanRecord], resource: Resource) -> list[ReadableSpan]:
    return [_readable(r, resource) for r in batch]


def _readable(r: SpanRecord, resource: Resource) -> ReadableSpan:
    state = TraceState.from_header([r.tracestate]) if r.tracestate else None
    context = SpanContext(r.trace_id, r.span_id, False, _SAMPLED, state)
    parent = None
    if r.parent_span_id:
        parent = SpanContext(r.trace_id, r.parent_span_id, r.remote_parent, _SAMPLED)
    attributes: dict[str, str | int] = {
        "triton.model_name": r.model,
        "triton.model_version": r.version,
        "triton.request_id": r.request_id,
        "conveyor.protocol": r.protocol,
    }
    events: list[Event] = []
    if r.phases:
        attributes["conveyor.batch_size"] = r.batch_size
        attributes["conveyor.batch_id"] = r.batch_id
        events = [Event(name, None, t) for name, t in zip(PHASES, r.phases, strict=True)]
    return ReadableSpan(
        name=r.model if r.step else ROOT_NAME,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=events,
        kind=SpanKind.INTERNAL if r.step else SpanKind.SERVER,
        status=Status(StatusCode.ERROR, r.error) if r.error else _OK,
        start_time=r.start_ns,
        end_time=r.end_ns,
        instrumentation_scope=SCOPE,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
