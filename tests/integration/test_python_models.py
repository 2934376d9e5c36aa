"""Python models (`backend: "python"`, `<version>/model.py` with `class Model`) in real worker
processes, through the real server and tritonclient over both protocols."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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
    start_server,
)

BATCHED_FP32 = """
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width} ] }} ]
output [ {{ name: "y" data_type: {out_type} dims: [ {out_width} ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
"""

MODELS: dict[str, tuple[str | None, str]] = {
    # name: (config.pbtxt body after name and backend, or None for none; model.py)
    "double": (
        BATCHED_FP32.format(width=4, out_type="TYPE_FP32", out_width=4, count=2),
        """
        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"] * 2}
        """,
    ),
    "pids": (
        BATCHED_FP32.format(width=1, out_type="TYPE_INT64", out_width=1, count=2),
        """
        import os
        import numpy as np

        class Model:
            def predict(self, inputs):
                return {"y": np.full((len(inputs["x"]), 1), os.getpid())}
        """,
    ),
    "declared": (
        None,
        """
        class Model:
            inputs = [("x", "FP32", [3])]
            outputs = [{"name": "y", "datatype": "FP32", "dims": [3]}]

            def load(self, context):
                self.offset = float(context.model_version)

            def predict(self, inputs):
                return {"y": inputs["x"] + self.offset}
        """,
    ),
    "upper": (
        """
        max_batch_size: 8
        input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "loud" data_type: TYPE_STRING dims: [ 1 ] } ]
        """,
        """
        import numpy as np

        class Model:
            def predict(self, inputs):
                text = inputs["text"]
                loud = np.array([t.upper() for t in text.ravel()], dtype=object)
                return {"loud": loud.reshape(text.shape)}
        """,
    ),
    "explode": (
        BATCHED_FP32.format(width=2, out_type="TYPE_FP32", out_width=2, count=1),
        """
        class Model:
            def predict(self, inputs):
                if (inputs["x"] < 0).any():
                    raise ValueError("no negative numbers")
                return {"y": inputs["x"]}
        """,
    ),
    "crash": (
        BATCHED_FP32.format(width=2, out_type="TYPE_FP32", out_width=2, count=1),
        """
        import os

        class Model:
            def predict(self, inputs):
                if inputs["x"][0, 0] == 13:
                    os._exit(3)
                return {"y": inputs["x"] + 1}
        """,
    ),
    "broken_load": (
        BATCHED_FP32.format(width=2, out_type="TYPE_FP32", out_width=2, count=2),
        """
        class Model:
            def load(self, context):
                raise RuntimeError("no weights here")

            def predict(self, inputs):
                return {"y": inputs["x"]}
        """,
    ),
    "broken_import": (
        BATCHED_FP32.format(width=2, out_type="TYPE_FP32", out_width=2, count=1),
        "import not_a_module_of_anyone\n",
    ),
    "undeclared": (None, "class Model:\n    def predict(self, inputs):\n        return inputs\n"),
    # Triton's Python backend interface, as its users write it.
    "triton_add_sub": (
        """
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
                { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
                 { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] },
                 { name: "REQUESTS" data_type: TYPE_INT32 dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 200000 preferred_batch_size: [ 4 ] }
        """,
        """
        import json
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                config = json.loads(args["model_config"])
                out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
                self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

            def execute(self, requests):
                responses = []
                for request in requests:
                    a = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                    b = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
                    if (a < 0).any():
                        error = pb_utils.TritonError(
                            "INPUT0 must not be negative", pb_utils.TritonError.INVALID_ARG
                        )
                        responses.append(pb_utils.InferenceResponse(error=error))
                        continue
                    count = np.full((len(a), 1), len(requests), np.int32)
                    responses.append(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("OUTPUT0", (a + b).astype(self.dtype)),
                        pb_utils.Tensor("OUTPUT1", (a - b).astype(self.dtype)),
                        pb_utils.Tensor("REQUESTS", count),
                    ]))
                return responses
        """,
    ),
    "triton_args": (
        """
        max_batch_size: 0
        input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
        output [ { name: "ARGS" data_type: TYPE_STRING dims: [ 1 ] } ]
        parameters { key: "greeting" value: { string_value: "hello" } }
        """,
        """
        import json
        import numpy as np
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def initialize(self, args):
                self.args = dict(args)

            async def execute(self, requests):
                text = json.dumps(self.args).encode()
                return [
                    pb_utils.InferenceResponse([pb_utils.Tensor("ARGS", np.array([text], object))])
                    for _ in requests
                ]
        """,
    ),
    "triton_raise": (
        BATCHED_FP32.format(width=2, out_type="TYPE_FP32", out_width=2, count=1),
        """
        class TritonPythonModel:
            def execute(self, requests):
                raise ValueError("bad batch")
        """,
    ),
    "triton_miscount": (
        BATCHED_FP32.format(width=2, out_type="TYPE_FP32", out_width=2, count=1),
        """
        class TritonPythonModel:
            def execute(self, requests):
                return []
        """,
    ),
}


def write_model(root: Path, name: str, config: str | None, code: str) -> None:
    (root / name / "1").mkdir(parents=True)
    if config is not None:
        text = f'name: "{name}"\nbackend: "python"\n' + textwrap.dedent(config)
        (root / name / "config.pbtxt").write_text(text)
    (root / name / "1" / "model.py").write_text(textwrap.dedent(code))


@pytest.fixture(scope="module")
def python_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("python_repo")
    for name, (config, code) in MODELS.items():
        write_model(root, name, config, code)
    (root / "engine" / "1").mkdir(parents=True)
    (root / "engine" / "config.pbtxt").write_text('name: "engine"\nplatform: "tensorrt_plan"\n')
    double = MODELS["double"]
    sections = {
        "stateful": "sequence_batching { max_sequence_idle_microseconds: 5000000 }\n",
        "streaming": "model_transaction_policy { decoupled: true }\n",
        "accelerated": "optimization { execution_accelerators { gpu_execution_accelerator "
        '[ { name: "tensorrt" } ] } }\n',
        "warmed": 'model_warmup [ { name: "zeros" batch_size: 1 } ]\n',
    }
    for name, section in sections.items():
        assert double[0] is not None
        config = double[0].replace("dynamic_batching { }", "") + section
        write_model(root, name, config, double[1])
    return root


@pytest.fixture(scope="module")
def python_server(python_repo: Path) -> Iterator[ServerProcess]:
    with running_server(python_repo) as srv:
        yield srv


@pytest.fixture
def pyclient(protocol: str, python_server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, python_server)
    try:
        yield c
    finally:
        c.close()


def worker_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` and that run runtime.worker, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"runtime.worker" in command:
            found.append(int(entry.name))
    return found


def test_a_batched_python_model_serves(pyclient: Any, protocol: str) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    result = pyclient.infer("double", [infer_input(protocol, "x", x)])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    assert pyclient.is_model_ready("double")


def test_each_instance_is_its_own_process(
    pyclient: Any, protocol: str, python_server: ServerProcess
) -> None:
    seen = set()
    for _ in range(6):
        result = pyclient.infer("pids", [infer_input(protocol, "x", np.zeros((1, 1), np.float32))])
        seen.add(int(result.as_numpy("y")[0, 0]))
    assert len(seen) == 2
    assert python_server.process.pid not in seen


def test_model_declarations_complete_a_missing_config(pyclient: Any, protocol: str) -> None:
    meta = pyclient.get_model_metadata("declared")
    inputs = meta["inputs"] if protocol == "http" else meta.inputs
    shape = inputs[0]["shape"] if protocol == "http" else list(inputs[0].shape)
    assert [int(d) for d in shape] == [-1, 3]
    x = np.ones((2, 3), np.float32)
    result = pyclient.infer("declared", [infer_input(protocol, "x", x)])
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1.0)  # load saw version "1"


def test_bytes_in_and_out(pyclient: Any, protocol: str) -> None:
    text = np.array([[b"hello"], [b"caf\xc3\xa9"]], dtype=object)
    result = pyclient.infer("upper", [infer_input(protocol, "text", text)])
    assert result.as_numpy("loud").ravel().tolist() == [b"HELLO", "CAFé".encode()]


def test_an_exception_fails_only_its_request(pyclient: Any, protocol: str) -> None:
    bad = np.array([[-1.0, 2.0]], np.float32)
    message = expect_error(
        protocol, ("INTERNAL",), pyclient.infer, "explode", [infer_input(protocol, "x", bad)]
    )
    assert "explode" in message
    assert "ValueError: no negative numbers" in message
    assert pyclient.is_model_ready("explode")
    good = np.array([[1.0, 2.0]], np.float32)
    result = pyclient.infer("explode", [infer_input(protocol, "x", good)])
    np.testing.assert_array_equal(result.as_numpy("y"), good)


def test_a_dead_worker_fails_its_request_and_comes_back(pyclient: Any, protocol: str) -> None:
    fatal = np.array([[13.0, 0.0]], np.float32)
    message = expect_error(
        protocol, ("INTERNAL",), pyclient.infer, "crash", [infer_input(protocol, "x", fatal)]
    )
    assert "crash" in message
    assert "died" in message
    assert "exit status 3" in message
    assert pyclient.is_model_ready("crash")
    x = np.array([[1.0, 2.0]], np.float32)
    result = pyclient.infer("crash", [infer_input(protocol, "x", x)])  # waits for the restart
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)


def test_a_model_that_cannot_load_is_unavailable_with_its_reason(
    pyclient: Any, protocol: str
) -> None:
    rows = model_index(pyclient, protocol)
    reasons = {
        "broken_load": "RuntimeError: no weights here",
        "broken_import": "ModuleNotFoundError: No module named 'not_a_module_of_anyone'",
        "undeclared": "declares no inputs or outputs",
        "engine": "platform 'tensorrt_plan' is not supported",
        "stateful": "does not implement: sequence_batching",
        "streaming": "does not implement: model_transaction_policy.decoupled",
        "accelerated": "does not implement: optimization.execution_accelerators (tensorrt)",
    }
    for name, reason in reasons.items():
        assert rows[name]["state"] == "UNAVAILABLE", rows[name]
        assert reason in rows[name]["reason"], rows[name]
        assert not pyclient.is_model_ready(name)
    assert rows["double"]["state"] == "READY"


def test_no_worker_outlives_a_failed_load(python_server: ServerProcess) -> None:
    """broken_load's other instance was started too: it must be gone, as must the first."""
    # double, pids, warmed: 2 each; declared, upper, explode, crash and the triton_*: 1 each
    assert len(worker_pids(python_server.process.pid)) == 14


def test_sigterm_unloads_the_model_and_stops_its_workers(tmp_path: Path) -> None:
    marker = tmp_path / "unloaded"
    write_model(
        tmp_path / "repo",
        "tidy",
        BATCHED_FP32.format(width=1, out_type="TYPE_FP32", out_width=1, count=2),
        f"""
        class Model:
            def predict(self, inputs):
                return {{"y": inputs["x"]}}

            def unload(self):
                with open({str(marker)!r}, "a") as f:
                    f.write("x")
        """,
    )
    with running_server(tmp_path / "repo") as srv:
        workers = worker_pids(srv.process.pid)
        assert len(workers) == 2
    assert marker.read_text() == "xx"  # each instance unloaded once
    for worker in workers:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(worker, signal.SIGKILL)
            pytest.fail(f"worker {worker} outlived its server")


def test_a_killed_server_leaves_no_shared_memory_behind(
    python_server: ServerProcess, tmp_path: Path
) -> None:
    """Buffers lose their names once the worker has mapped them: while a server serves, and
    after it is killed outright, /dev/shm holds nothing of it."""
    folder = Path("/dev/shm")
    if not folder.is_dir():
        pytest.skip("this machine has no /dev/shm; buffers live in the temporary folder")
    write_model(
        tmp_path / "repo",
        "big",
        BATCHED_FP32.format(width=65536, out_type="TYPE_FP32", out_width=65536, count=1),
        """
        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"] * 3}
        """,
    )
    srv = start_server(tmp_path / "repo")
    try:
        client = make_client("grpc", srv)
        try:
            for rows in (1, 8):  # past the first 1 MiB: both buffers grow
                x = np.ones((rows, 65536), np.float32)
                result = client.infer("big", [infer_input("grpc", "x", x)])
                np.testing.assert_array_equal(result.as_numpy("y"), x * 3)
        finally:
            client.close()
        assert list(folder.glob(f"conveyor-*-{srv.process.pid}-*")) == []
    finally:
        srv.process.kill()
        srv.process.wait(30)
        srv.stop()  # closes its log pipe; the process is gone already
    assert list(folder.glob(f"conveyor-*-{srv.process.pid}-*")) == []


def add_sub(protocol: str, a: np.ndarray, b: np.ndarray) -> list[Any]:
    return [infer_input(protocol, "INPUT0", a), infer_input(protocol, "INPUT1", b)]


def test_a_triton_python_model_gets_several_requests_in_one_execute(
    python_server: ServerProcess, protocol: str
) -> None:
    """Four requests queued together reach one execute call as four requests, each with
    its own tensors and its own response, as under Triton's dynamic batching."""
    rng = np.random.default_rng(7)
    sent = [(rng.random((n, 4), dtype=np.float32), rng.random((n, 4), dtype=np.float32))
            for n in (1, 2, 1, 3)]  # fmt: skip
    clients = [make_client(protocol, python_server) for _ in sent]
    try:
        with ThreadPoolExecutor(len(sent)) as pool:
            futures = [
                pool.submit(c.infer, "triton_add_sub", add_sub(protocol, a, b))
                for c, (a, b) in zip(clients, sent, strict=True)
            ]
            results = [f.result() for f in futures]
    finally:
        for c in clients:
            c.close()
    for (a, b), result in zip(sent, results, strict=True):
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b, rtol=1e-6)
        np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b, rtol=1e-6)
    assert max(int(r.as_numpy("REQUESTS").max()) for r in results) > 1


def test_an_error_response_fails_only_its_request(pyclient: Any, protocol: str) -> None:
    bad = np.full((1, 4), -1.0, np.float32)
    message = expect_error(
        protocol,
        ("INVALID_ARGUMENT",),
        pyclient.infer,
        "triton_add_sub",
        add_sub(protocol, bad, bad),
    )
    assert "INPUT0 must not be negative" in message
    ok = np.ones((1, 4), np.float32)
    result = pyclient.infer("triton_add_sub", add_sub(protocol, ok, ok))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), ok * 2)


def test_initialize_gets_tritons_args(pyclient: Any, protocol: str) -> None:
    result = pyclient.infer("triton_args", [infer_input(protocol, "IN", np.array([1], np.int32))])
    args = json.loads(result.as_numpy("ARGS")[0])
    config = json.loads(args["model_config"])
    assert config["name"] == "triton_args"
    assert config["parameters"] == {"greeting": {"string_value": "hello"}}
    assert args["model_name"] == "triton_args"
    assert args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU"
    assert args["model_instance_name"] == "triton_args_0_0"
    assert Path(args["model_repository"]).name == "triton_args"


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("triton_raise", "Failed to process the request(s) for model 'triton_raise_0_0', "
                         "message: ValueError: bad batch"),
        ("triton_miscount", "Number of InferenceResponse objects do not match"),
    ],
)  # fmt: skip
def test_a_failed_execute_fails_its_requests_with_tritons_message(
    pyclient: Any, protocol: str, model: str, says: str
) -> None:
    x = np.zeros((1, 2), np.float32)
    message = expect_error(
        protocol, ("INTERNAL",), pyclient.infer, model, [infer_input(protocol, "x", x)]
    )
    assert says in message
    assert pyclient.is_model_ready(model)


def test_a_section_safe_to_ignore_is_accepted_with_a_warning(
    pyclient: Any, protocol: str, python_server: ServerProcess
) -> None:
    x = np.ones((1, 4), np.float32)
    result = pyclient.infer("warmed", [infer_input(protocol, "x", x)])
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    warnings = [line for line in python_server.log if "'warmed': config section" in line]
    assert len(warnings) == 1
    assert "model_warmup" in warnings[0]
