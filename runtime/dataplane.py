"""The one protocol-neutral entry point: both the HTTP and gRPC adapters call only this.

It validates requests against the model's TensorSpecs (bad input never reaches the model),
hands them to the batcher, and renders metadata, config, statistics and the index.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from runtime import __version__, tensors
from runtime import config as cfg
from runtime.config import TensorSpec
from runtime.errors import InvalidInput, NotFound, ServingError, Unavailable, Unsupported
from runtime.proto import model_config_pb2 as pb
from runtime.registry import ModelVersion, Registry
from runtime.types import InferenceRequest, InferenceResponse, InputTensor, OutputTensor

SERVER_NAME = "conveyor"
# Only what is really implemented; perf_analyzer reads this list.
EXTENSIONS = (
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
)


class DataPlane:
    """Inference and the read-only APIs over the registry."""

    def __init__(self, registry: Registry, model_control_mode: str = "none") -> None:
        self.registry = registry
        self.model_control_mode = model_control_mode
        self.live = True
        self.ready = False

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
        return self.registry.get(name, version).config.proto

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
        return {"model_stats": [m.stats.to_dict() for m in models]}

    def drift(self, name: str, version: str = "") -> dict[str, Any]:
        """The drift report of one version (the latest ready one when none is named)."""
        model = self.registry.get(name, version)
        if model.loaded.drift is None:
            raise NotFound(
                f"model '{name}' version {model.version} has no drift monitor: publish a "
                "drift_profile.npz with the version, or name sample rows with `drift: "
                "{reference: FILE}` in its conveyor.yaml"
            )
        return model.loaded.drift.report()

    def autoscale(self) -> dict[str, Any]:
        """Each model's load signals (versions summed), shaped for KEDA's metrics-api scaler.

        KEDA reads one number by path, e.g. `valueLocation: models.mlp.in_flight_avg`.
        """
        models: dict[str, dict[str, Any]] = {}
        for m in self.registry.models():
            signals = m.load.signals(m.batcher.depth)
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

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate, queue, wait for the batch, and build this request's response."""
        start = request.received_ns or time.monotonic_ns()
        model = self.registry.get(request.model_name, request.model_version)
        model.load.arrived()
        error: BaseException | None = None
        try:
            if not self.ready:
                raise Unavailable("the server is not ready")
            rows = _validate(model, request)
            arrays = {name: t.data for name, t in request.inputs.items()}
            future = model.batcher.submit(
                arrays,
                rows,
                request.priority,
                request.timeout_us,
                request.id,
                request.client_gone,
            )
            outputs = await future
            response = _response(model, request, outputs)
            if model.batcher.slo is not None:
                # The whole stay in the server, front end included, is what the target bounds.
                model.batcher.slo.observe_request(time.monotonic_ns() - start)
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            duration_ns = time.monotonic_ns() - start
            for observer in model.request_observers:
                observer.request_done(duration_ns, error, request.protocol)


_ADDITIVE = ("queue_depth", "in_flight", "in_flight_avg", "arrival_rate", "completion_rate")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two versions of one model: loads add up, the larger replica demand wins."""
    merged = dict(a)
    for key in _ADDITIVE:
        merged[key] = a[key] + b[key]
    merged["utilisation"] = max(a["utilisation"], b["utilisation"])
    merged["desired_replicas"] = max(a["desired_replicas"], b["desired_replicas"])
    return merged


def _validate(model: ModelVersion, request: InferenceRequest) -> int:
    """Check names, datatypes and shapes; return the batch size (1 when the model doesn't batch)."""
    c = model.config
    rows = -1
    for name, tensor in request.inputs.items():
        spec = model.inputs.get(name)
        if spec is None:
            raise InvalidInput(
                f"unexpected inference input '{name}' for model '{c.name}'; "
                f"the model's inputs are {sorted(model.inputs)}"
            )
        if tensor.datatype != spec.datatype:
            raise InvalidInput(
                f"inference input '{name}' data-type is '{tensor.datatype}', but model "
                f"'{c.name}' expects '{spec.datatype}'"
            )
        batch = _check_shape(c.name, spec, tensor, c.max_batch_size)
        if rows not in (-1, batch):
            raise InvalidInput(
                f"inputs of model '{c.name}' disagree on the batch size: input '{name}' has "
                f"{batch} rows, an earlier input has {rows}"
            )
        rows = batch
    missing = model.required_inputs.difference(request.inputs)
    if missing:
        raise InvalidInput(
            f"expected {len(model.required_inputs)} inputs but got {len(request.inputs)} "
            f"inputs for model '{c.name}'; missing input(s) {sorted(missing)}"
        )
    if request.outputs:
        for out in request.outputs:
            _check_output(model, out.name, out.class_count)
    return max(rows, 1)


def _check_shape(model: str, spec: Any, tensor: InputTensor, max_batch_size: int) -> int:
    shape = tensor.data.shape
    dims = spec.dims
    body = shape[1:] if max_batch_size > 0 else shape
    expected = [-1, *dims] if max_batch_size > 0 else list(dims)
    ok = len(body) == len(dims) and (max_batch_size == 0 or len(shape) >= 1)
    ok = ok and all(d == -1 or d == s for d, s in zip(dims, body, strict=False))
    if not ok:
        note = (
            " NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
            "dimension to be prepended to each input shape."
            if max_batch_size > 0
            else ""
        )
        raise InvalidInput(
            f"unexpected shape for input '{spec.name}' for model '{model}'. "
            f"Expected {expected}, got {list(shape)}.{note}"
        )
    if max_batch_size == 0:
        return 1
    batch = int(shape[0])
    if batch < 1 or batch > max_batch_size:
        raise InvalidInput(
            f"inference request batch-size must be <= {max_batch_size} and >= 1 for "
            f"'{model}', got {batch} (input '{spec.name}')"
        )
    return batch


def _check_output(model: ModelVersion, name: str, class_count: int) -> None:
    if name not in model.outputs:
        raise InvalidInput(
            f"unexpected inference output '{name}' for model '{model.name}'; "
            f"the model's outputs are {model.output_names}"
        )
    if class_count < 0:
        raise InvalidInput(f"classification count of output '{name}' must be >= 0")


def _response(
    model: ModelVersion, request: InferenceRequest, outputs: dict[str, np.ndarray]
) -> InferenceResponse:
    wanted = request.outputs
    result: list[OutputTensor] = []
    if wanted is None:
        for name in model.output_names:
            spec = model.outputs[name]
            result.append(OutputTensor(name, spec.datatype, outputs[name]))
    else:
        for out in wanted:
            spec = model.outputs[out.name]
            data = outputs[out.name]
            if out.class_count > 0:
                try:
                    data = tensors.classify(
                        data, out.class_count, spec.labels, model.config.batched
                    )
                except ServingError:
                    raise
                except Exception as exc:  # e.g. a BYTES output cannot be ranked
                    raise Unsupported(f"cannot classify output '{out.name}': {exc}") from exc
                result.append(OutputTensor(out.name, "BYTES", data))
            else:
                result.append(OutputTensor(out.name, spec.datatype, data))
    return InferenceResponse(model.name, model.version, request.id, result)
