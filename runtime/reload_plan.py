"""Which versions a reload builds, keeps and retires, from what each was built from.

A served version is reused only when it is still wanted and built from exactly what is on
disk now (runtime/snapshot.py fingerprints both); a failed load never retires what serves.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from runtime.snapshot import Snapshot, Source


@dataclass(frozen=True, slots=True)
class VersionPlan:
    """A reload: versions to build, served versions to reuse, served versions to replace or drop."""

    load: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()
    retire: tuple[int, ...] = ()


def plan(
    wanted: Sequence[int],
    served: Mapping[int, Source | None],
    now: Snapshot,
    override: bytes = b"",
) -> VersionPlan:
    """Reuse a served version only if it is still wanted and built from exactly what is on disk.

    `served` maps each serving version to what it was built from (None: rebuild it anyway).
    """
    keep = tuple(v for v in wanted if v in served and served[v] == now.source(v, override))
    load = tuple(v for v in wanted if v not in keep)
    retire = tuple(v for v in sorted(served) if v not in keep)
    return VersionPlan(load, keep, retire)


def settle(
    chosen: VersionPlan, failed: Collection[int], on_disk: Collection[int]
) -> tuple[int, ...]:
    """Which served versions to retire once the loads are done.

    A version whose new files failed to load keeps serving its old ones; while any new
    version failed, versions the policy dropped keep serving too, as long as their folder
    is still there. Only a version whose folder is gone goes regardless.
    """
    return tuple(
        v
        for v in chosen.retire
        if v not in failed and (v in chosen.load or v not in on_disk or not failed)
    )
