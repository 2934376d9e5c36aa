"""Triton Python models that complete their own config (`auto_complete_config`), through the
real server and tritonclient over both protocols."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import (
    ServerProcess,
    infer_input,
    make_client,
    model_index,
    running_server,
)

COMPLETES = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config
        config.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [3]})
        config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [3]})
        config.add_output({"name": "count", "data_type": "TYPE_INT32", "dims": [1]})
        config.set_max_batch_size(8)
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            count = np.full((len(x), 1), len(requests), np.int32)
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("y", x + 1), pb_utils.Tensor("count", count)]
            ))
        return out
"""

# (config.pbtxt or None, model.py)
MODELS: dict[str, tuple[str | None, str]] = {
    # No config.pbtxt at all: the model says everything.
    "completes": (None, COMPLETES),
    # The file names the tensor; the model adds its dims and another output.
    "fills_dims": (
        'backend: "python"\ninput [ { name: "x" data_type: TYPE_FP32 } ]\n',
        COMPLETES,
    ),
    "conflicts": (
        'backend: "python"\ninput [ { name: "x" data_type: TYPE_INT32 dims: [ 3 ] } ]\n',
        COMPLETES,
    ),
    "smaller_batch": ('backend: "python"\nmax_batch_size: 16\n', COMPLETES),
    "returns_nothing": (
        None,
        """
        class TritonPythonModel:
            @staticmethod
            def auto_complete_config(config):
                config.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [3]})

            def execute(self, requests):
                return []
        """,
    ),
    "decoupled": (
        None,
        COMPLETES.replace(
            "        return config",
            '        config.set_model_transaction_policy({"decoupled": True})\n'
            "        return config",
        ),
    ),
}

REFUSED = {
    "conflicts": "auto_complete_config gives data_type 'TYPE_FP32', but the configuration "
    "says 'TYPE_INT32'",
    "smaller_batch": "configuration specified max_batch_size 16, but auto_complete_config of "
    "model 'smaller_batch' specified max_batch_size 8",
    "returns_nothing": "it must return the ModelConfig it was given, not NoneType",
    "decoupled": "decoupled",
}


@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("auto_repo")
    for name, (config, code) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        if config is not None:
            (root / name / "config.pbtxt").write_text(config)
        (root / name / "1" / "model.py").write_text(textwrap.dedent(code))
    with running_server(root) as srv:
        yield srv


@pytest.fixture
def aclient(protocol: str, auto_server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, auto_server)
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("model", ["completes", "fills_dims"])
def test_the_model_completes_its_config(aclient: Any, protocol: str, model: str) -> None:
    config = aclient.get_model_config(model)
    if protocol == "grpc":
        config = {
            "max_batch_size": config.config.max_batch_size,
            "dynamic": config.config.HasField("dynamic_batching"),
            "inputs": [(t.name, list(t.dims)) for t in config.config.input],
            "outputs": [t.name for t in config.config.output],
        }
    else:
        config = {
            "max_batch_size": config["max_batch_size"],
            "dynamic": "dynamic_batching" in config,
            "inputs": [(t["name"], t["dims"]) for t in config["input"]],
            "outputs": [t["name"] for t in config["output"]],
        }
    assert config == {
        "max_batch_size": 8,
        "dynamic": True,
        "inputs": [("x", [3])],
        "outputs": ["y", "count"],
    }
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = aclient.infer(model, [infer_input(protocol, "x", x)])
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)


def test_a_config_the_model_cannot_complete_is_refused(aclient: Any, protocol: str) -> None:
    by_name = model_index(aclient, protocol)
    for name, reason in REFUSED.items():
        assert by_name[name]["state"] == "UNAVAILABLE", by_name[name]
        assert reason in by_name[name]["reason"], by_name[name]
