"""The server-worker message channel over a real socket pair: framing across reads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from runtime.channel import Channel


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = socket.socketpair()
    left, right = Channel(a), Channel(b)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


def test_messages_arrive_whole_and_in_order(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    for i in range(5):
        left.send(("run", i, {"x": [i] * i}))
    # Several messages can come in with one read: each recv still returns exactly one.
    assert [right.recv() for _ in range(5)] == [("run", i, {"x": [i] * i}) for i in range(5)]
    assert not right.has_message()


def test_a_buffered_message_is_there_without_a_read(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send("first")
    left.send("second")
    assert right.poll(1.0)
    assert right.recv() == "first"
    # The second came in with the first read: poll says so without waiting.
    assert right.has_message() or right.poll(1.0)
    assert right.recv() == "second"
    assert not right.poll(0.0)


def test_a_message_larger_than_one_read(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    big = np.arange(1 << 20, dtype=np.float64)  # 8 MiB, far more than the socket holds
    sender = threading.Thread(target=left.send, args=(("big", big),))
    sender.start()
    name, received = right.recv()
    sender.join(10)
    assert name == "big"
    np.testing.assert_array_equal(received, big)


def test_a_closed_end_is_eof(pair: tuple[Channel, Channel]) -> None:
    left, right = pair
    left.send("last")
    left.close()
    assert right.recv() == "last"
    assert right.poll(1.0)  # readable: the close
    with pytest.raises(EOFError):
        right.recv()
