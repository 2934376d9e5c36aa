"""Tiny ONNX models for the integration tests, built with onnx.helper into a repository dir.

`reference` runs the same graphs in-process with ONNX Runtime, the answer the server must match.
all_types covers every Triton datatype but BF16: ORT 1.32 has CPU Identity kernels for all the
others (BYTES included), so none is dropped.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9

# Triton datatype name (as in "IN_<DT>") -> (config.pbtxt enum, ONNX element type).
DATATYPES: dict[str, tuple[str, int]] = {
    "BOOL": ("TYPE_BOOL", TensorProto.BOOL),
    "UINT8": ("TYPE_UINT8", TensorProto.UINT8),
    "UINT16": ("TYPE_UINT16", TensorProto.UINT16),
    "UINT32": ("TYPE_UINT32", TensorProto.UINT32),
    "UINT64": ("TYPE_UINT64", TensorProto.UINT64),
    "INT8": ("TYPE_INT8", TensorProto.INT8),
    "INT16": ("TYPE_INT16", TensorProto.INT16),
    "INT32": ("TYPE_INT32", TensorProto.INT32),
    "INT64": ("TYPE_INT64", TensorProto.INT64),
    "FP16": ("TYPE_FP16", TensorProto.FLOAT16),
    "FP32": ("TYPE_FP32", TensorProto.FLOAT),
    "FP64": ("TYPE_FP64", TensorProto.DOUBLE),
    "BYTES": ("TYPE_STRING", TensorProto.STRING),
}

# (name, Triton datatype, dims without the batch dim) for one config.pbtxt input or output.
Tensor = tuple[str, str, Sequence[int]]

SLOW_MATMULS = 12  # about 2 ms per run on 2 cores; the cost does not grow with the batch


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    """A checked model with the shared opset and IR version."""
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def _io(name: str, datatype: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    """A graph input/output; a str in shape is a symbolic dim."""
    return helper.make_tensor_value_info(name, DATATYPES[datatype][1], list(shape))


def _const(name: str, value: float) -> onnx.TensorProto:
    """A scalar FP32 initializer."""
    return numpy_helper.from_array(np.array(value, np.float32), name)


def _add_sub(datatype: str) -> onnx.ModelProto:
    """INPUT0, INPUT1 [batch, 4] -> OUTPUT0 = sum, OUTPUT1 = difference."""
    io = [_io(n, datatype, ["batch", 4]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    return _model(nodes, io[:2], io[2:])


def _identity(datatype: str) -> onnx.ModelProto:
    """INPUT0 [batch, len] -> OUTPUT0, unchanged."""
    return _model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [_io("INPUT0", datatype, ["batch", "len"])],
        [_io("OUTPUT0", datatype, ["batch", "len"])],
    )


def _scale(factor: float, shape: Sequence[int | str]) -> onnx.ModelProto:
    """FP32 INPUT0 -> OUTPUT0 = INPUT0 * factor."""
    return _model(
        [helper.make_node("Mul", ["INPUT0", "factor"], ["OUTPUT0"])],
        [_io("INPUT0", "FP32", shape)],
        [_io("OUTPUT0", "FP32", shape)],
        [_const("factor", factor)],
    )


def _offset(offset: float) -> onnx.ModelProto:
    """FP32 INPUT0 [batch, 4] -> OUTPUT0 = INPUT0 + offset."""
    return _model(
        [helper.make_node("Add", ["INPUT0", "offset"], ["OUTPUT0"])],
        [_io("INPUT0", "FP32", ["batch", 4])],
        [_io("OUTPUT0", "FP32", ["batch", 4])],
        [_const("offset", offset)],
    )


def _slow() -> onnx.ModelProto:
    """FP32 INPUT0 [batch, 4] -> OUTPUT0 = INPUT0, after a fixed ~2 ms of [256, 256] MatMuls.

    The chain hangs off the batch size (rows / rows = 1) so ORT cannot constant-fold it, and
    it never mixes rows, so each request's answer is independent of its batch mates.
    """
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((256, 256)) / 16.0).astype(np.float32)
    nodes = [
        helper.make_node("Shape", ["INPUT0"], ["rows_i64"], start=0, end=1),
        helper.make_node("Cast", ["rows_i64"], ["rows"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["rows", "rows"], ["one"]),
        helper.make_node("Mul", ["W", "one"], ["a0"]),
    ]
    for i in range(SLOW_MATMULS):
        nodes.append(helper.make_node("MatMul", [f"a{i}", "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"a{i + 1}"]))
    # Tanh keeps the chain finite, so 0 * mean is exactly 0 and OUTPUT0 equals INPUT0.
    nodes += [
        helper.make_node("ReduceMean", [f"a{SLOW_MATMULS}"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["INPUT0", "nothing"], ["OUTPUT0"]),
    ]
    return _model(
        nodes,
        [_io("INPUT0", "FP32", ["batch", 4])],
        [_io("OUTPUT0", "FP32", ["batch", 4])],
        [numpy_helper.from_array(w, "W"), _const("zero", 0.0)],
    )


def _gather() -> onnx.ModelProto:
    """INT64 INPUT0 [batch, 1] indices into a constant [0, 10, ..., 90] -> FP32 OUTPUT0.

    An index outside 0..9 makes ONNX Runtime fail inside the run: a model fault on demand.
    """
    table = np.arange(10, dtype=np.float32) * 10
    return _model(
        [helper.make_node("Gather", ["table", "INPUT0"], ["OUTPUT0"])],
        [_io("INPUT0", "INT64", ["batch", 1])],
        [_io("OUTPUT0", "FP32", ["batch", 1])],
        [numpy_helper.from_array(table, "table")],
    )


def _all_types() -> onnx.ModelProto:
    """IN_<DT> [batch, 3] -> OUT_<DT>, an Identity for each datatype in DATATYPES."""
    return _model(
        [helper.make_node("Identity", [f"IN_{dt}"], [f"OUT_{dt}"]) for dt in DATATYPES],
        [_io(f"IN_{dt}", dt, ["batch", 3]) for dt in DATATYPES],
        [_io(f"OUT_{dt}", dt, ["batch", 3]) for dt in DATATYPES],
    )


# (model name, version) -> the graph served there; "corrupt" has none on purpose.
GRAPHS: dict[tuple[str, int], Callable[[], onnx.ModelProto]] = {
    ("add_sub_fp32", 1): lambda: _add_sub("FP32"),
    ("add_sub_int32", 1): lambda: _add_sub("INT32"),
    ("identity_fp16", 1): lambda: _identity("FP16"),
    ("identity_bytes", 1): lambda: _identity("BYTES"),
    ("nobatch_fp32", 1): lambda: _scale(2.0, [2, 3]),
    ("two_versions", 1): lambda: _offset(1.0),
    ("two_versions", 2): lambda: _offset(2.0),
    ("noconfig", 1): lambda: _scale(3.0, ["batch", 3]),
    ("slow_fp32", 1): _slow,
    ("queued_fp32", 1): lambda: _offset(0.5),
    ("faulty_gather", 1): _gather,
    ("all_types", 1): _all_types,
}


def config_text(
    name: str,
    max_batch_size: int,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    extra: str = "",
    labels: dict[str, str] | None = None,
) -> str:
    """config.pbtxt text for an onnxruntime_onnx model; labels maps output -> label file."""
    labels = labels or {}

    def block(name: str, datatype: str, dims: Sequence[int]) -> str:
        label = f' label_filename: "{labels[name]}"' if name in labels else ""
        enum = DATATYPES[datatype][0]
        dims_text = ", ".join(str(d) for d in dims)
        return f'  {{ name: "{name}" data_type: {enum} dims: [ {dims_text} ]{label} }}'

    input_text = ",\n".join(block(*t) for t in inputs)
    output_text = ",\n".join(block(*t) for t in outputs)
    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        f"input [\n{input_text}\n]\noutput [\n{output_text}\n]\n{extra}"
    )


def write_config(model_dir: Path, text: str) -> Path:
    """Write model_dir/config.pbtxt and return its path."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    return path


def write_model(root: Path, name: str, version: int = 1) -> Path:
    """Write the graph registered for (name, version) to root/name/version/model.onnx."""
    version_dir = root / name / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(GRAPHS[name, version]().SerializeToString())
    return root / name


ONE_INSTANCE = "instance_group [ { count: 1 kind: KIND_CPU } ]\n"


def add_sub_fp32(root: Path) -> Path:
    """FP32 add/sub, dynamic batching, a label file on OUTPUT0."""
    model_dir = write_model(root, "add_sub_fp32")
    io: list[Tensor] = [("INPUT0", "FP32", [4]), ("INPUT1", "FP32", [4])]
    out: list[Tensor] = [("OUTPUT0", "FP32", [4]), ("OUTPUT1", "FP32", [4])]
    extra = "dynamic_batching { max_queue_delay_microseconds: 2000 }\n" + ONE_INSTANCE
    text = config_text("add_sub_fp32", 8, io, out, extra, {"OUTPUT0": "labels.txt"})
    write_config(model_dir, text)
    (model_dir / "labels.txt").write_text("".join(f"label{i}\n" for i in range(4)))
    return model_dir


def add_sub_int32(root: Path) -> Path:
    """INT32 add/sub without dynamic batching: each request runs on its own."""
    model_dir = write_model(root, "add_sub_int32")
    io: list[Tensor] = [("INPUT0", "INT32", [4]), ("INPUT1", "INT32", [4])]
    out: list[Tensor] = [("OUTPUT0", "INT32", [4]), ("OUTPUT1", "INT32", [4])]
    write_config(model_dir, config_text("add_sub_int32", 8, io, out))
    return model_dir


def identity_fp16(root: Path) -> Path:
    """FP16 Identity with a variable-length dim."""
    model_dir = write_model(root, "identity_fp16")
    io: list[Tensor] = [("INPUT0", "FP16", [-1])]
    out: list[Tensor] = [("OUTPUT0", "FP16", [-1])]
    write_config(model_dir, config_text("identity_fp16", 8, io, out))
    return model_dir


def identity_bytes(root: Path) -> Path:
    """BYTES (ONNX STRING) Identity with a variable-length dim."""
    model_dir = write_model(root, "identity_bytes")
    io: list[Tensor] = [("INPUT0", "BYTES", [-1])]
    out: list[Tensor] = [("OUTPUT0", "BYTES", [-1])]
    write_config(model_dir, config_text("identity_bytes", 8, io, out))
    return model_dir


def nobatch_fp32(root: Path) -> Path:
    """max_batch_size 0: INPUT0 [2, 3] is the full shape; OUTPUT0 = INPUT0 * 2."""
    model_dir = write_model(root, "nobatch_fp32")
    io: list[Tensor] = [("INPUT0", "FP32", [2, 3])]
    out: list[Tensor] = [("OUTPUT0", "FP32", [2, 3])]
    write_config(model_dir, config_text("nobatch_fp32", 0, io, out))
    return model_dir


def two_versions(root: Path) -> Path:
    """Versions 1 (x + 1) and 2 (x + 2), both served under version_policy all."""
    write_model(root, "two_versions", 1)
    model_dir = write_model(root, "two_versions", 2)
    io: list[Tensor] = [("INPUT0", "FP32", [4])]
    out: list[Tensor] = [("OUTPUT0", "FP32", [4])]
    extra = "version_policy: { all {} }\n"
    write_config(model_dir, config_text("two_versions", 8, io, out, extra))
    return model_dir


def noconfig(root: Path) -> Path:
    """FP32 INPUT0 [batch, 3] -> INPUT0 * 3 with no config.pbtxt; the server must complete it."""
    return write_model(root, "noconfig")


def corrupt(root: Path) -> Path:
    """A plausible config over a model.onnx of garbage: must load as UNAVAILABLE, alone."""
    version_dir = root / "corrupt" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(b"not an onnx model")
    io: list[Tensor] = [("INPUT0", "FP32", [4])]
    out: list[Tensor] = [("OUTPUT0", "FP32", [4])]
    write_config(root / "corrupt", config_text("corrupt", 8, io, out))
    return root / "corrupt"


def slow_fp32(root: Path) -> Path:
    """A few ms per run whatever the batch, with a 20 ms queue delay, so batches form."""
    model_dir = write_model(root, "slow_fp32")
    io: list[Tensor] = [("INPUT0", "FP32", [4])]
    out: list[Tensor] = [("OUTPUT0", "FP32", [4])]
    extra = "dynamic_batching { max_queue_delay_microseconds: 20000 }\n" + ONE_INSTANCE
    write_config(model_dir, config_text("slow_fp32", 32, io, out, extra))
    return model_dir


def queued_fp32(root: Path) -> Path:
    """x + 0.5, held in the queue for up to 60 s until 8 rows make a batch; at most 4 queued.

    Requests may set their own queue timeout; the queue policy tests rely on nothing
    leaving the queue before a full batch or a timeout.
    """
    model_dir = write_model(root, "queued_fp32")
    io: list[Tensor] = [("INPUT0", "FP32", [4])]
    out: list[Tensor] = [("OUTPUT0", "FP32", [4])]
    extra = (
        "dynamic_batching {\n"
        "  max_queue_delay_microseconds: 60000000\n"
        "  default_queue_policy { max_queue_size: 4 allow_timeout_override: true }\n"
        "}\n" + ONE_INSTANCE
    )
    write_config(model_dir, config_text("queued_fp32", 8, io, out, extra))
    return model_dir


def faulty_gather(root: Path) -> Path:
    """Fails inside ONNX Runtime for an index outside 0..9; no config (completed)."""
    return write_model(root, "faulty_gather")


def all_types(root: Path) -> Path:
    """IN_<DT> -> OUT_<DT> Identity for every datatype in DATATYPES, dims [3]."""
    model_dir = write_model(root, "all_types")
    io: list[Tensor] = [(f"IN_{dt}", dt, [3]) for dt in DATATYPES]
    out: list[Tensor] = [(f"OUT_{dt}", dt, [3]) for dt in DATATYPES]
    write_config(model_dir, config_text("all_types", 8, io, out))
    return model_dir


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "add_sub_fp32": add_sub_fp32,
    "add_sub_int32": add_sub_int32,
    "identity_fp16": identity_fp16,
    "identity_bytes": identity_bytes,
    "nobatch_fp32": nobatch_fp32,
    "two_versions": two_versions,
    "noconfig": noconfig,
    "corrupt": corrupt,
    "slow_fp32": slow_fp32,
    "queued_fp32": queued_fp32,
    "faulty_gather": faulty_gather,
    "all_types": all_types,
}
MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def build_test_repository(root: Path) -> Path:
    """Write every test model under root and return root."""
    root.mkdir(parents=True, exist_ok=True)
    for build in BUILDERS.values():
        build(root)
    return root


@functools.cache
def _session(name: str, version: int) -> ort.InferenceSession:
    """One cached CPU session per (name, version)."""
    data = GRAPHS[name, version]().SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _to_ort(array: np.ndarray) -> np.ndarray:
    """BYTES as ORT wants them: it str()s bytes objects ("b'a'") and cuts S arrays at NUL."""
    if array.dtype.kind not in "OS":
        return array
    flat = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.flat]
    return np.array(flat, dtype=object).reshape(array.shape)


def _from_ort(array: np.ndarray) -> np.ndarray:
    """ORT returns STRING tensors as str; tritonclient hands BYTES back as bytes."""
    if array.dtype != object:
        return array
    flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.flat]
    return np.array(flat, dtype=object).reshape(array.shape)


def reference(name: str, inputs: dict[str, np.ndarray], version: int = 1) -> dict[str, np.ndarray]:
    """Run the model in-process with ONNX Runtime: the outputs the server must return.

    BYTES go in and come out as bytes objects (UTF-8 on the ORT side), as tritonclient shows them.
    """
    if (name, version) not in GRAPHS:
        raise KeyError(f"no reference graph for {name!r} version {version}")
    session = _session(name, version)
    names = [o.name for o in session.get_outputs()]
    feeds = {key: _to_ort(value) for key, value in inputs.items()}
    outputs = session.run(names, feeds)
    return {key: _from_ort(value) for key, value in zip(names, outputs, strict=True)}


# A batched Python model on FP32 [4] rows, x -> y, one worker, dynamic batching.
PYTHON_FP32 = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def python_fp32(root: Path, name: str, code: str) -> Path:
    """A PYTHON_FP32 model whose version 1 is `code` (dedented) as model.py."""
    model_dir = root / name
    (model_dir / "1").mkdir(parents=True)
    write_config(model_dir, PYTHON_FP32.format(name=name))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(code))
    return model_dir
