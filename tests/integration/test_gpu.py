"""The server on a GPU: ONNX Runtime's CUDA provider, IO binding, steps on the device.

Marked `gpu`: skipped, with the reason, where onnxruntime has no CUDA provider or there is
no device. benchmarks/gpu_check.sh runs these on a GPU machine.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import kernels
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    inputs_of,
    make_client,
    running_server,
)
from tests.integration.test_pipeline import MEAN, STANDARDIZE_SOFTMAX, STD, add_model

pytestmark = pytest.mark.gpu

if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip(
        "onnxruntime has no CUDA provider here (install onnxruntime-gpu on a GPU machine)",
        allow_module_level=True,
    )

GPU_INSTANCE = "instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]\n"


@pytest.fixture(scope="module")
def gpu_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("gpu")
    version = add_model(root, "on_gpu", [4], STANDARDIZE_SOFTMAX, GPU_INSTANCE)
    np.savez(version / "pipeline.npz", mean=MEAN, std=STD)
    with running_server(root) as srv:
        yield srv


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_batches_run_through_io_binding_with_steps_on_the_device(
    gpu_server: ServerProcess, protocol: str
) -> None:
    client: Any = make_client(protocol, gpu_server)
    try:
        x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
        got = client.infer("on_gpu", inputs_of(protocol, {"INPUT0": x})).as_numpy("OUTPUT0")
    finally:
        client.close()
    want = kernels.softmax(2 * ((x - MEAN) / STD))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    log = gpu_server.log_text()
    assert "model 'on_gpu' runs through IO binding; pre steps on the device" in log


def test_gpu_metrics_are_exported(gpu_server: ServerProcess) -> None:
    with urllib.request.urlopen(f"http://{gpu_server.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "nv_gpu_memory_total_bytes{" in text
    assert 'gpu_uuid="GPU-' in text


def test_config_shows_the_instance_on_the_gpu(gpu_server: ServerProcess) -> None:
    client: Any = make_client("http", gpu_server)
    try:
        config = client.get_model_config("on_gpu")
    finally:
        client.close()
    assert config["instance_group"][0]["kind"] == "KIND_GPU"
