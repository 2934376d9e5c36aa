"""Backends by platform: the one place where a runtime is registered.

A new runtime is one module in this package and one entry in BACKENDS. The config's
`platform` (or `backend`) is looked up here before any model file is read, so a model
asking for a runtime Conveyor does not have is refused with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.backends.base import Backend
from runtime.backends.onnx import open_onnx
from runtime.backends.python import DEFAULT_FILENAME, PYTHON_BACKEND, open_python
from runtime.config import ONNX_BACKEND, ONNX_PLATFORM, ConfigError
from runtime.proto import model_config_pb2 as pb

# (model folder, version, config message, --device) -> an open backend, or ConfigError.
Opener = Callable[[Path, int, pb.ModelConfig, str], Backend]


@dataclass(frozen=True, slots=True)
class Registration:
    """How a platform's versions are opened, and the file a version holds by default."""

    open: Opener
    default_filename: str
    # What a config that names no runtime is completed with: a platform, or a backend.
    platform: str = ""
    backend: str = ""

    def named(self, message: pb.ModelConfig) -> pb.ModelConfig:
        """The message naming this runtime, if it named none."""
        if message.platform or message.backend:
            return message
        out = pb.ModelConfig()
        out.CopyFrom(message)
        out.platform, out.backend = self.platform, self.backend
        return out


BACKENDS: dict[str, Registration] = {
    ONNX_PLATFORM: Registration(open_onnx, "model.onnx", platform=ONNX_PLATFORM),
    ONNX_BACKEND: Registration(open_onnx, "model.onnx", platform=ONNX_PLATFORM),
    PYTHON_BACKEND: Registration(open_python, DEFAULT_FILENAME, backend=PYTHON_BACKEND),
}


def registration(message: pb.ModelConfig, version_dir: Path | None = None) -> Registration:
    """The runtime the config names; ConfigError when none is registered under a name it
    gives, or its platform and backend name different ones. A config that names none takes
    the runtime whose default file the version folder holds (model.py: Python), as Triton
    does; ONNX Runtime when it holds none of them."""
    chosen: Registration | None = None
    for kind, name in (("platform", message.platform), ("backend", message.backend)):
        if not name:
            continue
        entry = BACKENDS.get(name)
        if entry is None:
            raise ConfigError(
                f"{kind} '{name}' is not supported; expected one of {sorted(BACKENDS)}"
            )
        if chosen is not None and entry != chosen:
            raise ConfigError(
                f"platform '{message.platform}' and backend '{message.backend}' name "
                "different runtimes; give one"
            )
        chosen = entry
    if chosen is not None:
        return chosen
    if version_dir is not None and not message.default_model_filename:
        for entry in BACKENDS.values():
            if (version_dir / entry.default_filename).is_file():
                return entry
    return BACKENDS[ONNX_PLATFORM]


def open_backend(model_dir: Path, version: int, message: pb.ModelConfig, device: str) -> Backend:
    """Open one version with the runtime its config names."""
    runtime = registration(message, model_dir / str(version))
    return runtime.open(model_dir, version, runtime.named(message), device)
