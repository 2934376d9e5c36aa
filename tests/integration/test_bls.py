"""Python models calling other models of the same server (Triton's BLS): `exec` and
`async_exec` into an ONNX model and into another Python model's worker, errors that come
back in the response, through the real server and tritonclient over both protocols."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import (
    ServerProcess,
    expect_error,
    infer_input,
    make_client,
    model_index,
    running_server,
)
from tests.models import add_sub_fp32, python_fp32

MODELS = {
    # y = 2x + 1: add_sub_fp32 (ONNX) computes x + x.
    "bls_sync": """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                    call = pb_utils.InferenceRequest(
                        model_name="add_sub_fp32",
                        requested_output_names=["OUTPUT0"],
                        inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)],
                    )
                    answer = call.exec()
                    if answer.has_error():
                        raise pb_utils.TritonModelException(answer.error().message())
                    total = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
                    responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", total + 1)]))
                return responses
        """,
    # y = (x + x) + 2x, the two calls awaited together: ONNX and a Python model's worker.
    "bls_async": """
        import asyncio
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            async def execute(self, requests):
                responses = []
                for request in requests:
                    x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                    onnx_call = pb_utils.InferenceRequest(
                        model_name="add_sub_fp32",
                        model_version=1,
                        requested_output_names=["OUTPUT0"],
                        inputs=[pb_utils.Tensor("INPUT0", x), pb_utils.Tensor("INPUT1", x)],
                    )
                    python_call = pb_utils.InferenceRequest(
                        model_name="double",
                        requested_output_names=["y"],
                        inputs=[pb_utils.Tensor("x", x)],
                    )
                    a, b = await asyncio.gather(onnx_call.async_exec(), python_call.async_exec())
                    total = a.output_tensors()[0].as_numpy() + b.output_tensors()[0].as_numpy()
                    responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", total)]))
                return responses
        """,
    # Conveyor's own interface calls through the same module.
    "bls_predict": """
        import triton_python_backend_utils as pb_utils

        class Model:
            def predict(self, inputs):
                call = pb_utils.InferenceRequest(
                    model_name="double",
                    requested_output_names=["y"],
                    inputs=[pb_utils.Tensor("x", inputs["x"])],
                )
                answer = call.exec()
                if answer.has_error():
                    raise RuntimeError(answer.error().message())
                return {"y": pb_utils.get_output_tensor_by_name(answer, "y").as_numpy() - 1}
        """,
    # x[0, 0] picks a call that fails: the callee's error is handed back as the response.
    "bls_errors": """
        import numpy as np
        import triton_python_backend_utils as pb_utils

        TARGETS = {
            1: ("nowhere", "x", np.float32),
            2: ("bls_errors", "x", np.float32),
            3: ("add_sub_fp32", "INPUT0", np.int32),
        }

        class TritonPythonModel:
            def execute(self, requests):
                responses = []
                for request in requests:
                    x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                    model, name, dtype = TARGETS[int(x[0, 0])]
                    answer = pb_utils.InferenceRequest(
                        model_name=model,
                        requested_output_names=[],
                        inputs=[pb_utils.Tensor(name, x.astype(dtype))],
                    ).exec()
                    assert answer.has_error()
                    responses.append(pb_utils.InferenceResponse(error=answer.error()))
                return responses
        """,
    "double": """
        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"] * 2}
        """,
    "bls_in_initialize": """
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                pb_utils.InferenceRequest(
                    model_name="double",
                    requested_output_names=["y"],
                    inputs=[pb_utils.Tensor("x", np.zeros((1, 4), np.float32))],
                ).exec()

            def execute(self, requests):
                return []
        """,
}


@pytest.fixture(scope="module")
def bls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("bls_repo")
    add_sub_fp32(root)
    for name, code in MODELS.items():
        python_fp32(root, name, code)
    with running_server(root) as srv:
        yield srv


@pytest.fixture
def bclient(protocol: str, bls_server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, bls_server)
    try:
        yield c
    finally:
        c.close()


def infer_x(client: Any, protocol: str, model: str, x: np.ndarray) -> np.ndarray:
    result = client.infer(model, [infer_input(protocol, "x", x)])
    return np.asarray(result.as_numpy("y"))


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def test_exec_calls_an_onnx_model(bclient: Any, protocol: str) -> None:
    x = rows(3, 0)
    np.testing.assert_allclose(infer_x(bclient, protocol, "bls_sync", x), 2 * x + 1, rtol=1e-6)


def test_async_exec_awaits_two_models_at_once(bclient: Any, protocol: str) -> None:
    x = rows(2, 1)
    np.testing.assert_allclose(infer_x(bclient, protocol, "bls_async", x), 4 * x, rtol=1e-6)


def test_a_model_predict_calls_another_python_model(bclient: Any, protocol: str) -> None:
    x = rows(1, 2)
    np.testing.assert_allclose(infer_x(bclient, protocol, "bls_predict", x), 2 * x - 1, rtol=1e-6)


@pytest.mark.parametrize(
    ("pick", "code", "text"),
    [
        (1, "NOT_FOUND", "'nowhere'"),
        (2, "INVALID_ARGUMENT", "model 'bls_errors' cannot call itself"),
        (3, "INVALID_ARGUMENT", "INPUT0"),
    ],
)
def test_a_failed_call_comes_back_in_the_response(
    bclient: Any, protocol: str, pick: int, code: str, text: str
) -> None:
    x = np.full((1, 4), pick, np.float32)
    message = expect_error(protocol, (code,), infer_x, bclient, protocol, "bls_errors", x)
    assert text in message
    # The model and the server go on serving.
    np.testing.assert_allclose(infer_x(bclient, protocol, "bls_sync", x), 2 * x + 1)


def test_calls_outside_execute_fail_the_load(bclient: Any, protocol: str) -> None:
    entry = model_index(bclient, protocol)["bls_in_initialize"]
    assert entry["state"] == "UNAVAILABLE"
    assert "BLS is only supported during the 'execute' function." in entry["reason"]


def inference_count(client: Any, protocol: str, model: str) -> int:
    answer = client.get_inference_statistics(model)
    if protocol == "http":
        return int(answer["model_stats"][0]["inference_count"])
    return int(answer.model_stats[0].inference_count)


def test_called_models_count_the_calls_in_their_statistics(bclient: Any, protocol: str) -> None:
    before = inference_count(bclient, protocol, "add_sub_fp32")
    for seed in range(3):
        infer_x(bclient, protocol, "bls_sync", rows(2, seed))
    assert inference_count(bclient, protocol, "add_sub_fp32") - before == 6
