"""What a model folder holds on disk, cheaply fingerprinted (runtime/reload_plan.py compares).

A signature lists every file as (relative path, mtime_ns, size, inode): a rewrite, a new or
removed file, or a folder renamed into place changes it, and taking one costs a stat per file.
Hidden names (a publisher's temp folder or file) are not part of a model until renamed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime import repository

FileStamp = tuple[str, int, int, int]
Signature = tuple[FileStamp, ...]


def _stamp(path: str, relative: str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:  # removed while we looked; the next scan sees the change
        return None
    return (relative, st.st_mtime_ns, st.st_size, st.st_ino)


def signature(folder: Path, prefix: str = "") -> Signature:
    """Every file under folder, recursively (symlinks followed, each folder once), sorted by
    relative path.

    Hidden names are left out at every depth: a temp file written beside model.onnx and
    then renamed over it changes the signature once, when the rename lands.
    """
    stamps: list[FileStamp] = []
    visited: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in visited:  # a symlink back up the tree: walk it once
            dirnames[:] = []
            continue
        visited.add((st.st_dev, st.st_ino))
        # Real folders before links to them, so that a file keeps its own path.
        dirnames[:] = sorted(
            (d for d in dirnames if not d.startswith(".")),
            key=lambda d: (os.path.islink(os.path.join(dirpath, d)), d),
        )
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            stamp = _stamp(path, prefix + os.path.relpath(path, folder))
            if stamp is not None:
                stamps.append(stamp)
    return tuple(sorted(stamps))


@dataclass(frozen=True, slots=True)
class Source:
    """What a loaded version was built from: model-level files, config override, its folder."""

    files: Signature
    override: bytes
    version: Signature


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One model folder: its model-level files, and each numbered version folder on its own.

    Model-level means everything outside the version folders (config.pbtxt, labels,
    conveyor.yaml, other folders); a change there reloads every version.
    """

    files: Signature = ()
    versions: Mapping[int, Signature] = field(default_factory=dict)

    def source(self, version: int, override: bytes = b"") -> Source:
        return Source(self.files, override, self.versions.get(version, ()))


def take(model_dir: Path) -> Snapshot:
    """Fingerprint one model folder; raises OSError if the folder itself is gone."""
    numbered = {str(v): v for v in repository.version_folders(model_dir)}
    files: list[FileStamp] = []
    versions: dict[int, Signature] = {}
    for entry in os.scandir(model_dir):
        if entry.name.startswith("."):
            continue
        if entry.name in numbered:
            versions[numbered[entry.name]] = signature(Path(entry.path))
        elif entry.is_dir():
            files.extend(signature(Path(entry.path), entry.name + os.sep))
        else:
            stamp = _stamp(entry.path, entry.name)
            if stamp is not None:
                files.append(stamp)
    return Snapshot(tuple(sorted(files)), dict(sorted(versions.items())))
