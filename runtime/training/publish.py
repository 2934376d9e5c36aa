"""Publish: a new numeric version folder, put in place atomically, and the model-level files.

The version is built in a hidden folder inside the model folder (the server skips names
starting with "."), synced, and renamed to `<n>`: readers see all of it or none of it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.training.errors import PublishError

# Writes one file at the path it is given.
Writer = Callable[[Path], None]
STAGING_PREFIX = ".staging-"
_RENAME_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class Published:
    version: int
    path: Path
    # Model-level files that were written because their content changed.
    changed: list[str] = field(default_factory=list)


def versions(model_dir: Path) -> list[int]:
    """Numeric version folders, ascending (no leading zero, as the server reads them)."""
    if not model_dir.is_dir():
        return []
    names = (p.name for p in model_dir.iterdir() if p.is_dir())
    return sorted(int(n) for n in names if n.isascii() and n.isdigit() and not n.startswith("0"))


def next_version(model_dir: Path) -> int:
    """One above the highest existing version; 1 for a new model."""
    return max(versions(model_dir), default=0) + 1


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Replace path's content atomically (temp file + os.replace); False when already equal."""
    if path.is_file() and path.read_bytes() == data:
        return False
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes it owner-only; the server may run as another user
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync(path.parent)
    return True


def publish_version(model_dir: Path, writers: Mapping[str, Writer]) -> Path:
    """Write each file into a hidden staging folder, sync it, and rename it to the next version.

    On any error the staging folder is removed and no version appears.
    """
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=STAGING_PREFIX))
    try:
        os.chmod(staging, 0o755)
        for name, write in writers.items():
            write(staging / name)
            _fsync(staging / name)
        _fsync(staging)
        return _rename_to_next(staging, model_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rename_to_next(staging: Path, model_dir: Path) -> Path:
    """Rename staging to the next free version; a concurrent publisher that took it first
    makes the rename fail (the target is not empty), and the next number is tried."""
    for _ in range(_RENAME_ATTEMPTS):
        target = model_dir / str(next_version(model_dir))
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            continue
        _fsync(model_dir)
        return target
    raise PublishError(f"publish: no free version number in {model_dir} after many attempts")


def publish(
    model_dir: Path, model_files: Mapping[str, bytes], version_files: Mapping[str, Writer]
) -> Published:
    """Model-level files first (so the version never appears without them), then the version.

    When this call created the model folder and fails, it removes what it wrote there, so a
    failed first publish leaves no model behind.
    """
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        changed = [n for n, data in model_files.items() if write_if_changed(model_dir / n, data)]
        path = publish_version(model_dir, version_files)
    except BaseException:
        if created:
            _remove_new_model(model_dir, model_files)
        raise
    return Published(int(path.name), path, changed)


def _remove_new_model(model_dir: Path, names: Mapping[str, bytes]) -> None:
    """Delete the named files and the folder itself, which only succeeds if nothing else is in it
    (a concurrent publisher's files are left alone)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (model_dir / name).unlink()
    with contextlib.suppress(OSError):
        model_dir.rmdir()
