"""CoalescingTransport against a transport that records each write it is given."""

from __future__ import annotations

import asyncio
from typing import Any

from runtime.protocol.http.transport import JOIN_UP_TO, CoalescingTransport

HEADERS = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"


class Recording:
    """Stands in for the socket transport: keeps every write and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks: Any) -> None:
        self.writes.append(b"".join(chunks))

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


def run(body: Any) -> None:
    asyncio.run(body())


def make() -> tuple[CoalescingTransport, Recording]:
    inner = Recording()
    return CoalescingTransport(inner, asyncio.get_running_loop()), inner  # type: ignore[arg-type]


def test_header_block_and_body_go_out_as_one_write() -> None:
    async def body() -> None:
        transport, inner = make()
        transport.write(HEADERS)
        assert inner.writes == []
        transport.write(b"hello")
        assert inner.writes == [HEADERS + b"hello"]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        assert inner.writes == [HEADERS + b"hello"]

    run(body)


def test_header_block_alone_is_sent_on_the_next_turn() -> None:
    async def body() -> None:
        transport, inner = make()
        transport.write(HEADERS)
        await asyncio.sleep(0)
        assert inner.writes == [HEADERS]

    run(body)


def test_large_body_keeps_its_own_write() -> None:
    async def body() -> None:
        transport, inner = make()
        big = b"x" * (JOIN_UP_TO + 1)
        transport.write(HEADERS)
        transport.write(big)
        assert inner.writes == [HEADERS, big]

    run(body)


def test_close_sends_a_held_header_block_first() -> None:
    async def body() -> None:
        transport, inner = make()
        transport.write(HEADERS)
        transport.close()
        assert inner.writes == [HEADERS]
        assert inner.closed

    run(body)


def test_other_writes_pass_straight_through_in_order() -> None:
    async def body() -> None:
        transport, inner = make()
        transport.write(b"5\r\nhello\r\n")  # a chunk of a chunked body
        transport.write(HEADERS)
        transport.writelines([b"a", b"b"])  # sends what it holds first
        assert inner.writes == [b"5\r\nhello\r\n", HEADERS, b"ab"]
        assert transport.get_extra_info("peername") == "extra:peername"

    run(body)
