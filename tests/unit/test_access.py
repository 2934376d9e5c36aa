"""Restriction specs in Triton's `<api>[,<api>...]:<key>=<value>` form."""

from __future__ import annotations

import pytest

from runtime.access import parse_restrictions


@pytest.mark.parametrize(
    "spec",
    ["model-repository", "model-repository:key", "nope:k=v", ":k=v", "model-repository:=v"],
)
def test_malformed_restriction_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"restrict|form"):
        parse_restrictions([spec])


def test_one_api_cannot_be_restricted_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_restrictions(["health:a=1", "health,metadata:b=2"])
    assert parse_restrictions(["health,metadata:X-Key=v"])["metadata"].key == "x-key"
