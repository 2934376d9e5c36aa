"""Loaded models by (name, version), with the state and reason of every version tried.

A (re)load builds the new versions beside the old ones and swaps them in with one
assignment, then drains the old batchers, so no in-flight request fails.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from runtime import config as cfg
from runtime import reload_plan, repository, snapshot
from runtime.config.support import check_supported
from runtime.ensemble import EnsembleInstance, find_cycle, is_ensemble, load_ensemble, members
from runtime.errors import InvalidInput, NotFound, Unavailable
from runtime.instance import ModelInstance
from runtime.loader import InstanceSettings, load_instance
from runtime.proto import model_config_pb2 as pb
from runtime.snapshot import Snapshot, Source

log = logging.getLogger(__name__)

# A served version: a model run by a backend, or an ensemble of served models.
Served = ModelInstance | EnsembleInstance

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"
UNLOADING = "UNLOADING"


@dataclass(slots=True)
class ModelEntry:
    """Everything known about one model name: servable versions and per-version states."""

    name: str
    versions: dict[int, Served] = field(default_factory=dict)
    states: dict[int, tuple[str, str]] = field(default_factory=dict)
    model_state: tuple[str, str] | None = None
    # What each servable version was built from, so a reload can reuse the unchanged ones.
    sources: dict[int, Source] = field(default_factory=dict)
    # The folder as the last load found it; the poller reloads when the disk differs.
    seen: Snapshot | None = None
    # What failed in the last load (a servable version may still be the previous files).
    errors: list[str] = field(default_factory=list)

    def latest(self) -> Served | None:
        for v in sorted(self.versions, reverse=True):
            if self.versions[v].ready:
                return self.versions[v]
        return None


@dataclass(slots=True)
class _Swap:
    """A rebuilt entry, the versions built for it, and the served versions it leaves out."""

    entry: ModelEntry
    fresh: list[Served]
    retired: list[Served]


def _keep_old(name: str, old: ModelEntry | None, now: Snapshot | None, reason: str) -> _Swap:
    """The model as a whole failed to (re)load: whatever served keeps serving, as it was."""
    log.error("model '%s' failed to load: %s", name, reason)
    entry = ModelEntry(name, seen=now, errors=[reason])
    if old is None or not old.versions:
        entry.model_state = (UNAVAILABLE, reason)
        return _Swap(entry, [], [])
    entry.versions = dict(old.versions)
    entry.sources = dict(old.sources)
    note = f"serving the previous files; the reload failed: {reason}"
    entry.states = {v: (READY, note) for v in old.versions}
    return _Swap(entry, [], [])


def _reusable(old: ModelEntry | None) -> dict[int, Source | None]:
    """What each serving version was built from; None where its batcher crashed, so a load
    rebuilds it even with its files unchanged (a reload is how an operator heals a model)."""
    if old is None:
        return {}
    return {v: old.sources.get(v) if m.ready else None for v, m in old.versions.items()}


def _record_failures(entry: ModelEntry, failed: Mapping[int, str], retired: Iterable[int]) -> None:
    """States for the versions that failed to load and for those just taken out of service."""
    for v in retired:
        if v not in entry.versions:
            entry.states[v] = (UNAVAILABLE, "unloaded")
    for v, reason in sorted(failed.items()):
        if v in entry.versions:  # the previous files of this version still serve
            entry.states[v] = (READY, f"serving the previous files; the new ones failed: {reason}")
        else:
            entry.states[v] = (UNAVAILABLE, reason)
        entry.errors.append(f"version {v}: {reason}")


def _log_swap(swap: _Swap, old: ModelEntry | None, started_ns: int) -> None:
    entry = swap.entry
    fresh = sorted(int(m.version) for m in swap.fresh)
    log.info(
        "model '%s' %s in %.3f s: serving versions %s (loaded %s, kept %s), retiring %s%s",
        entry.name,
        "swapped" if old is not None and old.versions else "loaded",
        (time.perf_counter_ns() - started_ns) / 1e9,
        sorted(entry.versions),
        fresh,
        sorted(v for v in entry.versions if v not in fresh),
        sorted(int(m.version) for m in swap.retired),
        f"; failed: {'; '.join(entry.errors)}" if entry.errors else "",
    )


class Registry:
    """Owns every loaded model; the data plane asks it for (name, version)."""

    def __init__(self, roots: Sequence[Path], settings: InstanceSettings | None = None) -> None:
        self.roots = list(roots)
        # Models calling other models (Python models' BLS) look them up here.
        self.settings = replace(settings or InstanceSettings(), models=self.get)
        self._models: dict[str, ModelEntry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def get(self, name: str, version: str = "") -> Served:
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

    def models(self) -> Iterable[Served]:
        for entry in self._models.values():
            yield from entry.versions.values()

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

    def seen(self, name: str) -> Snapshot | None:
        """The model folder as its last load found it (None: never loaded from disk, unloaded)."""
        entry = self._models.get(name)
        return entry.seen if entry is not None else None

    def loaded_names(self) -> list[str]:
        """Models loaded from the repository (ready or not) and not unloaded since."""
        return [n for n, e in self._models.items() if e.seen is not None or e.versions]

    async def load(
        self, name: str, override: pb.ModelConfig | None = None, _chain: tuple[str, ...] = ()
    ) -> ModelEntry:
        """(Re)load a model: build only new and changed versions, swap, drain what left.

        Failures are recorded in the entry (and its `errors`), never raised; a version that
        fails to load never takes a serving one down. An ensemble's steps' models are loaded
        first, where they are not loaded yet (`_chain`: the ensembles waiting on this one).
        """
        await self._members_first(name, override, (*_chain, name))
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            started_ns = time.perf_counter_ns()
            old = self._models.get(name)
            model_dir = self.find_model_dir(name)
            swap = await asyncio.to_thread(self._rebuild, name, old, model_dir, override)
            for version in swap.fresh:
                version.start()
            self._models[name] = swap.entry  # the swap: requests from here on see the new set
            _log_swap(swap, old, started_ns)
            await self._retire(name, swap.retired)
            return swap.entry

    async def _members_first(
        self, name: str, override: pb.ModelConfig | None, chain: tuple[str, ...]
    ) -> None:
        """Load the models an ensemble calls that are not loaded yet, or wait for their load
        under way; a cycle of ensembles is left to the ensemble's own load to report."""
        message = override if override is not None else self._config_on_disk(name)
        for member in dict.fromkeys(members(message) if message is not None else []):
            if member in chain or self.find_model_dir(member) is None:
                continue
            lock = self._locks.get(member)
            if lock is not None and lock.locked():
                async with lock:  # its load under way: wait for it to end
                    pass
            entry = self._models.get(member)
            if entry is None or (not entry.versions and entry.seen is None):
                await self.load(member, _chain=chain)

    def _config_on_disk(self, name: str) -> pb.ModelConfig | None:
        """A model's config.pbtxt, None where it has none or it does not parse (its load
        reports why)."""
        model_dir = self.find_model_dir(name)
        if model_dir is None:
            return None
        try:
            return cfg.read_config_file(model_dir)
        except (cfg.ConfigError, OSError):
            return None

    def _ensemble_cycle(self, name: str, message: pb.ModelConfig) -> None:
        """ConfigError when the ensemble calls itself through other ensembles."""

        def members_of(model: str) -> list[str]:
            found = message if model == name else self._config_on_disk(model)
            return members(found) if found is not None else []

        cycle = find_cycle(name, members_of)
        if cycle is not None:
            raise cfg.ConfigError(f"circular dependency between ensembles: {' -> '.join(cycle)}")

    def _rebuild(
        self,
        name: str,
        old: ModelEntry | None,
        model_dir: Path | None,
        override: pb.ModelConfig | None,
    ) -> _Swap:
        """On a worker thread: fingerprint the folder, then load what the plan says."""
        now: Snapshot | None = None
        try:
            if model_dir is None:
                raise cfg.ConfigError(f"model '{name}' is not in the repository")
            now = snapshot.take(model_dir)  # before any file is read: later edits are seen
            message, wanted = self._policy(name, model_dir, override)
        except (cfg.ConfigError, OSError) as exc:
            return _keep_old(name, old, now, str(exc))
        key = override.SerializeToString() if override is not None else b""
        served = _reusable(old)
        chosen = reload_plan.plan(wanted, served, now, key)
        fresh, failed = self._load_each(name, model_dir, message, chosen.load)
        retire = reload_plan.settle(chosen, failed, now.versions)
        entry = ModelEntry(name, seen=now)
        kept = {v: m for v, m in (old.versions if old else {}).items() if v not in retire}
        for v, model in sorted({**kept, **fresh}.items()):
            entry.versions[v] = model
            entry.states[v] = (READY, "")
            source = now.source(v, key) if v in fresh else served[v]
            if source is not None:
                entry.sources[v] = source
        _record_failures(entry, failed, retire)
        retired = [old.versions[v] for v in retire] if old is not None else []
        return _Swap(entry, list(fresh.values()), retired)

    def _policy(
        self, name: str, model_dir: Path, override: pb.ModelConfig | None
    ) -> tuple[pb.ModelConfig, list[int]]:
        message = override if override is not None else cfg.read_config_file(model_dir)
        for section in check_supported(message, name):  # refused sections raise ConfigError
            log.warning("model '%s': config section %s is accepted and ignored", name, section)
        if is_ensemble(message):
            self._ensemble_cycle(name, message)
        versions = repository.select_versions(repository.version_folders(model_dir), message)
        if not versions:
            raise cfg.ConfigError(f"model '{name}' has no version folder with a model")
        return message, versions

    def _load_each(
        self, name: str, model_dir: Path, message: pb.ModelConfig, versions: Iterable[int]
    ) -> tuple[dict[int, Served], dict[int, str]]:
        """Load and warm each version; (servable versions, reasons of those that failed)."""
        fresh: dict[int, Served] = {}
        failed: dict[int, str] = {}
        load = load_ensemble if is_ensemble(message) else load_instance
        for version in versions:
            try:
                fresh[version] = load(model_dir, version, message, self.settings)
            except Exception as exc:
                failed[version] = str(exc)
                log.error("model '%s' version %d is unavailable: %s", name, version, exc)
                continue
            log.info("model '%s' version %d is ready", name, version)
        return fresh, failed

    async def unload(self, name: str) -> None:
        """Take every version out of service at once, then drain and close them."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._models.get(name)
            if entry is None:
                raise NotFound(f"failed to unload '{name}', no version is available")
            empty = ModelEntry(name, model_state=(UNAVAILABLE, "unloaded"))
            empty.states = {v: (UNAVAILABLE, "unloaded") for v in entry.states}
            self._models[name] = empty
            await self._retire(name, list(entry.versions.values()))

    async def _retire(self, name: str, versions: Sequence[Served]) -> None:
        """Drain (queued and running requests finish), then close; the caller swapped them out."""
        if not versions:
            return
        started_ns = time.perf_counter_ns()
        for version in versions:
            await version.close()
        log.info(
            "model '%s' unloaded versions %s: drained and closed in %.3f s",
            name,
            [int(v.version) for v in versions],
            (time.perf_counter_ns() - started_ns) / 1e9,
        )

    def hurry(self) -> None:
        """Every batcher sends what it holds at once from now on (the server is stopping)."""
        for model in self.models():
            if isinstance(model, ModelInstance):
                model.batcher.hurry()

    async def close(self) -> None:
        for name, entry in list(self._models.items()):
            await self._retire(name, list(entry.versions.values()))
        self._models.clear()

    def check_ready(self, name: str) -> None:
        if not self.is_ready(name):
            raise Unavailable(f"model '{name}' is not ready")
