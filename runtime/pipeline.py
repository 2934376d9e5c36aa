"""A model version's pipeline: pre steps -> backend -> post steps, on the whole batch.

A model declares its steps in `conveyor.yaml` beside config.pbtxt, or as the same document in
JSON in config.pbtxt's `parameters { key: "conveyor.pipeline" ... }`:

    pipeline:
      pre:
        - kernel: standardize
          tensor: pixels                      # the model input this step rewrites
          args: {mean: "@mean", std: "@std"}  # "@name": array `name` of <version>/pipeline.npz
      post:
        - kernel: softmax
          tensor: scores                      # the model output this step rewrites

Pre steps run in order on the batched request tensors before the backend, post steps on its
outputs, all in the batch's executor thread (the kernels release the GIL). Steps that run on
a device are the device backend's own (runtime/backends/onnx_cuda.py); the ones here run on
the host. runtime/steps.py resolves, checks and warms them at load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.backends.base import AsyncBackend, Backend
from runtime.config import ConfigError
from runtime.errors import ServingError

SETTINGS_FILENAME = "conveyor.yaml"
PIPELINE_PARAMETER = "conveyor.pipeline"


class StepSpec(BaseModel):
    """One step as written in the settings document."""

    model_config = ConfigDict(extra="forbid")

    kernel: str
    tensor: str
    args: dict[str, Any] = Field(default_factory=dict)
    datatype: str | None = None
    dims: list[int] | None = None


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pre: list[StepSpec] = Field(default_factory=list)
    post: list[StepSpec] = Field(default_factory=list)


class ModelSettings(BaseModel):
    """conveyor.yaml: Conveyor's own per-model settings, beside Triton's config.pbtxt."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineSpec = Field(default_factory=PipelineSpec)
    # Checked by the drift monitor's own settings when the model loads.
    drift: dict[str, Any] | None = None


def read_settings(model_dir: Path, parameters: Mapping[str, str]) -> ModelSettings:
    """The model's conveyor.yaml and its `conveyor.pipeline` parameter, checked."""
    settings = ModelSettings()
    path = model_dir / SETTINGS_FILENAME
    if path.is_file():
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            settings = ModelSettings.model_validate(doc)
        except (yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"{SETTINGS_FILENAME} of model '{model_dir.name}': {exc}") from None
    text = parameters.get(PIPELINE_PARAMETER)
    if text is not None:
        if path.is_file() and "pipeline" in _keys(path):
            raise ConfigError(
                f"model '{model_dir.name}' declares its pipeline twice: in {SETTINGS_FILENAME} "
                f"and in parameter '{PIPELINE_PARAMETER}'; keep one"
            )
        try:
            settings.pipeline = PipelineSpec.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(f"parameter '{PIPELINE_PARAMETER}': {exc}") from None
    return settings


def _keys(path: Path) -> set[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return set(doc) if isinstance(doc, dict) else set()


Apply = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Step:
    """One resolved step: a kernel with its arguments bound, applied to the tensor it names."""

    kernel: str
    tensor: str
    apply: Apply
    # The resolved arguments, for the device versions of the kernels (backends/onnx_cuda.py).
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Steps:
    """The resolved host steps of one model version; empty when the model declares none."""

    pre: tuple[Step, ...] = ()
    post: tuple[Step, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pre or self.post)

    def run_pre(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _apply(self.pre, inputs)

    def run_post(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _apply(self.post, outputs)


def _apply(steps: Sequence[Step], arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays with each step applied in order to the one it names (new dict, no copies)."""
    out = dict(arrays)
    for step in steps:
        if step.tensor in out:
            out[step.tensor] = step.apply(out[step.tensor])
    return out


class Pipeline:
    """The only composition of a model version's run: pre steps, backend, post steps.

    Without steps, `run` is the backend call itself: a model that declares none pays
    nothing for the pipeline. With an AsyncBackend, `run` is a coroutine function, which
    the batcher awaits on the event loop.
    """

    __slots__ = ("_run_async", "backend", "output_names", "post", "pre", "run")

    def __init__(
        self,
        pre: Sequence[Step],
        backend: Backend,
        post: Sequence[Step],
        output_names: Sequence[str],
    ) -> None:
        self.pre = tuple(pre)
        self.backend = backend
        self.post = tuple(post)
        self.output_names = tuple(output_names)
        self.run: Callable[..., Any] = (
            self._run_steps if self.pre or self.post else self._run_backend
        )
        # Checked once here: a runtime protocol check costs tens of microseconds a call.
        self._run_async = backend.run_async if isinstance(backend, AsyncBackend) else None
        if self._run_async is not None:
            self.run = self._await_backend

    def _run_backend(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.run(inputs, self.output_names)

    def _run_steps(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        fed = _apply(self.pre, inputs) if self.pre else inputs
        outputs = self.backend.run(fed, self.output_names)
        return _apply(self.post, outputs) if self.post else outputs

    async def _await_backend(
        self, inputs: Mapping[str, np.ndarray], rows: Sequence[int]
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray] | ServingError]:
        assert self._run_async is not None
        fed = _apply(self.pre, inputs) if self.pre else inputs
        outputs = await self._run_async(fed, self.output_names, rows)
        if not self.post:
            return outputs
        if isinstance(outputs, list):  # each request's own answer
            return [o if isinstance(o, ServingError) else _apply(self.post, o) for o in outputs]
        return _apply(self.post, outputs)
