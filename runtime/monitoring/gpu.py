"""Per-GPU readings for Triton's `nv_gpu_*` families, taken from NVML at scrape time.

NVML comes from the optional `nvidia-ml-py` package (module `pynvml`). Without the
package, a driver or a device the reader is empty and says why once; it never fails the
server. Values are in Triton's units: utilization as a fraction, bytes, watts, joules.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

log = logging.getLogger("runtime.monitoring.gpu")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One GPU at one scrape; a field NVML could not read is None and is left out."""

    uuid: str  # NVML's form, "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    utilization: float | None = None  # busy fraction over NVML's last sample period
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    energy_j: float | None = None  # since the reader started, as Triton counts it


def cuda_visible(spec: str | None, index: int, uuid: str) -> bool:
    """Whether CUDA_VISIBLE_DEVICES (`spec`) shows the device: Triton reports only those.

    Tokens are NVML indices or UUID prefixes; like CUDA, the list ends at the first
    token that is neither (so "-1" hides every GPU).
    """
    if spec is None:
        return True
    for raw in spec.split(","):
        token = raw.strip()
        if token.isdigit():
            if int(token) == index:
                return True
        elif token.startswith("GPU-") and len(token) > 4:
            if uuid.startswith(token):
                return True
        else:
            return False
    return False


def _import_nvml() -> Any:
    return importlib.import_module("pynvml")


class GpuReader:
    """Reads NVML for every CUDA-visible GPU; empty when NVML is missing or will not start.

    `nvml` is the pynvml module, or a stand-in with the same functions; by default
    pynvml is imported here, so the server loads it only when GPU metrics are on.
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml: Any = None
        self._error: type[Exception] = Exception
        self._devices: list[tuple[str, Any]] = []  # (uuid, handle)
        self._lock = threading.Lock()
        self._energy_last_mj: dict[str, int] = {}
        self._energy_total_mj: dict[str, int] = {}
        self._noted: set[tuple[str, str]] = set()
        try:
            module = _import_nvml() if nvml is None else nvml
        except ImportError:
            log.info("GPU metrics off: nvidia-ml-py is not installed (the `gpu` extra)")
            return
        self._error = getattr(module, "NVMLError", Exception)
        try:
            module.nvmlInit()
        except Exception as exc:  # no driver, no device, a broken install: all mean "no GPUs"
            log.info("GPU metrics off: NVML did not start (%s)", exc)
            return
        self._nvml = module
        self._devices = self._discover()
        if not self._devices:
            log.info("GPU metrics off: NVML sees no CUDA-visible GPU")
            self.close()
        for uuid, handle in self._devices:  # Triton counts energy from its start
            self._energy_j(uuid, self._field(uuid, "energy", self._energy_mj(handle)))

    @property
    def available(self) -> bool:
        """True when at least one GPU is being read."""
        return bool(self._devices)

    def sample(self) -> list[GpuSample]:
        """One sample per GPU; an NVML error on a field leaves that field out."""
        return [self._sample(uuid, handle) for uuid, handle in self._devices]

    def close(self) -> None:
        """Release NVML (it counts initialisations, so this undoes only ours)."""
        if self._nvml is not None:
            nvml, self._nvml, self._devices = self._nvml, None, []
            try:
                nvml.nvmlShutdown()
            except self._error as exc:
                log.info("NVML shutdown: %s", exc)

    def _discover(self) -> list[tuple[str, Any]]:
        nvml = self._nvml
        count = self._field("host", "device count", nvml.nvmlDeviceGetCount) or 0
        spec = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices: list[tuple[str, Any]] = []
        for index in range(count):
            where = f"device {index}"
            handle = self._field(where, "handle", partial(nvml.nvmlDeviceGetHandleByIndex, index))
            uuid = None if handle is None else self._field(where, "uuid", self._uuid(handle))
            if uuid is not None and cuda_visible(spec, index, uuid):
                devices.append((uuid, handle))
        return devices

    def _sample(self, uuid: str, handle: Any) -> GpuSample:
        nvml = self._nvml
        util = self._field(uuid, "utilization", partial(nvml.nvmlDeviceGetUtilizationRates, handle))
        memory = self._field(uuid, "memory", partial(nvml.nvmlDeviceGetMemoryInfo, handle))
        power_mw = self._field(uuid, "power usage", partial(nvml.nvmlDeviceGetPowerUsage, handle))
        limit_mw = self._field(
            uuid, "power limit", partial(nvml.nvmlDeviceGetPowerManagementLimit, handle)
        )
        return GpuSample(
            uuid=uuid,
            utilization=None if util is None else util.gpu / 100,  # NVML: percent
            memory_total_bytes=None if memory is None else int(memory.total),
            memory_used_bytes=None if memory is None else int(memory.used),
            power_w=None if power_mw is None else power_mw / 1000,  # NVML: milliwatts
            power_limit_w=None if limit_mw is None else limit_mw / 1000,
            energy_j=self._energy_j(uuid, self._field(uuid, "energy", self._energy_mj(handle))),
        )

    def _uuid(self, handle: Any) -> Callable[[], str]:
        def read() -> str:
            value = self._nvml.nvmlDeviceGetUUID(handle)
            return value.decode() if isinstance(value, bytes) else str(value)

        return read

    def _energy_mj(self, handle: Any) -> Callable[[], int]:
        return lambda: int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))

    def _energy_j(self, uuid: str, reading_mj: int | None) -> float | None:
        """Energy since the first reading; a driver counter that goes back adds nothing."""
        if reading_mj is None:
            return None
        with self._lock:
            last = self._energy_last_mj.setdefault(uuid, reading_mj)
            total = self._energy_total_mj.get(uuid, 0) + max(reading_mj - last, 0)
            self._energy_total_mj[uuid] = total
            self._energy_last_mj[uuid] = reading_mj
        return total / 1000

    def _field(self, where: str, field: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except self._error as exc:
            if (where, field) not in self._noted:  # once: NOT_SUPPORTED stays so
                self._noted.add((where, field))
                log.info("NVML gave no %s for %s: %s", field, where, exc)
            return None
