"""Model control in poll mode: rescan the repositories every few seconds and follow them.

A new model folder is loaded, a changed one reloaded (only its changed versions are rebuilt,
see `Registry.load`), and a model whose folder is gone is drained and unloaded. The scan
stats files on a worker thread, so the event loop keeps serving while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from runtime import snapshot
from runtime.registry import Registry
from runtime.snapshot import Snapshot

log = logging.getLogger(__name__)


def scan(registry: Registry) -> dict[str, Snapshot | None]:
    """Every model folder in the repositories, fingerprinted (None: unreadable just now)."""
    found: dict[str, Snapshot | None] = {}
    for name, path in registry.repository_models().items():
        try:
            found[name] = snapshot.take(path)
        except OSError as exc:
            log.warning("cannot scan model folder '%s': %s", path, exc)
            found[name] = None
    return found


class RepositoryPoller:
    """The background task behind --model-control-mode poll."""

    def __init__(self, registry: Registry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="repository-poll")
        log.info("polling the model repository every %g s", self.interval_s)

    async def stop(self) -> None:
        """Stop polling; a load in progress finishes first, so nothing is left half-swapped."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def poll(self) -> None:
        """One scan: unload models whose folder is gone, load new and changed ones."""
        found = await asyncio.to_thread(scan, self.registry)
        for name in self.registry.loaded_names():
            if name not in found and not self._stop.is_set():
                log.info("model '%s' left the repository; unloading it", name)
                await self.registry.unload(name)
        for name, now in found.items():
            before = self.registry.seen(name)
            if now is None or self._stop.is_set() or before == now:
                continue
            log.info("model '%s' %s on disk; loading it", name, "changed" if before else "is new")
            await self.registry.load(name)

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            if self._stop.is_set():
                return
            try:
                await self.poll()
            except Exception:  # a bad scan must not end polling; the next one tries again
                log.exception("polling the model repository failed")
