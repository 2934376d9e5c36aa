"""uvicorn's HTTP protocol, with each response's header block and body sent in one write.

uvicorn writes a response with two `transport.write` calls, the header block and then the
body, and uvloop sends each at once: two send syscalls, two TCP segments and possibly two
wake-ups of the client per response. With small models run on the event loop, those
writes were about a quarter of the loop's time in a profile (one-row MLP requests at
concurrency 64), and joining them gave 9-17% more requests/s in paired runs
(BENCHMARKS.md). Here the header block is held until the next write, which is the body's
in the same step of the event loop, and the two go out as one; a header block that no
write follows is sent on the loop's next turn, and closing sends it first.

Everything else is uvicorn's own: this subclass only gives its request cycles a
transport that joins the two writes. It is written here because uvicorn offers no way to
send a response in one write.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_END_OF_HEADERS = b"\r\n\r\n"
# Bodies up to this size are joined to their header block by copying (cheaper than the
# second syscall); larger ones keep their own write rather than being copied.
JOIN_UP_TO = 64 * 1024


class CoalescingTransport:
    """Holds a header block until the next write, then sends both in one."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._loop = loop

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= JOIN_UP_TO:
                self._transport.write(held + data)
            else:
                self._transport.write(held)
                self._transport.write(data)
        elif data.endswith(_END_OF_HEADERS):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        self.flush()
        self._transport.writelines(chunks)

    def flush(self) -> None:
        """Send a held header block now."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles write through CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Flow control and the address look-ups above keep the real transport.
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]
