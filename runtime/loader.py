"""The one factory of served model versions: from a folder and a config to a ModelInstance.

It opens the backend the platform names, completes the config from it, builds and warms
the pipeline's steps, places them on the device where the backend runs there, opens the
drift monitor, and wires the batcher and every monitor to the version's events.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime import classification, steps, tensors
from runtime import config as cfg
from runtime import pipeline as pipe
from runtime.backends import registration
from runtime.backends.base import Backend
from runtime.backends.onnx import OnnxBackend
from runtime.batching.batcher import DynamicBatcher
from runtime.config import ConfigError, ModelConfig, TensorSpec
from runtime.config.support import check_supported
from runtime.events import Events, Subscriber
from runtime.instance import ModelInstance
from runtime.monitoring import drift
from runtime.monitoring.autoscale import AutoscalePolicy, LoadWindow
from runtime.monitoring.stats import ModelStatistics
from runtime.proto import model_config_pb2 as pb

log = logging.getLogger(__name__)

# A monitor beyond the built-in ones: its subscriber to a new (model, version).
MonitorFactory = Callable[[str, str], Subscriber]


@dataclass(frozen=True, slots=True)
class InstanceSettings:
    """What the server sets for every model version it loads."""

    # auto: follow each model's instance_group; cpu/gpu: force it (--device).
    device: str = "auto"
    # Requests a version queues when its config sets no max_queue_size (0: unbounded).
    default_max_queue_size: int = 0
    autoscale: AutoscalePolicy = field(default_factory=AutoscalePolicy)
    # Drift settings every model starts from (--drift-window-*); conveyor.yaml overrides.
    drift_defaults: Mapping[str, Any] = field(default_factory=dict)
    # Subscribed after the statistics and the load window, in this order (the metrics).
    monitors: Sequence[MonitorFactory] = ()
    # The served model of (name, version) ("" for the latest), raising NotFound: how a
    # model's code calls another model in the same server (the registry's `get`).
    models: Callable[[str, str], Any] | None = None


def load_instance(
    model_dir: Path, version: int, message: pb.ModelConfig, settings: InstanceSettings
) -> ModelInstance:
    """Open, complete, check and warm one version; ConfigError says why it cannot serve."""
    # The platform is checked before any file is read.
    runtime = registration(message, model_dir / str(version))
    message = runtime.named(message)
    backend = runtime.open(model_dir, version, message, settings.device)
    bind = getattr(backend, "bind_models", None)
    if bind is not None and settings.models is not None:
        bind(settings.models)
    # A model that completes its own config (Triton's auto_complete_config) is held to it.
    own = getattr(backend, "model_config", None)
    if own is not None:
        message = own
        try:
            for section in check_supported(message, model_dir.name):
                log.warning("model '%s': config section %s is ignored", model_dir.name, section)
        except BaseException:
            backend.close()
            raise
    on_gpu = isinstance(backend, OnnxBackend) and backend.on_gpu
    if on_gpu:
        message = _pin_to_gpu(message)
    try:
        completed = cfg.complete(
            message,
            model_dir.name,
            backend.graph_inputs(),
            backend.graph_outputs(),
            runtime.default_filename,
        )
        backend.prepare(completed)
        model_config = cfg.build(completed, model_dir)
        warm_up(backend, model_config)
        version_dir = model_dir / str(version)
        model_settings = pipe.read_settings(model_dir, model_config.parameters)
        built = steps.build(model_settings.pipeline, version_dir, model_config)
        client = steps.client_config(model_settings.pipeline, built, model_config)
        monitor = _drift_monitor(client, version, version_dir, model_settings, settings)
        warm_kernels(client, monitor)
    except BaseException:
        backend.close()
        raise
    pipeline = _on_device(backend, built, client) if on_gpu else None
    if pipeline is None:
        pipeline = pipe.Pipeline(built.pre, backend, built.post, [s.name for s in client.outputs])
    return _instance(client, version, pipeline, monitor, settings)


def _instance(
    config: ModelConfig,
    version: int,
    pipeline: pipe.Pipeline,
    monitor: drift.DriftMonitor | None,
    settings: InstanceSettings,
) -> ModelInstance:
    """Wire the batcher and the monitors to one version's events."""
    statistics, load, subscribers = watchers(config, version, settings)
    if monitor is not None:
        subscribers.append(DriftTap(monitor))
    events = Events(subscribers)
    batcher = DynamicBatcher(
        config,
        pipeline.run,
        events,
        default_max_queue_size=settings.default_max_queue_size,
        inline=not pipeline.backend.thread_bound,
    )
    return ModelInstance(config, version, pipeline, batcher, events, statistics, load, monitor)


def watchers(
    config: ModelConfig, version: int, settings: InstanceSettings
) -> tuple[ModelStatistics, LoadWindow, list[Subscriber]]:
    """What every served version's events go to: its statistics, its load window and the
    server's monitors (the metrics), in this order."""
    statistics = ModelStatistics(config.name, str(version))
    load = LoadWindow(config.instance_count, settings.autoscale)
    subscribers: list[Subscriber] = [statistics, load]
    subscribers += [monitor_for(config.name, str(version)) for monitor_for in settings.monitors]
    return statistics, load, subscribers


class DriftTap(Subscriber):
    """The drift monitor's view of each batch: what clients sent and got back."""

    def __init__(self, monitor: drift.DriftMonitor) -> None:
        self.monitor = monitor

    def __repr__(self) -> str:  # named in the log when it fails (runtime/events.py)
        return f"drift monitor of {self.monitor.model_name} v{self.monitor.version}"

    def batch_ran(
        self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        self.monitor.observe(inputs, outputs)


def _on_device(backend: Backend, built: pipe.Steps, config: ModelConfig) -> pipe.Pipeline | None:
    """The IO-binding backend with the steps that have device versions, warmed on zeros;
    None, with the reason logged, where it cannot serve this model and the host path will."""
    if not isinstance(backend, OnnxBackend):
        return None
    if any(t.datatype == "BYTES" for t in (*config.inputs, *config.outputs)):
        return None
    try:
        pipeline = device_pipeline(backend, built, [s.name for s in config.outputs])
        pipeline.run({s.name: _zeros(s, config.batched) for s in config.inputs})
    except Exception as exc:
        log.warning("model '%s' runs on the GPU without IO binding: %s", config.name, exc)
        return None
    log.info(
        "model '%s' runs through IO binding; pre steps on the %s, post steps on the %s",
        config.name,
        "host" if pipeline.pre else "device",
        "host" if pipeline.post else "device",
    )
    return pipeline


def device_pipeline(
    backend: OnnxBackend, built: pipe.Steps, output_names: Sequence[str], memory: Any = None
) -> pipe.Pipeline:
    """Each stage of steps on the device when every step of it has a device version, else
    on the host; the session run through IO binding in between."""
    from runtime.backends.onnx_cuda import CudaMemory, OnnxCudaBackend, device_steps

    pre, post = device_steps(built.pre), device_steps(built.post)
    cuda = OnnxCudaBackend(backend, pre or (), post or (), memory or CudaMemory(backend.device_id))
    host_pre = built.pre if pre is None else ()
    host_post = built.post if post is None else ()
    return pipe.Pipeline(host_pre, cuda, host_post, output_names)


def _drift_monitor(
    config: ModelConfig,
    version: int,
    version_dir: Path,
    model_settings: pipe.ModelSettings,
    settings: InstanceSettings,
) -> drift.DriftMonitor | None:
    try:
        return drift.monitor_for(
            config.name,
            str(version),
            version_dir,
            model_settings.drift,
            [t.name for t in config.inputs],
            settings.drift_defaults,
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
            classification.classify(arr, 1, None, config.batched)
    if monitor is not None:
        monitor.warm(inputs, outputs)


def warm_up(backend: Backend, config: ModelConfig) -> None:
    """One run at load so no request pays the runtime's first-run cost."""
    inputs = {s.name: _zeros(s, config.batched) for s in config.inputs}
    try:
        backend.run(inputs, [o.name for o in config.outputs])
    except Exception as exc:  # a model that needs real data to run still loads
        log.warning("warm-up run of model '%s' failed: %s", config.name, exc)
