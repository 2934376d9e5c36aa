"""The config endpoints' answers, rendered from the typed config: protobuf and Triton's JSON."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from runtime import tensors
from runtime.config.model import ModelConfig
from runtime.proto import model_config_pb2 as pb

# 64-bit fields protobuf's JSON printer writes as strings; Triton rewrites them as numbers.
_INT64_KEYS = frozenset(
    {
        "dims",
        "shape",
        "versions",
        "max_queue_delay_microseconds",
        "priority_levels",
        "default_priority_level",
        "default_timeout_microseconds",
        "max_sequence_idle_microseconds",
        "max_queue_size",
        "preferred_batch_size",
        "batch_size",
    }
)


def _numbers(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in _INT64_KEYS and isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def to_json(message: pb.ModelConfig) -> dict[str, Any]:
    """The config as Triton's HTTP API shows it: snake_case, defaults printed, int64 as numbers."""
    raw = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )
    result: dict[str, Any] = _numbers(raw)
    return result


def render(config: ModelConfig) -> pb.ModelConfig:
    """The config as the config endpoints answer it: the message it was built from, with each
    tensor as clients see it (a pipeline's steps may change what they send and get), so that
    the config and metadata endpoints agree (tools read either)."""
    message = pb.ModelConfig()
    message.CopyFrom(config.source)
    for entries, specs in ((message.input, config.inputs), (message.output, config.outputs)):
        by_name = {s.name: s for s in specs}
        for entry in entries:
            spec = by_name.get(entry.name)
            if spec is not None:
                entry.data_type = pb.DataType.Value(tensors.config_type(spec.datatype))
                entry.dims[:] = list(spec.dims)
    return message
