"""The model repository on disk, in Triton's layout, and loading one model version from it.

<repo>/<model>/config.pbtxt            optional
<repo>/<model>/<version>/model.onnx    numeric version folders, no leading zero
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime import config as cfg
from runtime import pipeline as pipe
from runtime import tensors
from runtime.backends.onnx import OnnxBackend, choose_providers
from runtime.config import ConfigError, ModelConfig, TensorSpec
from runtime.monitoring import drift
from runtime.proto import model_config_pb2 as pb

log = logging.getLogger(__name__)

BatchFunction = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class LoadedVersion:
    """A model version whose session is open and warmed up."""

    version: int
    # What clients see: inputs and outputs as the pipeline's steps take and give them.
    config: ModelConfig
    backend: OnnxBackend
    pipeline: pipe.Pipeline = field(default_factory=pipe.Pipeline)
    settings: pipe.ModelSettings = field(default_factory=pipe.ModelSettings)
    # Compares what clients send with the training data; None without a reference.
    drift: drift.DriftMonitor | None = None
    # On the CUDA provider: runs whole batches, steps included, through IO binding.
    device_run: BatchFunction | None = None

    def batch_function(self) -> BatchFunction:
        """What the batcher calls with each batch's inputs: pre steps, model, post steps."""
        if self.device_run is not None:
            return self.device_run
        names = [s.name for s in self.config.outputs]
        backend = self.backend

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return backend.run(inputs, names)

        return self.pipeline.wrap(run)


def list_models(root: Path) -> dict[str, Path]:
    """Model folders of a repository, by name (hidden folders are skipped)."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository '{root}' is not a directory")
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def version_folders(model_dir: Path) -> list[int]:
    """Numeric version folders, ascending; names with a leading zero are ignored, as Triton does."""
    versions = []
    for p in model_dir.iterdir():
        # isascii: str.isdigit() also accepts digits int() rejects, like "²".
        name = p.name
        if p.is_dir() and name.isascii() and name.isdigit() and not name.startswith("0"):
            versions.append(int(name))
    return sorted(versions)


def select_versions(available: list[int], message: pb.ModelConfig) -> list[int]:
    """Apply the version policy (default: the latest one)."""
    policy = message.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return available
    if kind == "specific":
        wanted = set(policy.specific.versions)
        missing = wanted - set(available)
        if missing:
            raise ConfigError(f"version policy names versions {sorted(missing)} that do not exist")
        return [v for v in available if v in wanted]
    count = policy.latest.num_versions if kind == "latest" else 1
    return available[-max(count, 1) :]


def load_version(
    model_dir: Path,
    version: int,
    message: pb.ModelConfig,
    device: str = "auto",
    drift_defaults: Mapping[str, Any] | None = None,
) -> LoadedVersion:
    """Open one version's ONNX file, complete its config from the graph and warm it up."""
    filename = message.default_model_filename or "model.onnx"
    path = model_dir / str(version) / filename
    if not path.exists():
        raise ConfigError(f"model file '{path}' does not exist")
    groups = message.instance_group
    kind = pb.ModelInstanceGroup.Kind.Name(groups[0].kind) if groups else "KIND_AUTO"
    gpu_id = groups[0].gpus[0] if groups and groups[0].gpus else 0
    parameters = {k: v.string_value for k, v in message.parameters.items()}
    try:
        backend = OnnxBackend(path, parameters, choose_providers(kind, gpu_id, device))
    except Exception as exc:
        raise ConfigError(f"ONNX Runtime cannot load '{path}': {exc}") from exc
    if backend.on_gpu:
        message = _pin_to_gpu(message)
    completed = cfg.complete(
        message, model_dir.name, backend.graph_inputs(), backend.graph_outputs()
    )
    try:
        model_config = cfg.build(completed, model_dir)
        warm_up(backend, model_config)
        settings = pipe.read_settings(model_dir, model_config.parameters)
        pipeline = pipe.build(settings.pipeline, path.parent, model_config)
        client_config = pipe.client_config(settings.pipeline, pipeline, model_config)
        monitor = _drift_monitor(client_config, version, path.parent, settings, drift_defaults)
        warm_kernels(client_config, monitor)
    except BaseException:
        backend.close()
        raise
    device_run = _device_run(backend, pipeline, client_config) if backend.on_gpu else None
    return LoadedVersion(version, client_config, backend, pipeline, settings, monitor, device_run)


def _device_run(
    backend: OnnxBackend, pipeline: pipe.Pipeline, config: ModelConfig
) -> BatchFunction | None:
    """The IO-binding runner, warmed (device kernels compiled) on zeros; None, with the
    reason logged, where it cannot serve this model and the host path will."""
    if any(t.datatype == "BYTES" for t in (*config.inputs, *config.outputs)):
        return None
    try:
        from runtime.backends.device import CudaMemory, DeviceRunner

        runner = DeviceRunner(
            backend.session,
            pipeline,
            [s.name for s in config.outputs],
            CudaMemory(backend.device_id),
        )
        runner.run({s.name: _zeros(s, config.batched) for s in config.inputs})
    except Exception as exc:
        log.warning("model '%s' runs on the GPU without IO binding: %s", config.name, exc)
        return None
    pre, post = runner.steps_on_device
    log.info(
        "model '%s' runs through IO binding; pre steps on the %s, post steps on the %s",
        config.name,
        "device" if pre else "host",
        "device" if post else "host",
    )
    return runner.run


def _drift_monitor(
    config: ModelConfig,
    version: int,
    version_dir: Path,
    settings: pipe.ModelSettings,
    defaults: Mapping[str, Any] | None,
) -> drift.DriftMonitor | None:
    try:
        return drift.monitor_for(
            config.name,
            str(version),
            version_dir,
            settings.drift,
            [t.name for t in config.inputs],
            defaults,
        )
    except (ValueError, OSError) as exc:
        raise ConfigError(f"drift monitor of model '{config.name}': {exc}") from exc


def _pin_to_gpu(message: pb.ModelConfig) -> pb.ModelConfig:
    """KIND_AUTO instances become KIND_GPU when the session runs on the CUDA provider."""
    out = pb.ModelConfig()
    out.CopyFrom(message)
    if len(out.instance_group) == 0:
        out.instance_group.add(count=1, kind=pb.ModelInstanceGroup.KIND_GPU)
    for group in out.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_AUTO:
            group.kind = pb.ModelInstanceGroup.KIND_GPU
    return out


def _zeros(spec: TensorSpec, batched: bool) -> np.ndarray:
    shape = [1 if d == -1 else d for d in spec.dims]
    if batched:
        shape.insert(0, 1)
    if spec.datatype == "BYTES":
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=tensors.numpy_dtype(spec.datatype))


def warm_kernels(config: ModelConfig, monitor: drift.DriftMonitor | None) -> None:
    """Run, on zeros of the tensors clients send and get, the Numba kernels a request or a
    batch may call outside the pipeline (whose steps warm themselves): the classification
    extension's topk on each float output, and the drift monitor's."""
    inputs = {s.name: _zeros(s, config.batched) for s in config.inputs}
    outputs = {s.name: _zeros(s, config.batched) for s in config.outputs}
    for arr in outputs.values():
        if arr.dtype.kind == "f" and arr.size:
            tensors.classify(arr, 1, None, config.batched)
    if monitor is not None:
        monitor.warm(inputs, outputs)


def warm_up(backend: OnnxBackend, config: ModelConfig) -> None:
    """One run at load so no request pays ONNX Runtime's first-run cost."""
    inputs = {s.name: _zeros(s, config.batched) for s in config.inputs}
    try:
        backend.run(inputs, [o.name for o in config.outputs])
    except Exception as exc:  # a model that needs real data to run still loads
        log.warning("warm-up run of model '%s' failed: %s", config.name, exc)
