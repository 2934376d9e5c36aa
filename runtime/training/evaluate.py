"""Evaluate: class scores and accuracy on standardized features, and the accuracy floor."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from runtime.training.errors import AccuracyBelowFloor
from runtime.training.ingest import Split, Splits


def scores(module: torch.nn.Module, features: NDArray[np.float32]) -> NDArray[np.float32]:
    """The module's logits [N, C] for standardized features [N, F], in eval mode."""
    module.eval()
    with torch.no_grad():
        out: NDArray[np.float32] = module(torch.from_numpy(features)).numpy()
    return out


def accuracy(module: torch.nn.Module, split: Split) -> float:
    """Share of the split's rows (standardized) whose highest score is the label."""
    predicted = np.argmax(scores(module, split.features), axis=1)
    return float(np.mean(predicted == split.labels))


def check_floor(model: str, test_accuracy: float, floor: float) -> None:
    """Raise AccuracyBelowFloor when the held-out accuracy is under the floor."""
    if test_accuracy < floor:
        raise AccuracyBelowFloor(
            f"evaluate: {model} test accuracy {test_accuracy:.4f} is below the floor "
            f"{floor:.4f}; not exporting or publishing"
        )


def metrics(module: torch.nn.Module, splits: Splits) -> dict[str, float]:
    """Accuracy on each standardized split, keyed `<split>_accuracy`."""
    return {
        f"{name}_accuracy": accuracy(module, part)
        for name, part in (
            ("train", splits.train),
            ("validation", splits.validation),
            ("test", splits.test),
        )
    }
