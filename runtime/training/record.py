"""The run record: what one training run did, written as JSON whether it published or failed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from runtime.training.publish import write_if_changed

RUNS_FOLDER = ".runs"


def utc_now() -> str:
    """ISO 8601 UTC time with microseconds, e.g. 2025-01-31T12:00:00.123456+00:00."""
    return datetime.now(UTC).isoformat()


@dataclass(slots=True)
class RunRecord:
    """Every figure of a run; JSON-ready. `status` is running, published or failed."""

    recipe: str
    dataset: str
    model: str
    repository: str
    seed: int
    settings: dict[str, Any]
    input_name: str
    output_name: str
    accuracy_floor: float
    status: str = "running"
    error: str = ""
    started_at: str = field(default_factory=utc_now)
    finished_at: str = ""
    split_sizes: dict[str, int] = field(default_factory=dict)
    features: int = 0
    class_names: list[str] = field(default_factory=list)
    # train_accuracy, validation_accuracy, test_accuracy.
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    # Per epoch: index, loss, validation_accuracy.
    history: list[dict[str, float]] = field(default_factory=list)
    # max_abs_diff, tolerance, argmax_mismatches, rows.
    parity: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    version: int | None = None
    version_dir: str = ""
    model_files_changed: list[str] = field(default_factory=list)
    libraries: dict[str, str] = field(default_factory=dict)
    record_path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, path: Path) -> None:
        """Write the record atomically to path (its folder is created)."""
        self.record_path = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_if_changed(path, self.to_json().encode())


def default_path(repository: Path, model: str) -> Path:
    """`<repository>/.runs/<model>-<UTC time>.json`; the server skips hidden folders."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return repository / RUNS_FOLDER / f"{model}-{stamp}.json"


def load(path: Path) -> RunRecord:
    """Read a record written by `RunRecord.write`."""
    return RunRecord(**json.loads(path.read_text(encoding="utf-8")))


def summary(record: RunRecord) -> Table:
    """The figures a person wants after a run, as a two-column table."""
    table = Table(title=f"conveyor train {record.recipe}: {record.status}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("model", f"{record.model} version {record.version}"),
        ("published to", record.version_dir or "-"),
        ("test accuracy", f"{record.metrics.get('test_accuracy', float('nan')):.4f}"),
        ("floor", f"{record.accuracy_floor:.2f}"),
        ("parity max abs diff", f"{record.parity.get('max_abs_diff', float('nan')):.3g}"),
        ("parity tolerance", f"{record.parity.get('tolerance', float('nan')):.3g}"),
        ("seconds", f"{sum(record.stage_seconds.values()):.1f}"),
        ("run record", record.record_path),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
