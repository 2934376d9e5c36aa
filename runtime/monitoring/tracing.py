"""Request tracing: Triton's trace settings and sampling, W3C trace context, OpenTelemetry spans.

The settings are Triton's trace extension (`trace_level`, `trace_rate`, `trace_count`,
global and per model, string values). Sampling comes first: while no setting traces, an
adapter pays one attribute check (`Tracing.on`); a request that is not sampled pays a
counter. A sampled request carries a `RequestTrace` whose phases are plain integers, filled
by the batcher; its spans are built once, when the request ends, and exported off the request
path by the OpenTelemetry SDK (runtime/monitoring/otel.py, imported when tracing first turns
on: the SDK is the `trace` extra).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from runtime.errors import InvalidInput, ServingError, Unsupported
from runtime.events import BatchDone

log = logging.getLogger(__name__)

LEVELS = ("OFF", "TIMESTAMPS")
DEFAULT_URL = "http://localhost:4318/v1/traces"
DEFAULT_SERVICE_NAME = "conveyor"
# What a request's trace context arrives in: HTTP headers, gRPC metadata (lower case).
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# The settings Triton's trace extension changes at run time, and those fixed at start.
SETTINGS = ("trace_level", "trace_rate", "trace_count")
_OTEL_OPTIONS = (
    "url",
    "resource",
    "bsp_max_queue_size",
    "bsp_schedule_delay",
    "bsp_max_export_batch_size",
)
FIXED = ("trace_mode", *_OTEL_OPTIONS)
_HEX = frozenset("0123456789abcdef")


# -- start settings: --trace-config --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """What `--trace-config` sets at start; the bsp_* left None fall to the SDK's OTEL_BSP_*."""

    level: str = "OFF"
    rate: int = 1000
    count: int = -1
    url: str = DEFAULT_URL
    resource: tuple[tuple[str, str], ...] = ()
    bsp_max_queue_size: int | None = None
    bsp_schedule_delay_ms: int | None = None
    bsp_max_export_batch_size: int | None = None

    @classmethod
    def parse(cls, specs: Sequence[str]) -> TraceConfig:
        """Triton's `<setting>=<value>` and `opentelemetry,<setting>=<value>` specs, in order."""
        config = cls()
        for spec in specs:
            config = config._with(spec)
        queue, batch = config.bsp_max_queue_size, config.bsp_max_export_batch_size
        if queue is not None and batch is not None and batch > queue:
            raise ValueError(
                f"--trace-config opentelemetry,bsp_max_export_batch_size={batch} must be at "
                f"most bsp_max_queue_size={queue}"
            )
        return config

    def _with(self, spec: str) -> TraceConfig:
        head, comma, tail = spec.partition(",")
        mode, setting = (head, tail) if comma and "=" not in head else ("", spec)
        name, eq, value = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or mode not in ("", "opentelemetry", "triton"):
            raise ValueError(
                f'Bad option: "--trace-config {spec}": expected <setting>=<value> or '
                "opentelemetry,<setting>=<value>"
            )
        if mode == "triton" or (not mode and name in ("file", "log_frequency")):
            raise ValueError(
                f'"--trace-config {spec}": Triton\'s trace files are not supported; '
                "Conveyor traces with OpenTelemetry (mode=opentelemetry)"
            )
        if mode == "opentelemetry" or name in _OTEL_OPTIONS:
            return self._otel(spec, name, value)
        if name == "mode":
            if value != "opentelemetry":
                raise ValueError(f'"--trace-config {spec}": the only trace mode is opentelemetry')
            return self
        if name == "level":
            return replace(self, level=parse_level([value], f"--trace-config {spec}"))
        if name == "rate":
            return replace(self, rate=_integer(value, f"--trace-config {spec}", name))
        if name == "count":
            return replace(self, count=_integer(value, f"--trace-config {spec}", name))
        raise ValueError(
            f'Bad option: "--trace-config {spec}": expected one of mode, level, rate, '
            f"count, or opentelemetry,{{{','.join(_OTEL_OPTIONS)}}}"
        )

    def _otel(self, spec: str, name: str, value: str) -> TraceConfig:
        where = f"--trace-config {spec}"
        if name == "url":
            if not value.startswith(("http://", "https://")):
                raise ValueError(f"{where}: expected an http:// or https:// OTLP/HTTP endpoint")
            return replace(self, url=value)
        if name == "resource":
            key, eq, attr = value.partition("=")
            if not eq or not key:
                raise ValueError(f"{where}: expected resource=<key>=<value>")
            return replace(self, resource=(*self.resource, (key, attr)))
        if name == "bsp_max_queue_size":
            return replace(self, bsp_max_queue_size=_positive(value, where))
        if name == "bsp_max_export_batch_size":
            return replace(self, bsp_max_export_batch_size=_positive(value, where))
        if name == "bsp_schedule_delay":
            return replace(self, bsp_schedule_delay_ms=_positive(value, where))
        raise ValueError(
            f'Bad option: "{where}": expected opentelemetry,<setting> with one of '
            f"{', '.join(_OTEL_OPTIONS)}"
        )

    def fixed_settings(self) -> dict[str, str]:
        """The start-only settings as Triton shows them in OpenTelemetry mode."""
        shown = {"trace_mode": "opentelemetry", "url": self.url}
        shown["resource"] = ",".join(f"{k}={v}" for k, v in self.resource_attributes().items())
        for name, value in (
            ("bsp_max_queue_size", self.bsp_max_queue_size),
            ("bsp_schedule_delay", self.bsp_schedule_delay_ms),
            ("bsp_max_export_batch_size", self.bsp_max_export_batch_size),
        ):
            if value is not None:
                shown[name] = str(value)
        return shown

    def resource_attributes(self) -> dict[str, str]:
        return {"service.name": DEFAULT_SERVICE_NAME, **dict(self.resource)}


def trace_spec(text: str) -> str:
    """One `--trace-config` value, checked alone as the command line is parsed."""
    TraceConfig.parse([text])
    return text


def _integer(value: str, where: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -2
    if number < (-1 if name == "count" else 0):
        floor = "-1 (no limit) or more" if name == "count" else "0 or more"
        raise ValueError(f"{where}: expected a whole number of {floor}, got '{value}'")
    return number


def _positive(value: str, where: str) -> int:
    number = _integer(value, where, "rate")
    if number == 0:
        raise ValueError(f"{where}: expected a whole number above 0, got '{value}'")
    return number


def parse_level(values: Sequence[object], where: str) -> str:
    """Triton's trace_level list: ["OFF"] or ["TIMESTAMPS"] (TENSORS is not traced here)."""
    levels = [v for v in values if v != ""]
    if not levels or not all(isinstance(v, str) for v in levels):
        raise ValueError(f"{where}: expected a list of trace levels, one of {list(LEVELS)}")
    unknown = [v for v in levels if v not in LEVELS]
    if unknown:
        raise ValueError(
            f"{where}: unsupported trace level {unknown[0]!r}; expected {list(LEVELS)}"
            " (OpenTelemetry traces carry no TENSORS)"
        )
    if "OFF" in levels and len(set(levels)) > 1:
        raise ValueError(f"{where}: Expect only one trace level 'OFF' is specified")
    return str(levels[0])


# -- W3C trace context ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Parent:
    """A caller's span, from a W3C `traceparent` (and its `tracestate`)."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: str = ""


def parse_traceparent(value: str | None, tracestate: str | None = None) -> Parent | None:
    """The caller's span from `traceparent`, or None where it is missing or invalid (W3C)."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4:
        return None
    version, trace_hex, span_hex, flags = parts[:4]
    if (len(version), len(trace_hex), len(span_hex), len(flags)) != (2, 32, 16, 2):
        return None
    if not _HEX.issuperset(version + trace_hex + span_hex + flags) or version == "ff":
        return None
    if version == "00" and len(parts) != 4:
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return Parent(trace_id, span_id, bool(int(flags, 16) & 1), tracestate or "")


# -- one traced request ----------------------------------------------------------------------


class Exporter(Protocol):
    """Where finished traces go (runtime/monitoring/otel.py: the OpenTelemetry SDK)."""

    def export(self, trace: RequestTrace) -> None: ...

    def close(self, timeout_s: float) -> None: ...


class RequestTrace:
    """One sampled request (or ensemble step): ids and phase times in monotonic ns.

    A root trace exports itself and its steps' traces when it ends.
    """

    __slots__ = (
        "batch_id",
        "batch_size",
        "children",
        "compute_end_ns",
        "compute_ns",
        "end_ns",
        "error",
        "exporter",
        "input_end_ns",
        "model",
        "output_start_ns",
        "parent",
        "protocol",
        "queue_ns",
        "request_id",
        "span_id",
        "start_ns",
        "trace_id",
        "version",
    )

    def __init__(
        self,
        exporter: Exporter,
        model: str,
        protocol: str,
        request_id: str,
        start_ns: int,
        trace_id: int,
        parent: Parent | RequestTrace | None,
    ) -> None:
        self.exporter = exporter
        self.model = model
        self.version = ""
        self.protocol = protocol
        self.request_id = request_id
        self.start_ns = start_ns
        self.trace_id = trace_id
        self.span_id = _ids.getrandbits(64) or 1
        self.parent = parent
        self.children: list[RequestTrace] = []
        self.end_ns = self.queue_ns = self.compute_ns = self.input_end_ns = 0
        self.output_start_ns = self.compute_end_ns = 0
        self.batch_size = self.batch_id = 0
        self.error = ""

    @property
    def trace_id_hex(self) -> str:
        return format(self.trace_id, "032x")

    def child(self, model: str) -> RequestTrace:
        """The trace of a step this request runs (an ensemble's), starting now."""
        step = RequestTrace(
            self.exporter,
            model,
            self.protocol,
            self.request_id,
            time.monotonic_ns(),
            self.trace_id,
            self,
        )
        self.children.append(step)
        return step

    def ran(self, enqueued_ns: int, batch: BatchDone, batch_id: int) -> None:
        """The batch this request ran in was answered (the batcher calls it, on the loop)."""
        end = time.monotonic_ns()
        self.queue_ns = enqueued_ns
        self.compute_ns = batch.dispatched_ns or end
        self.input_end_ns = self.compute_ns + batch.input_ns
        self.output_start_ns = end - batch.output_ns
        self.compute_end_ns = end
        self.batch_size = batch.size
        self.batch_id = batch_id

    def end(self, version: str, error: BaseException | None = None) -> None:
        """The request is answered; a root trace goes to the exporter with its steps."""
        self.end_ns = time.monotonic_ns()
        self.version = version
        if error is not None:
            self.error = error.message if isinstance(error, ServingError) else type(error).__name__
        if not isinstance(self.parent, RequestTrace):
            try:
                self.exporter.export(self)
            except Exception:  # a trace never fails the request it traced
                log.exception("a trace could not be exported")


# Span and trace ids: random, as OpenTelemetry's own RandomIdGenerator draws them.
_ids = random.Random()


# -- the settings and the sampling decision --------------------------------------------------


class _Scope:
    """The trace settings of one scope: global (every setting) or a model (those it set)."""

    __slots__ = ("own", "seen")

    def __init__(self, own: dict[str, Any]) -> None:
        self.own = own
        self.seen = 0  # requests counted towards the next rate-sampled one


class Tracing:
    """Triton's trace settings, global and per model, and which requests are traced.

    Requests are sampled 1 in `trace_rate` while `trace_count` lasts (-1: no limit); a
    request whose `traceparent` says its caller sampled it is traced in the caller's trace
    whatever the rate, while the rate is above 0 and the count lasts. `trace_rate` "0" or
    `trace_level` ["OFF"] stops tracing at once.
    """

    def __init__(self, config: TraceConfig | None = None, exporter: Exporter | None = None) -> None:
        self.config = config or TraceConfig()
        c = self.config
        self._global = _Scope(
            {"trace_level": c.level, "trace_rate": c.rate, "trace_count": c.count}
        )
        self._models: dict[str, _Scope] = {}
        # Opened as tracing first turns on, unless given (tests).
        self._exporter = exporter
        # Whether any scope traces now: the one check an untraced request pays.
        self.on = False
        self._refresh()
        if self.on and self._exporter is None:
            self._exporter = _open_exporter(self.config)

    # -- sampling (on the request path, only while `on`) ------------------------------------

    def start(
        self,
        model: str,
        carrier: Mapping[str, str],
        received_ns: int,
        protocol: str,
        request_id: str,
    ) -> RequestTrace | None:
        """A trace for this request if it is sampled; `carrier`: headers or metadata."""
        scope = self._models.get(model, self._global)
        level, rate = self._value(scope, "trace_level"), self._value(scope, "trace_rate")
        if level == "OFF" or rate == 0 or self._exporter is None:
            return None
        parent = parse_traceparent(carrier.get(TRACEPARENT), carrier.get(TRACESTATE))
        if parent is None or not parent.sampled:
            scope.seen += 1
            if scope.seen < rate:
                return None
            scope.seen = 0
        budget = scope if "trace_count" in scope.own else self._global
        count = budget.own["trace_count"]
        if count == 0:
            return None
        if count > 0:
            budget.own["trace_count"] = count - 1
            if count == 1:
                self._refresh()
        trace_id = parent.trace_id if parent is not None else _ids.getrandbits(128) or 1
        return RequestTrace(
            self._exporter,
            model,
            protocol,
            request_id,
            received_ns or time.monotonic_ns(),
            trace_id,
            parent,
        )

    def _value(self, scope: _Scope, key: str) -> Any:
        own = scope.own.get(key)
        return self._global.own[key] if own is None else own

    def _refresh(self) -> None:
        self.on = any(self._traces(s) for s in (self._global, *self._models.values()))

    def _traces(self, scope: _Scope) -> bool:
        level, rate, count = (self._value(scope, k) for k in SETTINGS)
        return bool(level != "OFF" and rate != 0 and count != 0)

    # -- the trace extension ------------------------------------------------------------

    def settings(self, model: str = "") -> dict[str, Any]:
        """Every setting of a scope as Triton shows them: strings, trace_level a list."""
        scope = self._models.get(model, self._global) if model else self._global
        shown: dict[str, Any] = {
            "trace_level": [self._value(scope, "trace_level")],
            "trace_rate": str(self._value(scope, "trace_rate")),
            "trace_count": str(self._value(scope, "trace_count")),
        }
        return {**shown, **self.config.fixed_settings()}

    async def update(self, model: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a POST of settings (JSON null clears a model's own one); all settings back.

        Turning tracing on for the first time loads the OpenTelemetry SDK, off the loop.
        """
        parsed = {key: _setting(key, value, model) for key, value in changes.items()}
        if model:
            scope = self._models.get(model)
            if scope is None:  # Triton: a model's first settings start as a copy of the global
                scope = _Scope(dict(self._global.own))
            own = {**scope.own, **parsed}
            scope_after = _Scope({k: v for k, v in own.items() if v is not None})
            scope_after.seen = scope.seen
            if self._traces(scope_after):
                await self._ensure_exporter()
            self._models[model] = scope_after
        else:
            own = {**self._global.own, **parsed}
            if self._traces(_Scope(own)):
                await self._ensure_exporter()
            self._global.own = own
        self._refresh()
        return self.settings(model)

    async def _ensure_exporter(self) -> None:
        if self._exporter is None:
            self._exporter = await asyncio.to_thread(_open_exporter, self.config)

    def close(self, timeout_s: float) -> None:
        """Stop tracing and send what is queued, within `timeout_s` (blocking)."""
        self.on = False
        if self._exporter is not None:
            self._exporter.close(timeout_s)


def _setting(key: str, value: Any, model: str) -> Any:
    """One posted setting, checked: its parsed value, or None to clear a model's own."""
    if key in FIXED or key in ("log_frequency", "trace_file"):
        raise InvalidInput(_fixed_message(key))
    if key not in SETTINGS:
        raise InvalidInput(f"unknown trace setting '{key}'; expected one of {', '.join(SETTINGS)}")
    if value is None:
        if not model:
            raise InvalidInput(
                f"trace setting '{key}' cannot be cleared (null) globally; null clears a "
                "model's own setting, so that the global one applies"
            )
        return None
    where = f"trace setting '{key}'"
    try:
        if key == "trace_level":
            return parse_level(value if isinstance(value, list) else [value], where)
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"{where}: expected a whole number as a string, got {value!r}")
        return _integer(str(value), where, key.removeprefix("trace_"))
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _fixed_message(key: str) -> str:
    if key == "trace_file":
        return (
            "trace setting 'trace_file': trace file location can not be updated through "
            "network protocol"
        )
    if key == "log_frequency":
        return (
            "trace setting 'log_frequency' applies to Triton's trace files; this server "
            "traces with OpenTelemetry (trace_mode 'opentelemetry')"
        )
    return (
        f"trace setting '{key}' is fixed at start (--trace-config); it can not be updated "
        "through network protocol"
    )


def _open_exporter(config: TraceConfig) -> Exporter:
    try:
        from runtime.monitoring import otel
    except ImportError as exc:
        raise Unsupported(
            f"tracing needs the OpenTelemetry SDK ({exc}); install the `trace` extra: "
            "pip install 'conveyor-serve[trace]'"
        ) from None
    return otel.OtlpExporter(config)
