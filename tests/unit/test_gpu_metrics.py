"""Triton's nv_gpu_* families: the NVML reader, its units and failures, and the rendered text.

The reader is driven by a stand-in for the pynvml module (the driver sits right next to the
reader); one test marked `gpu` reads the real NVML and skips, saying why, where it can't.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.monitoring.gpu import GpuReader, GpuSample, cuda_visible
from runtime.monitoring.metrics import Metrics, gpu_text
from runtime.server import Server, ServerConfig

UUID_A = "GPU-71ce41fd-3ac0-afe7-c995-21119f1e984a"
UUID_B = "GPU-8674351b-fff7-56c3-f545-26313154b8ed"
GIB = 1024**3
FAMILIES = {
    "nv_gpu_utilization": "gauge",
    "nv_gpu_memory_total_bytes": "gauge",
    "nv_gpu_memory_used_bytes": "gauge",
    "nv_gpu_power_usage": "gauge",
    "nv_gpu_power_limit": "gauge",
    "nv_energy_consumption": "counter",
}


class StandInNvml:
    """The functions of pynvml the reader calls, over devices the test describes.

    A device is a dict of NVML's raw units (percent, bytes, milliwatts, millijoules);
    `failing` names the functions that raise NVMLError for it.
    """

    class NVMLError(Exception):
        pass

    def __init__(self, *devices: dict[str, Any], init_error: Exception | None = None) -> None:
        self.devices = list(devices)
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return str(self._value(handle, "nvmlDeviceGetUUID", "uuid"))

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        percent = self._value(handle, "nvmlDeviceGetUtilizationRates", "util_percent")
        return SimpleNamespace(gpu=percent, memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        total = self._value(handle, "nvmlDeviceGetMemoryInfo", "total")
        used = self.devices[handle]["used"]
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        return int(self._value(handle, "nvmlDeviceGetPowerUsage", "power_mw"))

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:
        return int(self._value(handle, "nvmlDeviceGetPowerManagementLimit", "limit_mw"))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        return int(self._value(handle, "nvmlDeviceGetTotalEnergyConsumption", "energy_mj"))

    def _value(self, handle: int, function: str, key: str) -> Any:
        device = self.devices[handle]
        if function in device.get("failing", ()):
            raise self.NVMLError("Not Supported")
        return device[key]


def device(uuid: str, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "uuid": uuid,
        "util_percent": 37,
        "total": 80 * GIB,
        "used": 3 * GIB,
        "power_mw": 123_456,
        "limit_mw": 350_000,
        "energy_mj": 5_000_000,
    }
    return values | changes


def gpu_log(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "runtime.monitoring.gpu"]


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture(autouse=True)
def _all_gpus_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_values_are_in_tritons_units() -> None:
    nvml = StandInNvml(device(UUID_A), device(UUID_B, util_percent=100, power_mw=70_000))
    reader = GpuReader(nvml)
    nvml.devices[0]["energy_mj"] += 2_500  # 2.5 J since the reader started
    a, b = reader.sample()
    assert a == GpuSample(
        uuid=UUID_A,
        utilization=0.37,
        memory_total_bytes=80 * GIB,
        memory_used_bytes=3 * GIB,
        power_w=123.456,
        power_limit_w=350.0,
        energy_j=2.5,
    )
    assert (b.uuid, b.utilization, b.power_w, b.energy_j) == (UUID_B, 1.0, 70.0, 0.0)


def test_energy_counts_from_the_start_and_never_goes_back() -> None:
    nvml = StandInNvml(device(UUID_A, energy_mj=9_000_000))
    reader = GpuReader(nvml)
    nvml.devices[0]["energy_mj"] = 9_001_000
    assert reader.sample()[0].energy_j == 1.0
    nvml.devices[0]["energy_mj"] = 10  # the driver's counter restarted
    assert reader.sample()[0].energy_j == 1.0
    nvml.devices[0]["energy_mj"] = 510
    assert reader.sample()[0].energy_j == 1.5


def test_a_failing_field_skips_that_value_and_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runtime.monitoring.gpu")
    nvml = StandInNvml(
        device(UUID_A, failing={"nvmlDeviceGetPowerUsage", "nvmlDeviceGetMemoryInfo"}),
        device(UUID_B),
    )
    reader = GpuReader(nvml)
    for _ in range(3):
        a, b = reader.sample()
    assert a.power_w is None
    assert a.memory_total_bytes is None
    assert a.memory_used_bytes is None
    assert (a.utilization, a.power_limit_w, a.energy_j) == (0.37, 350.0, 0.0)
    assert b.power_w == 123.456
    assert len([r for r in gpu_log(caplog) if "power usage" in r.getMessage()]) == 1

    text = gpu_text([a, b])
    power = families(text)["nv_gpu_power_usage"]
    assert [s.labels for s in power.samples] == [{"gpu_uuid": UUID_B}]
    assert f'nv_gpu_utilization{{gpu_uuid="{UUID_A}"}} 0.37\n' in text


def test_a_field_no_gpu_has_leaves_its_family_out() -> None:
    reader = GpuReader(StandInNvml(device(UUID_A, failing={"nvmlDeviceGetPowerUsage"})))
    text = gpu_text(reader.sample())
    assert "nv_gpu_power_usage" not in text
    assert set(families(text)) == set(FAMILIES) - {"nv_gpu_power_usage"}


def test_a_device_without_a_uuid_is_not_read() -> None:
    nvml = StandInNvml(device(UUID_A, failing={"nvmlDeviceGetUUID"}), device(UUID_B))
    assert [s.uuid for s in GpuReader(nvml).sample()] == [UUID_B]


def test_nvml_that_does_not_start_gives_no_families(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runtime.monitoring.gpu")
    nvml = StandInNvml(
        device(UUID_A), init_error=StandInNvml.NVMLError("NVML Shared Library Not Found")
    )
    reader = GpuReader(nvml)
    assert not reader.available
    assert reader.sample() == []
    assert gpu_text(reader.sample()) == ""
    [record] = gpu_log(caplog)
    assert record.levelno == logging.INFO
    assert "NVML Shared Library Not Found" in record.getMessage()
    reader.close()
    assert nvml.shutdowns == 0  # nothing to undo


def test_without_nvidia_ml_py_the_server_renders_without_gpus(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runtime.monitoring.gpu")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    metrics = Metrics()
    assert metrics.gpu is None
    text = metrics.render().decode()
    assert not [name for name in families(text) if name.startswith(("nv_gpu", "nv_energy"))]
    [record] = gpu_log(caplog)
    assert "nvidia-ml-py is not installed" in record.getMessage()


def test_rendered_families_have_tritons_names_types_and_labels() -> None:
    reader = GpuReader(StandInNvml(device(UUID_A), device(UUID_B, used=80 * GIB)))
    text = gpu_text(reader.sample())
    parsed = families(text)
    assert {name: f.type for name, f in parsed.items()} == FAMILIES
    for family in parsed.values():
        assert [s.labels for s in family.samples] == [{"gpu_uuid": UUID_A}, {"gpu_uuid": UUID_B}]
    # Triton's bare names (the parser above would accept, and rename, a `_total` counter),
    # and plain decimals: perf_analyzer reads no exponent.
    series = {line.split("{")[0] for line in text.splitlines() if not line.startswith("#")}
    assert series == set(FAMILIES)
    assert "# TYPE nv_energy_consumption counter\n" in text
    assert f'nv_gpu_memory_total_bytes{{gpu_uuid="{UUID_A}"}} 85899345920\n' in text
    assert f'nv_gpu_power_usage{{gpu_uuid="{UUID_A}"}} 123.456\n' in text
    assert f'nv_gpu_power_limit{{gpu_uuid="{UUID_A}"}} 350\n' in text
    assert "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)\n" in text


def test_small_values_render_without_an_exponent() -> None:
    text = gpu_text([GpuSample(UUID_A, energy_j=0.00001)])
    assert text.endswith(f'nv_energy_consumption{{gpu_uuid="{UUID_A}"}} 0.00001\n')


def test_metrics_imports_pynvml_only_when_gpu_metrics_are_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = StandInNvml(device(UUID_A))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    off = Metrics(allow_gpu_metrics=False)
    assert off.gpu is None
    assert nvml.inits == 0
    assert "nv_gpu" not in off.render().decode()

    on = Metrics()
    assert nvml.inits == 1
    text = on.render().decode()
    parsed = families(text)
    assert parsed["nv_gpu_utilization"].samples[0].value == 0.37
    assert parsed["nv_inference_count"].type == "counter"  # the rest renders as before
    assert "process_cpu_seconds" in parsed

    # The server scrapes from its event loop: the driver calls go to a worker thread.
    threaded = families(asyncio.run(on.render_async()).decode())
    assert threaded["nv_gpu_utilization"].samples[0].value == 0.37


@pytest.mark.parametrize("allow", [True, False])
def test_the_server_flag_reaches_the_metrics(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, allow: bool
) -> None:
    nvml = StandInNvml(device(UUID_A))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    server = Server(ServerConfig([tmp_path], allow_gpu_metrics=allow))
    assert server.metrics is not None
    assert (server.metrics.gpu is not None, nvml.inits) == (allow, int(allow))


@pytest.mark.parametrize(
    ("spec", "visible"),
    [
        (None, {0, 1, 2}),
        ("", set()),
        ("2,0", {0, 2}),
        ("1, 2", {1, 2}),
        ("-1", set()),
        ("0,-1,2", {0}),  # CUDA stops at the first token that names no device
        ("GPU-8674351b", {1}),
        (UUID_A, {0}),
        ("GPU-", set()),
    ],
)
def test_cuda_visible_devices(spec: str | None, visible: set[int]) -> None:
    uuids = [UUID_A, UUID_B, "GPU-4bb61721-0ae2-9004-636f-e73bab9ef8e0"]
    assert {i for i, uuid in enumerate(uuids) if cuda_visible(spec, i, uuid)} == visible


def test_only_cuda_visible_gpus_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    reader = GpuReader(StandInNvml(device(UUID_A), device(UUID_B)))
    assert [s.uuid for s in reader.sample()] == [UUID_B]


def test_this_hosts_metrics_have_no_gpu_families_and_still_render() -> None:
    """The real lazy import and NVML on a host without a GPU: the server's scrape as it is."""
    metrics = Metrics()
    if metrics.gpu is not None:
        pytest.skip("NVML sees GPUs on this host; the gpu-marked test covers it")
    parsed = families(metrics.render().decode())
    assert not [name for name in parsed if name.startswith(("nv_gpu", "nv_energy"))]
    assert "nv_inference_request_success" in parsed
    assert "conveyor_request_duration_seconds" in parsed


@pytest.mark.gpu
def test_real_nvml_gives_one_sample_per_gpu() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (pynvml) is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML cannot initialise on this host: {exc}")
    try:
        uuids = [
            pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
            for i in range(pynvml.nvmlDeviceGetCount())
        ]
    finally:
        pynvml.nvmlShutdown()
    if not uuids:
        pytest.skip("NVML starts but sees no GPU on this host")

    reader = GpuReader()  # the lazy import, as the server does it
    try:
        first, samples = reader.sample(), reader.sample()
    finally:
        reader.close()
    assert [s.uuid for s in samples] == uuids
    for before, s in zip(first, samples, strict=True):
        assert s.uuid.startswith("GPU-")
        assert s.utilization is not None
        assert 0.0 <= s.utilization <= 1.0
        assert s.memory_total_bytes is not None
        assert s.memory_used_bytes is not None
        assert 0 <= s.memory_used_bytes <= s.memory_total_bytes
        assert s.memory_total_bytes > 0
        if s.power_w is not None:  # NOT_SUPPORTED on some boards: then left out, as tested
            assert s.power_w > 0
        if s.power_limit_w is not None:
            assert s.power_limit_w > 0
        if s.energy_j is not None and before.energy_j is not None:
            assert 0 <= before.energy_j <= s.energy_j
    parsed = families(gpu_text(samples))
    for name in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes"):
        assert [s.labels["gpu_uuid"] for s in parsed[name].samples] == uuids
