"""`conveyor serve` with no repository serves the bundled examples, built on first use."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf.json_format import MessageToDict

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
    for name in ("mlp_pre", "mlp_post"):
        assert (repo / name / "1" / "model.py").is_file()
    assert (repo / "mlp_pipeline" / "config.pbtxt").is_file()
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


def images(rows: int, seed: int) -> np.ndarray:
    """Raw digits-like images: UINT8 [rows, 8, 8] with pixels 0..16."""
    return np.random.default_rng(seed).integers(0, 17, (rows, 8, 8), dtype=np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def chained(client: Any, protocol: str, image: np.ndarray) -> dict[str, np.ndarray]:
    """mlp_pre, mlp and mlp_post called in turn, each on the previous answer."""
    features = client.infer("mlp_pre", [infer_input(protocol, "IMAGE", image)]).as_numpy("FEATURES")
    logits = client.infer("mlp", [infer_input(protocol, "INPUT0", features)]).as_numpy("OUTPUT0")
    post = client.infer("mlp_post", [infer_input(protocol, "LOGITS", logits)])
    return {
        "FEATURES": features,
        "LOGITS": logits,
        "PROBABILITIES": post.as_numpy("PROBABILITIES"),
        "LABEL": post.as_numpy("LABEL"),
    }


def pipeline(client: Any, protocol: str, image: np.ndarray) -> dict[str, np.ndarray]:
    result = client.infer("mlp_pipeline", [infer_input(protocol, "IMAGE", image)])
    return {name: result.as_numpy(name) for name in ("PROBABILITIES", "LABEL")}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mlp_pipeline_answers_as_the_three_models_called_in_turn(
    example_server: ServerProcess, protocol: str
) -> None:
    image = images(6, seed=11)
    client = make_client(protocol, example_server)
    try:
        steps = chained(client, protocol, image)
        whole = pipeline(client, protocol, image)
    finally:
        client.close()
    # Each step does what it says: scaled, flattened pixels; softmax; argmax.
    expected_features = image.reshape(6, 64).astype(np.float32) / 16
    np.testing.assert_allclose(steps["FEATURES"], expected_features, rtol=1e-6)
    np.testing.assert_allclose(steps["PROBABILITIES"], softmax(steps["LOGITS"]), rtol=1e-5)
    # The ensemble gives what the client gets by chaining the calls.
    assert whole["PROBABILITIES"].dtype == np.float32
    assert whole["PROBABILITIES"].shape == (6, 10)
    assert whole["LABEL"].dtype == np.int64
    assert whole["LABEL"].shape == (6, 1)
    np.testing.assert_allclose(whole["PROBABILITIES"], steps["PROBABILITIES"], rtol=1e-6)
    np.testing.assert_array_equal(whole["LABEL"], steps["LABEL"])
    np.testing.assert_allclose(whole["PROBABILITIES"].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(whole["LABEL"][:, 0], whole["PROBABILITIES"].argmax(axis=1))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_mlp_pipeline_serves_concurrent_clients_and_clips_bright_pixels(
    example_server: ServerProcess, protocol: str
) -> None:
    """Eight clients at once, each on its own thread with its own client (their requests may
    share batches in every step); a pixel above 16 counts as 16."""
    batches = [images(1 + seed % 3, seed=seed) for seed in range(16)]
    for image in batches[1::2]:
        image[:, 0, 0] = 255
    client = make_client(protocol, example_server)
    try:
        expected = [chained(client, protocol, np.minimum(image, 16)) for image in batches]
    finally:
        client.close()

    def one(image: np.ndarray) -> dict[str, np.ndarray]:
        own = make_client(protocol, example_server)
        try:
            return pipeline(own, protocol, image)
        finally:
            own.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, batches))
    for answer, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(answer["PROBABILITIES"], want["PROBABILITIES"], rtol=1e-5)
        np.testing.assert_array_equal(answer["LABEL"], want["LABEL"])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_pipeline_and_its_steps_agree_on_max_batch_size(
    example_server: ServerProcess, protocol: str
) -> None:
    client = make_client(protocol, example_server)
    try:
        configs = {
            name: client.get_model_config(name)
            for name in ("mlp_pipeline", "mlp_pre", "mlp", "mlp_post")
        }
    finally:
        client.close()
    if protocol == "grpc":
        configs = {
            name: MessageToDict(c.config, preserving_proto_field_name=True)
            for name, c in configs.items()
        }
    sizes = {name: int(c["max_batch_size"]) for name, c in configs.items()}
    assert sizes["mlp_pipeline"] > 0
    assert all(size >= sizes["mlp_pipeline"] for size in sizes.values()), sizes
    steps = configs["mlp_pipeline"]["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["mlp_pre", "mlp", "mlp_post"]
    for name in ("mlp_pre", "mlp_post"):
        assert "dynamic_batching" in configs[name], name
