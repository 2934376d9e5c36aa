"""The runner: ingest -> preprocess -> train -> evaluate -> export -> publish, with progress.

Each stage is a plain function of its own module; this one threads their results, times them,
shows them with rich, and writes the run record, also when a gate stops the run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from numpy.typing import NDArray
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from runtime.monitoring import profile
from runtime.training import card, evaluate, export, ingest, manifest, preprocess, publish, train
from runtime.training import record as rec
from runtime.training.recipe import Recipe, TrainSettings
from runtime.training.record import RunRecord

MODEL_FILENAME = "model.onnx"


class _Stages:
    """Shows each stage as a progress line and times it into the record."""

    def __init__(self, record: RunRecord, console: Console | None) -> None:
        self._record = record
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=console is None,
        )

    def __enter__(self) -> _Stages:
        self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    @contextmanager
    def stage(self, name: str, total: int = 1) -> Iterator[train.OnEpoch]:
        """Time the block as stage `name`; the yielded callback advances it by one epoch."""
        task = self._progress.add_task(name, total=total)
        start = time.perf_counter()

        def advance(epoch: train.Epoch) -> None:
            self._progress.update(
                task,
                advance=1,
                description=f"{name}: loss {epoch.loss:.3f}, "
                f"validation accuracy {epoch.validation_accuracy:.3f}",
            )

        try:
            yield advance
        finally:  # a stage a gate stopped is timed too
            self._record.stage_seconds[name] = round(time.perf_counter() - start, 3)
        self._progress.update(task, completed=total)


@dataclass(frozen=True, slots=True)
class _Fitted:
    """What the first three stages hand to the rest."""

    dataset: ingest.Dataset
    raw_train: NDArray[np.float32]
    # Standardized splits.
    splits: ingest.Splits
    standardizer: preprocess.Standardizer
    trained: train.TrainedModel


def _standardized(raw: ingest.Splits, standardizer: preprocess.Standardizer) -> ingest.Splits:
    def one(part: ingest.Split) -> ingest.Split:
        return ingest.Split(standardizer.apply(part.features), part.labels)

    return ingest.Splits(one(raw.train), one(raw.validation), one(raw.test))


def _fit(recipe: Recipe, settings: TrainSettings, record: RunRecord, stages: _Stages) -> _Fitted:
    """ingest, preprocess and train."""
    with stages.stage("ingest"):
        dataset = ingest.load(recipe.dataset)
        raw = ingest.split(dataset, record.seed)
        record.split_sizes = raw.sizes()
        record.features = dataset.features.shape[1]
        record.class_names = list(dataset.class_names)
    with stages.stage("preprocess"):
        standardizer = preprocess.fit(raw.train.features)
        splits = _standardized(raw, standardizer)
    with stages.stage("train", total=settings.epochs) as on_epoch:
        classes = len(dataset.class_names)
        trained = train.train(
            splits.train, splits.validation, classes, settings, record.seed, on_epoch
        )
        record.best_epoch = trained.best_epoch
        record.history = [
            {"index": e.index, "loss": e.loss, "validation_accuracy": e.validation_accuracy}
            for e in trained.history
        ]
    return _Fitted(dataset, raw.train.features, splits, standardizer, trained)


def _signature(recipe: Recipe, record: RunRecord) -> manifest.Signature:
    return manifest.Signature(
        record.model,
        recipe.input_name,
        recipe.output_name,
        record.features,
        len(record.class_names),
        recipe.max_batch_size,
        recipe.max_queue_delay_us,
    )


def _version_files(fitted: _Fitted, model: bytes, record: RunRecord) -> dict[str, publish.Writer]:
    """model.onnx, pipeline.npz, drift_profile.npz and model_card.json, as writers."""
    module = fitted.trained.module
    # The profile is of what clients send (raw features) and what the model answers to them.
    drift = profile.build(
        fitted.raw_train,
        record.input_name,
        evaluate.scores(module, fitted.splits.train.features),
        record.output_name,
        feature_names=fitted.dataset.feature_names,
    )
    model_card = card.to_bytes(record)
    return {
        MODEL_FILENAME: lambda path: path.write_bytes(model),
        preprocess.ARRAYS_FILENAME: fitted.standardizer.save,
        profile.FILENAME: lambda path: profile.save(drift, path),
        card.FILENAME: lambda path: path.write_bytes(model_card),
    }


def _ship(
    recipe: Recipe, fitted: _Fitted, record: RunRecord, repository: Path, stages: _Stages
) -> None:
    """evaluate, export (with the parity gate) and publish."""
    module = fitted.trained.module
    with stages.stage("evaluate"):
        record.metrics = evaluate.metrics(module, fitted.splits)
        evaluate.check_floor(record.model, record.metrics["test_accuracy"], recipe.accuracy_floor)
    with stages.stage("export"):
        model = export.to_onnx(module, record.features, recipe.input_name, recipe.output_name)
        names = (recipe.input_name, recipe.output_name)
        parity = export.check_parity(model, module, fitted.splits.test.features, names)
        record.parity = parity.as_dict()
    with stages.stage("publish"):
        published = publish.publish(
            repository / record.model,
            manifest.files(_signature(recipe, record), record.class_names),
            _version_files(fitted, model, record),
        )
        record.version, record.version_dir = published.version, str(published.path)
        record.model_files_changed = published.changed


def run(
    recipe: Recipe,
    repository: Path,
    *,
    model_name: str | None = None,
    seed: int = 0,
    settings: TrainSettings | None = None,
    console: Console | None = None,
    record_path: Path | None = None,
) -> RunRecord:
    """Train recipe's model and publish it as the next version in repository.

    Raises TrainingError when a gate stops the run; the record is written either way (default
    `<repository>/.runs/<model>-<time>.json`). No console: no progress output.
    """
    settings = settings or recipe.settings
    record = RunRecord(
        recipe=recipe.name,
        dataset=recipe.dataset,
        model=model_name or recipe.model_name,
        repository=str(repository),
        seed=seed,
        settings=settings.as_dict(),
        input_name=recipe.input_name,
        output_name=recipe.output_name,
        accuracy_floor=recipe.accuracy_floor,
        libraries=card.library_versions(),
    )
    path = record_path or rec.default_path(repository, record.model)
    try:
        with _Stages(record, console) as stages:
            _ship(recipe, _fit(recipe, settings, record, stages), record, repository, stages)
        record.status = "published"
    except BaseException as exc:  # an interrupted run is recorded as failed too
        record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        record.finished_at = rec.utc_now()
        record.write(path)
    return record
