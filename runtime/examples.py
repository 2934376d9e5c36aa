"""The bundled example repository: a small MLP, Triton's add/sub "simple" model, and an
ensemble that serves the MLP between a Python pre-processing and a Python post-processing model.

Built locally with onnx.helper from seeded weights, so a first run needs no download.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Pinned rather than onnx's newest IR so that older ONNX Runtime builds (>= 1.18, our floor)
# load the models too; IR 9 covers opset 17.
IR_VERSION = 9
# Bump when the bundled models or configs change so that stale caches are rebuilt.
MARKER_NAME = ".conveyor-example-repository"
MARKER_TEXT = "conveyor example repository v4\n"

MLP_CONFIG = """\
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "INPUT0"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_FP32
    dims: [ 10 ]
    label_filename: "labels.txt"
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 0
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
parameters {
  key: "intra_op_thread_count"
  value: { string_value: "1" }
}
"""

# The pre- and post-processing models and the ensemble below take the MLP's max_batch_size
# (64): an ensemble may not take more rows than any of its steps.
#
# Raw 8x8 images with pixels 0..16 (scikit-learn's digits) -> the MLP's 64 FP32 features.
MLP_PRE_CONFIG = """\
name: "mlp_pre"
backend: "python"
max_batch_size: 64
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 8, 8 ] } ]
output [ { name: "FEATURES" data_type: TYPE_FP32 dims: [ 64 ] } ]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

MLP_PRE_CODE = """\
import numpy as np

# The brightest pixel of a digits image: features are scaled from 0..16 to 0..1.
MAX_PIXEL = 16


class Model:
    def predict(self, inputs):
        images = inputs["IMAGE"]
        # Clipped rather than refused: the batcher may have joined this request with others,
        # and an exception would fail every request of the batch.
        pixels = np.minimum(images, MAX_PIXEL).astype(np.float32)
        return {"FEATURES": pixels.reshape(len(images), -1) / MAX_PIXEL}
"""

# The MLP's 10 logits -> softmax probabilities and the most probable class.
MLP_POST_CONFIG = """\
name: "mlp_post"
backend: "python"
max_batch_size: 64
input [ { name: "LOGITS" data_type: TYPE_FP32 dims: [ 10 ] } ]
output [
  { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 10 ] },
  { name: "LABEL" data_type: TYPE_INT64 dims: [ 1 ] }
]
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

MLP_POST_CODE = """\
import numpy as np


class Model:
    def predict(self, inputs):
        logits = inputs["LOGITS"].astype(np.float32)
        # Subtracting each row's largest logit keeps exp from overflowing.
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        label = probabilities.argmax(axis=1).astype(np.int64).reshape(-1, 1)
        return {"PROBABILITIES": probabilities, "LABEL": label}
"""

# IMAGE -> mlp_pre -> mlp -> mlp_post -> PROBABILITIES, LABEL, in one request. The steps are
# requests to the three models, batched with their direct traffic.
MLP_PIPELINE_CONFIG = """\
name: "mlp_pipeline"
platform: "ensemble"
max_batch_size: 64
input [ { name: "IMAGE" data_type: TYPE_UINT8 dims: [ 8, 8 ] } ]
output [
  { name: "PROBABILITIES" data_type: TYPE_FP32 dims: [ 10 ] },
  { name: "LABEL" data_type: TYPE_INT64 dims: [ 1 ] }
]
ensemble_scheduling {
  step [
    {
      model_name: "mlp_pre"
      model_version: -1
      input_map { key: "IMAGE" value: "IMAGE" }
      output_map { key: "FEATURES" value: "features" }
    },
    {
      model_name: "mlp"
      model_version: -1
      input_map { key: "INPUT0" value: "features" }
      output_map { key: "OUTPUT0" value: "logits" }
    },
    {
      model_name: "mlp_post"
      model_version: -1
      input_map { key: "LOGITS" value: "logits" }
      output_map { key: "PROBABILITIES" value: "PROBABILITIES" }
      output_map { key: "LABEL" value: "LABEL" }
    }
  ]
}
"""


def _make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """Wrap a graph with the opset and IR version every bundled model uses."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="conveyor",
    )
    onnx.checker.check_model(model)
    return model


def mlp_model(sizes: Sequence[int] = (64, 256, 256, 10), seed: int = 0) -> onnx.ModelProto:
    """An FP32 Gemm+Relu MLP: INPUT0 [batch, sizes[0]] -> OUTPUT0 logits [batch, sizes[-1]].

    Weights come from numpy's seeded generator: the same seed gives the same model.
    """
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {list(sizes)}")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current = "INPUT0"
    last = len(sizes) - 2
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        # He initialisation keeps activations in a sane range through the Relu stack.
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
        weights.append(numpy_helper.from_array(w.astype(np.float32), f"W{i}"))
        weights.append(numpy_helper.from_array(np.zeros(fan_out, np.float32), f"B{i}"))
        gemm_out = "OUTPUT0" if i == last else f"gemm{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"B{i}"], [gemm_out]))
        if i != last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"]))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=weights,
    )
    return _make_model(graph)


def add_sub_model() -> onnx.ModelProto:
    """Triton's "simple" model: INT32 INPUT0, INPUT1 [batch, 16] -> their sum and difference."""
    int32_io = [
        helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 16])
        for name in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        int32_io[:2],
        int32_io[2:],
    )
    return _make_model(graph)


def _write_tree(root: Path) -> None:
    """Write every file of the repository under root; the marker goes last."""
    (root / "mlp" / "1").mkdir(parents=True)
    (root / "mlp" / "1" / "model.onnx").write_bytes(mlp_model().SerializeToString())
    (root / "mlp" / "config.pbtxt").write_text(MLP_CONFIG)
    (root / "mlp" / "labels.txt").write_text("".join(f"class{i}\n" for i in range(10)))
    # No config.pbtxt for "simple": the server completes it from the graph.
    (root / "simple" / "1").mkdir(parents=True)
    (root / "simple" / "1" / "model.onnx").write_bytes(add_sub_model().SerializeToString())
    for name, config, code in (
        ("mlp_pre", MLP_PRE_CONFIG, MLP_PRE_CODE),
        ("mlp_post", MLP_POST_CONFIG, MLP_POST_CODE),
    ):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(code)
    # An ensemble's version folder holds no file; the steps name the models they call.
    (root / "mlp_pipeline" / "1").mkdir(parents=True)
    (root / "mlp_pipeline" / "config.pbtxt").write_text(MLP_PIPELINE_CONFIG)
    (root / MARKER_NAME).write_text(MARKER_TEXT)


def _is_built(path: Path) -> bool:
    """True when path holds a complete repository of the current version."""
    marker = path / MARKER_NAME
    return marker.is_file() and marker.read_text() == MARKER_TEXT


def _install(staging: Path, path: Path) -> None:
    """Move the staged tree to path; a stale build of ours is replaced, anything else is kept."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER_NAME).is_file():
            raise FileExistsError(f"{path} exists and is not a Conveyor example repository")
        stale = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.stale-"))
        path.rename(stale / path.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        # rename is atomic and replaces an empty directory; readers never see half a tree.
        staging.rename(path)
    except OSError:
        # Another process installed it first; its copy is as good as ours.
        if not _is_built(path):
            raise


def build_example_repository(path: Path) -> Path:
    """Build the example repository at path unless already built; returns path.

    The tree is staged beside path and renamed into place, so readers never see half of it.
    """
    path = Path(path)
    if _is_built(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        _write_tree(staging)
        _install(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def default_repository() -> Path:
    """The repository served when none is given; built on first use.

    `$CONVEYOR_HOME/example-repository`, else `$XDG_CACHE_HOME/conveyor/example-repository`
    (default `~/.cache`).
    """
    conveyor_home = os.environ.get("CONVEYOR_HOME")
    if conveyor_home:
        base = Path(conveyor_home).expanduser()
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(cache).expanduser() / "conveyor"
    return build_example_repository(base / "example-repository")
