"""Loaded models by (name, version), with the state and reason of every version tried.

A (re)load builds the new versions beside the old ones and swaps them in with one
assignment, then drains the old batchers, so no in-flight request fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime import config as cfg
from runtime import repository
from runtime.batching.batcher import BatchObserver, DynamicBatcher, ObserverGroup
from runtime.config import ModelConfig, TensorSpec
from runtime.errors import InvalidInput, NotFound, Unavailable
from runtime.monitoring.autoscale import AutoscalePolicy, LoadWindow
from runtime.monitoring.drift import DriftMonitor
from runtime.proto import model_config_pb2 as pb
from runtime.repository import LoadedVersion
from runtime.statistics import ModelStatistics, RequestObserver

log = logging.getLogger(__name__)


class ModelObserver(BatchObserver, RequestObserver):
    """Watches one model version's batches and requests (the metrics implement it)."""


ObserverFactory = Callable[[str, str], Sequence[ModelObserver]]

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"


@dataclass(slots=True)
class ModelVersion:
    """One servable version: config, backend, batcher and statistics, plus hot-path lookups."""

    name: str
    version: str
    config: ModelConfig
    loaded: LoadedVersion
    batcher: DynamicBatcher
    stats: ModelStatistics
    load: LoadWindow
    # Everyone told about each finished request: the statistics first, then metrics.
    request_observers: tuple[RequestObserver, ...] = ()
    inputs: dict[str, TensorSpec] = field(default_factory=dict)
    outputs: dict[str, TensorSpec] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)
    required_inputs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.inputs = {s.name: s for s in self.config.inputs}
        self.outputs = {s.name: s for s in self.config.outputs}
        self.output_names = [s.name for s in self.config.outputs]
        self.required_inputs = frozenset(s.name for s in self.config.inputs if not s.optional)

    @property
    def ready(self) -> bool:
        return self.batcher.failed is None


@dataclass(slots=True)
class ModelEntry:
    """Everything known about one model name: servable versions and per-version states."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    states: dict[int, tuple[str, str]] = field(default_factory=dict)
    model_state: tuple[str, str] | None = None

    def latest(self) -> ModelVersion | None:
        for v in sorted(self.versions, reverse=True):
            if self.versions[v].ready:
                return self.versions[v]
        return None


class Registry:
    """Owns every loaded model; the data plane asks it for (name, version)."""

    def __init__(
        self,
        roots: Sequence[Path],
        device: str = "auto",
        observers_for: ObserverFactory | None = None,
        autoscale: AutoscalePolicy | None = None,
        default_max_queue_size: int = 0,
        drift_defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.roots = list(roots)
        # Drift settings every model starts from (--drift-window-*); conveyor.yaml overrides.
        self.drift_defaults = dict(drift_defaults or {})
        self.autoscale = autoscale or AutoscalePolicy()
        self.default_max_queue_size = default_max_queue_size
        self.device = device
        self.observers_for = observers_for
        self._models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, name: str, version: str = "") -> ModelVersion:
        """The requested version, or the highest ready one; NotFound names what is missing."""
        entry = self._models.get(name)
        if entry is None or not entry.versions:
            raise NotFound(f"Request for unknown model: '{name}' is not found")
        if not version:
            found = entry.latest()
            if found is None:
                raise NotFound(f"Request for unknown model: '{name}' has no available versions")
            return found
        if not version.isdigit():
            raise InvalidInput(f"model version must be a positive integer, got '{version}'")
        model = entry.versions.get(int(version))
        if model is None:
            raise NotFound(f"Request for unknown model: '{name}' version {version} is not found")
        return model

    def models(self) -> Iterable[ModelVersion]:
        for entry in self._models.values():
            yield from entry.versions.values()

    def drift_monitors(self) -> Iterable[DriftMonitor]:
        for model in self.models():
            if model.loaded.drift is not None:
                yield model.loaded.drift

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            return self.get(name, version).ready
        except (NotFound, InvalidInput):
            return False

    def index(
        self, roots_models: Mapping[str, Path], ready_only: bool = False
    ) -> list[dict[str, str]]:
        """Triton's repository index: one row per version tried, plus never-loaded models."""
        rows: list[dict[str, str]] = []
        for name in sorted(set(roots_models) | set(self._models)):
            entry = self._models.get(name)
            if entry is None:
                if not ready_only:
                    rows.append({"name": name})
                continue
            if entry.model_state is not None and not entry.states:
                state, reason = entry.model_state
                rows.append({"name": name, "version": "", "state": state, "reason": reason})
            for version, (state, reason) in sorted(entry.states.items()):
                rows.append(
                    {"name": name, "version": str(version), "state": state, "reason": reason}
                )
        if ready_only:
            rows = [r for r in rows if r.get("state") == READY]
        return rows

    def find_model_dir(self, name: str) -> Path | None:
        for root in self.roots:
            path = root / name
            if path.is_dir():
                return path
        return None

    def repository_models(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for root in self.roots:
            for name, path in repository.list_models(root).items():
                found.setdefault(name, path)
        return found

    async def load(self, name: str, override: pb.ModelConfig | None = None) -> ModelEntry:
        """(Re)load a model from the repository; failures are recorded, never raised."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            model_dir = self.find_model_dir(name)
            entry = ModelEntry(name)
            if model_dir is None:
                entry.model_state = (UNAVAILABLE, f"model '{name}' is not in the repository")
            else:
                await asyncio.to_thread(self._load_versions, entry, model_dir, override)
            for version in entry.versions.values():
                version.batcher.start()
            old = self._models.get(name)
            self._models[name] = entry
            if old is not None:
                await self._retire(old, keep=entry)
            return entry

    def _load_versions(
        self, entry: ModelEntry, model_dir: Path, override: pb.ModelConfig | None
    ) -> None:
        try:
            message = override if override is not None else cfg.read_config_file(model_dir)
            versions = repository.select_versions(repository.version_folders(model_dir), message)
            if not versions:
                raise cfg.ConfigError(f"model '{entry.name}' has no version folder with a model")
        except (cfg.ConfigError, OSError) as exc:
            entry.model_state = (UNAVAILABLE, str(exc))
            log.error("model '%s' is unavailable: %s", entry.name, exc)
            return
        for version in versions:
            try:
                loaded = repository.load_version(
                    model_dir, version, message, self.device, self.drift_defaults
                )
            except Exception as exc:
                entry.states[version] = (UNAVAILABLE, str(exc))
                log.error("model '%s' version %d is unavailable: %s", entry.name, version, exc)
                continue
            entry.versions[version] = self._servable(entry.name, loaded)
            entry.states[version] = (READY, "")
            log.info("model '%s' version %d is ready", entry.name, version)

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._models.get(name)
            if entry is None:
                raise NotFound(f"failed to unload '{name}', no version is available")
            empty = ModelEntry(name, model_state=(UNAVAILABLE, "unloaded"))
            empty.states = {v: (UNAVAILABLE, "unloaded") for v in entry.states}
            self._models[name] = empty
            await self._retire(entry, keep=None)

    async def _retire(self, old: ModelEntry, keep: ModelEntry | None) -> None:
        for version in old.versions.values():
            await version.batcher.stop(drain=True)
            version.loaded.backend.close()

    async def close(self) -> None:
        for entry in list(self._models.values()):
            await self._retire(entry, keep=None)
        self._models.clear()

    def check_ready(self, name: str) -> None:
        if not self.is_ready(name):
            raise Unavailable(f"model '{name}' is not ready")

    def _servable(self, name: str, loaded: LoadedVersion) -> ModelVersion:
        backend = loaded.backend
        output_names = [s.name for s in loaded.config.outputs]
        version = str(loaded.version)
        stats = ModelStatistics(name, version)
        load = LoadWindow(loaded.config.instance_count, self.autoscale)
        extra = self.observers_for(name, version) if self.observers_for is not None else []

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return backend.run(inputs, output_names)

        batcher = DynamicBatcher(
            loaded.config,
            _tapped(loaded.pipeline.wrap(run), loaded.drift),
            ObserverGroup([stats, load, *extra]),
            self.default_max_queue_size,
        )
        return ModelVersion(
            name, version, loaded.config, loaded, batcher, stats, load, (stats, load, *extra)
        )


RunBatch = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def _tapped(run: RunBatch, monitor: DriftMonitor | None) -> RunBatch:
    """The batch function, with the drift monitor binning what clients sent and got back."""
    if monitor is None:
        return run

    def tapped(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = run(inputs)
        try:
            monitor.observe(inputs, outputs)
        except Exception:  # watching must never fail the requests it watches
            log.exception("drift monitor of %s v%s failed", monitor.model_name, monitor.version)
        return outputs

    return tapped
