"""The model card: `model_card.json` in each version folder, a digest of the run record."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import Any

from runtime.training.record import RunRecord, utc_now

FILENAME = "model_card.json"
# Distributions whose versions decide what the exported model is and how it was checked.
LIBRARIES = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "scikit-learn")


def library_versions() -> dict[str, str]:
    """Installed versions of LIBRARIES, plus Python's."""
    versions = {name: metadata.version(name) for name in LIBRARIES}
    versions["python"] = platform.python_version()
    return versions


def build(record: RunRecord) -> dict[str, Any]:
    """The card's fields, taken from the record of the run that made the version."""
    return {
        "model": record.model,
        "dataset": {
            "name": record.dataset,
            "source": f"sklearn.datasets.load_{record.dataset}",
            "features": record.features,
            "classes": record.class_names,
            "split": "stratified train/validation/test",
            "split_sizes": record.split_sizes,
        },
        "input": {"name": record.input_name, "datatype": "FP32", "shape": [-1, record.features]},
        "output": {
            "name": record.output_name,
            "datatype": "FP32",
            "shape": [-1, len(record.class_names)],
            "meaning": "logits; the server's softmax post step turns them into probabilities",
        },
        "preprocessing": "standardize with pipeline.npz mean/std, run by the server",
        "metrics": record.metrics,
        "accuracy_floor": record.accuracy_floor,
        "parity": record.parity,
        "seed": record.seed,
        "settings": record.settings,
        "best_epoch": record.best_epoch,
        "libraries": record.libraries,
        "created_at": utc_now(),
    }


def to_bytes(record: RunRecord) -> bytes:
    return (json.dumps(build(record), indent=2) + "\n").encode()
