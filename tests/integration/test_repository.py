"""The model repository extension: the index, and load/unload in both control modes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    add_sub_inputs,
    expect_error,
    inputs_of,
    make_client,
    running_server,
)
from tests.models import MODEL_NAMES, build_test_repository, reference


def index_rows(client: Any, protocol: str) -> list[dict[str, str]]:
    """The repository index as dicts (name, version, state, reason), whichever the protocol."""
    index = client.get_model_repository_index()
    if protocol == "http":
        return [dict(row) for row in index]
    return [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
        for m in index.models
    ]


def rows_for(rows: list[dict[str, str]], name: str) -> list[dict[str, str]]:
    return [r for r in rows if r["name"] == name]


def add_sub_int32_inputs() -> dict[str, np.ndarray]:
    return {
        "INPUT0": np.array([[1, 2, 3, 4]], np.int32),
        "INPUT1": np.array([[10, 20, 30, 40]], np.int32),
    }


def check_add_sub_int32(client: Any, protocol: str) -> None:
    arrays = add_sub_int32_inputs()
    result = client.infer("add_sub_int32", inputs_of(protocol, arrays))
    expected = reference("add_sub_int32", arrays)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected["OUTPUT0"])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), expected["OUTPUT1"])


# -- default mode (the shared server) ----------------------------------------------------


def test_index_lists_every_model(client: Any, protocol: str) -> None:
    rows = index_rows(client, protocol)
    assert {r["name"] for r in rows} == set(MODEL_NAMES)
    for name in MODEL_NAMES:
        if name == "corrupt":
            continue
        assert rows_for(rows, name), name
        assert all(r["state"] == "READY" for r in rows_for(rows, name)), rows_for(rows, name)


def test_index_corrupt_is_unavailable_with_reason(client: Any, protocol: str) -> None:
    rows = rows_for(index_rows(client, protocol), "corrupt")
    assert rows
    for row in rows:
        assert row["state"] == "UNAVAILABLE"
        assert row["reason"].strip()


def test_index_two_versions(client: Any, protocol: str) -> None:
    rows = rows_for(index_rows(client, protocol), "two_versions")
    assert sorted((r["version"], r["state"]) for r in rows) == [("1", "READY"), ("2", "READY")]


@pytest.mark.parametrize("action", ["load_model", "unload_model"])
def test_load_unload_refused_in_default_mode(
    client: Any, protocol: str, server: ServerProcess, action: str
) -> None:
    message = expect_error(protocol, ("UNAVAILABLE",), getattr(client, action), "add_sub_int32")
    assert "explicit" in message
    # Refused means nothing changed.
    assert client.is_model_ready("add_sub_int32") is True
    check_add_sub_int32(client, protocol)


# -- explicit mode (its own server) ------------------------------------------------------


@pytest.fixture(scope="module")
def explicit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo: Path = build_test_repository(tmp_path_factory.mktemp("explicit_repo"))
    with running_server(
        repo, "--model-control-mode", "explicit", "--load-model", "add_sub_fp32"
    ) as srv:
        yield srv


@pytest.fixture
def explicit(protocol: str, explicit_server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, explicit_server)
    try:
        yield c
    finally:
        c.close()


def test_explicit_starts_with_only_requested_model(explicit: Any, protocol: str) -> None:
    assert explicit.is_server_ready() is True
    assert explicit.is_model_ready("add_sub_fp32") is True
    assert explicit.is_model_ready("add_sub_int32") is False
    arrays = add_sub_inputs(seed=5)
    result = explicit.infer("add_sub_fp32", inputs_of(protocol, arrays))
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT0"), reference("add_sub_fp32", arrays)["OUTPUT0"], rtol=1e-6
    )
    rows = index_rows(explicit, protocol)
    assert set(MODEL_NAMES) <= {r["name"] for r in rows}
    assert [r.get("state") for r in rows_for(rows, "add_sub_fp32")] == ["READY"]
    assert all(r.get("state") != "READY" for r in rows_for(rows, "add_sub_int32"))


def test_explicit_load_infer_unload_reload(explicit: Any, protocol: str) -> None:
    try:
        explicit.load_model("add_sub_int32")
        assert explicit.is_model_ready("add_sub_int32") is True
        check_add_sub_int32(explicit, protocol)
        assert [r["state"] for r in rows_for(index_rows(explicit, protocol), "add_sub_int32")] == [
            "READY"
        ]

        explicit.unload_model("add_sub_int32")
        assert explicit.is_model_ready("add_sub_int32") is False
        message = expect_error(
            protocol,
            ("NOT_FOUND", "UNAVAILABLE"),
            explicit.infer,
            "add_sub_int32",
            inputs_of(protocol, add_sub_int32_inputs()),
        )
        assert "add_sub_int32" in message
        rows = rows_for(index_rows(explicit, protocol), "add_sub_int32")
        assert rows
        assert all(r["state"] == "UNAVAILABLE" for r in rows)

        explicit.load_model("add_sub_int32")
        assert explicit.is_model_ready("add_sub_int32") is True
        check_add_sub_int32(explicit, protocol)
    finally:
        with contextlib.suppress(InferenceServerException):
            explicit.unload_model("add_sub_int32")
    # The model loaded at start was never disturbed.
    assert explicit.is_model_ready("add_sub_fp32") is True


def test_explicit_reload_of_loaded_model(explicit: Any, protocol: str) -> None:
    """Loading a loaded model reloads it; it keeps serving."""
    explicit.load_model("add_sub_fp32")
    assert explicit.is_model_ready("add_sub_fp32") is True
    arrays = add_sub_inputs(seed=6, rows=2)
    result = explicit.infer("add_sub_fp32", inputs_of(protocol, arrays))
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT1"), reference("add_sub_fp32", arrays)["OUTPUT1"], rtol=1e-6
    )


def test_explicit_load_missing_model(explicit: Any, protocol: str) -> None:
    message = expect_error(
        protocol,
        ("INVALID_ARGUMENT", "NOT_FOUND"),
        explicit.load_model,
        "no_such_model",
    )
    assert "no_such_model" in message
    assert explicit.is_model_ready("add_sub_fp32") is True


def test_explicit_load_corrupt_model(explicit: Any, protocol: str) -> None:
    message = expect_error(
        protocol, ("INVALID_ARGUMENT", "UNAVAILABLE", "NOT_FOUND"), explicit.load_model, "corrupt"
    )
    assert "corrupt" in message
    assert explicit.is_model_ready("corrupt") is False
    assert explicit.is_model_ready("add_sub_fp32") is True


def test_explicit_servers_both_protocols_agree(explicit_server: ServerProcess) -> None:
    """A model loaded over one protocol is visible over the other."""
    http, grpc = (make_client(p, explicit_server) for p in PROTOCOLS)
    try:
        http.load_model("noconfig")
        assert grpc.is_model_ready("noconfig") is True
        grpc.unload_model("noconfig")
        assert http.is_model_ready("noconfig") is False
    finally:
        http.close()
        grpc.close()
