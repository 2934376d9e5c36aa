"""An ensemble's config checked at load, as Triton checks it, before a request is taken.

Two passes. `plan` needs only the ensemble's own config: steps, maps, which tensor each step
writes, and that every output can be reached from the inputs (a cycle or a missing producer
leaves an output unwritten). `check_members` then needs each step's model: that the maps name
real tensors, and that datatypes, shapes and batch sizes agree along every edge. The messages
are Triton's where Triton has one, so a repository's logs read the same on both servers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from runtime.config import ConfigError, ModelConfig, TensorSpec
from runtime.proto import model_config_pb2 as pb

ENSEMBLE_PLATFORM = "ensemble"


@dataclass(frozen=True, slots=True)
class Step:
    """One step: its model, and its tensors' names in the model -> names in the ensemble."""

    index: int
    model_name: str
    # "" asks for the latest ready version, as -1 does in the config.
    model_version: str
    inputs: Mapping[str, str]
    outputs: Mapping[str, str]
    max_inflight: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """The ensemble's steps, each after the steps it reads from, and its own tensors' names."""

    name: str
    steps: tuple[Step, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def members(message: pb.ModelConfig) -> list[str]:
    """The models an ensemble's steps name (none for a model that is not an ensemble)."""
    if message.platform != ENSEMBLE_PLATFORM:
        return []
    return [s.model_name for s in message.ensemble_scheduling.step if s.model_name]


def find_cycle(start: str, members_of: Callable[[str], Sequence[str]]) -> list[str] | None:
    """A path of ensembles from `start` back to itself, or None."""
    path: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for member in members_of(name):
            found = visit(member)
            if found is not None:
                return found
        path.pop()
        done.add(name)
        return None

    return visit(start)


def plan(message: pb.ModelConfig) -> Plan:
    """The checked shape of an ensemble; ConfigError names the step and tensor at fault."""
    name = message.name
    for field, present in (
        ("instance group", len(message.instance_group) > 0),
        ("optimization", message.HasField("optimization")),
        ("model_warmup", len(message.model_warmup) > 0),
    ):
        if present:
            raise ConfigError(f"{field} should not be specified for ensemble '{name}'")
    scheduling = message.ensemble_scheduling
    if not scheduling.step:
        raise ConfigError(f"must specify 'step' for ensemble '{name}'")
    steps = tuple(
        _step(name, i, s, scheduling.max_inflight_requests) for i, s in enumerate(scheduling.step)
    )
    inputs = tuple(t.name for t in message.input)
    outputs = tuple(t.name for t in message.output)
    if not outputs:
        raise ConfigError(f"ensemble '{name}' declares no outputs")
    return Plan(name, _check_flow(name, steps, inputs, outputs), inputs, outputs)


def _step(name: str, index: int, step: pb.ModelEnsembling.Step, max_inflight: int) -> Step:
    for field, present in (
        ("model_name", bool(step.model_name)),
        ("input_map", len(step.input_map) > 0),
        ("output_map", len(step.output_map) > 0),
    ):
        if not present:
            raise ConfigError(f"must specify '{field}' in step {index} of ensemble '{name}'")
    if step.model_name == name:
        raise ConfigError(f"step {index} of ensemble '{name}' calls the ensemble itself")
    written: set[str] = set()
    for tensor in step.output_map.values():
        if tensor in written:
            raise ConfigError(
                f"ensemble tensor '{tensor}' can appear in an output map only once for "
                f"ensemble '{name}' step {index}"
            )
        written.add(tensor)
    version = "" if step.model_version < 0 else str(step.model_version)
    return Step(
        index,
        step.model_name,
        version,
        dict(step.input_map),
        dict(step.output_map),
        max_inflight,
    )


def _check_flow(
    name: str, steps: Sequence[Step], inputs: Sequence[str], outputs: Sequence[str]
) -> tuple[Step, ...]:
    """The steps in an order each can run in (every step after those it reads from)."""
    producer = _producers(name, steps, inputs)
    read = {t for s in steps for t in s.inputs.values()}
    for tensor in inputs:
        if tensor not in read:
            raise ConfigError(f"ensemble input '{tensor}' for ensemble '{name}' is not used")
    for tensor in producer:
        if tensor not in read and tensor not in outputs:
            raise ConfigError(f"ensemble tensor '{tensor}' is unused in ensemble '{name}'")
    available = set(inputs)
    pending = list(steps)
    order: list[Step] = []
    while ready := [s for s in pending if set(s.inputs.values()) <= available]:
        for step in ready:
            available.update(step.outputs.values())
            pending.remove(step)
            order.append(step)
    for tensor in outputs:
        if tensor not in available:
            raise ConfigError(_unwritten(name, tensor, producer, available))
    for step in pending:  # steps feeding only each other, in a cycle
        missing = sorted(t for t in step.inputs.values() if t not in available)
        raise ConfigError(
            f"step {step.index} (model '{step.model_name}') of ensemble '{name}' never runs: "
            f"its input '{missing[0]}' is never written"
        )
    return tuple(order)


def _producers(name: str, steps: Sequence[Step], inputs: Sequence[str]) -> dict[str, Step]:
    """The one step that writes each tensor."""
    producer: dict[str, Step] = {}
    for step in steps:
        for tensor in step.outputs.values():
            if tensor in inputs:
                raise ConfigError(
                    f"ensemble tensor '{tensor}' is an input of ensemble '{name}' and is also "
                    f"written by step {step.index} (model '{step.model_name}')"
                )
            if tensor in producer:
                raise ConfigError(
                    f"ensemble tensor '{tensor}' is written by both step "
                    f"{producer[tensor].index} and step {step.index} of ensemble '{name}'"
                )
            producer[tensor] = step
    return producer


def _unwritten(name: str, output: str, producer: Mapping[str, Step], available: set[str]) -> str:
    """Why an output is never written: no step writes it, or a tensor it needs is never set."""
    message = f"output '{output}' for ensemble '{name}' is not written"
    seen: set[str] = set()
    tensor = output
    while tensor in producer and tensor not in seen:
        seen.add(tensor)
        missing = sorted(t for t in producer[tensor].inputs.values() if t not in available)
        if not missing:
            break
        tensor = missing[0]
    if tensor == output:
        return message
    return f"{message}: at least one of its depending tensors, '{tensor}', is not connected"


def check_members(plan_: Plan, ensemble: ModelConfig, models: Mapping[int, ModelConfig]) -> None:
    """Each step against its model's config (`models` by step index); ConfigError on the first
    mismatch, naming the ensemble, the step's model and the tensor."""
    known: dict[str, tuple[str, list[int], str]] = {}
    for spec in ensemble.inputs:
        known[spec.name] = (spec.datatype, _full_shape(spec, ensemble.max_batch_size), plan_.name)
    for step in plan_.steps:
        _check_step(plan_.name, step, ensemble, models[step.index], known)
    for spec in ensemble.outputs:
        _agree(plan_.name, spec.name, known, spec, ensemble)


def _check_step(
    name: str,
    step: Step,
    ensemble: ModelConfig,
    model: ModelConfig,
    known: dict[str, tuple[str, list[int], str]],
) -> None:
    """One step's maps against its model; what it writes joins `known`."""
    if 0 < model.max_batch_size < ensemble.max_batch_size:
        raise ConfigError(
            f"ensemble {name} allows maximum batch size {ensemble.max_batch_size}, but it "
            f"contains model {model.name} which only allows maximum batch size to be "
            f"{model.max_batch_size}"
        )
    for model_input, tensor in step.inputs.items():
        spec = model.input(model_input)
        if spec is None:
            raise ConfigError(
                f"ensemble tensor {tensor} is mapping to non-existing input {model_input} "
                f"in model {model.name}"
            )
        _agree(name, tensor, known, spec, model)
    for spec in model.inputs:
        if spec.name not in step.inputs and not spec.optional:
            raise ConfigError(
                f"input {spec.name} in model {model.name} is not mapped to any ensemble "
                f"tensors (step {step.index} of ensemble '{name}')"
            )
    for model_output, tensor in step.outputs.items():
        spec = model.output(model_output)
        if spec is None:
            raise ConfigError(
                f"ensemble tensor {tensor} is mapped from non-existing output "
                f"{model_output} in model {model.name}"
            )
        known[tensor] = (spec.datatype, _full_shape(spec, model.max_batch_size), model.name)


def _agree(
    name: str,
    tensor: str,
    known: dict[str, tuple[str, list[int], str]],
    spec: TensorSpec,
    model: ModelConfig,
) -> None:
    """The tensor as `model` takes or gives it agrees with what is known of it so far."""
    if tensor not in known:  # an optional input nothing writes
        return
    datatype, shape, source = known[tensor]
    if spec.datatype != datatype:
        raise ConfigError(
            f"in ensemble {name}, ensemble tensor {tensor}: inconsistent data type: "
            f"{datatype} is inferred from model {source} while {spec.datatype} is inferred "
            f"from model {model.name}"
        )
    other = _full_shape(spec, model.max_batch_size)
    if not _shapes_fit(shape, other):
        raise ConfigError(
            f"in ensemble {name}, ensemble tensor {tensor}: inconsistent shape: {shape} is "
            f"inferred from model {source} while {other} is inferred from model {model.name}"
        )


def _full_shape(spec: TensorSpec, max_batch_size: int) -> list[int]:
    """The whole shape a tensor has, a -1 batch dimension first for a model that batches."""
    return [-1, *spec.dims] if max_batch_size > 0 else list(spec.dims)


def _shapes_fit(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))
