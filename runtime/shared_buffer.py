"""Shared memory between the server and its worker processes: a file in /dev/shm, mapped.

Tensors are written once into a buffer and read by the other process as numpy views, with
no pickling. multiprocessing.shared_memory would do the mapping too, but on Python 3.11 its
resource tracker unlinks a segment when any process that attached to it exits (a restarted
worker would take its server's buffers with it); a named file that only its creator removes
has no such owner problem. Where /dev/shm is missing, the system's temporary folder is used.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHM_DIR = Path("/dev/shm")
ALIGN = 64  # each tensor starts on a cache line
MIN_SIZE = 1 << 20

# One tensor placed in a buffer: name, numpy dtype string, shape, byte offset.
Placement = tuple[str, str, tuple[int, ...], int]


def _folder() -> Path:
    return (
        SHM_DIR if SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK) else Path(tempfile.gettempdir())
    )


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def size_for(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes a buffer needs to hold these arrays, aligned as `write` places them."""
    return sum(_aligned(a.nbytes) for a in arrays.values())


class SharedBuffer:
    """One mapped region. The creator sizes and removes it; others attach by path."""

    def __init__(self, path: Path, size: int, create: bool) -> None:
        self.path = path
        self.size = size
        self.owner = create
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, size: int, prefix: str = "conveyor") -> SharedBuffer:
        """A new buffer of at least `size` bytes (rounded up to a power of two, 1 MiB first)."""
        size = max(MIN_SIZE, 1 << max(size - 1, 1).bit_length())
        return cls(_folder() / f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:12]}", size, True)

    @classmethod
    def attach(cls, path: str, size: int) -> SharedBuffer:
        return cls(Path(path), size, False)

    def write(self, arrays: Mapping[str, np.ndarray]) -> list[Placement]:
        """Copy each array in (the one copy a tensor pays to cross); where each one went."""
        placed: list[Placement] = []
        offset = 0
        for name, array in arrays.items():
            view = np.ndarray(array.shape, array.dtype, buffer=self._map, offset=offset)
            view[...] = array
            placed.append((name, array.dtype.str, tuple(array.shape), offset))
            offset += _aligned(array.nbytes)
        return placed

    def read(self, placed: Sequence[Placement]) -> dict[str, np.ndarray]:
        """Views of the placed arrays; valid until the buffer is written again."""
        return {
            name: np.ndarray(shape, np.dtype(dtype), buffer=self._map, offset=offset)
            for name, dtype, shape, offset in placed
        }

    def describe(self) -> tuple[str, int]:
        """What the other process needs to attach."""
        return str(self.path), self.size

    def unlink(self) -> None:
        """Remove the name once the other process has mapped the buffer: the memory stays
        theirs and ours, and nothing is left in /dev/shm if the server is killed."""
        if self.owner:
            self.path.unlink(missing_ok=True)
            self.owner = False

    def close(self) -> None:
        # A view still exported keeps the mapping alive; it goes with the last view.
        with contextlib.suppress(BufferError):
            self._map.close()
        if self.owner:
            self.path.unlink(missing_ok=True)


def split_objects(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Numeric arrays for the buffer, and BYTES (object) arrays to send as they are."""
    numeric = {n: a for n, a in arrays.items() if a.dtype.kind != "O"}
    objects = {n: a for n, a in arrays.items() if a.dtype.kind == "O"}
    return numeric, objects
