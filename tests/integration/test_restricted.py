"""Restricted APIs: without the key a restricted API is refused over both protocols
(403 / PERMISSION_DENIED); with it, it works; unrestricted APIs need no key."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    add_sub_inputs,
    expect_error,
    inputs_of,
    make_client,
    running_server,
)

KEY, VALUE = "admin-key", "s3cret"


@contextlib.contextmanager
def server_restricting(test_repo: Path, groups: str) -> Iterator[ServerProcess]:
    """A server whose API groups `groups` need the key, over both protocols."""
    spec = f"{groups}:{KEY}={VALUE}"
    with running_server(
        test_repo,
        "--model-control-mode", "explicit",
        "--load-model", "add_sub_fp32",
        "--http-restricted-api", spec,
        "--grpc-restricted-protocol", spec,
    ) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def restricted_server(test_repo: Path) -> Iterator[ServerProcess]:
    with server_restricting(test_repo, "model-repository,statistics") as server:
        yield server


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, restricted_server: ServerProcess) -> Iterator[Any]:
    c = make_client(request.param, restricted_server)
    c.protocol = request.param
    yield c
    c.close()


def test_repository_api_is_refused_without_the_key(client: Any) -> None:
    message = expect_error(client.protocol, ("PERMISSION_DENIED",), client.load_model, "noconfig")
    assert KEY in message
    expect_error(client.protocol, ("PERMISSION_DENIED",), client.get_model_repository_index)
    expect_error(
        client.protocol, ("PERMISSION_DENIED",), client.get_inference_statistics, "add_sub_fp32"
    )
    assert not client.is_model_ready("noconfig")


def test_repository_api_works_with_the_key(client: Any) -> None:
    headers = {KEY: VALUE}
    client.load_model("noconfig", headers=headers)
    assert client.is_model_ready("noconfig")
    index = client.get_model_repository_index(headers=headers)
    rows = index if client.protocol == "http" else [
        {"name": m.name, "state": m.state} for m in index.models
    ]  # fmt: skip
    assert {"name": "noconfig", "state": "READY"} in [
        {"name": r["name"], "state": r.get("state")} for r in rows
    ]
    client.unload_model("noconfig", headers=headers)
    assert not client.is_model_ready("noconfig")


def test_wrong_key_value_is_refused(client: Any) -> None:
    expect_error(
        client.protocol,
        ("PERMISSION_DENIED",),
        client.load_model,
        "noconfig",
        headers={KEY: "guess"},
    )


def test_unrestricted_apis_need_no_key(client: Any) -> None:
    assert client.is_server_live()
    assert client.get_model_metadata("add_sub_fp32")


@pytest.fixture(scope="module")
def inference_restricted(test_repo: Path) -> Iterator[ServerProcess]:
    with server_restricting(test_repo, "inference") as server:
        yield server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_restricted_inference_needs_the_key(
    protocol: str, inference_restricted: ServerProcess
) -> None:
    """Infer has its own fast path over HTTP; the restriction must hold there as well."""
    arrays = add_sub_inputs(seed=7)
    c = make_client(protocol, inference_restricted)
    try:
        message = expect_error(
            protocol, ("PERMISSION_DENIED",), c.infer, "add_sub_fp32", inputs_of(protocol, arrays)
        )
        assert KEY in message
        expect_error(
            protocol,
            ("PERMISSION_DENIED",),
            c.infer,
            "add_sub_fp32",
            inputs_of(protocol, arrays),
            headers={KEY: "guess"},
        )
        result = c.infer("add_sub_fp32", inputs_of(protocol, arrays), headers={KEY: VALUE})
        np.testing.assert_allclose(
            result.as_numpy("OUTPUT0"), arrays["INPUT0"] + arrays["INPUT1"], rtol=1e-6
        )
        assert c.is_model_ready("add_sub_fp32")  # other APIs stay open
    finally:
        c.close()
