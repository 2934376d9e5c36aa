"""Ensembles: `platform: "ensemble"` models whose steps are other served models.

validate.py checks the config as Triton does; instance.py serves a version. `load_ensemble`
is the loader of an ensemble version, beside runtime/loader.py's of every other model; the
registry loads the steps' models first.
"""

from __future__ import annotations

from pathlib import Path

from runtime import config as cfg
from runtime.config import ConfigError, ModelConfig
from runtime.ensemble.instance import EnsembleInstance
from runtime.ensemble.validate import (
    ENSEMBLE_PLATFORM,
    Plan,
    Step,
    check_members,
    find_cycle,
    members,
    plan,
)
from runtime.errors import ServingError
from runtime.events import Events
from runtime.loader import InstanceSettings, watchers
from runtime.proto import model_config_pb2 as pb

__all__ = [
    "ENSEMBLE_PLATFORM",
    "EnsembleInstance",
    "Plan",
    "Step",
    "find_cycle",
    "is_ensemble",
    "load_ensemble",
    "members",
]


def is_ensemble(message: pb.ModelConfig) -> bool:
    return message.platform == ENSEMBLE_PLATFORM


def load_ensemble(
    model_dir: Path, version: int, message: pb.ModelConfig, settings: InstanceSettings
) -> EnsembleInstance:
    """Check an ensemble version against the models its steps call, which must be served."""
    if settings.models is None:
        raise ConfigError(f"ensemble '{model_dir.name}' needs the server's models to call")
    completed = _completed(message, model_dir.name)
    config = cfg.build(completed, model_dir)
    checked = plan(completed)
    configs: dict[int, ModelConfig] = {}
    for step in checked.steps:
        try:
            model = settings.models(step.model_name, step.model_version)
        except ServingError as exc:
            raise ConfigError(_unavailable(checked, step, str(exc))) from None
        if not model.ready:
            raise ConfigError(_unavailable(checked, step, "it is not ready"))
        configs[step.index] = model.config
    check_members(checked, config, configs)
    statistics, load, subscribers = watchers(config, version, settings)
    return EnsembleInstance(
        config, version, checked, settings.models, Events(subscribers), statistics, load
    )


def _unavailable(checked: Plan, step: Step, why: str) -> str:
    version = f" version {step.model_version}" if step.model_version else ""
    return (
        f"step {step.index} of ensemble '{checked.name}' calls model '{step.model_name}'"
        f"{version}, which is not available: {why}"
    )


def _completed(message: pb.ModelConfig, name: str) -> pb.ModelConfig:
    """The config as the config endpoints show it: named, with Triton's version policy."""
    out = pb.ModelConfig()
    out.CopyFrom(message)
    if out.name and out.name != name:
        raise ConfigError(f"config name '{out.name}' does not match the model directory '{name}'")
    out.name = name
    if not out.HasField("version_policy"):
        out.version_policy.latest.num_versions = 1
    return out
