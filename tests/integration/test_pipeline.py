"""Per-model pre/post kernel pipelines, served over both protocols."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import kernels
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    inputs_of,
    make_client,
    requested_output,
    running_server,
)
from tests.models import IR_VERSION, OPSET, Tensor, config_text, write_config

MEAN = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
STD = np.array([2.0, 0.5, 1.0, 4.0], np.float32)
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]


def scale_model(factor: float, shape: list[int | str]) -> bytes:
    """FP32 INPUT0 -> OUTPUT0 = INPUT0 * factor."""
    io = [
        helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape)
        for n in ("INPUT0", "OUTPUT0")
    ]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT0", "factor"], ["OUTPUT0"])],
        "scale",
        io[:1],
        io[1:],
        initializer=[numpy_helper.from_array(np.array(factor, np.float32), "factor")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    return model.SerializeToString()


def add_model(
    root: Path, name: str, shape: list[int], pipeline_yaml: str, extra: str = "", factor: float = 2
) -> Path:
    model_dir = root / name
    version = model_dir / "1"
    version.mkdir(parents=True)
    (version / "model.onnx").write_bytes(scale_model(factor, ["batch", *shape]))
    io: list[Tensor] = [("INPUT0", "FP32", shape)]
    out: list[Tensor] = [("OUTPUT0", "FP32", shape)]
    labels = {"OUTPUT0": "labels.txt"} if len(shape) == 1 else None
    text = config_text(name, 8, io, out, "dynamic_batching { }\n" + extra, labels)
    write_config(model_dir, text)
    if labels:
        (model_dir / "labels.txt").write_text("".join(f"class{i}\n" for i in range(shape[0])))
    if pipeline_yaml:
        (model_dir / "conveyor.yaml").write_text(pipeline_yaml)
    return version


STANDARDIZE_SOFTMAX = """
pipeline:
  pre:
    - kernel: standardize
      tensor: INPUT0
      args: {mean: "@mean", std: "@std"}
  post:
    - kernel: softmax
      tensor: OUTPUT0
"""

NORMALIZE_IMAGE = f"""
pipeline:
  pre:
    - kernel: normalize_image
      tensor: INPUT0
      datatype: UINT8
      dims: [4, 5, 3]
      args: {{mean: {IMAGE_MEAN}, std: {IMAGE_STD}}}
"""


@pytest.fixture(scope="module")
def pipeline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("pipelines")
    version = add_model(root, "scores", [4], STANDARDIZE_SOFTMAX)
    np.savez(version / "pipeline.npz", mean=MEAN, std=STD)
    add_model(root, "image", [3, 4, 5], NORMALIZE_IMAGE, factor=1)
    params = (
        'parameters { key: "conveyor.pipeline" value { string_value: '
        '"{\\"post\\": [{\\"kernel\\": \\"sigmoid\\", \\"tensor\\": \\"OUTPUT0\\"}]}" } }\n'
    )
    add_model(root, "sigmoid", [4], "", params)
    add_model(root, "unknown_kernel", [4], "pipeline: {pre: [{kernel: blur, tensor: INPUT0}]}\n")
    add_model(root, "missing_array", [4], STANDARDIZE_SOFTMAX)
    undeclared = NORMALIZE_IMAGE.replace("      datatype: UINT8\n      dims: [4, 5, 3]\n", "")
    add_model(root, "undeclared_image", [3, 4, 5], undeclared)
    with running_server(root) as srv:
        yield srv


@pytest.fixture(params=PROTOCOLS)
def pclient(request: pytest.FixtureRequest, pipeline_server: ServerProcess) -> Iterator[Any]:
    c = make_client(request.param, pipeline_server)
    c.protocol = request.param
    try:
        yield c
    finally:
        c.close()


def expected_scores(x: np.ndarray) -> np.ndarray:
    return kernels.softmax(2 * ((x - MEAN) / STD))


def test_standardize_then_softmax(pclient: Any) -> None:
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    result = pclient.infer("scores", inputs_of(pclient.protocol, {"INPUT0": x}))
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), expected_scores(x), rtol=1e-5)


def test_classification_ranks_the_post_processed_scores(pclient: Any) -> None:
    x = np.array([[0.0, 0.0, 10.0, 0.0], [9.0, 0.0, 0.0, 0.0]], np.float32)
    outputs = [requested_output(pclient.protocol, "OUTPUT0", class_count=2)]
    result = pclient.infer("scores", inputs_of(pclient.protocol, {"INPUT0": x}), outputs=outputs)
    want = expected_scores(x)
    for row, entries in zip(want, result.as_numpy("OUTPUT0"), strict=True):
        order = np.argsort(-row, kind="stable")[:2]
        texts = [e.decode() if isinstance(e, bytes) else e for e in entries]
        assert [int(t.split(":")[1]) for t in texts] == order.tolist()
        assert [t.split(":")[2] for t in texts] == [f"class{i}" for i in order]
        assert float(texts[0].split(":")[0]) == pytest.approx(row[order[0]], abs=1e-6)


def test_image_clients_send_uint8_nhwc(pclient: Any) -> None:
    img = np.random.default_rng(2).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    metadata = pclient.get_model_metadata("image")
    first = metadata["inputs"][0] if pclient.protocol == "http" else metadata.inputs[0]
    datatype, shape = (
        (first["datatype"], first["shape"])
        if pclient.protocol == "http"
        else (first.datatype, list(first.shape))
    )
    assert (datatype, shape) == ("UINT8", [-1, 4, 5, 3])
    config = pclient.get_model_config("image")
    first_input = config["input"][0] if pclient.protocol == "http" else config.config.input[0]
    if pclient.protocol == "http":
        assert (first_input["data_type"], first_input["dims"]) == ("TYPE_UINT8", [4, 5, 3])
    else:
        assert (first_input.data_type, list(first_input.dims)) == (2, [4, 5, 3])  # TYPE_UINT8
    result = pclient.infer("image", inputs_of(pclient.protocol, {"INPUT0": img}))
    want = (img / 255 - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT0"), want.transpose(0, 3, 1, 2).astype(np.float32), rtol=1e-6
    )


def test_parameter_form(pclient: Any) -> None:
    x = np.array([[-50.0, 0.0, 0.5, 50.0]], np.float32)
    result = pclient.infer("sigmoid", inputs_of(pclient.protocol, {"INPUT0": x}))
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), kernels.sigmoid(2 * x), rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unknown_kernel", "unknown kernel 'blur'"),
        ("missing_array", "pipeline.npz' does not exist"),
        ("undeclared_image", "declare what clients send"),
    ],
)
def test_bad_pipelines_make_only_their_model_unavailable(
    pclient: Any, name: str, reason: str
) -> None:
    index = pclient.get_model_repository_index()
    rows = (
        [dict(r) for r in index]
        if pclient.protocol == "http"
        else [{"name": m.name, "state": m.state, "reason": m.reason} for m in index.models]
    )
    row = next(r for r in rows if r["name"] == name)
    assert row["state"] == "UNAVAILABLE"
    assert reason in row["reason"]
    assert pclient.is_model_ready("scores")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_editing_conveyor_yaml_in_poll_mode_reloads_the_pipeline(
    tmp_path: Path, protocol: str
) -> None:
    """conveyor.yaml is a model-level file: changing it rebuilds every version's steps."""
    add_model(tmp_path, "m", [4], "")
    x = np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    with running_server(tmp_path, *flags) as srv:
        client = make_client(protocol, srv)
        try:

            def output() -> np.ndarray:
                result = client.infer("m", inputs_of(protocol, {"INPUT0": x}))
                return np.asarray(result.as_numpy("OUTPUT0"))

            np.testing.assert_allclose(output(), 2 * x)
            temp = tmp_path / "m" / ".conveyor.yaml.new"
            temp.write_text("pipeline: {post: [{kernel: sigmoid, tensor: OUTPUT0}]}\n")
            temp.replace(tmp_path / "m" / "conveyor.yaml")
            deadline = time.monotonic() + 20
            while not np.allclose(output(), kernels.sigmoid(2 * x), rtol=1e-6):
                assert time.monotonic() < deadline, "the new pipeline never took effect"
                time.sleep(0.05)
        finally:
            client.close()
    assert "model 'm' swapped" in srv.log_text()
