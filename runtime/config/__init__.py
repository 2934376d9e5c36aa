"""Configuration as one typed tree; a model's config (config.pbtxt) is in `model`.

The names callers import from `runtime.config` are re-exported here.
"""

from runtime.access import RESTRICTABLE, Restriction, parse_restrictions
from runtime.config.model import (
    CONFIG_FILENAME,
    DEFAULT_INLINE_RUN_US,
    DEFAULT_MAX_BATCH_SIZE,
    ONNX_BACKEND,
    ONNX_PLATFORM,
    BatchingConfig,
    ConfigError,
    GraphTensor,
    ModelConfig,
    QueuePolicy,
    TensorSpec,
    build,
    complete,
    parse_config_json,
    read_config_file,
    to_json,
)

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_INLINE_RUN_US",
    "DEFAULT_MAX_BATCH_SIZE",
    "ONNX_BACKEND",
    "ONNX_PLATFORM",
    "RESTRICTABLE",
    "BatchingConfig",
    "ConfigError",
    "GraphTensor",
    "ModelConfig",
    "QueuePolicy",
    "Restriction",
    "TensorSpec",
    "build",
    "complete",
    "parse_config_json",
    "parse_restrictions",
    "read_config_file",
    "to_json",
]
