"""The host's CPU and memory for Triton's `nv_cpu_*` families, read from /proc at scrape time.

Utilization is the busy share of all CPUs over a window of at least WINDOW_S: a scrape
that comes sooner gets the last complete window's value, so that several scrapers (two
Prometheus replicas) do not shorten each other's window to nothing. Memory is MemTotal, and
MemTotal less MemAvailable as used, the memory the kernel cannot hand out without swapping.
Both are the host's as the kernel counts them, as in Triton; in a container that is the
node's. Where /proc cannot be read (not Linux), the reader is empty and says so once.

Two files and a subtraction: psutil would bring a compiled dependency into the server for
the same two reads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("runtime.monitoring.host")

WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class HostSample:
    """One scrape's reading; a value /proc did not give is None and left out."""

    utilization: float | None = None  # busy share of all CPUs, 0.0-1.0
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """The first line of /proc/stat, in clock ticks: all CPUs together."""

    at: float  # monotonic seconds, when it was read
    total: int
    idle: int  # idle and iowait


def parse_stat(text: str, at: float) -> CpuTimes | None:
    """The `cpu` line of /proc/stat; guest time is in user time already, so left out."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            # user nice system idle iowait irq softirq steal [guest guest_nice]
            ticks = [int(x) for x in fields[1:9]]
            if len(ticks) < 5:
                return None
            return CpuTimes(at, sum(ticks), ticks[3] + ticks[4])
    return None


def busy_share(before: CpuTimes, after: CpuTimes) -> float | None:
    """The share of CPU time between two readings that was not idle; None with no time."""
    total = after.total - before.total
    if total <= 0:
        return None
    return min(max(1.0 - (after.idle - before.idle) / total, 0.0), 1.0)


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(total, used) bytes from /proc/meminfo: MemTotal, and MemTotal - MemAvailable."""
    kib: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("MemTotal", "MemAvailable"):
            value = rest.split()
            if value and value[0].isdigit():
                kib[name] = int(value[0])
    total = kib.get("MemTotal")
    if total is None:
        return None, None
    available = kib.get("MemAvailable")
    used = None if available is None else max(total - available, 0) * 1024
    return total * 1024, used


class HostReader:
    """Reads /proc/stat and /proc/meminfo (`proc` is the folder, for tests)."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._lock = threading.Lock()
        self._noted = False
        self._base = self._cpu_times()
        self._last: float | None = None

    @property
    def available(self) -> bool:
        """True when /proc gave CPU times at start."""
        return self._base is not None

    def sample(self) -> HostSample:
        total, used = parse_meminfo(self._read("meminfo") or "")
        return HostSample(self._utilization(), total, used)

    def _utilization(self) -> float | None:
        now = self._cpu_times()
        with self._lock:
            if now is None or self._base is None:
                return self._last
            if self._last is None or now.at - self._base.at >= WINDOW_S:
                share = busy_share(self._base, now)
                if share is not None:
                    self._last = share
                    self._base = now
            return self._last

    def _cpu_times(self) -> CpuTimes | None:
        text = self._read("stat")
        return None if text is None else parse_stat(text, time.monotonic())

    def _read(self, name: str) -> str | None:
        try:
            return (self._proc / name).read_text()
        except OSError as exc:
            if not self._noted:
                self._noted = True
                log.info("CPU metrics: cannot read %s (%s); left out", self._proc / name, exc)
            return None
