"""Pipeline settings: parsing, resolving kernels and arguments, and the client-facing config."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import kernels
from runtime import config as cfg
from runtime import pipeline as pipe
from runtime import steps
from runtime.config import ConfigError, GraphTensor, ModelConfig
from runtime.proto import model_config_pb2 as pb


def model_config(
    inputs: str = 'input [{ name: "x" data_type: TYPE_FP32 dims: [4] }]',
    outputs: str = 'output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]',
    extra: str = "",
) -> ModelConfig:
    message = text_format.Parse(
        f'name: "m" platform: "onnxruntime_onnx" max_batch_size: 8 {inputs} {outputs} {extra}',
        pb.ModelConfig(),
    )
    return cfg.build(message)


def spec(doc: dict[str, object]) -> pipe.PipelineSpec:
    return pipe.PipelineSpec.model_validate(doc)


Arrays = Mapping[str, np.ndarray]


class FunctionBackend:
    """A backend that runs a function and keeps what it was handed."""

    thread_bound = False

    def __init__(self, function: Callable[[Arrays], dict[str, np.ndarray]]) -> None:
        self.function = function
        self.handed: list[Arrays] = []

    def graph_inputs(self) -> Sequence[GraphTensor]:
        return ()

    def graph_outputs(self) -> Sequence[GraphTensor]:
        return ()

    def run(self, inputs: Arrays, output_names: Sequence[str]) -> dict[str, np.ndarray]:
        self.handed.append(inputs)
        return self.function(inputs)

    def close(self) -> None:
        pass


def test_no_settings_is_an_empty_pipeline(tmp_path: Path) -> None:
    settings = pipe.read_settings(tmp_path, {})
    built = steps.build(settings.pipeline, tmp_path, model_config())
    assert not built
    answer = {"y": np.zeros(1)}
    backend = FunctionBackend(lambda inputs: answer)
    sent = {"x": np.zeros(1)}
    # No steps: the batch goes to the backend as it is, and its answer comes back as it is.
    assert pipe.Pipeline(built.pre, backend, built.post, ["y"]).run(sent) is answer
    assert backend.handed == [sent]
    assert backend.handed[0] is sent


def test_yaml_settings_and_array_references(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text(
        "pipeline:\n"
        "  pre:\n"
        "    - {kernel: standardize, tensor: x, args: {mean: '@mean', std: [1, 2, 4, 8]}}\n"
        "  post:\n"
        "    - {kernel: softmax, tensor: y}\n"
        "drift: {window_samples: 10}\n"
    )
    version = tmp_path / "1"
    version.mkdir()
    np.savez(version / "pipeline.npz", mean=np.arange(4, dtype=np.float32))
    settings = pipe.read_settings(tmp_path, {})
    assert settings.drift == {"window_samples": 10}
    built = steps.build(settings.pipeline, version, model_config())
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    fed = built.run_pre({"x": x})["x"]
    np.testing.assert_allclose(fed, (x - np.arange(4)) / np.array([1, 2, 4, 8]))
    backend = FunctionBackend(lambda inputs: {"y": inputs["x"] * 2})
    out = pipe.Pipeline(built.pre, backend, built.post, ["y"]).run({"x": x})["y"]
    np.testing.assert_allclose(out, kernels.softmax(fed * 2), rtol=1e-6)


def test_parameter_form_is_json(tmp_path: Path) -> None:
    params = {"conveyor.pipeline": '{"post": [{"kernel": "sigmoid", "tensor": "y"}]}'}
    settings = pipe.read_settings(tmp_path, params)
    built = steps.build(settings.pipeline, tmp_path, model_config())
    y = np.array([[0.0, 100.0, -100.0, 1.0]], np.float32)
    np.testing.assert_allclose(built.run_post({"y": y})["y"], kernels.sigmoid(y))


def test_pipeline_declared_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / "conveyor.yaml").write_text("pipeline: {post: [{kernel: sigmoid, tensor: y}]}\n")
    params = {"conveyor.pipeline": '{"post": []}'}
    with pytest.raises(ConfigError, match="declares its pipeline twice"):
        pipe.read_settings(tmp_path, params)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("pipeline: [", "conveyor.yaml of model"),
        ("pipline: {}\n", "pipline"),
        ("pipeline: {pre: [{kernel: softmax}]}\n", "tensor"),
        ("pipeline: {pre: [{kernel: softmax, tensor: x, colour: red}]}\n", "colour"),
    ],
)
def test_malformed_settings_name_the_problem(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "conveyor.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        pipe.read_settings(tmp_path, {})


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"pre": [{"kernel": "blur", "tensor": "x"}]}, r"unknown kernel 'blur'.*standardize"),
        ({"post": [{"kernel": "topk", "tensor": "y"}]}, "class_count"),
        ({"pre": [{"kernel": "histogram", "tensor": "x"}]}, "drift monitor"),
        ({"post": [{"kernel": "one_hot", "tensor": "y", "args": {"n": 3}}]}, "post steps are"),
        ({"pre": [{"kernel": "standardize", "tensor": "x", "args": {"mean": [0]}}]}, "missing"),
        ({"pre": [{"kernel": "softmax", "tensor": "x", "args": {"dim": 1}}]}, "unknown: .'dim'"),
        ({"pre": [{"kernel": "one_hot", "tensor": "x", "args": {"n": "3"}}]}, "integer"),
        ({"pre": [{"kernel": "one_hot", "tensor": "x", "args": {"n": True}}]}, "integer"),
        ({"pre": [{"kernel": "bucketize", "tensor": "x", "args": {"edges": "0,1"}}]}, "'@name'"),
        ({"pre": [{"kernel": "bucketize", "tensor": "x", "args": {"edges": ["a"]}}]}, "numbers"),
        ({"pre": [{"kernel": "bucketize", "tensor": "x", "args": {"edges": "@e"}}]}, "not exist"),
        ({"pre": [{"kernel": "sigmoid", "tensor": "z"}]}, r"input 'z'.*\['x'\]"),
        ({"post": [{"kernel": "sigmoid", "tensor": "x"}]}, r"output 'x'.*\['y'\]"),
        (
            {"post": [{"kernel": "sigmoid", "tensor": "y", "datatype": "FP64"}]},
            "only the first pre step",
        ),
    ],
)
def test_bad_steps_fail_the_load_with_a_reason(
    tmp_path: Path, doc: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        steps.build(spec(doc), tmp_path, model_config())


def test_missing_array_name_lists_what_the_file_holds(tmp_path: Path) -> None:
    np.savez(tmp_path / "pipeline.npz", mean=np.zeros(4))
    doc = {"pre": [{"kernel": "standardize", "tensor": "x", "args": {"mean": "@m", "std": "@s"}}]}
    with pytest.raises(ConfigError, match=r"'@m'.*holds \['mean'\]"):
        steps.build(spec(doc), tmp_path, model_config())


def image_config() -> ModelConfig:
    return model_config(
        inputs='input [{ name: "x" data_type: TYPE_FP32 dims: [3, 4, 5] }]',
        outputs='output [{ name: "y" data_type: TYPE_FP64 dims: [2] }]',
    )


def test_client_config_takes_the_declared_input_and_the_post_dtype(tmp_path: Path) -> None:
    doc = {
        "pre": [
            {
                "kernel": "normalize_image",
                "tensor": "x",
                "datatype": "UINT8",
                "dims": [4, 5, 3],
                "args": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            }
        ],
        "post": [{"kernel": "softmax", "tensor": "y"}],
    }
    config = image_config()
    built = steps.build(spec(doc), tmp_path, config)
    seen = steps.client_config(spec(doc), built, config)
    assert (seen.inputs[0].datatype, seen.inputs[0].dims) == ("UINT8", (4, 5, 3))
    # softmax gives float32, so clients get FP32 where the graph gives FP64.
    assert seen.outputs[0].datatype == "FP32"
    assert config.inputs[0].datatype == "FP32"
    # The config endpoint's message says the same as the metadata.
    answer = cfg.render(seen)
    assert answer.input[0].data_type == pb.TYPE_UINT8
    assert list(answer.input[0].dims) == [4, 5, 3]
    assert answer.output[0].data_type == pb.TYPE_FP32
    assert cfg.render(config).input[0].data_type == pb.TYPE_FP32


def test_client_config_refuses_steps_that_do_not_fit_the_model(tmp_path: Path) -> None:
    doc = {
        "pre": [
            {"kernel": "normalize_image", "tensor": "x", "args": {"mean": [0.5] * 2, "std": [1]}}
        ]
    }
    config = image_config()
    built = steps.build(spec(doc), tmp_path, config)
    # Without a declared input the model's FP32 [3, 4, 5] is read as NHWC with 5 channels.
    with pytest.raises(ConfigError, match=r"pre steps fail on zeros.*mean has 2 values"):
        steps.client_config(spec(doc), built, config)


def test_client_config_names_the_shape_the_steps_produce(tmp_path: Path) -> None:
    doc = {"pre": [{"kernel": "one_hot", "tensor": "x", "dims": [], "args": {"n": 3}}]}
    config = model_config()
    built = steps.build(spec(doc), tmp_path, config)
    with pytest.raises(ConfigError, match=r"into float32 \[3\].*takes FP32 \[4\]"):
        steps.client_config(spec(doc), built, config)


def test_unknown_client_datatype(tmp_path: Path) -> None:
    doc = {"pre": [{"kernel": "sigmoid", "tensor": "x", "datatype": "FLOAT"}]}
    config = model_config()
    built = steps.build(spec(doc), tmp_path, config)
    with pytest.raises(ConfigError, match="unknown datatype 'FLOAT'"):
        steps.client_config(spec(doc), built, config)


WARM_SCRIPT = """
import json
from pathlib import Path
from google.protobuf import text_format
from kernels import compiled
from runtime import config as cfg, pipeline as pipe, steps
from runtime.proto import model_config_pb2 as pb

text = ('name: "m" platform: "onnxruntime_onnx" max_batch_size: 256 '
        'input [{ name: "x" data_type: TYPE_FP32 dims: [32] }] '
        'output [{ name: "y" data_type: TYPE_FP32 dims: [32] }]')
config = cfg.build(text_format.Parse(text, pb.ModelConfig()))
doc = pipe.PipelineSpec.model_validate(
    {"pre": [{"kernel": "standardize", "tensor": "x", "args": {"mean": 0.5, "std": 2.0}}]}
)
before = list(compiled._standardize.signatures)
steps.client_config(doc, steps.build(doc, Path("."), config), config)
print(json.dumps([len(before), sorted(str(s[0]) for s in compiled._standardize.signatures)]))
"""


def test_load_warms_the_signatures_and_sizes_requests_bring() -> None:
    """In a fresh interpreter (nothing compiled yet): standardize switches to Numba from
    4,096 elements, which only a full batch of 256 x 32 reaches, and raw gRPC tensors are
    read-only, a separate Numba signature. Both are compiled or loaded before any request."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", WARM_SCRIPT], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert before == 0
    assert after == ["array(float32, 2d, C)", "readonly array(float32, 2d, C)"]
