"""Triton's nv_cpu_* families: /proc read into a utilization and memory, and the text."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.monitoring import host
from runtime.monitoring.host import HostReader, HostSample, busy_share, parse_meminfo, parse_stat
from runtime.monitoring.metrics import Metrics, host_text

# /proc/stat's first lines: user nice system idle iowait irq softirq steal guest guest_nice.
STAT = """cpu  100 0 50 800 50 0 0 0 7 0
cpu0 50 0 25 400 25 0 0 0 7 0
ctxt 12345
"""
MEMINFO = """MemTotal:       24576000 kB
MemFree:         1000000 kB
MemAvailable:   20480000 kB
Buffers:          100000 kB
"""


def stat(user: int, idle: int, iowait: int = 0) -> str:
    return f"cpu  {user} 0 0 {idle} {iowait} 0 0 0 0 0\n"


def test_parse_stat_counts_idle_and_iowait_as_idle_and_guest_as_user() -> None:
    times = parse_stat(STAT, at=5.0)
    assert times is not None
    assert (times.at, times.total, times.idle) == (5.0, 1000, 850)
    assert parse_stat("intr 1 2 3\n", at=0.0) is None


def test_busy_share_between_two_readings() -> None:
    before = parse_stat(stat(user=100, idle=900), at=0.0)
    after = parse_stat(stat(user=400, idle=1000, iowait=100), at=1.0)
    assert before is not None
    assert after is not None
    assert busy_share(before, after) == pytest.approx(300 / 500)
    assert busy_share(after, after) is None  # no time passed: no share to give


def test_parse_meminfo_total_and_used_in_bytes() -> None:
    assert parse_meminfo(MEMINFO) == (24576000 * 1024, (24576000 - 20480000) * 1024)
    assert parse_meminfo("MemTotal: 1000 kB\n") == (1024000, None)  # kernels before 3.14
    assert parse_meminfo("") == (None, None)


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    (tmp_path / "stat").write_text(stat(user=100, idle=900))
    (tmp_path / "meminfo").write_text(MEMINFO)
    return tmp_path


def test_reader_reports_each_window_of_at_least_a_second(
    proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(host.time, "monotonic", lambda: clock[0])
    reader = HostReader(proc)
    assert reader.available
    clock[0] = 100.2
    (proc / "stat").write_text(stat(user=150, idle=950))  # half busy since the start
    first = reader.sample()
    assert first.utilization == pytest.approx(0.5)
    assert (first.memory_total_bytes, first.memory_used_bytes) == (
        24576000 * 1024,
        4096000 * 1024,
    )
    clock[0] = 100.7  # within a second of the last window's end: that window's value
    (proc / "stat").write_text(stat(user=250, idle=950))
    assert reader.sample().utilization == pytest.approx(0.5)
    clock[0] = 101.3  # a second on: the new window, all busy
    assert reader.sample().utilization == pytest.approx(1.0)


def test_reader_without_proc_is_empty_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="runtime.monitoring.host"):
        reader = HostReader(tmp_path / "missing")
        assert reader.sample() == HostSample()
    assert not reader.available
    assert len([r for r in caplog.records if "cannot read" in r.message]) == 1


def test_text_is_three_gauges_without_labels() -> None:
    text = host_text(HostSample(0.25, 2048, 1024))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: f.type for name, f in families.items()} == {
        "nv_cpu_utilization": "gauge",
        "nv_cpu_memory_total_bytes": "gauge",
        "nv_cpu_memory_used_bytes": "gauge",
    }
    assert "nv_cpu_utilization 0.25\n" in text
    assert "nv_cpu_memory_total_bytes 2048\n" in text
    assert "nv_cpu_memory_used_bytes" not in host_text(HostSample(0.25, 2048, None))


def test_metrics_render_this_hosts_readings() -> None:
    """Against the real /proc: the total is MemTotal, and a busy loop shows."""
    total_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    metrics = Metrics(allow_gpu_metrics=False)
    end = time.monotonic() + 0.3
    while time.monotonic() < end:  # one of the machine's CPUs busy for 0.3 s
        pass
    text = metrics.render().decode()
    assert f"nv_cpu_memory_total_bytes {total_kib * 1024}\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    (util,) = families["nv_cpu_utilization"].samples
    # One CPU of the machine's was busy all along: at least its share, less a tick or two.
    assert 0.5 / (os.cpu_count() or 1) < util.value <= 1.0
    (used,) = families["nv_cpu_memory_used_bytes"].samples
    assert 0 < used.value < total_kib * 1024
    assert (
        "nv_cpu_" not in Metrics(allow_gpu_metrics=False, allow_cpu_metrics=False).render().decode()
    )
