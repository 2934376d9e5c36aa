"""Backends by platform: the one place where a runtime is registered.

A new runtime is one module in this package and one entry in OPENERS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime.backends.base import Backend
from runtime.backends.onnx import open_onnx
from runtime.config import ONNX_BACKEND, ONNX_PLATFORM
from runtime.proto import model_config_pb2 as pb

# (model folder, version, config message, --device) -> an open backend, or ConfigError.
Opener = Callable[[Path, int, pb.ModelConfig, str], Backend]

OPENERS: dict[str, Opener] = {
    ONNX_PLATFORM: open_onnx,
    ONNX_BACKEND: open_onnx,
}


def open_backend(model_dir: Path, version: int, message: pb.ModelConfig, device: str) -> Backend:
    """Open the backend the config's platform (or backend) names; ONNX Runtime by default.

    A platform no opener is registered for goes to ONNX Runtime too, whose config
    completion then refuses it by name.
    """
    opener = OPENERS.get(message.platform or message.backend or ONNX_PLATFORM, open_onnx)
    return opener(model_dir, version, message, device)
