"""The model repository on disk, in Triton's layout: model folders, versions, version policy.

<repo>/<model>/config.pbtxt            optional
<repo>/<model>/<version>/model.onnx    numeric version folders, no leading zero
"""

from __future__ import annotations

from pathlib import Path

from runtime.config import ConfigError
from runtime.proto import model_config_pb2 as pb


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
