"""The read-only view of one served model version that monitors and scrapes are handed.

Monitoring sits below the registry: it reads these views, never the registry, the
repository or the objects behind them.
"""

from __future__ import annotations

from typing import Any, Protocol

from runtime.monitoring.drift import DriftMonitor
from runtime.monitoring.stats import ModelStatistics


class ModelView(Protocol):
    """What a scrape or a JSON endpoint may read of one model version."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def ready(self) -> bool:
        """Serving: its batcher has not failed."""

    @property
    def queue_depth(self) -> int:
        """Requests queued and not yet in a batch."""

    @property
    def batches_in_flight(self) -> int: ...

    @property
    def statistics(self) -> ModelStatistics: ...

    @property
    def drift(self) -> DriftMonitor | None:
        """The drift monitor, where the version has a reference profile."""

    def signals(self) -> dict[str, Any]:
        """Autoscaling signals over the load window, queue depth included."""
