"""Kernels as pipeline steps: resolved, checked and warmed when a model version loads.

Every step runs at load on zeros of the declared shape, which checks that the steps produce
what the model takes, then again on a full batch and on read-only zeros (raw tensors arrive
read-only), which compiles each kernel for the signatures and sizes it will see, so no
request pays for JIT. The first pre step of an input may declare what clients send
(`datatype`, `dims`) when the steps change it, as normalize_image does (UINT8 NHWC in, FP32
NCHW out).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

import kernels
from runtime import tensors
from runtime.config import ConfigError, ModelConfig, TensorSpec
from runtime.pipeline import PipelineSpec, Step, Steps, StepSpec

ARRAYS_FILENAME = "pipeline.npz"

Kind = Literal["array", "int"]


@dataclass(frozen=True, slots=True)
class StepKernel:
    """A kernel usable as a step: its arguments beyond the tensor, and where it may run."""

    args: Mapping[str, Kind]
    optional: frozenset[str] = frozenset()
    post: bool = False


STEP_KERNELS: dict[str, StepKernel] = {
    "standardize": StepKernel({"mean": "array", "std": "array"}, post=True),
    "normalize_image": StepKernel({"mean": "array", "std": "array"}),
    "resize_bilinear": StepKernel({"height": "int", "width": "int"}),
    "one_hot": StepKernel({"n": "int"}),
    "bucketize": StepKernel({"edges": "array"}),
    "softmax": StepKernel({"axis": "int"}, frozenset({"axis"}), post=True),
    "sigmoid": StepKernel({}, post=True),
}
# Kernels that exist but are not steps of their own, and what uses them instead.
NOT_STEPS = {
    "topk": "the classification extension uses it: ask for an output with class_count",
    "nms": "it takes boxes and scores together, not one tensor",
    "histogram": "the drift monitor uses it",
}


def build(spec: PipelineSpec, version_dir: Path, config: ModelConfig) -> Steps:
    """Resolve kernel names and arguments against the kernels and the version's arrays."""
    arrays = _Arrays(version_dir / ARRAYS_FILENAME)
    pre = tuple(_step(s, "pre", arrays) for s in spec.pre)
    post = tuple(_step(s, "post", arrays) for s in spec.post)
    _check_tensors(spec.pre, {t.name for t in config.inputs}, "input")
    _check_tensors(spec.post, {t.name for t in config.outputs}, "output")
    return Steps(pre, post)


def _check_tensors(steps: Sequence[StepSpec], names: set[str], kind: str) -> None:
    seen: set[str] = set()
    for s in steps:
        if s.tensor not in names:
            raise ConfigError(
                f"pipeline step '{s.kernel}' names {kind} '{s.tensor}', but the model's "
                f"{kind}s are {sorted(names)}"
            )
        if (s.datatype is not None or s.dims is not None) and (kind != "input" or s.tensor in seen):
            raise ConfigError(
                f"pipeline step '{s.kernel}' on '{s.tensor}': only the first pre step of an "
                "input may declare the datatype and dims clients send"
            )
        seen.add(s.tensor)


def _step(spec: StepSpec, stage: str, arrays: _Arrays) -> Step:
    kernel = STEP_KERNELS.get(spec.kernel)
    if kernel is None:
        why = NOT_STEPS.get(spec.kernel)
        if why is not None:
            raise ConfigError(f"kernel '{spec.kernel}' cannot be a pipeline step: {why}")
        raise ConfigError(
            f"unknown kernel '{spec.kernel}' in the {stage} steps; "
            f"expected one of {sorted(STEP_KERNELS)}"
        )
    if stage == "post" and not kernel.post:
        post = sorted(k for k, v in STEP_KERNELS.items() if v.post)
        raise ConfigError(f"kernel '{spec.kernel}' cannot be a post step; post steps are {post}")
    unknown = set(spec.args) - set(kernel.args)
    missing = set(kernel.args) - kernel.optional - set(spec.args)
    if unknown or missing:
        raise ConfigError(
            f"kernel '{spec.kernel}' on '{spec.tensor}' takes arguments {sorted(kernel.args)}"
            + (f"; unknown: {sorted(unknown)}" if unknown else "")
            + (f"; missing: {sorted(missing)}" if missing else "")
        )
    args = {
        name: _argument(spec.kernel, name, kernel.args[name], value, arrays)
        for name, value in spec.args.items()
    }
    function = kernels.KERNELS[spec.kernel]

    def apply(x: np.ndarray) -> np.ndarray:
        result: np.ndarray = function(x, **args)
        return result

    return Step(spec.kernel, spec.tensor, apply, args)


def _argument(kernel: str, name: str, kind: Kind, value: Any, arrays: _Arrays) -> Any:
    where = f"argument '{name}' of kernel '{kernel}'"
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if isinstance(value, str):
        if not value.startswith("@"):
            raise ConfigError(f"{where} must be a list of numbers or '@name', got {value!r}")
        return arrays.get(value[1:], where)
    try:
        array = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a list of numbers, got {value!r}") from None
    if array.ndim == 0:
        array = array.reshape(1)
    return array


class _Arrays:
    """The version's pipeline.npz, opened on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, np.ndarray] | None = None

    def get(self, name: str, where: str) -> np.ndarray:
        if self._data is None:
            if not self.path.is_file():
                raise ConfigError(f"{where} refers to '@{name}', but '{self.path}' does not exist")
            with np.load(self.path, allow_pickle=False) as data:
                self._data = {k: data[k] for k in data.files}
        if name not in self._data:
            raise ConfigError(
                f"{where} refers to '@{name}', which '{self.path.name}' does not hold; "
                f"it holds {sorted(self._data)}"
            )
        return self._data[name]


def client_config(spec: PipelineSpec, pipeline: Steps, config: ModelConfig) -> ModelConfig:
    """Check the steps on zeros, warm their kernels, and return the config clients see.

    Inputs take the datatype and dims the first pre step declares; outputs take the
    datatype their post steps produce.
    """
    if not pipeline:
        return config
    inputs = tuple(_client_input(spec, t) for t in config.inputs)
    feeds = {t.name: _zeros(t, config.batched) for t in inputs}
    try:
        fed = pipeline.run_pre(feeds)
        _warm(pipeline.run_pre, inputs, config, read_only=True)
    except Exception as exc:
        raise ConfigError(
            f"the pre steps fail on zeros of the inputs clients send ({exc}); {_DECLARE}"
        ) from exc
    for model_input in config.inputs:
        _check_fed(model_input, fed[model_input.name], config.batched)
    zeros = {t.name: _zeros(t, config.batched) for t in config.outputs}
    try:
        done = pipeline.run_post(zeros)
        _warm(pipeline.run_post, config.outputs, config, read_only=False)
    except Exception as exc:
        raise ConfigError(f"the post steps fail on zeros of the model's outputs: {exc}") from exc
    outputs = tuple(
        replace(t, datatype=tensors.datatype_of(done[t.name].dtype)) for t in config.outputs
    )
    return replace(config, inputs=inputs, outputs=outputs)


_DECLARE = (
    "when the steps change a tensor's type or shape, declare what clients send with "
    "`datatype` and `dims` on its first step"
)


def _client_input(spec: PipelineSpec, model_input: TensorSpec) -> TensorSpec:
    first = next((s for s in spec.pre if s.tensor == model_input.name), None)
    if first is None:
        return model_input
    datatype = first.datatype or model_input.datatype
    if datatype not in tensors.DATATYPES:
        raise ConfigError(
            f"pipeline input '{model_input.name}': unknown datatype '{datatype}'; "
            f"expected one of {sorted(tensors.DATATYPES)}"
        )
    dims = tuple(first.dims) if first.dims is not None else model_input.dims
    return replace(model_input, datatype=datatype, dims=dims)


def _zeros(spec: TensorSpec, batched: bool, rows: int = 2) -> np.ndarray:
    shape = [1 if d == -1 else d for d in spec.dims]
    return np.zeros([rows, *shape] if batched else shape, tensors.numpy_dtype(spec.datatype))


def _warm(
    run: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]],
    specs: Sequence[TensorSpec],
    config: ModelConfig,
    read_only: bool,
) -> None:
    """Run the steps on the other signatures and sizes requests bring, so none pays a Numba
    compile or cache load: a full batch (some ops switch between NumPy and Numba by size),
    and, for the pre steps, read-only arrays (raw gRPC and binary HTTP tensors are views of
    the request bytes, which Numba compiles separately)."""
    sizes = [2, config.max_batch_size] if config.batched and config.max_batch_size > 2 else [2]
    for rows, locked in itertools.product(sizes, (False, True) if read_only else (False,)):
        feeds = {t.name: _zeros(t, config.batched, rows) for t in specs}
        for feed in feeds.values():
            feed.flags.writeable = not locked
        run(feeds)


def _check_fed(model_input: TensorSpec, fed: np.ndarray, batched: bool) -> None:
    want = tensors.numpy_dtype(model_input.datatype)
    shape = fed.shape[1:] if batched else fed.shape
    fits = len(shape) == len(model_input.dims) and all(
        d in (-1, s) for d, s in zip(model_input.dims, shape, strict=True)
    )
    if fed.dtype != want or not fits:
        raise ConfigError(
            f"the pre steps turn input '{model_input.name}' into {fed.dtype} {list(shape)}, "
            f"but the model takes {model_input.datatype} {list(model_input.dims)}; {_DECLARE}"
        )
