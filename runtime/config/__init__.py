"""Configuration as one typed tree: model configs in `model`, the server's settings in `server`.

Every name callers import from `runtime.config` is re-exported here.
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
    build,
    complete,
    parse_config_json,
    read_config_file,
)
from runtime.config.render import render, to_json
from runtime.config.server import DEFAULT_MAX_INPUT_SIZE, ServerConfig
from runtime.types import TensorSpec

__all__ = [
    "CONFIG_FILENAME",
    "DEFAULT_INLINE_RUN_US",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_INPUT_SIZE",
    "ONNX_BACKEND",
    "ONNX_PLATFORM",
    "RESTRICTABLE",
    "BatchingConfig",
    "ConfigError",
    "GraphTensor",
    "ModelConfig",
    "QueuePolicy",
    "Restriction",
    "ServerConfig",
    "TensorSpec",
    "build",
    "complete",
    "parse_config_json",
    "parse_restrictions",
    "read_config_file",
    "render",
    "to_json",
]
