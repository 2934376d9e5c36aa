"""The Hypothesis profiles (tests/conftest.py): CI replays its examples, "fuzz" draws anew."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase


def drawn(profile: str) -> list[bytes]:
    """What one run of a small property draws under the profile (no database to replay)."""
    seen: list[bytes] = []

    @settings(settings.get_profile(profile), max_examples=20, database=None)
    @given(st.binary(min_size=8, max_size=8))
    def record(value: bytes) -> None:
        seen.append(value)

    record()
    return seen


def test_ci_is_the_profile_unless_one_is_named() -> None:
    assert settings.get_current_profile_name() == os.environ.get("HYPOTHESIS_PROFILE", "ci")


def test_ci_profile_draws_the_same_examples_every_run() -> None:
    ci = settings.get_profile("ci")
    assert ci.derandomize
    assert ci.database is None
    assert drawn("ci") == drawn("ci")


def test_fuzz_profile_draws_new_examples_and_keeps_failures() -> None:
    fuzz = settings.get_profile("fuzz")
    assert not fuzz.derandomize
    assert isinstance(fuzz.database, DirectoryBasedExampleDatabase)
    if "FUZZ_SCALE" not in os.environ:
        assert fuzz.max_examples >= 10 * settings.get_profile("ci").max_examples
    assert drawn("fuzz") != drawn("fuzz")
