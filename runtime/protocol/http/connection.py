"""One HTTP connection: uvicorn's httptools protocol with a deadline on each request's arrival.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`): a client that
opens a connection and sends nothing, or sends headers and part of a body and then waits,
holds the connection, its buffer and a slot under `--http-max-connections` for as long as
it likes. uvicorn has no setting for that, so this subclass adds one: a request's headers,
and then its body, must each arrive within `--http-body-timeout-secs`. A late request is
answered 408 where an answer can still be sent, and its connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as Cycle


class TimedHttpProtocol(HttpToolsProtocol):
    """A connection that closes a request which does not arrive in time.

    One timer per connection, not per request: a request only notes when it is due, and
    the timer, when it fires, either acts or moves itself to the current due time. A
    request therefore costs two clock reads; a busy keep-alive connection, one timer call
    per timeout period.
    """

    # Set per server by `http_protocol`.
    arrival_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 0

    _due: float | None  # when what is being read must have arrived; None: nothing owed
    _in_headers: bool  # a request has begun and its headers are not complete yet
    _watch: asyncio.TimerHandle | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A new connection owes its first request: one that sends nothing is closed too.
        self._watch = None
        self._owe(in_headers=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._owe(in_headers=True)

    def on_headers_complete(self) -> None:
        self._owe(in_headers=False)  # the body gets its own period
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._due = None

    def _owe(self, in_headers: bool) -> None:
        self._in_headers = in_headers
        self._due = self.loop.time() + self.arrival_timeout_s
        if self._watch is None:
            self._watch = self.loop.call_at(self._due, self._check)

    def _check(self) -> None:
        self._watch = None
        if self._due is None or self.transport.is_closing():
            return
        if self.loop.time() < self._due:
            self._watch = self.loop.call_at(self._due, self._check)
            return
        self._expire()

    def _expire(self) -> None:
        cycle: Cycle | None = self.cycle
        if self._in_headers:
            # Partial headers: answer unless an earlier (pipelined) response is being sent.
            if cycle is None or cycle.response_complete:
                self._send_408("headers")
        elif cycle is not None and not cycle.response_started:
            # The application is waiting for the body: answer for it, and make its own
            # answer, if it tries one, go nowhere (as if the client had left).
            self._send_408("body")
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _send_408(self, part: str) -> None:
        body = orjson.dumps(
            {
                "error": f"the request {part} did not arrive within {self.arrival_timeout_s:g} "
                "s (--http-body-timeout-secs); the connection is closed"
            }
        )
        head = [b"HTTP/1.1 408 Request Timeout\r\n"]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)

    def _start_asgi_task(self, cycle: Cycle, app: Any) -> None:
        # uvicorn answers a request past its limit_concurrency with a text/plain 503; every
        # error this server gives over HTTP is `{"error": ...}`, which tritonclient parses.
        if app is service_unavailable:
            app = self._overloaded
        super()._start_asgi_task(cycle, app)

    async def _overloaded(self, scope: Any, receive: Any, send: Any) -> None:
        body = orjson.dumps(
            {
                "error": f"the server is at its limit of {self.max_connections} open HTTP "
                "connections (--http-max-connections); retry later or on another replica"
            }
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def http_protocol(arrival_timeout_s: float, max_connections: int) -> type[TimedHttpProtocol]:
    """The protocol class for one server's settings (uvicorn makes one instance per connection)."""

    class Protocol(TimedHttpProtocol):
        pass

    Protocol.arrival_timeout_s = arrival_timeout_s
    Protocol.max_connections = max_connections
    return Protocol


def limit_concurrency(max_connections: int) -> int | None:
    """uvicorn's limit_concurrency for at most `max_connections` open connections.

    uvicorn refuses a request while the open connections, this one included, reach its
    limit, so N connections served is a limit of N + 1.
    """
    return max_connections + 1 if max_connections > 0 else None
