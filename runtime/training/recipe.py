"""What to train for each dataset: model names, tensor names, network size and the gates."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """How one MLP is trained."""

    epochs: int
    # Hidden layer widths; each is Linear + ReLU.
    hidden: tuple[int, ...]
    batch_size: int = 32
    learning_rate: float = 1e-3
    # AdamW's decoupled decay; at 1e-2 it keeps the small MLPs from overfitting the train split.
    weight_decay: float = 1e-2

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hidden": list(self.hidden)}


@dataclass(frozen=True, slots=True)
class Recipe:
    """One dataset's training run and the repository entry it publishes."""

    # Name on the command line (`conveyor train NAME`).
    name: str
    # Dataset name understood by `ingest.load`.
    dataset: str
    # Model folder in the repository unless the caller names another.
    model_name: str
    input_name: str
    settings: TrainSettings
    # Epochs of the fast settings (tests, smoke runs); everything else stays the same.
    fast_epochs: int
    # Held-out test accuracy below this stops the run before export.
    accuracy_floor: float
    output_name: str = "scores"
    max_batch_size: int = 64
    # The MLP runs in tens of microseconds, so waiting up to 0.5 ms for company costs a lone
    # request little and lets concurrent ones share a batch.
    max_queue_delay_us: int = 500

    def settings_for(self, fast: bool = False, epochs: int | None = None) -> TrainSettings:
        """The full settings, the fast ones, or either with the epoch count overridden."""
        if epochs is not None:
            if epochs < 1:
                raise ValueError(f"epochs must be >= 1, got {epochs}")
            return replace(self.settings, epochs=epochs)
        return replace(self.settings, epochs=self.fast_epochs) if fast else self.settings


DIGITS = Recipe(
    name="digits",
    dataset="digits",
    model_name="digits",
    input_name="pixels",
    settings=TrainSettings(epochs=30, hidden=(256,)),
    fast_epochs=10,
    accuracy_floor=0.95,
)

# Breast cancer rather than wine: 569 rows instead of 178 give a 114-row test split, so one
# error moves accuracy by under 1 point (wine's 36-row split: nearly 3), and 30 real-valued
# features on very different scales show why standardization matters.
TABULAR = Recipe(
    name="tabular",
    dataset="breast_cancer",
    model_name="breast_cancer",
    input_name="features",
    settings=TrainSettings(epochs=30, hidden=(64,)),
    fast_epochs=10,
    # Linear models reach about 0.95-0.97 on this set; 0.90 catches a broken run without
    # failing on the 1-2 errors a 114-row split normally shows.
    accuracy_floor=0.90,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DIGITS, TABULAR)}
