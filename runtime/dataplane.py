"""The one protocol-neutral entry point: both the HTTP and gRPC adapters call only this.

Inference goes to the model instance the registry serves for (name, version), which checks
the request (bad input never reaches the model) and queues it in its batcher; the rest
renders metadata, config, statistics, autoscaling signals and the repository index.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

from runtime import __version__
from runtime import config as cfg
from runtime.errors import InvalidInput, NotFound, Unavailable
from runtime.logs import CallLog, LogSettings
from runtime.monitoring.tracing import Tracing
from runtime.proto import model_config_pb2 as pb
from runtime.registry import Registry
from runtime.types import InferenceRequest, InferenceResponse, TensorSpec

SERVER_NAME = "conveyor"
# Only what is really implemented; perf_analyzer reads this list.
EXTENSIONS = (
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
    "trace",
    "logging",
)


class DataPlane:
    """Inference and the read-only APIs over the registry."""

    def __init__(
        self,
        registry: Registry,
        model_control_mode: str = "none",
        *,
        calls: CallLog | None = None,
        logs: LogSettings | None = None,
    ) -> None:
        self.registry = registry
        self.model_control_mode = model_control_mode
        # Request ids, traces and log lines of inference calls; the logging extension.
        self.calls = calls or CallLog()
        self.tracing: Tracing = self.calls.tracing
        self.logs = logs or LogSettings()
        self.live = True
        self.ready = False
        # time.monotonic() when the latest inference request arrived (0.0: none yet); a
        # stopping server waits for a quiet moment before it stops listening.
        self.last_request_s = 0.0

    # -- health and metadata ------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_ready(self, name: str, version: str = "") -> bool:
        return self.ready and self.registry.is_ready(name, version)

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        model = self.registry.get(name, version)
        c = model.config
        versions = [version] if version else self._ready_versions(name)
        return {
            "name": name,
            "versions": versions,
            "platform": c.platform,
            "inputs": [
                {
                    "name": s.name,
                    "datatype": s.datatype,
                    "shape": s.metadata_shape(c.max_batch_size),
                }
                for s in c.inputs
            ],
            "outputs": [
                {
                    "name": s.name,
                    "datatype": s.datatype,
                    "shape": s.metadata_shape(c.max_batch_size),
                }
                for s in c.outputs
            ],
        }

    def _ready_versions(self, name: str) -> list[str]:
        return [m.version for m in self.registry.models() if m.name == name and m.ready]

    def single_input(self, name: str, version: str = "") -> tuple[TensorSpec, bool]:
        """The only input of a one-input model (for bodies that carry just its bytes)."""
        c = self.registry.get(name, version).config
        if len(c.inputs) != 1:
            raise InvalidInput(
                f"a raw binary body (Inference-Header-Content-Length: 0) needs a model with "
                f"exactly one input; '{name}' has {len(c.inputs)}"
            )
        return c.inputs[0], c.batched

    def model_config(self, name: str, version: str = "") -> pb.ModelConfig:
        return cfg.render(self.registry.get(name, version).config)

    def model_config_json(self, name: str, version: str = "") -> dict[str, Any]:
        return cfg.to_json(self.model_config(name, version))

    # -- statistics and repository ------------------------------------------------------

    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if name:
            if version:
                models = [self.registry.get(name, version)]
            else:
                models = [m for m in self.registry.models() if m.name == name]
                if not models:
                    raise NotFound(f"Request for unknown model: '{name}' is not found")
        else:
            models = list(self.registry.models())
        return {"model_stats": [m.statistics.to_dict() for m in models]}

    def drift(self, name: str, version: str = "") -> dict[str, Any]:
        """The drift report of one version (the latest ready one when none is named)."""
        model = self.registry.get(name, version)
        if model.drift is None:
            raise NotFound(
                f"model '{name}' version {model.version} has no drift monitor: publish a "
                "drift_profile.npz with the version, or name sample rows with `drift: "
                "{reference: FILE}` in its conveyor.yaml"
            )
        return model.drift.report()

    def trace_settings(self, model: str = "") -> dict[str, Any]:
        """The trace extension's settings: global, or as they apply to a served model."""
        if model:
            self.registry.get(model)
        return self.tracing.settings(model)

    async def update_trace_settings(self, model: str, changes: dict[str, Any]) -> dict[str, Any]:
        if model:
            self.registry.get(model)
        return await self.tracing.update(model, changes)

    def autoscale(self) -> dict[str, Any]:
        """Each model's load signals (versions summed), shaped for KEDA's metrics-api scaler.

        KEDA reads one number by path, e.g. `valueLocation: models.mlp.in_flight_avg`.
        """
        models: dict[str, dict[str, Any]] = {}
        for m in self.registry.models():
            signals = m.signals()
            models[m.name] = _merge(models[m.name], signals) if m.name in models else signals
        total = {k: sum(s[k] for s in models.values()) for k in _ADDITIVE}
        total["desired_replicas"] = max((s["desired_replicas"] for s in models.values()), default=0)
        return {"models": models, "total": total}

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        return self.registry.index(self.registry.repository_models(), ready_only)

    async def load_model(self, name: str, config_json: str | None = None) -> None:
        self._require_explicit("load")
        override = cfg.parse_config_json(config_json) if config_json else None
        entry = await self.registry.load(name, override)
        if entry.errors or not entry.versions:
            # A failed reload leaves what served before serving; the caller still hears of it.
            reasons = entry.errors or [r for _, r in entry.states.values()]
            reasons = reasons or [entry.model_state[1] if entry.model_state else "unknown"]
            raise InvalidInput(f"failed to load '{name}': {'; '.join(reasons)}")

    async def unload_model(self, name: str) -> None:
        self._require_explicit("unload")
        await self.registry.unload(name)

    def _require_explicit(self, what: str) -> None:
        if self.model_control_mode != "explicit":
            raise Unavailable(
                f"explicit model {what} is not allowed: the server runs with "
                f"--model-control-mode={self.model_control_mode}; start it with "
                "--model-control-mode=explicit to load and unload models"
            )

    # -- inference ----------------------------------------------------------------------

    def infer(self, request: InferenceRequest) -> Coroutine[Any, Any, InferenceResponse]:
        """Hand the request to the version it names (the latest ready one by default); the
        adapter awaits the instance's own coroutine, one frame less on every request."""
        self.last_request_s = time.monotonic()
        model = self.registry.get(request.model_name, request.model_version)
        if not self.ready:
            model.refuse(request, Unavailable("the server is not ready"))
        return model.infer(request)


_ADDITIVE = ("queue_depth", "in_flight", "in_flight_avg", "arrival_rate", "completion_rate")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two versions of one model: loads add up, the larger replica demand wins."""
    merged = dict(a)
    for key in _ADDITIVE:
        merged[key] = a[key] + b[key]
    merged["utilisation"] = max(a["utilisation"], b["utilisation"])
    merged["desired_replicas"] = max(a["desired_replicas"], b["desired_replicas"])
    return merged
