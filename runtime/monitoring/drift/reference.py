"""A model version's drift reference at load: its drift_profile.npz or a profile built from
sample rows, and the monitor that compares its traffic with it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from runtime.monitoring import profile as profiles
from runtime.monitoring.drift.config import DriftSettings
from runtime.monitoring.drift.monitor import DriftMonitor
from runtime.monitoring.profile import ReferenceProfile


def predicted_classes(y: np.ndarray) -> NDArray[np.int64]:
    """Class per row: an integer [N] or [N, 1] output is labels already; scores are argmaxed."""
    rows = y.reshape(y.shape[0], -1)
    if y.dtype.kind in "iu" and rows.shape[1] == 1:
        return np.asarray(rows[:, 0], np.int64)
    return np.asarray(np.argmax(rows, axis=1), np.int64)


def from_samples(
    path: Path | str,
    input_name: str,
    output_name: str = "",
    bins: int = profiles.DEFAULT_BINS,
    feature_names: tuple[str, ...] = (),
) -> ReferenceProfile:
    """A profile built from a .npz of sample rows: an array named after the model's input and,
    optionally, one named after its output (scores [N, C] or integer labels [N])."""
    with np.load(path, allow_pickle=False) as data:
        if input_name not in data.files:
            raise ValueError(f"reference samples '{path}' have no array '{input_name}'")
        inputs = np.asarray(data[input_name])
        outputs = np.asarray(data[output_name]) if output_name in data.files else None
    if outputs is not None and len(outputs) != len(inputs):
        raise ValueError(
            f"reference samples '{path}': {len(outputs)} rows of '{output_name}' "
            f"for {len(inputs)} rows of '{input_name}'"
        )
    if outputs is not None:
        outputs = _one_hot_labels(outputs)
    return profiles.build(inputs, input_name, outputs, output_name if outputs is not None else "",
                          bins, feature_names)  # fmt: skip


def _one_hot_labels(outputs: np.ndarray) -> np.ndarray:
    """Scores pass through; integer labels become one-hot so that `build` argmaxes them back."""
    labels = predicted_classes(outputs)
    if outputs.dtype.kind not in "iu" or outputs.reshape(len(outputs), -1).shape[1] != 1:
        return outputs
    if labels.size and labels.min() < 0:
        raise ValueError("class labels must be >= 0")
    return np.eye(int(labels.max(initial=0)) + 1)[labels]


# Keys of a model's `drift:` section that choose the monitor rather than tune it.
ENABLED_KEY = "enabled"
REFERENCE_KEY = "reference"


def monitor_for(
    model_name: str,
    version: str,
    version_dir: Path,
    doc: Mapping[str, Any] | None,
    input_names: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> DriftMonitor | None:
    """The monitor a model version gets, or None when it has no reference to compare with.

    The reference is the version's drift_profile.npz, or, when the model's `drift:` section
    names `reference: FILE`, a .npz of sample rows (in the version folder, else the model
    folder) built into a profile now. `enabled: false` turns the monitor off. The server's
    defaults (--drift-window-*) apply under the model's own settings. ValueError says what
    is wrong.
    """
    section = dict(doc or {})
    enabled = section.pop(ENABLED_KEY, True)
    reference = section.pop(REFERENCE_KEY, None)
    if not isinstance(enabled, bool):
        raise ValueError(f"drift setting '{ENABLED_KEY}' must be true or false, got {enabled!r}")
    settings = DriftSettings.from_mapping({**(defaults or {}), **section})
    if not enabled:
        return None
    profile = _reference_profile(version_dir, reference, input_names)
    if profile is None:
        return None
    names = set(input_names)
    if profile.input_name not in names:
        raise ValueError(
            f"the drift profile watches input '{profile.input_name}', but the model's inputs "
            f"are {sorted(names)}"
        )
    return DriftMonitor(profile, settings, model_name, version)


def _reference_profile(
    version_dir: Path, reference: Any, input_names: Iterable[str]
) -> ReferenceProfile | None:
    if reference is None:
        path = version_dir / profiles.FILENAME
        return profiles.load(path) if path.is_file() else None
    if not isinstance(reference, str):
        raise ValueError(f"drift setting '{REFERENCE_KEY}' must be a file name, got {reference!r}")
    candidates = [version_dir / reference, version_dir.parent / reference]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ValueError(
            f"drift reference '{reference}' is in neither '{version_dir}' "
            f"nor '{version_dir.parent}'"
        )
    path = found
    names = sorted(input_names)
    with np.load(path, allow_pickle=False) as data:
        watched = next((n for n in names if n in data.files), None)
        outputs = [n for n in data.files if n not in names]
    if watched is None:
        raise ValueError(f"drift reference '{path}' holds none of the model's inputs {names}")
    return from_samples(path, watched, outputs[0] if len(outputs) == 1 else "")
