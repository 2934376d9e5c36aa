"""`conveyor serve` with no repository serves the bundled examples, built on first use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtime.examples import build_example_repository, default_repository
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    infer_input,
    make_client,
    requested_output,
    running_server,
)


@pytest.fixture(scope="module")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("conveyor-home")
    with running_server(None, env={"CONVEYOR_HOME": str(home)}) as server:
        server.repo = home / "example-repository"
        yield server


def test_default_repository_is_built_under_conveyor_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_HOME", str(tmp_path))
    repo = default_repository()
    assert repo == tmp_path / "example-repository"
    assert (repo / "mlp" / "1" / "model.onnx").is_file()
    assert (repo / "simple" / "1" / "model.onnx").is_file()
    assert not (repo / "simple" / "config.pbtxt").exists()
    mtime = (repo / "mlp" / "1" / "model.onnx").stat().st_mtime_ns
    assert build_example_repository(repo) == repo  # a second build is a no-op
    assert (repo / "mlp" / "1" / "model.onnx").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mlp_answers_like_onnx_runtime_with_labels(
    example_server: ServerProcess, protocol: str
) -> None:
    x = np.random.default_rng(3).random((5, 64), dtype=np.float32)
    session = ort.InferenceSession(
        str(example_server.repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    expected = session.run(None, {"INPUT0": x})[0]
    client = make_client(protocol, example_server)
    try:
        result = client.infer("mlp", [infer_input(protocol, "INPUT0", x)])
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected, rtol=1e-5, atol=1e-5)
        top = client.infer(
            "mlp",
            [infer_input(protocol, "INPUT0", x)],
            outputs=[requested_output(protocol, "OUTPUT0", class_count=1)],
        ).as_numpy("OUTPUT0")
    finally:
        client.close()
    best = expected.argmax(axis=1)
    assert [row[0].decode().split(":")[1:] for row in top] == [[str(i), f"class{i}"] for i in best]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_is_served_from_a_completed_config(
    example_server: ServerProcess, protocol: str
) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    client = make_client(protocol, example_server)
    try:
        config = client.get_model_config("simple")
        result = client.infer(
            "simple", [infer_input(protocol, "INPUT0", a), infer_input(protocol, "INPUT1", b)]
        )
    finally:
        client.close()
    max_batch_size = (
        config["max_batch_size"] if protocol == "http" else config.config.max_batch_size
    )
    assert max_batch_size == 4
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
