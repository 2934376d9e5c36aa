"""`publish`: a model and a sample in, the next version of a served, monitored model out.

Steps: read the sample (and reference), make the source ONNX, run the parity gate, then write
config.pbtxt, labels.txt, the model, the drift profile and the model card, and publish the
version atomically with the training stages' publisher. Nothing is published unless every
step passed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from runtime.monitoring import profile
from runtime.publish import data, files, parity, sources
from runtime.publish import fallback as _fallback
from runtime.publish.errors import BadInput, ConversionImpossible, PublishStopped
from runtime.training import publish as versioning
from runtime.training import record as runs

RowsLike = Any  # a [N, F] array-like, or the path of a .npy / .csv file


@dataclass(slots=True)
class PublishRecord:
    """What one publish did; JSON-ready. `status` is published or failed."""

    model: str
    repository: str
    command: str
    status: str = "running"
    error: str = ""
    kind: str = ""
    version: int | None = None
    version_dir: str = ""
    # Written files by role: model, config, labels, drift_profile, card.
    paths: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    input_name: str = ""
    features: int = 0
    classes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)
    # Why the model is served as a Python model (the converter's message); empty otherwise.
    fallback: str = ""
    started_at: str = field(default_factory=runs.utc_now)
    finished_at: str = ""
    record_path: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Rows:
    rows: NDArray[np.float32]
    sha256: str
    origin: str


def _rows(value: RowsLike, role: str) -> _Rows:
    if isinstance(value, str | Path):
        path = Path(value)
        rows = data.read_rows(path, role)
        return _Rows(rows, hashlib.sha256(path.read_bytes()).hexdigest(), str(path))
    rows = data.check_rows(value, role)
    digest = hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest()
    return _Rows(rows, digest, f"array {list(rows.shape)} (sha256 of its float32 bytes)")


def _check_name(name: str) -> None:
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..",):
        raise BadInput(f"name '{name}': expected a plain folder name not starting with '.'")


def publish(
    model: Any,
    sample: RowsLike,
    *,
    repository: str | Path,
    name: str,
    reference: RowsLike | None = None,
    labels: Sequence[str] | None = None,
    max_batch_size: int = files.DEFAULT_MAX_BATCH_SIZE,
    input_name: str = "input",
    atol: float = parity.DEFAULT_ATOL,
    rtol: float = parity.DEFAULT_RTOL,
    command: str = "",
    source_file: str = "",
    fallback: str = "python",
) -> PublishRecord:
    """Publish model (a fitted scikit-learn estimator or Pipeline, a fitted XGBoost or
    LightGBM classifier, regressor or Booster, a PyTorch nn.Module or torch.export program, or
    an onnx.ModelProto) as the next version of `<repository>/<name>` and return the run's
    record. For a PyTorch module the sample's first rows are the export's example input.

    A scikit-learn model skl2onnx cannot convert (a custom transformer, say) is published as
    a Python model with fallback="python" (the default); fallback="none" raises
    ConversionImpossible (exit status 1) instead.

    Raises BadInput (exit status 2) for inputs that do not fit, ParityFailed (exit status 1)
    when ONNX Runtime and the native model disagree on the sample; nothing is published then.
    """
    _check_name(name)
    _fallback.check_choice(fallback)
    if max_batch_size < 1:
        raise BadInput(f"max_batch_size: expected a positive integer, got {max_batch_size}")
    repo = Path(repository)
    record = PublishRecord(name, str(repo), command or _api_command(name, repo))
    sample_rows = _rows(sample, "sample")
    reference_rows = _rows(reference, "reference") if reference is not None else sample_rows
    width = sample_rows.rows.shape[1]
    if reference_rows.rows.shape[1] != width:
        raise BadInput(
            f"reference '{reference_rows.origin}': {reference_rows.rows.shape[1]} columns, "
            f"expected {width} as in the sample"
        )
    origin = f"sample '{sample_rows.origin}'"
    try:
        source = sources.prepare(model, sample_rows.rows, input_name, origin)
    except ConversionImpossible as exc:
        if fallback != "python":
            raise
        source = sources.python_fallback(
            model, sample_rows.rows, input_name, str(exc).removeprefix("source: "), source_file
        )
        record.fallback = source.python.reason if source.python else ""
    classes = _classes(source, labels)
    try:
        _gate_and_publish(record, source, classes, sample_rows, reference_rows, max_batch_size,
                          atol, rtol, source_file)  # fmt: skip
        record.status = "published"
    except PublishStopped as exc:
        record.status, record.error = "failed", str(exc)
        if not isinstance(exc, BadInput):
            _write_record(record, repo)
        raise
    record.finished_at = runs.utc_now()
    _write_record(record, repo)
    return record


def _api_command(name: str, repo: Path) -> str:
    return f"conveyor.publish(model, sample, repository={str(repo)!r}, name={name!r})"


def _classes(source: sources.Source, labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return list(source.classes)
    names = [str(label) for label in labels]
    if source.classes and len(names) != len(source.classes):
        raise BadInput(
            f"labels: {len(names)} names given, the classifier has {len(source.classes)} classes"
        )
    if source.kind == "regressor":
        raise BadInput("labels: a regressor has no classes to name")
    if source.kind == "onnx" and not files.label_output(source.model, len(names)):
        raise BadInput(
            f"labels: {len(names)} names given, but no output of the ONNX graph is "
            f"[{len(names)}] wide per row"
        )
    return names


def _write_record(record: PublishRecord, repo: Path) -> None:
    path = runs.default_path(repo, record.model)
    record.record_path = str(path)
    record.finished_at = record.finished_at or runs.utc_now()
    path.parent.mkdir(parents=True, exist_ok=True)
    versioning.write_if_changed(path, (json.dumps(record.as_dict(), indent=2) + "\n").encode())


def _gate_and_publish(
    record: PublishRecord,
    source: sources.Source,
    classes: list[str],
    sample: _Rows,
    reference: _Rows,
    max_batch_size: int,
    atol: float,
    rtol: float,
    source_file: str,
) -> None:
    rows = len(sample.rows)
    record.input_name = _input_name(source.model)
    python = source.python
    model_bytes = b"" if python else source.model.SerializeToString()
    writers: dict[str, Any]
    if python is None:
        got = parity.run_onnx(model_bytes, sample.rows)
        checked = parity.check(source.kind, source.native, got, atol, rtol, rows)
        writers = {files.MODEL_FILENAME: lambda path: _write(path, model_bytes)}
    else:
        # The generated code itself, run here on the sample, against the native model.
        got = _fallback.run_generated(python, sample.rows, record.input_name)
        checked = _fallback.check(source.native or {}, got, atol, rtol, rows)
        writers = {
            _fallback.CODE_FILENAME: lambda path: _write(path, python.code),
            _fallback.JOBLIB_FILENAME: lambda path: _write(path, python.joblib),
        }
    record.kind, record.outputs = source.kind, list(got)
    record.features, record.classes = sample.rows.shape[1], classes
    record.parity = checked.as_dict()
    labelled = files.label_output(source.model, len(classes)) if classes else ""
    scores = _scores(source, model_bytes, reference.rows, labelled) if labelled else None
    drift = files.drift_profile(reference.rows, record.input_name, scores, labelled)
    record.card = _card(record, source, sample, reference, max_batch_size, source_file)
    card = files.card_bytes(record.card)
    published = versioning.publish(
        Path(record.repository) / record.model,
        files.model_files(record.model, source.model, max_batch_size, classes, python is not None),
        {
            **writers,
            profile.FILENAME: lambda path: profile.save(drift, path),
            files.CARD_FILENAME: lambda path: _write(path, card),
        },
    )
    record.version, record.version_dir = published.version, str(published.path)
    model_dir = published.path.parent
    model_file = _fallback.CODE_FILENAME if python else files.MODEL_FILENAME
    record.paths = {
        "model": str(published.path / model_file),
        "config": str(model_dir / "config.pbtxt"),
        "drift_profile": str(published.path / profile.FILENAME),
        "card": str(published.path / files.CARD_FILENAME),
    }
    if labelled:
        record.paths["labels"] = str(model_dir / "labels.txt")
    if python:
        record.paths["native_model"] = str(published.path / _fallback.JOBLIB_FILENAME)


def _scores(
    source: sources.Source, model_bytes: bytes, rows: NDArray[np.float32], labelled: str
) -> NDArray[Any]:
    """The class scores on rows, from the served graph or, for the fallback, its code."""
    if source.python is not None:
        return _fallback.run_generated(source.python, rows, _input_name(source.model))[labelled]
    return parity.run_onnx(model_bytes, rows)[labelled]


def _write(path: Path, content: bytes) -> None:
    path.write_bytes(content)


def _input_name(model: onnx.ModelProto) -> str:
    weights = {t.name for t in model.graph.initializer}
    name: str = next(i.name for i in model.graph.input if i.name not in weights)
    return name


def _card(
    record: PublishRecord,
    source: sources.Source,
    sample: _Rows,
    reference: _Rows,
    max_batch_size: int,
    source_file: str,
) -> dict[str, Any]:
    """The model card's fields: where the model came from, how it was checked, how it serves."""
    return {
        "model": record.model,
        "source": {
            "kind": source.kind,
            "library": source.library,
            "library_version": source.library_version,
            "file": source_file,
        },
        "converter": source.converter,
        "opset": source.opset,
        # Every operator domain's opset: tree ensembles are in ai.onnx.ml.
        "opsets": {o.domain or "ai.onnx": o.version for o in source.model.opset_import},
        "input": {"name": record.input_name, "datatype": "FP32", "shape": [-1, record.features]},
        "outputs": record.outputs,
        "classes": record.classes,
        "parity": record.parity,
        "sample": {"origin": sample.origin, "rows": len(sample.rows), "sha256": sample.sha256},
        "reference": {
            "origin": reference.origin,
            "rows": len(reference.rows),
            "sha256": reference.sha256,
        },
        "serving": {
            "max_batch_size": max_batch_size,
            "max_queue_delay_microseconds": files.MAX_QUEUE_DELAY_US,
        },
        "fallback": (
            {
                "backend": "python",
                "reason": record.fallback,
                "files": [_fallback.CODE_FILENAME, _fallback.JOBLIB_FILENAME],
            }
            if record.fallback
            else None
        ),
        "command": record.command,
        "libraries": files.library_versions(),
        "created_at": runs.utc_now(),
    }
