"""The GPU backend (pinned staging, IO binding, steps on the device), on numba's CUDA simulator.

With NUMBA_ENABLE_CUDASIM=1 (tests/conftest.py) the device kernels run on the CPU and
"device" arrays live in host memory, which ONNX Runtime's CPU provider reads through IO
binding exactly as its CUDA provider reads device memory. On a GPU machine
(CONVEYOR_REAL_CUDA=1) the same tests run with real device memory and the CUDA provider.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from runtime import pipeline as pipe
from runtime import steps
from runtime.backends.onnx import OnnxBackend
from runtime.backends.onnx_cuda import default_memory
from runtime.loader import device_pipeline
from tests.integration.test_pipeline import scale_model
from tests.unit.test_pipeline import model_config, spec

CUDA = "CUDAExecutionProvider"

if default_memory().ort_device == "cuda" and CUDA not in ort.get_available_providers():
    pytest.skip(
        "real CUDA memory needs ONNX Runtime's CUDA provider (onnxruntime-gpu), "
        "which this machine's onnxruntime lacks",
        allow_module_level=True,
    )


def session(factor: float, shape: list[int | str]) -> OnnxBackend:
    providers = [CUDA] if default_memory().ort_device == "cuda" else []
    return OnnxBackend(scale_model(factor, shape), providers=[*providers, "CPUExecutionProvider"])


def host_run(sess: OnnxBackend, built: pipe.Steps) -> Any:
    """The same steps and session, every step on the host, session.run in between."""
    return pipe.Pipeline(built.pre, sess, built.post, ["OUTPUT0"]).run


def on_device(built: pipe.Steps, sess: OnnxBackend) -> pipe.Pipeline:
    return device_pipeline(sess, built, ["OUTPUT0"], default_memory())


def steps_on_device(runner: pipe.Pipeline) -> tuple[bool, bool]:
    """Whether the pre and the post steps run on the device (empty stages count as yes)."""
    return not runner.pre, not runner.post


STANDARDIZE_SOFTMAX = {
    "pre": [
        {
            "kernel": "standardize",
            "tensor": "INPUT0",
            "args": {"mean": [1.0, -2.0, 0.5, 3.0], "std": [2.0, 0.5, 1.0, 4.0]},
        }
    ],
    "post": [{"kernel": "softmax", "tensor": "OUTPUT0"}],
}


def build(doc: dict[str, Any], tmp_path: Path, **config: str) -> pipe.Steps:
    return steps.build(spec(doc), tmp_path, model_config(**config))


def io4() -> dict[str, str]:
    return {
        "inputs": 'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }]',
        "outputs": 'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]',
    }


@pytest.mark.parametrize("rows", [1, 3, 0, 7])
def test_steps_on_the_device_match_the_host_path(tmp_path: Path, rows: int) -> None:
    built = build(STANDARDIZE_SOFTMAX, tmp_path, **io4())
    sess = session(2.0, ["batch", 4])
    runner = on_device(built, sess)
    assert steps_on_device(runner) == (True, True)
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    got = runner.run({"INPUT0": x})["OUTPUT0"]
    want = host_run(sess, built)({"INPUT0": x})["OUTPUT0"]
    assert got.shape == want.shape == (rows, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_normalize_image_on_the_device(tmp_path: Path) -> None:
    doc = {
        "pre": [
            {
                "kernel": "normalize_image",
                "tensor": "INPUT0",
                "args": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            }
        ]
    }
    io = {
        "inputs": 'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [3, 4, 5] }]',
        "outputs": 'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [3, 4, 5] }]',
    }
    built = build(doc, tmp_path, **io)
    sess = session(1.0, ["batch", 3, 4, 5])
    img = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    got = on_device(built, sess).run({"INPUT0": img})["OUTPUT0"]
    want = host_run(sess, built)({"INPUT0": img})["OUTPUT0"]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_step_without_a_device_version_runs_that_stage_on_the_host(tmp_path: Path) -> None:
    doc = {
        "pre": [{"kernel": "bucketize", "tensor": "INPUT0", "args": {"edges": [0.0, 1.0]}}],
        "post": [{"kernel": "sigmoid", "tensor": "OUTPUT0"}],
    }
    io = {
        "inputs": 'input [{ name: "INPUT0" data_type: TYPE_FP32 dims: [4] }]',
        "outputs": 'output [{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [4] }]',
    }
    built = build(doc, tmp_path, **io)
    sess = session(1.0, ["batch", 4])
    runner = on_device(built, sess)
    assert steps_on_device(runner) == (False, True)
    x = np.array([[-1.0, 0.5, 1.0, 2.0]], np.float32)
    # bucketize gives int64, which this FP32 model refuses: the host stage ran, as on the host.
    with pytest.raises(Exception, match=r"(?i)int64|type"):
        runner.run({"INPUT0": x})


def test_softmax_along_another_axis_stays_on_the_host(tmp_path: Path) -> None:
    doc = {"post": [{"kernel": "softmax", "tensor": "OUTPUT0", "args": {"axis": 0}}]}
    built = build(doc, tmp_path, **io4())
    sess = session(1.0, ["batch", 4])
    runner = on_device(built, sess)
    assert steps_on_device(runner) == (True, False)
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    got = runner.run({"INPUT0": x})["OUTPUT0"]
    np.testing.assert_allclose(got.sum(axis=0), 1.0, rtol=1e-5)


def test_threads_keep_their_own_staging_buffers(tmp_path: Path) -> None:
    """Several instances run batches at once; each thread stages into its own pinned buffer."""
    built = build(STANDARDIZE_SOFTMAX, tmp_path, **io4())
    sess = session(2.0, ["batch", 4])
    runner = on_device(built, sess)
    reference = host_run(sess, built)
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(5):
            x = rng.normal(size=(int(rng.integers(1, 9)), 4)).astype(np.float32)
            got = runner.run({"INPUT0": x})["OUTPUT0"]
            want = reference({"INPUT0": x})["OUTPUT0"]
            if not np.allclose(got, want, rtol=1e-5, atol=1e-7):
                errors.append(f"thread {seed}: {got} != {want}")

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
