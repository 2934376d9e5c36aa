"""Training on a user's own CSV or Parquet file, published as the next version of a model.

read (pass one: check every value, statistics, held-out rows, training rows to a cache on
local disk) -> train (shuffled epochs over the cache, best validation epoch) -> evaluate (the
gate on the test rows) -> export (ONNX, parity gate) -> publish (config.pbtxt, labels.txt,
model.onnx, drift profile, model card; the next version, atomically). The file is read once,
batch by batch, so its size is bounded by the disk, not by memory.

Errors: BadInput (exit status 2) for a file or flag that does not fit, before anything is
trained; AccuracyBelowFloor, R2BelowFloor, ParityFailed (exit status 1) when a gate stops the
run. Nothing is published then; a stopped gate still writes the run record.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from runtime.monitoring import profile
from runtime.publish import files, parity
from runtime.publish.errors import BadInput, PublishStopped
from runtime.training import fit, network, scan
from runtime.training import publish as versioning
from runtime.training import record as runs
from runtime.training.cache import CacheWriter
from runtime.training.errors import AccuracyBelowFloor, R2BelowFloor, TrainingError
from runtime.training.export import OPSET
from runtime.training.recipe import TrainSettings
from runtime.training.table import Table, Task, open_table

DEFAULT_HIDDEN = (64,)
DEFAULT_BATCH_SIZE = 256
# Without --epochs: enough epochs to show the network about this many rows, at most
# MAX_DEFAULT_EPOCHS: one pass over a file of millions of rows, many over a small one.
ROWS_SEEN = 1_000_000
MAX_DEFAULT_EPOCHS = 200
# Test rows the parity gate runs both ways.
PARITY_ROWS = 10_000
CACHE_FILENAME = "train.arrow"
WORK_PREFIX = ".train-"
PROGRESS_ROWS = 1_000_000

Say = Callable[[str], None]


@dataclass(slots=True)
class DataRecord:
    """What one run on a data file did; JSON-ready. `status`: running, published or failed."""

    model: str
    repository: str
    data: str
    target: str
    command: str
    seed: int
    task: str = ""
    format: str = ""
    features: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    class_rows: list[int] = field(default_factory=list)
    rows: int = 0
    # Rows of each split, and of the held-out ones those kept to evaluate on.
    split_rows: dict[str, int] = field(default_factory=dict)
    evaluated_rows: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    # Per epoch: index, loss, validation (accuracy or R^2), rows, seconds.
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # metric, value, floor, and where the floor came from.
    gate: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # Rows per second of pass one (read) and of training (rows of all epochs).
    rows_per_second: dict[str, float] = field(default_factory=dict)
    status: str = "running"
    error: str = ""
    version: int | None = None
    version_dir: str = ""
    paths: dict[str, str] = field(default_factory=dict)
    started_at: str = field(default_factory=runs.utc_now)
    finished_at: str = ""
    record_path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_epochs(train_rows: int) -> int:
    """Epochs that show the network about ROWS_SEEN rows, between 1 and MAX_DEFAULT_EPOCHS."""
    return min(MAX_DEFAULT_EPOCHS, max(1, math.ceil(ROWS_SEEN / max(train_rows, 1))))


def train_data(
    data: Path,
    target: str,
    *,
    repository: Path,
    name: str,
    task: Task | None = None,
    features: Sequence[str] | None = None,
    seed: int = 0,
    epochs: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    min_accuracy: float | None = None,
    min_r2: float | None = None,
    max_batch_size: int = files.DEFAULT_MAX_BATCH_SIZE,
    command: str = "",
    say: Say | None = None,
) -> DataRecord:
    """Train an MLP on data's rows to predict target and publish it as the next version of
    `<repository>/<name>`; the run's record. Raises BadInput or a gate's error (see above)."""
    _check_arguments(name, seed, epochs, batch_size, min_accuracy, min_r2, max_batch_size)
    table = open_table(Path(data), target, features, task)
    _check_floor_flag(table, min_accuracy, min_r2)
    record = DataRecord(name, str(repository), str(data), target, command, seed)
    record.task, record.format, record.features = table.task, table.format, list(table.features)
    run = _Run(table, record, say or (lambda _: None))
    with _work_folder(Path(repository)) as work:
        scanned = run.read(work / CACHE_FILENAME)
        settings = TrainSettings(
            epochs or default_epochs(scanned.split_rows["train"]), DEFAULT_HIDDEN, batch_size
        )
        record.settings = settings.as_dict()
        try:
            fitted = run.train(work / CACHE_FILENAME, scanned, settings)
            run.evaluate(fitted, scanned, min_accuracy, min_r2)
            model = run.export(fitted, scanned)
            run.publish(model, scanned, max_batch_size)
        except (PublishStopped, TrainingError) as exc:
            record.status, record.error = "failed", str(exc)
            if not isinstance(exc, BadInput):
                _write_record(record)
            raise
        record.status = "published"
        _write_record(record)
    return record


@contextmanager
def _work_folder(repository: Path) -> Iterator[Path]:
    """A hidden folder in the repository for the cache of training rows: on the disk the
    version goes to (a system temp folder may be held in memory), skipped by the server, and
    removed at the end; so is the repository when this run created it and left it empty."""
    created = not repository.exists()
    repository.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=repository, prefix=WORK_PREFIX) as work:
            yield Path(work)
    finally:
        if created:
            with contextlib.suppress(OSError):  # not empty: a record or a version is there
                repository.rmdir()


def _check_arguments(
    name: str,
    seed: int,
    epochs: int | None,
    batch_size: int,
    min_accuracy: float | None,
    min_r2: float | None,
    max_batch_size: int,
) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise BadInput(f"name '{name}': expected a plain folder name not starting with '.'")
    positive = {"batch size": batch_size, "max batch size": max_batch_size}
    if epochs is not None:
        positive["epochs"] = epochs
    for what, value in positive.items():
        if value < 1:
            raise BadInput(f"{what}: expected a positive integer, got {value}")
    if seed < 0:
        raise BadInput(f"seed: expected a non-negative integer, got {seed}")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise BadInput(f"--min-accuracy: expected a share between 0 and 1, got {min_accuracy}")
    if min_r2 is not None and not min_r2 <= 1:
        raise BadInput(f"--min-r2: expected at most 1 (a perfect fit), got {min_r2}")


def _check_floor_flag(table: Table, min_accuracy: float | None, min_r2: float | None) -> None:
    if table.task == "regression" and min_accuracy is not None:
        raise BadInput(
            f"--min-accuracy: the target '{table.target}' is trained as a regression; use --min-r2"
        )
    if table.task == "classification" and min_r2 is not None:
        raise BadInput(
            f"--min-r2: the target '{table.target}' is trained as a classification; "
            "use --min-accuracy"
        )


class _Run:
    """The stages of one run, each timed into the record and reported through say."""

    def __init__(self, table: Table, record: DataRecord, say: Say) -> None:
        self.table, self.record, self.say = table, record, say

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:  # a stage a gate stopped is timed too
            self.record.stage_seconds[name] = round(time.perf_counter() - start, 3)

    def read(self, cache_path: Path) -> scan.Scan:
        """Pass one; the training rows go to cache_path."""
        table, record = self.table, self.record
        self.say(f"read: {table.path} ({table.format}), target '{table.target}' ({table.task})")
        next_report = [PROGRESS_ROWS]

        def progress(rows: int) -> None:
            if rows >= next_report[0]:
                self.say(f"read: {rows:,} rows")
                next_report[0] += PROGRESS_ROWS

        with self._stage("read"), _cache_writer(cache_path, table) as writer:
            scanned = scan.scan(table, record.seed, writer, progress)
        record.rows, record.split_rows = scanned.rows, scanned.split_rows
        record.evaluated_rows = {"validation": len(scanned.validation), "test": len(scanned.test)}
        record.classes, record.class_rows = list(scanned.classes), list(scanned.class_rows)
        self._rate("read", scanned.rows)
        split = scanned.split_rows
        self.say(
            f"read: {scanned.rows:,} rows in {record.stage_seconds['read']:.1f} s "
            f"({record.rows_per_second['read']:,.0f} rows/s); train {split['train']:,}, "
            f"validation {split['validation']:,}, test {split['test']:,}"
        )
        return scanned

    def _rate(self, stage: str, rows: int) -> None:
        seconds = self.record.stage_seconds[stage]
        self.record.rows_per_second[stage] = round(rows / seconds, 1) if seconds > 0 else 0.0

    def train(self, cache_path: Path, scanned: scan.Scan, settings: TrainSettings) -> fit.Fitted:
        record, metric = self.record, _metric(self.table)

        # Every epoch of a short run, about ten of a long one, and the last.
        every = math.ceil(settings.epochs / 10) if settings.epochs > 20 else 1

        def report(epoch: fit.Epoch) -> None:
            if epoch.index % every and epoch.index != settings.epochs:
                return
            self.say(
                f"train: epoch {epoch.index}/{settings.epochs}, loss {epoch.loss:.4f}, "
                f"validation {metric} {epoch.validation:.4f} ({epoch.seconds:.1f} s)"
            )

        with self._stage("train"):
            fitted = fit.fit(cache_path, scanned, self.table.task, settings, record.seed, report)
        record.best_epoch = fitted.best_epoch
        record.history = [asdict(e) for e in fitted.history]
        # The epochs' own time: the stage also pays torch's one-time imports and set-up.
        seconds = sum(e.seconds for e in fitted.history)
        rows = sum(e.rows for e in fitted.history)
        record.rows_per_second["train"] = round(rows / seconds, 1) if seconds > 0 else 0.0
        return fitted

    def evaluate(
        self,
        fitted: fit.Fitted,
        scanned: scan.Scan,
        min_accuracy: float | None,
        min_r2: float | None,
    ) -> None:
        """The test rows' figure against the floor; a gate's error stops the run."""
        record, metric = self.record, _metric(self.table)
        with self._stage("evaluate"):
            best = fitted.history[fitted.best_epoch - 1]
            record.metrics = {
                f"validation_{metric}": best.validation,
                f"test_{metric}": fit.score(fitted.module, scanned.test),
            }
            test_value = record.metrics[f"test_{metric}"]
            record.gate = _gate(self.table, scanned, test_value, min_accuracy, min_r2)
            self.say(f"evaluate: test {metric} {record.gate['value']:.4f}, {_floor_text(record)}")
            _check_gate(record)

    def export(self, fitted: fit.Fitted, scanned: scan.Scan) -> onnx.ModelProto:
        """The module as ONNX, after the parity gate on the test rows."""
        with self._stage("export"):
            model = network.to_onnx(fitted.module, len(scanned.mean))
            rows = scanned.test.features[:PARITY_ROWS]
            native = network.answer(fitted.module, rows)
            got = parity.run_onnx(model.SerializeToString(), rows)
            kind = "classifier" if self.table.task == "classification" else "regressor"
            checked = parity.check(
                kind, native, got, parity.DEFAULT_ATOL, parity.DEFAULT_RTOL, len(rows)
            )
            self.record.parity = {**checked.as_dict(), "compared": "ONNX Runtime against PyTorch"}
        return model

    def publish(self, model: onnx.ModelProto, scanned: scan.Scan, max_batch_size: int) -> None:
        record = self.record
        with self._stage("publish"):
            data = model.SerializeToString()
            scores = None
            if record.classes:
                scores = parity.run_onnx(data, scanned.reference)["probabilities"]
            drift = profile.build(
                scanned.reference, network.INPUT_NAME, scores,
                "probabilities" if record.classes else "", feature_names=self.table.features,
            )  # fmt: skip
            card = files.card_bytes(_card(record, self.table, scanned, model, max_batch_size))
            published = versioning.publish(
                Path(record.repository) / record.model,
                files.model_files(record.model, model, max_batch_size, record.classes),
                {
                    files.MODEL_FILENAME: _writer(data),
                    profile.FILENAME: lambda path: profile.save(drift, path),
                    files.CARD_FILENAME: _writer(card),
                },
            )
        record.version, record.version_dir = published.version, str(published.path)
        model_dir = published.path.parent
        record.paths = {
            "model": str(published.path / files.MODEL_FILENAME),
            "config": str(model_dir / "config.pbtxt"),
            "drift_profile": str(published.path / profile.FILENAME),
            "card": str(published.path / files.CARD_FILENAME),
        }
        if record.classes:
            record.paths["labels"] = str(model_dir / "labels.txt")


def _writer(content: bytes) -> versioning.Writer:
    def write(path: Path) -> None:
        path.write_bytes(content)

    return write


@contextmanager
def _cache_writer(path: Path, table: Table) -> Iterator[CacheWriter]:
    target = scan.cache_target_type(table)
    try:
        writer = CacheWriter(path, len(table.features), target)
    except OSError as exc:
        message = f"read: cannot write the training rows in {path.parent}: {exc}"
        raise TrainingError(message) from None
    with writer:
        yield writer


def _metric(table: Table) -> str:
    return "accuracy" if table.task == "classification" else "r2"


def _gate(
    table: Table,
    scanned: scan.Scan,
    value: float,
    min_accuracy: float | None,
    min_r2: float | None,
) -> dict[str, Any]:
    """The gate's figures. Without a floor flag the model must beat the constant answer: the
    most frequent class (its share of the test rows), or the mean (R^2 0)."""
    if table.task == "classification":
        metric, flag, floor = "accuracy", "--min-accuracy", min_accuracy
        shares = np.bincount(scanned.test.targets, minlength=len(scanned.classes))
        baseline = float(shares.max() / max(len(scanned.test), 1))
        constant = "the most frequent class's share of the test rows"
    else:
        metric, flag, floor = "r2", "--min-r2", min_r2
        baseline, constant = 0.0, "the test rows' mean (R^2 0)"
    gate: dict[str, Any] = {"metric": metric, "value": value}
    if floor is not None:
        return {**gate, "floor": floor, "floor_from": flag, "inclusive": True}
    return {**gate, "floor": baseline, "floor_from": constant, "inclusive": False}


def _floor_text(record: DataRecord) -> str:
    gate = record.gate
    relation = "at least" if gate["inclusive"] else "above"
    return f"required {relation} {gate['floor']:.4f} ({gate['floor_from']})"


def _check_gate(record: DataRecord) -> None:
    gate = record.gate
    value, floor = gate["value"], gate["floor"]
    passed = value >= floor if gate["inclusive"] else value > floor
    if passed:  # NaN (an R^2 of constant test targets) never passes
        return
    error = AccuracyBelowFloor if gate["metric"] == "accuracy" else R2BelowFloor
    raise error(
        f"evaluate: {record.model} test {gate['metric']} {value:.4f} on "
        f"{record.evaluated_rows.get('test', 0)} held-out rows; {_floor_text(record)}; "
        "not exporting or publishing"
    )


def _write_record(record: DataRecord) -> None:
    path = runs.default_path(Path(record.repository), record.model)
    record.record_path = str(path)
    record.finished_at = runs.utc_now()
    path.parent.mkdir(parents=True, exist_ok=True)
    versioning.write_if_changed(path, (json.dumps(record.as_dict(), indent=2) + "\n").encode())


def _card(
    record: DataRecord, table: Table, scanned: scan.Scan, model: onnx.ModelProto, max_batch: int
) -> dict[str, Any]:
    """The model card: the data and how it was split, the network, the figures, the versions."""
    return {
        "model": record.model,
        "task": record.task,
        "data": _card_data(record, table),
        "input": {
            "name": network.INPUT_NAME,
            "datatype": "FP32",
            "shape": [-1, len(table.features)],
        },
        "outputs": _card_outputs(record),
        "preprocessing": "standardization with the training rows' mean and std, inside the "
        "graph: clients send raw feature values",
        "standardization": {"mean": scanned.mean.tolist(), "std": scanned.std.tolist()},
        "network": {"hidden": list(DEFAULT_HIDDEN), "activation": "relu"},
        "settings": record.settings,
        "seed": record.seed,
        "best_epoch": record.best_epoch,
        "metrics": record.metrics,
        "gate": record.gate,
        "parity": record.parity,
        "converter": "torch.onnx (dynamo)",
        "opset": OPSET,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "serving": {
            "max_batch_size": max_batch,
            "max_queue_delay_microseconds": files.MAX_QUEUE_DELAY_US,
        },
        "command": record.command,
        "libraries": {**files.library_versions(), "pyarrow": metadata.version("pyarrow")},
        "created_at": runs.utc_now(),
    }


def _card_data(record: DataRecord, table: Table) -> dict[str, Any]:
    split = (
        f"per row, by a seeded draw: test {scan.TEST_FRACTION:.0%}, validation "
        f"{scan.VALIDATION_FRACTION:.0%}, the rest train"
    )
    return {
        "file": record.data,
        "format": record.format,
        "size_bytes": table.path.stat().st_size,
        "rows": record.rows,
        "target": record.target,
        "features": record.features,
        "classes": record.classes,
        "class_rows": record.class_rows,
        "split": split,
        "split_rows": record.split_rows,
        "evaluated_rows": record.evaluated_rows,
    }


def _card_outputs(record: DataRecord) -> list[dict[str, Any]]:
    if not record.classes:
        return [{"name": "prediction", "datatype": "FP32", "shape": [-1, 1]}]
    return [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(record.classes)]},
    ]
