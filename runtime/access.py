"""Access control: API groups put behind a header (HTTP) or metadata key (gRPC).

Triton's `--http-restricted-api` / `--grpc-restricted-protocol` in its own form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# API groups that --http-restricted-api / --grpc-restricted-protocol can put behind a key.
RESTRICTABLE = (
    "health", "metadata", "inference", "model-config", "model-repository", "statistics",
    "trace", "logging",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Restriction:
    """A header (HTTP) or metadata key (gRPC) and the value a restricted API requires."""

    key: str
    value: str


def parse_restrictions(specs: Sequence[str]) -> dict[str, Restriction]:
    """Triton's `<api>[,<api>...]:<key>=<value>` form, one spec per flag given."""
    result: dict[str, Restriction] = {}
    for spec in specs:
        apis, sep, pair = spec.partition(":")
        key, eq, value = pair.partition("=")
        if not sep or not eq or not key or not apis:
            raise ValueError(f"'{spec}' is not of the form <api>[,<api>...]:<key>=<value>")
        for api in apis.split(","):
            if api not in RESTRICTABLE:
                raise ValueError(
                    f"'{api}' is not a restrictable API; expected one of {RESTRICTABLE}"
                )
            if api in result:
                raise ValueError(f"API '{api}' is restricted twice")
            result[api] = Restriction(key.lower(), value)
    return result
