"""The message channel between the server and a Python model's worker: pickled objects,
each framed by its length, over a Unix socket.

multiprocessing's Connection does the same job; it is not used because on the hot path it
costs more than the messages: it reads a message in two system calls (its length, then its
body) and builds a ForkingPickler for every send, some 10-15 us a batch on each side of the
machines measured, where a system call costs 5-10 us. Here one read usually takes in a
whole message (or several: what is left waits in the buffer for the next `recv`), and a
send is one `pickle.dumps` and one write.
"""

from __future__ import annotations

import pickle
import select
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!Q")
# One read takes in up to this much; a larger message is read on until it is whole.
_CHUNK = 1 << 16


class Channel:
    """One end of a framed, pickled message stream on a connected socket."""

    def __init__(self, sock: socket.socket, *, wait_readable: bool = False) -> None:
        sock.setblocking(True)
        self._sock = sock
        # A reader that sleeps in recv() is woken whenever the other end reads a message
        # this end wrote (a Unix socket wakes every sleeper on its queue when it frees send
        # space), only to find nothing and sleep again: a wake-up, and on a virtual machine
        # often a cross-CPU interrupt, per message. A sleeper in poll() for POLLIN is not.
        self._readable: select.poll | None = None
        if wait_readable:
            self._readable = select.poll()
            self._readable.register(sock, select.POLLIN)
        self._buffer = bytearray()
        self._scratch = bytearray(_CHUNK)
        self._view = memoryview(self._scratch)

    @classmethod
    def from_fd(cls, fd: int, *, wait_readable: bool = False) -> Channel:
        return cls(socket.socket(fileno=fd), wait_readable=wait_readable)

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, message: Any) -> None:
        body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(_HEADER.pack(len(body)) + body)

    def has_message(self) -> bool:
        """A whole message is already buffered: `recv` returns it without a read."""
        if len(self._buffer) < _HEADER.size:
            return False
        size: int = _HEADER.unpack_from(self._buffer)[0]
        return len(self._buffer) >= _HEADER.size + size

    def poll(self, timeout_s: float) -> bool:
        """True when `recv` would not wait (a message, or the other end closed)."""
        if self.has_message():
            return True
        readable, _, _ = select.select([self._sock], [], [], timeout_s)
        return bool(readable)

    def recv(self) -> Any:
        """The next message, waiting for it; EOFError once the other end has closed."""
        while not self.has_message():
            self._read()
        end = _HEADER.size + _HEADER.unpack_from(self._buffer)[0]
        message = pickle.loads(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        return message

    def _read(self) -> None:
        if self._readable is not None:
            self._readable.poll()
        count = self._sock.recv_into(self._scratch)
        if count == 0:
            raise EOFError("the other end closed the channel")
        self._buffer += self._view[:count]

    def close(self) -> None:
        self._view.release()
        self._sock.close()
