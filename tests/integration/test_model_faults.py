"""A model that fails inside ONNX Runtime fails only that request's batch: the caller gets a
500 / INTERNAL naming the model, the model stays ready, and the next request is served."""

from __future__ import annotations

import urllib.request
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ServerProcess, expect_error, infer_input, make_client

MODEL = "faulty_gather"  # indices outside 0..9 make the Gather node fail at run time


def _indices(*values: int) -> np.ndarray:
    return np.array([[v] for v in values], dtype=np.int64)


def test_a_failing_run_fails_only_its_request(client: Any, protocol: str) -> None:
    message = expect_error(
        protocol,
        ("INTERNAL",),
        client.infer,
        MODEL,
        [infer_input(protocol, "INPUT0", _indices(30))],
    )
    assert MODEL in message
    assert client.is_model_ready(MODEL)
    good = client.infer(MODEL, [infer_input(protocol, "INPUT0", _indices(3, 7))])
    np.testing.assert_array_equal(good.as_numpy("OUTPUT0"), [[30.0], [70.0]])


def test_model_faults_are_counted_as_backend_failures(server: ServerProcess) -> None:
    client = make_client("http", server)
    try:
        expect_error(
            "http",
            ("INTERNAL",),
            client.infer,
            MODEL,
            [infer_input("http", "INPUT0", _indices(-99))],
        )
    finally:
        client.close()
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    backend = [
        s.value
        for s in families["nv_inference_request_failure"].samples
        if s.labels["model"] == MODEL and s.labels["reason"] == "BACKEND"
    ]
    assert backend
    assert backend[0] >= 1
