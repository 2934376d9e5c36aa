"""Model configuration: config.pbtxt read with protobuf text_format, completed from the graph.

The protobuf `ModelConfig` message stays the one source of truth (the HTTP and gRPC config
responses are rendered from it); `ModelConfig` here is the frozen view the hot path reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import json_format, text_format

from runtime import tensors
from runtime.errors import InvalidInput
from runtime.proto import model_config_pb2 as pb
from runtime.types import TensorSpec

if TYPE_CHECKING:
    from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

CONFIG_FILENAME = "config.pbtxt"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
# Triton's --backend-config=default-max-batch-size, used when the graph can batch.
DEFAULT_MAX_BATCH_SIZE = 4


class ConfigError(ValueError):
    """A model's configuration is invalid; the model is reported unavailable with this reason."""


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level."""

    timeout_action_delay: bool = False
    default_timeout_us: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """Triton's dynamic_batching block; `enabled` is False for the default scheduler."""

    enabled: bool = False
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_policy: QueuePolicy = QueuePolicy()
    priority_policies: Mapping[int, QueuePolicy] = field(default_factory=dict)
    # Conveyor's own: a p99 target for queue + compute that the batcher adapts to (0 = off).
    latency_slo_us: int = 0

    def policy(self, level: int) -> QueuePolicy:
        """The queue policy of one priority level."""
        return self.priority_policies.get(level, self.default_policy)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """What the data plane and batcher need, precomputed from the protobuf config."""

    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig
    instance_count: int
    instance_kind: str
    gpus: tuple[int, ...]
    default_model_filename: str
    parameters: Mapping[str, str]
    # The completed message this was built from; the config endpoints answer `render(config)`.
    source: pb.ModelConfig
    # Conveyor's own: batches whose run averages under this many microseconds run on the
    # event loop instead of an instance thread (0: never). See runtime/batching/batcher.py.
    inline_run_us: int = 0

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """A graph input or output as the runtime reports it; None marks a symbolic dim."""

    name: str
    datatype: str
    shape: tuple[int | None, ...]


def read_config_file(model_dir: Path) -> pb.ModelConfig:
    """Parse `<model_dir>/config.pbtxt` if present; an empty message otherwise."""
    path = model_dir / CONFIG_FILENAME
    message = pb.ModelConfig()
    if not path.is_file():
        return message
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), message)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    return message


def parse_config_json(text: str) -> pb.ModelConfig:
    """Parse a ModelConfig given as JSON (the repository load API's `config` parameter)."""
    message = pb.ModelConfig()
    try:
        json_format.Parse(text, message)
    except json_format.ParseError as exc:
        raise InvalidInput(f"invalid model config JSON: {exc}") from exc
    return message


def complete(
    message: pb.ModelConfig,
    name: str,
    graph_inputs: Sequence[GraphTensor],
    graph_outputs: Sequence[GraphTensor],
    default_filename: str = "model.onnx",
) -> pb.ModelConfig:
    """Fill what config.pbtxt left out from the graph, then normalise as Triton does.

    Which runtime the config names is checked by the backends (runtime/backends), before
    any file is read; a config that names none runs on ONNX Runtime.
    """
    out = pb.ModelConfig()
    out.CopyFrom(message)
    if out.name and out.name != name:
        raise ConfigError(f"config name '{out.name}' does not match the model directory '{name}'")
    out.name = name
    if not out.platform and not out.backend:
        out.platform = ONNX_PLATFORM
    _complete_batching(out, graph_inputs, graph_outputs)
    _complete_tensors(out.input, graph_inputs, out.max_batch_size, "input")
    _complete_tensors(out.output, graph_outputs, out.max_batch_size, "output")
    _normalise(out)
    if not out.default_model_filename:
        out.default_model_filename = default_filename
    return out


def _graph_batches(tensors_: Sequence[GraphTensor]) -> bool:
    return all(t.shape and t.shape[0] in (None, -1) for t in tensors_)


def _complete_batching(
    out: pb.ModelConfig, inputs: Sequence[GraphTensor], outputs: Sequence[GraphTensor]
) -> None:
    can_batch = _graph_batches(inputs) and _graph_batches(outputs)
    explicit = len(out.input) > 0 or out.max_batch_size > 0
    if not explicit and can_batch:
        out.max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not out.HasField("dynamic_batching") and not out.HasField("sequence_batching"):
            out.dynamic_batching.SetInParent()
    if out.max_batch_size > 0 and not can_batch:
        raise ConfigError(
            f"max_batch_size is {out.max_batch_size} but the model's first dimension is fixed; "
            "set max_batch_size: 0 for a model that does not batch"
        )
    if out.max_batch_size < 0:
        raise ConfigError(f"max_batch_size must be >= 0, got {out.max_batch_size}")


def _complete_tensors(
    configured: RepeatedCompositeFieldContainer[pb.ModelInput]
    | RepeatedCompositeFieldContainer[pb.ModelOutput],
    graph: Sequence[GraphTensor],
    max_batch_size: int,
    kind: str,
) -> None:
    by_name = {t.name: t for t in graph}
    if len(configured) == 0:
        for t in graph:
            dims = t.shape[1:] if max_batch_size > 0 else t.shape
            configured.add(
                name=t.name,
                data_type=pb.DataType.Value(tensors.config_type(t.datatype)),
                dims=[-1 if d is None else d for d in dims],
            )
        return
    for spec in configured:
        g = by_name.get(spec.name)
        if g is None:
            raise ConfigError(
                f"{kind} '{spec.name}' in config.pbtxt is not in the model; "
                f"the model's {kind}s are {sorted(by_name)}"
            )
        configured_type = tensors.from_config_type(pb.DataType.Name(spec.data_type))
        if configured_type != g.datatype:
            raise ConfigError(
                f"{kind} '{spec.name}' is {g.datatype} in the model but "
                f"{configured_type} in config.pbtxt"
            )
        _check_dims(spec, g, max_batch_size, kind)


def _check_dims(
    spec: pb.ModelInput | pb.ModelOutput, g: GraphTensor, max_batch_size: int, kind: str
) -> None:
    graph_dims = g.shape[1:] if max_batch_size > 0 else g.shape
    dims = list(spec.dims)
    if len(dims) != len(graph_dims):
        raise ConfigError(
            f"{kind} '{spec.name}' has dims {dims} in config.pbtxt but the model's shape "
            f"(without the batch dimension) has {len(graph_dims)} dimensions"
        )
    for c, m in zip(dims, graph_dims, strict=True):
        if c != -1 and m is not None and m != -1 and c != m:
            raise ConfigError(
                f"{kind} '{spec.name}' has dims {dims} in config.pbtxt, the model has "
                f"{['?' if d is None else d for d in graph_dims]}"
            )


# A thread hand-off each way costs more than this on the machines in BENCHMARKS.md, so a
# model that runs a batch this fast is better run where the requests already are.
DEFAULT_INLINE_RUN_US = 100


def _normalise(out: pb.ModelConfig) -> None:
    if not out.HasField("version_policy"):
        out.version_policy.latest.num_versions = 1
    db = out.dynamic_batching
    if out.HasField("dynamic_batching") and out.max_batch_size > 0 and not db.preferred_batch_size:
        db.preferred_batch_size.append(out.max_batch_size)
    if len(out.instance_group) == 0:
        out.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_CPU)
    for i, group in enumerate(out.instance_group):
        if not group.name:
            group.name = f"{out.name}_{i}"
        if group.count < 1:
            group.count = 1
        if group.kind == pb.ModelInstanceGroup.KIND_AUTO:
            group.kind = pb.ModelInstanceGroup.KIND_CPU


def build(message: pb.ModelConfig, model_dir: Path | None = None) -> ModelConfig:
    """Turn a completed protobuf config into the frozen view, checking what Triton checks."""
    batching = _batching(message)
    inputs = tuple(_spec(t, model_dir) for t in message.input)
    outputs = tuple(_spec(t, model_dir) for t in message.output)
    if not inputs:
        raise ConfigError("the model has no inputs")
    instance_count = sum(g.count for g in message.instance_group) or 1
    kinds = {pb.ModelInstanceGroup.Kind.Name(g.kind) for g in message.instance_group}
    gpus = tuple(sorted({gpu for g in message.instance_group for gpu in g.gpus}))
    return ModelConfig(
        name=message.name,
        platform=message.platform or message.backend,
        max_batch_size=message.max_batch_size,
        inputs=inputs,
        outputs=outputs,
        batching=batching,
        instance_count=instance_count,
        instance_kind="KIND_GPU" if "KIND_GPU" in kinds else "KIND_CPU",
        gpus=gpus,
        default_model_filename=message.default_model_filename or "model.onnx",
        parameters={k: v.string_value for k, v in message.parameters.items()},
        source=message,
        inline_run_us=_inline_run_us(message),
    )


def _inline_run_us(message: pb.ModelConfig) -> int:
    """`parameters { key: "inline_run_us" ... }`; DEFAULT_INLINE_RUN_US when absent."""
    if "inline_run_us" not in message.parameters:
        return DEFAULT_INLINE_RUN_US
    text = message.parameters["inline_run_us"].string_value.strip()
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(
            f"parameter inline_run_us must be a whole number of microseconds, got '{text}'"
        )
    return int(text)


def _spec(t: pb.ModelInput | pb.ModelOutput, model_dir: Path | None) -> TensorSpec:
    datatype = tensors.from_config_type(pb.DataType.Name(t.data_type))
    labels: tuple[str, ...] = ()
    label_filename = getattr(t, "label_filename", "")
    if label_filename and model_dir is not None:
        path = model_dir / label_filename
        if not path.is_file():
            raise ConfigError(f"label file '{label_filename}' of output '{t.name}' does not exist")
        labels = tuple(path.read_text(encoding="utf-8").splitlines())
    for d in t.dims:
        if d < -1 or d == 0:
            raise ConfigError(f"tensor '{t.name}' has an invalid dimension {d} in {list(t.dims)}")
    return TensorSpec(
        name=t.name,
        datatype=datatype,
        dims=tuple(t.dims),
        optional=getattr(t, "optional", False),
        labels=labels,
    )


def _queue_policy(p: pb.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout_action_delay=p.timeout_action == pb.ModelQueuePolicy.DELAY,
        default_timeout_us=p.default_timeout_microseconds,
        allow_timeout_override=p.allow_timeout_override,
        max_queue_size=p.max_queue_size,
    )


def _latency_slo_us(message: pb.ModelConfig) -> int:
    """`parameters { key: "latency_slo_ms" ... }`, in microseconds; 0 when absent."""
    if "latency_slo_ms" not in message.parameters:
        return 0
    text = message.parameters["latency_slo_ms"].string_value
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"parameter latency_slo_ms must be a positive number, got '{text}'")
    return round(value * 1000)


def _batching(message: pb.ModelConfig) -> BatchingConfig:
    if not message.HasField("dynamic_batching") or message.max_batch_size == 0:
        return BatchingConfig()
    db = message.dynamic_batching
    for size in db.preferred_batch_size:
        if not 1 <= size <= message.max_batch_size:
            raise ConfigError(
                f"preferred_batch_size {size} must be between 1 and max_batch_size "
                f"{message.max_batch_size}"
            )
    levels = db.priority_levels
    default_level = db.default_priority_level
    if levels > 0 and not 1 <= default_level <= levels:
        raise ConfigError(
            f"default_priority_level must be in [1, {levels}] when priority_levels is {levels}"
        )
    default_policy = _queue_policy(db.default_queue_policy)
    if db.preserve_ordering and levels > 1:
        raise ConfigError("preserve_ordering cannot be combined with more than one priority level")
    if (
        db.preserve_ordering
        and default_policy.timeout_action_delay
        and (default_policy.default_timeout_us)
    ):
        raise ConfigError(
            "preserve_ordering cannot be combined with timeout_action DELAY and a default timeout"
        )
    return BatchingConfig(
        latency_slo_us=_latency_slo_us(message),
        enabled=True,
        preferred_batch_sizes=tuple(sorted(set(db.preferred_batch_size))),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        preserve_ordering=db.preserve_ordering,
        priority_levels=levels,
        default_priority_level=default_level,
        default_policy=default_policy,
        priority_policies={k: _queue_policy(v) for k, v in db.priority_queue_policy.items()},
    )
