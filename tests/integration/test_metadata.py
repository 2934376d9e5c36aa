"""Health, server and model metadata, model readiness and model configuration, both protocols."""

from __future__ import annotations

from typing import Any

import pytest
from tritonclient.grpc import model_config_pb2

from tests.integration.conftest import ServerProcess, make_client

IMPLEMENTED_EXTENSIONS = {
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "statistics",
    "trace",
    "logging",
}

NOT_IMPLEMENTED = {"system_shared_memory", "cuda_shared_memory", "sequence"}


def model_metadata(client: Any, protocol: str, name: str, version: str = "") -> dict[str, Any]:
    """The model metadata as a dict with integer shapes, whichever the protocol."""
    meta = client.get_model_metadata(name, version)
    if protocol == "http":
        return dict(meta)

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


def test_health(client: Any) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


def test_server_metadata(client: Any, protocol: str) -> None:
    meta = client.get_server_metadata()
    if protocol == "http":
        name, version, extensions = meta["name"], meta["version"], meta["extensions"]
    else:
        name, version, extensions = meta.name, meta.version, list(meta.extensions)
    assert name
    assert version
    assert set(extensions) >= IMPLEMENTED_EXTENSIONS
    # perf_analyzer trusts this list: nothing that the server answers UNIMPLEMENTED to.
    assert not set(extensions) & NOT_IMPLEMENTED


def test_model_metadata_batched(client: Any, protocol: str) -> None:
    meta = model_metadata(client, protocol, "add_sub_fp32")
    assert meta["name"] == "add_sub_fp32"
    assert meta["versions"] == ["1"]
    assert meta["platform"] in ("onnxruntime_onnx", "onnxruntime")
    assert meta["inputs"] == [
        {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "INPUT1", "datatype": "FP32", "shape": [-1, 4]},
    ]
    assert meta["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "OUTPUT1", "datatype": "FP32", "shape": [-1, 4]},
    ]


def test_model_metadata_variable_dims(client: Any, protocol: str) -> None:
    meta = model_metadata(client, protocol, "identity_bytes")
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "BYTES", "shape": [-1, -1]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "BYTES", "shape": [-1, -1]}]


def test_model_metadata_no_batch_dim(client: Any, protocol: str) -> None:
    meta = model_metadata(client, protocol, "nobatch_fp32")
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 3]}]
    assert meta["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 3]}]


def test_model_metadata_versions(client: Any, protocol: str) -> None:
    assert sorted(model_metadata(client, protocol, "two_versions")["versions"]) == ["1", "2"]
    assert model_metadata(client, protocol, "two_versions", "1")["versions"] == ["1"]


def test_model_ready(client: Any) -> None:
    assert client.is_model_ready("add_sub_fp32") is True
    assert client.is_model_ready("two_versions") is True
    assert client.is_model_ready("two_versions", "1") is True
    assert client.is_model_ready("two_versions", "2") is True
    assert client.is_model_ready("two_versions", "3") is False
    assert client.is_model_ready("no_such_model") is False


def test_corrupt_model_not_ready_while_others_serve(client: Any) -> None:
    assert client.is_model_ready("corrupt") is False
    assert client.is_model_ready("add_sub_int32") is True


def test_model_config_http_json(server: ServerProcess) -> None:
    c = make_client("http", server)
    try:
        config = c.get_model_config("add_sub_fp32")
    finally:
        c.close()
    assert config["name"] == "add_sub_fp32"
    assert config["max_batch_size"] == 8
    assert "maxBatchSize" not in config
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][0]["dims"] == [4]
    assert config["output"][0]["dims"] == [4]
    assert config["output"][0]["label_filename"] == "labels.txt"
    assert isinstance(config["dynamic_batching"], dict)
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    # Defaults are printed (perf_analyzer reads them without presence checks).
    assert config["input"][0]["is_shape_tensor"] is False
    assert config["input"][0]["optional"] is False
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["instance_group"][0]["kind"] == "KIND_CPU"


def test_model_config_grpc_message(server: ServerProcess) -> None:
    c = make_client("grpc", server)
    try:
        response = c.get_model_config("add_sub_fp32")
    finally:
        c.close()
    config = response.config
    assert config.name == "add_sub_fp32"
    assert config.max_batch_size == 8
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert list(config.input[0].dims) == [4]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000


def _config_summary(client: Any, protocol: str, name: str) -> dict[str, Any]:
    """max_batch_size, per-input (data type, dims) and whether dynamic batching is on."""
    config = client.get_model_config(name)
    if protocol == "http":
        return {
            "max_batch_size": config["max_batch_size"],
            "inputs": [(i["name"], i["data_type"], i["dims"]) for i in config["input"]],
            "outputs": [(o["name"], o["data_type"], o["dims"]) for o in config["output"]],
            "dynamic_batching": "dynamic_batching" in config,
        }
    c = config.config
    type_name = model_config_pb2.DataType.Name
    return {
        "max_batch_size": c.max_batch_size,
        "inputs": [(i.name, type_name(i.data_type), list(i.dims)) for i in c.input],
        "outputs": [(o.name, type_name(o.data_type), list(o.dims)) for o in c.output],
        "dynamic_batching": c.HasField("dynamic_batching"),
    }


def test_noconfig_auto_completed(client: Any, protocol: str) -> None:
    assert _config_summary(client, protocol, "noconfig") == {
        "max_batch_size": 4,
        "inputs": [("INPUT0", "TYPE_FP32", [3])],
        "outputs": [("OUTPUT0", "TYPE_FP32", [3])],
        "dynamic_batching": True,
    }


def test_noconfig_metadata(client: Any, protocol: str) -> None:
    meta = model_metadata(client, protocol, "noconfig")
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 3]}]


@pytest.mark.parametrize(
    ("name", "dtype", "dims"),
    [
        ("add_sub_int32", "TYPE_INT32", [4]),
        ("identity_fp16", "TYPE_FP16", [-1]),
        ("identity_bytes", "TYPE_STRING", [-1]),
        ("nobatch_fp32", "TYPE_FP32", [2, 3]),
    ],
)
def test_model_config_types(
    client: Any, protocol: str, name: str, dtype: str, dims: list[int]
) -> None:
    summary = _config_summary(client, protocol, name)
    assert summary["inputs"][0][1:] == (dtype, dims)
