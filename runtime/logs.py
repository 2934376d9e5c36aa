"""Logging: Triton's logging extension, structured (JSON) logs, request ids and the access log.

`LogSettings` holds what `GET/POST /v2/logging` and gRPC `LogSettings` read and change:
which levels are written and in which format, applied at once to the process's handlers.
`CallLog` is what both protocol adapters tell of each inference call: its request id (the
client's `X-Request-ID` or `triton-request-id`, else one made here), its trace when sampled,
an error line for failures inside the server, and an access line with `--log-requests`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runtime.errors import Code, InvalidInput, ServingError
from runtime.monitoring.tracing import TRACEPARENT, TRACESTATE, RequestTrace, Tracing

log = logging.getLogger("runtime.requests")
access_log = logging.getLogger("runtime.access")

FORMATS = ("default", "ISO8601", "json")
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVEL_SETTINGS = ("log_info", "log_warning", "log_error")
SETTINGS = ("log_file", *LEVEL_SETTINGS, "log_verbose_level", "log_format")
# Headers (HTTP) or metadata keys (gRPC) a client's request id arrives in, in order of
# preference; the answer carries it back under the first.
REQUEST_ID_KEYS = ("x-request-id", "triton-request-id")
REQUEST_ID_HEADER = REQUEST_ID_KEYS[0]
# Everything an inference call's headers or metadata may carry for CallLog.begin.
CALL_KEYS = frozenset((*REQUEST_ID_KEYS, TRACEPARENT, TRACESTATE))
MAX_REQUEST_ID_CHARS = 128
# The fields a JSON line carries beside time, level, logger and message, where given.
FIELDS = ("request_id", "protocol", "model", "version", "status", "duration_ms", "trace_id")


# -- request ids -------------------------------------------------------------------------

# A made id: this process's random prefix and a counter, unique across replicas and cheaper
# than a uuid per request.
_PREFIX = os.urandom(6).hex()
_counter = itertools.count(1)


def request_id(carrier: Mapping[str, str]) -> str:
    """The client's request id from headers or metadata (lower-case keys), else a new one.

    A client's id longer than 128 characters, or with characters that are not printable
    ASCII, is replaced: it goes into log lines and response headers as it is.
    """
    given = carrier.get(REQUEST_ID_KEYS[0]) or carrier.get(REQUEST_ID_KEYS[1])
    if given and len(given) <= MAX_REQUEST_ID_CHARS and given.isascii() and given.isprintable():
        return given
    return f"{_PREFIX}-{next(_counter):x}"


# -- one inference call -------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """One inference call as its adapter saw it begin."""

    protocol: str
    model: str
    version: str
    request_id: str
    received_ns: int
    trace: RequestTrace | None = None

    @property
    def trace_id(self) -> str:
        return self.trace.trace_id_hex if self.trace is not None else ""


class CallLog:
    """Request ids, traces and the log lines of inference calls, for every adapter."""

    def __init__(self, tracing: Tracing | None = None, access: bool = False) -> None:
        self.tracing = tracing or Tracing()
        self.access = access

    def begin(
        self,
        protocol: str,
        model: str,
        version: str,
        carrier: Mapping[str, str],
        received_ns: int,
    ) -> Call:
        """A call's request id, and its trace when sampled; `carrier`: headers or metadata."""
        rid = request_id(carrier)
        call = Call(protocol, model, version, rid, received_ns)
        if self.tracing.on:
            call.trace = self.tracing.start(model, carrier, received_ns, protocol, rid)
        return call

    def end(self, call: Call, version: str, error: BaseException | None = None) -> None:
        """The call is answered (`version`: the one that answered, or the one asked for)."""
        if call.trace is not None:
            call.trace.end(version, error)
        if error is not None:
            self._failed(call, version, error)
        if self.access:
            self._access(call, version, error)

    def _failed(self, call: Call, version: str, error: BaseException) -> None:
        """Failures inside the server are errors; a client's mistakes are verbose only."""
        fields = _fields(call, version, error)
        known = isinstance(error, ServingError)
        message = error.message if isinstance(error, ServingError) else repr(error)
        level = logging.ERROR if not known or fields["status"] == "INTERNAL" else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "[request id: %s] %s inference of model '%s' failed: %s",
                call.request_id,
                call.protocol,
                call.model,
                message,
                exc_info=None if known else error,
                extra=fields,
            )

    def _access(self, call: Call, version: str, error: BaseException | None) -> None:
        fields = _fields(call, version, error)
        access_log.info(
            "%s %s version %s: %s in %.3f ms [request id: %s]%s",
            call.protocol,
            call.model,
            version or "-",
            fields["status"],
            fields["duration_ms"],
            call.request_id,
            f" [trace id: {fields['trace_id']}]" if "trace_id" in fields else "",
            extra=fields,
        )


def _fields(call: Call, version: str, error: BaseException | None) -> dict[str, Any]:
    if error is None:
        status = "OK"
    else:
        status = error.code.name if isinstance(error, ServingError) else Code.INTERNAL.name
    fields: dict[str, Any] = {
        "request_id": call.request_id,
        "protocol": call.protocol,
        "model": call.model,
        "version": version,
        "status": status,
        "duration_ms": round((time.monotonic_ns() - call.received_ns) / 1e6, 3),
    }
    if call.trace is not None:
        fields["trace_id"] = call.trace_id
    return fields


# -- formats ----------------------------------------------------------------------------


def _utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Iso8601Formatter(logging.Formatter):
    """`2026-01-31T12:00:00.123456Z INFO runtime.server: message` (UTC)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record.created)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the call's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a log format: default, ISO8601 or json."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "ISO8601":
        return Iso8601Formatter()
    return logging.Formatter(DEFAULT_FORMAT)


# -- the logging extension ----------------------------------------------------------------


class _Levels(logging.Filter):
    """Drops the records of the levels the settings turned off."""

    def __init__(self, settings: LogSettings) -> None:
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.settings
        if record.levelno >= logging.ERROR:
            return s.log_error
        if record.levelno >= logging.WARNING:
            return s.log_warning
        if record.levelno >= logging.INFO:
            return s.log_info
        return s.log_verbose_level > 0


class LogSettings:
    """Triton's logging settings, applied to the root logger's handlers once installed.

    Verbose levels above 0 turn on the server's own DEBUG lines (the `runtime` loggers).
    `log_file` is fixed at start: a remote caller must never choose a file to write.
    """

    def __init__(self, log_format: str = "default", verbose_level: int = 0) -> None:
        if log_format not in FORMATS:
            raise ValueError(f"log format '{log_format}': expected one of {', '.join(FORMATS)}")
        self.log_info = True
        self.log_warning = True
        self.log_error = True
        self.log_verbose_level = verbose_level
        self.log_format = log_format
        self._filter = _Levels(self)
        self._handlers: list[logging.Handler] = []

    @classmethod
    def from_root(cls, log_format: str = "default") -> LogSettings:
        """Settings that keep what the root logger's level lets through (`--log-level`)."""
        level = logging.getLogger().getEffectiveLevel()
        settings = cls(log_format, verbose_level=1 if level <= logging.DEBUG else 0)
        settings.log_info = level <= logging.INFO
        settings.log_warning = level <= logging.WARNING
        return settings

    def install(self) -> None:
        """Take over the root logger's handlers (the process's output): format and levels."""
        root = logging.getLogger()
        # INFO at least, so that log_info can turn on what `--log-level warning` left off;
        # the filter decides from here on.
        root.setLevel(min(root.getEffectiveLevel(), logging.INFO))
        self._handlers = list(root.handlers)
        for handler in self._handlers:
            handler.addFilter(self._filter)
        self._apply()

    def _apply(self) -> None:
        verbose = logging.DEBUG if self.log_verbose_level > 0 else logging.NOTSET
        logging.getLogger("runtime").setLevel(verbose)
        for handler in self._handlers:
            handler.setFormatter(formatter(self.log_format))

    def settings(self) -> dict[str, Any]:
        """Every setting, as Triton answers them."""
        return {
            "log_file": "",
            "log_info": self.log_info,
            "log_warning": self.log_warning,
            "log_error": self.log_error,
            "log_verbose_level": self.log_verbose_level,
            "log_format": self.log_format,
        }

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Check every change, then apply them all at once; every setting back."""
        checked = {key: _log_setting(key, value) for key, value in changes.items()}
        for key, value in checked.items():
            if key != "log_file":
                setattr(self, key, value)
        self._apply()
        return self.settings()


def _log_setting(key: str, value: Any) -> Any:
    """One posted setting, checked; InvalidInput names it and what it takes."""
    if key == "log_file":
        if value is not None:
            raise InvalidInput(
                "log setting 'log_file': the log file location can not be updated through "
                "network protocol; it is fixed at start"
            )
        return None
    if key in LEVEL_SETTINGS:
        if not isinstance(value, bool):
            raise InvalidInput(f"log setting '{key}': expected true or false, got {value!r}")
        return value
    if key == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(
                f"log setting '{key}': expected a whole number of 0 or more, got {value!r}"
            )
        return value
    if key == "log_format":
        if value not in FORMATS:
            raise InvalidInput(
                f"log setting '{key}': expected one of {', '.join(map(repr, FORMATS))}, "
                f"got {value!r}"
            )
        return value
    raise InvalidInput(f"unknown log setting '{key}'; expected one of {', '.join(SETTINGS)}")
