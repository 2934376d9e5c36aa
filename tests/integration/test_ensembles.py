"""Ensembles (`platform: "ensemble"`) of ONNX models, Python models in worker processes and
other ensembles, through the real server and tritonclient over both protocols."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    ServerProcess,
    expect_error,
    infer_input,
    make_client,
    model_index,
    requested_output,
    running_server,
)
from tests.models import add_sub_fp32, python_fp32

PYTHON_MODELS = {
    "double": """
        class Model:
            def predict(self, inputs):
                return {"y": inputs["x"] * 2}
        """,
    "negate": """
        import triton_python_backend_utils as pb_utils

        class TritonPythonModel:
            def execute(self, requests):
                out = []
                for request in requests:
                    x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
                    out.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", -x)]))
                return out
        """,
    "picky": """
        class Model:
            def predict(self, inputs):
                if (inputs["x"] < 0).any():
                    raise ValueError("negative values are not accepted")
                return {"y": inputs["x"]}
        """,
}


def step(model: str, inputs: dict[str, str], outputs: dict[str, str], version: int = -1) -> str:
    maps = " ".join(f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items())
    maps += " " + " ".join(f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items())
    return f'{{ model_name: "{model}" model_version: {version} {maps} }}'


def ensemble(
    name: str,
    inputs: list[tuple[str, str]],
    outputs: list[tuple[str, str]],
    steps: list[str],
    max_batch_size: int = 8,
    extra: str = "",
) -> str:
    def tensors(entries: list[tuple[str, str]]) -> str:
        return ", ".join(f'{{ name: "{n}" data_type: TYPE_{t} dims: [ 4 ] }}' for n, t in entries)

    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
        f"input [ {tensors(inputs)} ]\noutput [ {tensors(outputs)} ]\n"
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}\n{extra}"
    )


ADD_SUB = step(
    "add_sub_fp32", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "sum", "OUTPUT1": "diff"}
)
TWO_IN = [("A", "FP32"), ("B", "FP32")]

ENSEMBLES = {
    # add_sub, then double(sum) and negate(diff) at once: ONNX and both Python interfaces.
    "pipe": ensemble(
        "pipe",
        TWO_IN,
        [("DOUBLED", "FP32"), ("NEGATED", "FP32")],
        [
            step("negate", {"x": "diff"}, {"y": "NEGATED"}),  # listed before what it reads
            ADD_SUB,
            step("double", {"x": "sum"}, {"y": "DOUBLED"}),
        ],
    ),
    # An ensemble of an ensemble and a Python model.
    "outer": ensemble(
        "outer",
        TWO_IN,
        [("QUAD", "FP32"), ("NEG", "FP32")],
        [
            step("pipe", {"A": "A", "B": "B"}, {"DOUBLED": "twice", "NEGATED": "NEG"}),
            step("double", {"x": "twice"}, {"y": "QUAD"}),
        ],
    ),
    "faulty": ensemble(
        "faulty", [("X", "FP32")], [("Y", "FP32")], [step("picky", {"x": "X"}, {"y": "Y"})]
    ),
    # Each refused at load, with its reason.
    "unwritten": ensemble(
        "unwritten",
        [("X", "FP32")],
        [("DOUBLED", "FP32"), ("LOST", "FP32")],
        [step("double", {"x": "X"}, {"y": "DOUBLED"})],
    ),
    "mistyped": ensemble(
        "mistyped", [("X", "INT32")], [("Y", "FP32")], [step("double", {"x": "X"}, {"y": "Y"})]
    ),
    "missing": ensemble(
        "missing", [("X", "FP32")], [("Y", "FP32")], [step("nowhere", {"x": "X"}, {"y": "Y"})]
    ),
    "too_big": ensemble(
        "too_big",
        [("X", "FP32")],
        [("Y", "FP32")],
        [step("double", {"x": "X"}, {"y": "Y"})],
        max_batch_size=16,
    ),
    "loop_a": ensemble(
        "loop_a", [("X", "FP32")], [("Y", "FP32")], [step("loop_b", {"X": "X"}, {"Y": "Y"})]
    ),
    "loop_b": ensemble(
        "loop_b", [("X", "FP32")], [("Y", "FP32")], [step("loop_a", {"X": "X"}, {"Y": "Y"})]
    ),
    "with_instances": ensemble(
        "with_instances",
        [("X", "FP32")],
        [("Y", "FP32")],
        [step("double", {"x": "X"}, {"y": "Y"})],
        extra="instance_group [ { count: 2 } ]\n",
    ),
}

REFUSED = {
    "unwritten": "output 'LOST' for ensemble 'unwritten' is not written",
    "mistyped": "in ensemble mistyped, ensemble tensor X: inconsistent data type: INT32 is "
    "inferred from model mistyped while FP32 is inferred from model double",
    "missing": "step 0 of ensemble 'missing' calls model 'nowhere'",
    "too_big": "ensemble too_big allows maximum batch size 16, but it contains model double "
    "which only allows maximum batch size to be 8",
    "loop_a": "circular dependency between ensembles: loop_a -> loop_b -> loop_a",
    "loop_b": "circular dependency between ensembles: loop_b -> loop_a -> loop_b",
    "with_instances": "instance group should not be specified for ensemble 'with_instances'",
    "not_an_ensemble": "ensemble scheduling cannot be set for model 'not_an_ensemble' whose "
    "platform is not ensemble",
}


@pytest.fixture(scope="module")
def ensemble_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ensemble_repo")
    add_sub = add_sub_fp32(root)
    for name, code in PYTHON_MODELS.items():
        python_fp32(root, name, code)
    for name, text in ENSEMBLES.items():
        (root / name / "1").mkdir(parents=True)  # an ensemble's version folder holds no file
        (root / name / "config.pbtxt").write_text(text)
    onnx_one = root / "not_an_ensemble"
    (onnx_one / "1").mkdir(parents=True)
    (onnx_one / "1" / "model.onnx").write_bytes((add_sub / "1" / "model.onnx").read_bytes())
    config = (add_sub / "config.pbtxt").read_text().replace("add_sub_fp32", "not_an_ensemble")
    config = config.replace("dynamic_batching { max_queue_delay_microseconds: 2000 }", "")
    (onnx_one / "config.pbtxt").write_text(
        config.replace('label_filename: "labels.txt"', "")
        + "ensemble_scheduling { step [ "
        + step("add_sub_fp32", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})
        + " ] }\n"
    )
    return root


@pytest.fixture(scope="module")
def ensemble_server(ensemble_repo: Path) -> Iterator[ServerProcess]:
    with running_server(ensemble_repo) as srv:
        yield srv


@pytest.fixture
def eclient(protocol: str, ensemble_server: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, ensemble_server)
    try:
        yield c
    finally:
        c.close()


def call(
    client: Any, protocol: str, model: str, arrays: dict[str, np.ndarray], outputs: list[str]
) -> Any:
    return client.infer(
        model,
        [infer_input(protocol, n, a) for n, a in arrays.items()],
        outputs=[requested_output(protocol, n) for n in outputs],
    )


def operands(rows: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, 4)).astype(np.float32)
    b = rng.standard_normal((rows, 4)).astype(np.float32)
    return a, b


def test_an_ensemble_of_onnx_and_python_models_serves(eclient: Any, protocol: str) -> None:
    a, b = operands()
    result = call(eclient, protocol, "pipe", {"A": a, "B": b}, ["DOUBLED", "NEGATED"])
    np.testing.assert_allclose(result.as_numpy("DOUBLED"), (a + b) * 2, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("NEGATED"), -(a - b), rtol=1e-6)


def test_an_ensemble_of_an_ensemble_serves(eclient: Any, protocol: str) -> None:
    a, b = operands(rows=2, seed=1)
    result = call(eclient, protocol, "outer", {"A": a, "B": b}, ["QUAD", "NEG"])
    np.testing.assert_allclose(result.as_numpy("QUAD"), (a + b) * 4, rtol=1e-6)
    np.testing.assert_allclose(result.as_numpy("NEG"), b - a, rtol=1e-6)


def test_concurrent_ensemble_requests_each_get_their_own_answer(
    ensemble_server: ServerProcess, protocol: str
) -> None:
    """Eight clients at once, each on its own thread (where a tritonclient HTTP client must
    be made and used), four requests each."""

    def client_thread(first_seed: int) -> None:
        client = make_client(protocol, ensemble_server)
        try:
            for seed in range(first_seed, first_seed + 4):
                a, b = operands(rows=1 + seed % 3, seed=seed)
                result = call(client, protocol, "pipe", {"A": a, "B": b}, ["DOUBLED"])
                np.testing.assert_allclose(result.as_numpy("DOUBLED"), (a + b) * 2, rtol=1e-6)
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(client_thread, range(0, 32, 4)))


def test_the_ensemble_shows_its_config_and_metadata(eclient: Any, protocol: str) -> None:
    metadata = eclient.get_model_metadata("pipe")
    config = eclient.get_model_config("pipe")
    if protocol == "http":
        assert metadata["platform"] == "ensemble"
        assert [t["name"] for t in metadata["outputs"]] == ["DOUBLED", "NEGATED"]
        steps = config["ensemble_scheduling"]["step"]
    else:
        assert metadata.platform == "ensemble"
        assert [t.name for t in metadata.outputs] == ["DOUBLED", "NEGATED"]
        steps = config.config.ensemble_scheduling.step
    assert len(steps) == 3


def test_a_failing_step_fails_the_request_naming_the_step(eclient: Any, protocol: str) -> None:
    message = expect_error(
        protocol,
        ("INTERNAL",),
        call,
        eclient,
        protocol,
        "faulty",
        {"X": -np.ones((1, 4), np.float32)},
        ["Y"],
    )
    assert "in ensemble 'faulty', step 0 (model 'picky')" in message
    assert "negative values are not accepted" in message
    ok = call(eclient, protocol, "faulty", {"X": np.ones((1, 4), np.float32)}, ["Y"])
    np.testing.assert_array_equal(ok.as_numpy("Y"), np.ones((1, 4), np.float32))


def test_a_bad_input_is_refused_by_the_ensemble(eclient: Any, protocol: str) -> None:
    message = expect_error(
        protocol,
        ("INVALID_ARGUMENT",),
        call,
        eclient,
        protocol,
        "pipe",
        {"A": np.ones((1, 4), np.float32), "B": np.ones((1, 4), np.int32)},
        ["DOUBLED"],
    )
    assert "'B'" in message
    assert "pipe" in message


def test_a_bad_ensemble_is_unavailable_with_its_reason(eclient: Any, protocol: str) -> None:
    rows = model_index(eclient, protocol)
    for name, reason in REFUSED.items():
        assert rows[name]["state"] == "UNAVAILABLE", rows[name]
        assert reason in rows[name]["reason"], rows[name]
        assert not eclient.is_model_ready(name)
    for name in ("pipe", "outer", "faulty", "double", "negate", "add_sub_fp32"):
        assert rows[name]["state"] == "READY", rows[name]


def stats(client: Any, protocol: str, model: str) -> dict[str, int]:
    answer = client.get_inference_statistics(model)
    if protocol == "http":
        entry = answer["model_stats"][0]
        inference = entry["inference_stats"]
        return {
            "inference_count": int(entry["inference_count"]),
            "execution_count": int(entry["execution_count"]),
            "success": int(inference["success"]["count"]),
            "compute_infer_ns": int(inference["compute_infer"]["ns"]),
        }
    entry = answer.model_stats[0]
    return {
        "inference_count": entry.inference_count,
        "execution_count": entry.execution_count,
        "success": entry.inference_stats.success.count,
        "compute_infer_ns": entry.inference_stats.compute_infer.ns,
    }


def test_statistics_count_the_ensemble_and_each_composing_model(
    eclient: Any, protocol: str
) -> None:
    before = {m: stats(eclient, protocol, m) for m in ("pipe", "add_sub_fp32", "double", "negate")}
    a, b = operands(rows=2, seed=7)
    for _ in range(3):
        call(eclient, protocol, "pipe", {"A": a, "B": b}, ["DOUBLED"])
    after = {m: stats(eclient, protocol, m) for m in before}
    pipe = {k: after["pipe"][k] - before["pipe"][k] for k in after["pipe"]}
    assert pipe["success"] == 3
    assert pipe["execution_count"] == 3  # one execution per request
    assert pipe["inference_count"] == 6  # two rows each
    assert pipe["compute_infer_ns"] > 0
    for member in ("add_sub_fp32", "double", "negate"):
        assert after[member]["success"] - before[member]["success"] == 3, member
        assert after[member]["inference_count"] - before[member]["inference_count"] == 6, member


def test_loading_an_ensemble_loads_the_models_it_calls(ensemble_repo: Path, protocol: str) -> None:
    """In explicit mode, loading `outer` loads `pipe`, and through it every model `pipe`
    calls; nothing else is loaded."""
    with running_server(ensemble_repo, "--model-control-mode", "explicit") as srv:
        c = make_client(protocol, srv)
        try:
            assert not c.is_model_ready("outer")
            c.load_model("outer")
            for name in ("outer", "pipe", "add_sub_fp32", "double", "negate"):
                assert c.is_model_ready(name), name
            assert not c.is_model_ready("picky")
            a, b = operands(rows=1, seed=3)
            result = call(c, protocol, "outer", {"A": a, "B": b}, ["QUAD"])
            np.testing.assert_allclose(result.as_numpy("QUAD"), (a + b) * 4, rtol=1e-6)
        finally:
            c.close()


def success_counts(srv: ServerProcess, models: tuple[str, ...]) -> dict[str, float]:
    """nv_inference_request_success per model, from the Prometheus endpoint."""
    with urllib.request.urlopen(f"http://{srv.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    counts = dict.fromkeys(models, 0.0)
    for family in text_string_to_metric_families(text):
        if family.name != "nv_inference_request_success":
            continue
        for sample in family.samples:
            if sample.labels.get("model") in counts:
                counts[sample.labels["model"]] += sample.value
    return counts


def test_metrics_count_the_ensemble_and_each_composing_model(
    ensemble_server: ServerProcess, eclient: Any, protocol: str
) -> None:
    models = ("pipe", "add_sub_fp32", "double", "negate")
    before = success_counts(ensemble_server, models)
    a, b = operands(rows=1, seed=11)
    for _ in range(2):
        call(eclient, protocol, "pipe", {"A": a, "B": b}, ["DOUBLED"])
    after = success_counts(ensemble_server, models)
    assert {m: after[m] - before[m] for m in models} == dict.fromkeys(models, 2.0)
