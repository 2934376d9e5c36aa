"""The files a publish writes: config.pbtxt and labels.txt beside the versions, and in the
version the model, the drift profile and the model card."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np
import onnx
from google.protobuf import text_format
from numpy.typing import NDArray

from runtime import tensors
from runtime.monitoring import profile
from runtime.proto import model_config_pb2 as pb
from runtime.training import manifest

MODEL_FILENAME = "model.onnx"
CARD_FILENAME = "model_card.json"
# Long enough to gather the requests that arrive together, short against a tabular model's
# sub-millisecond run.
MAX_QUEUE_DELAY_US = 500
DEFAULT_MAX_BATCH_SIZE = 64
# Distributions whose versions decide what the published graph is and how it was checked.
LIBRARIES = (
    "onnx", "onnxruntime", "numpy", "scikit-learn", "skl2onnx", "onnxmltools", "xgboost",
    "xgboost-cpu", "lightgbm", "torch", "onnxscript",
)  # fmt: skip


def _tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, str, list[int]]]:
    """(name, config data type, dims without the batch axis) of each graph tensor."""
    specs = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim][1:]
        specs.append((v.name, tensors.config_type(tensors.from_onnx_type(t.elem_type)), dims))
    return specs


def label_output(model: onnx.ModelProto, classes: int) -> str:
    """The output labels.txt belongs to: `probabilities`, else the first one [classes] wide."""
    specs = _tensor_specs(model.graph.output)
    names = [name for name, _, dims in specs if name == "probabilities"]
    names += [name for name, _, dims in specs if dims == [classes]]
    return names[0] if names else ""


def config_text(
    name: str, model: onnx.ModelProto, max_batch_size: int, labelled: str = "", python: bool = False
) -> str:
    """config.pbtxt for the graph: its tensors, dynamic batching, one CPU instance; with
    python, for a Python model with the graph's tensors."""
    config = pb.ModelConfig(name=name, max_batch_size=max_batch_size)
    if python:
        config.backend = "python"
    else:
        config.platform = "onnxruntime_onnx"
    weights = {t.name for t in model.graph.initializer}
    for tensor, datatype, dims in _tensor_specs(
        [i for i in model.graph.input if i.name not in weights]
    ):
        config.input.add(name=tensor, data_type=pb.DataType.Value(datatype), dims=dims)
    for tensor, datatype, dims in _tensor_specs(model.graph.output):
        output = config.output.add(name=tensor, data_type=pb.DataType.Value(datatype), dims=dims)
        if tensor == labelled:
            output.label_filename = manifest.LABELS_FILENAME
    config.dynamic_batching.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    config.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    if not python:
        # A small tabular model gains nothing from more intra-op threads; they contend with
        # batches.
        config.parameters["intra_op_thread_count"].string_value = "1"
    text: str = text_format.MessageToString(config)
    return text


def model_files(
    name: str,
    model: onnx.ModelProto,
    max_batch_size: int,
    classes: Sequence[str],
    python: bool = False,
) -> dict[str, bytes]:
    """The model-level files: config.pbtxt, and labels.txt when there are class names."""
    labelled = label_output(model, len(classes)) if classes else ""
    config = config_text(name, model, max_batch_size, labelled, python)
    files = {manifest.CONFIG_FILENAME: config.encode()}
    if labelled:
        files[manifest.LABELS_FILENAME] = manifest.labels_text(classes).encode()
    return files


def drift_profile(
    reference: NDArray[np.float32], input_name: str, scores: NDArray[Any] | None, output: str
) -> profile.ReferenceProfile:
    """The drift monitor's reference: the reference rows, and the class scores on them."""
    return profile.build(reference, input_name, scores, output if scores is not None else "")


def library_versions() -> dict[str, str]:
    """Installed versions of LIBRARIES (those present), plus Python's."""
    found: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def card_bytes(card: dict[str, Any]) -> bytes:
    return (json.dumps(card, indent=2) + "\n").encode()
