"""One HTTP connection: uvicorn's httptools protocol with a deadline on each request's arrival.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`): a client that
opens a connection and sends nothing, or sends headers and part of a body and then waits,
holds the connection, its buffer and a slot under `--http-max-connections` for as long as
it likes. uvicorn has no setting for that, so this subclass adds one: a request's headers,
and then its body, must each arrive within `--http-body-timeout-secs`. A late request is
answered 408 where an answer can still be sent, and its connection is closed.

Two more things uvicorn's protocol does not do, done here for the same reason (it has no
setting for them):
- A request's head (request line and headers) is bounded, MAX_HEAD_BYTES: the parser
  buffers a header until it ends, so a client could make it hold megabytes and spend the
  event loop's time on them. A longer head is answered 431.
- A request that is not valid HTTP/1.1 is answered in its turn: uvicorn writes its 400 as
  soon as the parser fails and closes, so the answers of valid requests pipelined before
  it were lost. Those are now answered first (RFC 9112, 9.3.2), then the 400, as JSON.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle as Cycle

# The most bytes a request's head may take (request line and header fields). nginx's
# default is 8 KiB a line, Node's 16 KiB a head; Triton's own headers are a few hundred
# bytes. Counted per read, so at most one read (the socket's buffer) more is held.
MAX_HEAD_BYTES = 64 * 1024
# How long a refused connection is read (and dropped) after its answer, at most.
LINGER_S = 2.0


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
    _head_bytes: int  # bytes read since the current head began (while no body is being read)
    _in_body: bool  # the current request's headers are complete, its body is not
    _refusal: tuple[HTTPStatus, str] | None  # to send once the answers before it are sent
    _running: Cycle | None  # the request whose application runs now (or ran last)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A new connection owes its first request: one that sends nothing is closed too.
        self._watch = None
        self._head_bytes = 0
        self._in_body = False
        self._refusal = None
        self._running = None
        self._owe(in_headers=False)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None:
            return  # the connection ends with its refusal; nothing more is read
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._refusal is None and not self._in_body and self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"the request's head (request line and headers) is over {MAX_HEAD_BYTES} bytes",
            )

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
        self._in_body = True
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._due = None

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls it where the parser fails.
        self._refuse(
            HTTPStatus.BAD_REQUEST,
            "the request is not valid HTTP/1.1 (its request line, headers or chunked body); "
            "the connection is closed",
        )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._refusal is not None:
            self._send_refusal()

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer `status` once every request before this one is answered, then close."""
        if self._refusal is not None:
            return
        self._refusal = (status, message)
        self._due = None  # the refusal answers for the request, not a 408
        self.flow.pause_reading()
        bad: Cycle | None = self.cycle
        if bad is not None and bad.more_body and not bad.response_complete:
            # The bad request's headers arrived, its body is cut short: it is answered
            # here, not by the application. Queued behind others, it leaves the queue;
            # running, its application sees the client leave and its answer goes nowhere.
            if self.pipeline and self.pipeline[0][0] is bad:
                self.pipeline.popleft()
            elif not bad.response_started:
                bad.response_complete = True
                bad.disconnected = True
                bad.message_event.set()
        self._send_refusal()

    def _send_refusal(self) -> None:
        """Send the refusal and close, once no earlier answer is still owed."""
        running = self._running
        owed = self.pipeline or (running is not None and not running.response_complete)
        if self._refusal is None or owed or self.transport.is_closing():
            return
        status, message = self._refusal
        self._write_error(status, message)
        self._linger()

    def _linger(self) -> None:
        """Close after the answer, reading (and dropping) what the client still sends.

        Closing a socket with unread bytes in it resets the connection, and a reset can
        reach the client before the answer it was sent: the client would see only the
        reset. So the server ends its side, drops what arrives, and closes once the client
        has closed too, or after LINGER_S.
        """
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)

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
        self._write_error(
            HTTPStatus.REQUEST_TIMEOUT,
            f"the request {part} did not arrive within {self.arrival_timeout_s:g} "
            "s (--http-body-timeout-secs); the connection is closed",
        )

    def _write_error(self, status: HTTPStatus, message: str) -> None:
        body = orjson.dumps({"error": message})
        head = [b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())]
        head += [b"%s: %s\r\n" % pair for pair in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)

    def _start_asgi_task(self, cycle: Cycle, app: Any) -> None:
        self._running = cycle
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
