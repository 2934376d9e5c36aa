"""Logging without sockets: request ids, the logging extension's settings, the formats and
the lines CallLog writes for a call."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.errors import InternalError, InvalidInput
from runtime.logs import (
    CallLog,
    Iso8601Formatter,
    JsonFormatter,
    LogSettings,
    request_id,
)
from runtime.monitoring.tracing import TraceConfig, Tracing


def test_the_clients_request_id_is_kept() -> None:
    assert request_id({"x-request-id": "abc"}) == "abc"
    assert request_id({"triton-request-id": "def"}) == "def"
    assert request_id({"x-request-id": "abc", "triton-request-id": "def"}) == "abc"


@pytest.mark.parametrize("given", ["", "x" * 129, "bad\nline", "bad\x1b[31m", "caf\u00e9"])
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(given: str) -> None:
    made = {request_id({"x-request-id": given}) for _ in range(3)}
    assert len(made) == 3
    assert given not in made
    assert all(m.isascii() and m.isprintable() for m in made)


def test_settings_start_as_tritons_defaults() -> None:
    assert LogSettings("ISO8601").settings() == {
        "log_file": "",
        "log_info": True,
        "log_warning": True,
        "log_error": True,
        "log_verbose_level": 0,
        "log_format": "ISO8601",
    }


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"log_file": "/tmp/x.log"}, "log_file"),
        ({"log_file": ""}, "log_file"),
        ({"log_info": 1}, "log_info"),
        ({"log_error": None}, "log_error"),
        ({"log_verbose_level": -1}, "log_verbose_level"),
        ({"log_verbose_level": True}, "log_verbose_level"),
        ({"log_format": "xml"}, "log_format"),
        ({"log_colour": "red"}, "log_colour"),
    ],
)
def test_a_bad_setting_names_itself_and_changes_nothing(
    changes: dict[str, Any], named: str
) -> None:
    settings = LogSettings()
    before = settings.settings()
    with pytest.raises(InvalidInput, match=named):
        settings.update({"log_info": False, **changes})
    assert settings.settings() == before


@pytest.fixture
def captured() -> Iterator[tuple[LogSettings, list[str]]]:
    """LogSettings installed on a root logger whose one handler writes into a list."""
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers = [ListHandler()]
    settings = LogSettings("json")
    settings.install()
    try:
        yield settings, lines
    finally:
        root.handlers, root.level = saved_handlers, saved_level
        logging.getLogger("runtime").setLevel(logging.NOTSET)


def test_settings_apply_at_once(captured: tuple[LogSettings, list[str]]) -> None:
    settings, lines = captured
    log = logging.getLogger("runtime.test")
    log.info("one")
    log.debug("hidden: verbose level 0")
    settings.update({"log_info": False, "log_verbose_level": 1, "log_format": "ISO8601"})
    log.info("hidden: log_info false")
    log.debug("two")
    log.warning("three")
    settings.update({"log_warning": False, "log_error": False})
    log.warning("hidden: log_warning false")
    log.error("hidden: log_error false")
    assert json.loads(lines[0])["message"] == "one"
    assert [line.split(": ", 1)[1] for line in lines[1:]] == ["two", "three"]
    assert lines[1].split(" ")[1:3] == ["DEBUG", "runtime.test:"]


def test_a_json_line_carries_the_calls_fields() -> None:
    record = logging.LogRecord("runtime.access", logging.INFO, "f.py", 1, "done %s", ("x",), None)
    record.__dict__.update(request_id="r1", model="m", version="1", status="OK", duration_ms=1.5)
    doc = json.loads(JsonFormatter().format(record))
    assert doc == {
        "time": doc["time"],
        "level": "INFO",
        "logger": "runtime.access",
        "message": "done x",
        "request_id": "r1",
        "model": "m",
        "version": "1",
        "status": "OK",
        "duration_ms": 1.5,
    }
    assert doc["time"].endswith("Z")
    assert Iso8601Formatter().format(record).endswith("Z INFO runtime.access: done x")


def test_an_exception_stays_on_its_json_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("r", logging.ERROR, "f.py", 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_a_call_logs_errors_inside_the_server_and_access_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = CallLog(Tracing(), access=True)
    caplog.set_level(logging.INFO)
    ok = calls.begin("http", "m", "", {"x-request-id": "ok-1"}, 0)
    calls.end(ok, "1")
    bad = calls.begin("grpc", "m", "", {"x-request-id": "bad-1"}, 0)
    calls.end(bad, "", InvalidInput("wrong shape"))
    fault = calls.begin("grpc", "m", "2", {"x-request-id": "fault-1"}, 0)
    calls.end(fault, "2", InternalError("model crashed"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.__dict__["request_id"] for r in errors] == ["fault-1"]  # a client's mistake is not
    assert "[request id: fault-1]" in errors[0].getMessage()
    access = [r.__dict__ for r in caplog.records if r.name == "runtime.access"]
    assert [(a["request_id"], a["status"], a["version"]) for a in access] == [
        ("ok-1", "OK", "1"), ("bad-1", "INVALID_ARGUMENT", ""), ("fault-1", "INTERNAL", "2")
    ]  # fmt: skip
    assert all("trace_id" not in a for a in access)


def test_an_unexpected_exception_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = CallLog(Tracing(TraceConfig()))
    call = calls.begin("http", "m", "", {}, 0)
    try:
        raise KeyError("lost")
    except KeyError as exc:
        calls.end(call, "", exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.__dict__["status"] == "INTERNAL"
    assert call.request_id in record.getMessage()
