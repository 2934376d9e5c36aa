"""What of Triton's ModelConfig Conveyor honours, refuses, or may safely ignore.

A section the server does not implement must not give a READY model that then fails (or
silently misbehaves on) every request: such a config is refused at load with a reason
naming the section. Sections that only tune how Triton itself runs a model, and whose
absence changes no answer, are accepted with one warning each.
"""

from __future__ import annotations

from runtime.config.model import ConfigError
from runtime.proto import model_config_pb2 as pb


def _refused(message: pb.ModelConfig) -> list[str]:
    """Sections set in the config that would change what the model answers."""
    found = []
    if message.HasField("sequence_batching"):
        found.append("sequence_batching (stateful sequences)")
    accelerators = message.optimization.execution_accelerators
    if accelerators.gpu_execution_accelerator or accelerators.cpu_execution_accelerator:
        names = [a.name for a in accelerators.gpu_execution_accelerator]
        names += [a.name for a in accelerators.cpu_execution_accelerator]
        found.append(f"optimization.execution_accelerators ({', '.join(names)})")
    if message.model_transaction_policy.decoupled:
        found.append("model_transaction_policy.decoupled")
    if len(message.batch_input) or len(message.batch_output):
        found.append("batch_input / batch_output")
    if len(message.model_repository_agents.agents):
        found.append("model_repository_agents")
    return found + _tensor_features(message)


def _tensor_features(message: pb.ModelConfig) -> list[str]:
    found = []
    for t in message.input:
        found += [f"input '{t.name}': {f}" for f in _shape_features(t)]
        if t.allow_ragged_batch:
            found.append(f"input '{t.name}': allow_ragged_batch")
    for o in message.output:
        found += [f"output '{o.name}': {f}" for f in _shape_features(o)]
    return found


def _shape_features(t: pb.ModelInput | pb.ModelOutput) -> list[str]:
    return [
        name
        for name, used in (
            ("reshape", t.HasField("reshape")),
            ("is_shape_tensor", t.is_shape_tensor),
        )
        if used
    ]


def _ignored(message: pb.ModelConfig) -> list[str]:
    """Sections set in the config that only tune how Triton runs a model."""
    found = []
    if len(message.model_warmup):
        found.append("model_warmup (every version is warmed on zeros at load)")
    if message.response_cache.enable:
        found.append("response_cache")
    if message.optimization.HasField("cuda"):
        found.append("optimization.cuda")
    if message.optimization.HasField("graph"):
        found.append("optimization.graph (ONNX Runtime optimises fully)")
    if message.optimization.priority:
        found.append("optimization.priority")
    if message.optimization.HasField("input_pinned_memory") or message.optimization.HasField(
        "output_pinned_memory"
    ):
        found.append("optimization pinned memory")
    if any(g.HasField("rate_limiter") for g in message.instance_group):
        found.append("instance_group rate_limiter")
    if len(message.cc_model_filenames):
        found.append("cc_model_filenames")
    return found


def check_supported(message: pb.ModelConfig, name: str = "") -> list[str]:
    """Raise ConfigError naming the sections Conveyor would not honour; the ignored ones."""
    if message.HasField("ensemble_scheduling") and message.platform != "ensemble":
        raise ConfigError(
            f"ensemble scheduling cannot be set for model '{message.name or name}' whose "
            "platform is not ensemble"
        )
    refused = _refused(message)
    if refused:
        raise ConfigError(
            f"the config asks for what this server does not implement: {'; '.join(refused)}"
        )
    return _ignored(message)
