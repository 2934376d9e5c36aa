"""The server-worker message channel over a real socket pair: framing across reads."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


def _voluntary_switches(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


def _wait_asleep(pid: int) -> None:
    """Until the process sleeps (state S), a millisecond at least: a slow machine must not
    catch it still awake, where a wake-up would find it running and not count."""
    deadline = time.monotonic() + 10
    time.sleep(0.001)
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "S":
                return
        time.sleep(0.0002)
    raise AssertionError(f"process {pid} never went to sleep")


ECHO = """
import sys
from runtime.channel import Channel
conn = Channel.from_fd(int(sys.argv[1]), wait_readable={wait})
while (message := conn.recv()) != "stop":
    conn.send(message)
"""


@pytest.mark.parametrize("wait_readable", [True, False])
def test_a_waiting_reader_wakes_once_a_message(wait_readable: bool) -> None:
    """A worker waits for each batch on its end. Reading its answer on the other end frees
    send space, which wakes a reader asleep in recv() for nothing; one asleep in poll() sleeps
    on, so each message costs it one wake-up, not two."""
    ours, theirs = socket.socketpair()
    code = ECHO.format(wait=wait_readable)
    root = Path(__file__).resolve().parents[2]
    echo = subprocess.Popen(
        [sys.executable, "-c", code, str(theirs.fileno())], pass_fds=[theirs.fileno()], cwd=root
    )
    theirs.close()
    conn = Channel(ours)
    try:
        for i in range(20):  # started, imported, waiting
            conn.send(i)
            assert conn.recv() == i
        messages = 200
        before = _voluntary_switches(echo.pid)
        for i in range(messages):
            conn.send(i)
            assert conn.poll(10)
            # As on a server, whose loop reads an answer once the worker waits again, and
            # sends the next batch later still (a wake-up not yet taken would merge).
            _wait_asleep(echo.pid)
            assert conn.recv() == i
            _wait_asleep(echo.pid)
        per_message = (_voluntary_switches(echo.pid) - before) / messages
        conn.send("stop")
        assert echo.wait(10) == 0
    finally:
        if echo.poll() is None:
            echo.kill()
        conn.close()
    if wait_readable:
        assert per_message < 1.2, per_message
    else:  # the wake-up it saves: asleep in recv() it wakes twice a message
        assert per_message > 1.8, per_message
