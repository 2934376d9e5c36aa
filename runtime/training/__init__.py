"""Training stages that export to ONNX and publish into a model repository.

One module per stage (ingest, preprocess, train, evaluate, export, publish) and a runner
(`pipeline.run`). torch and scikit-learn are imported only when a run starts, so that
`runtime.training.publish` and the record can be used without them; the server imports
none of this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runtime.training.errors import AccuracyBelowFloor, ParityError, PublishError, TrainingError
from runtime.training.publish import versions
from runtime.training.recipe import DIGITS, RECIPES, TABULAR, Recipe, TrainSettings
from runtime.training.record import RunRecord, summary

if TYPE_CHECKING:
    from rich.console import Console

    from runtime.training.ingest import Split

__all__ = [
    "DIGITS",
    "RECIPES",
    "TABULAR",
    "AccuracyBelowFloor",
    "ParityError",
    "PublishError",
    "Recipe",
    "RunRecord",
    "TrainSettings",
    "TrainingError",
    "digits",
    "has_version",
    "held_out",
    "run",
    "summary",
    "tabular",
]


def run(
    recipe: Recipe,
    repository: Path,
    *,
    model_name: str | None = None,
    seed: int = 0,
    fast: bool = False,
    epochs: int | None = None,
    console: Console | None = None,
) -> RunRecord:
    """Train and publish recipe's model into repository; see `pipeline.run`."""
    from runtime.training import pipeline

    settings = recipe.settings_for(fast, epochs)
    return pipeline.run(
        recipe,
        Path(repository),
        model_name=model_name,
        seed=seed,
        settings=settings,
        console=console,
    )


def digits(repository: Path, *, fast: bool = False, seed: int = 0) -> RunRecord:
    """Train the digits MLP and publish it as `<repository>/digits/<next version>`."""
    return run(DIGITS, repository, fast=fast, seed=seed)


def tabular(repository: Path, *, fast: bool = False, seed: int = 0) -> RunRecord:
    """Train the breast-cancer MLP and publish it as `<repository>/breast_cancer/<next>`."""
    return run(TABULAR, repository, fast=fast, seed=seed)


def has_version(model_dir: Path) -> bool:
    """True when model_dir holds at least one numeric version folder."""
    return bool(versions(model_dir))


def held_out(record: RunRecord) -> Split:
    """The raw (unstandardized) test rows and labels a run held out, re-derived from its seed."""
    from runtime.training import ingest

    return ingest.split(ingest.load(record.dataset), record.seed).test
