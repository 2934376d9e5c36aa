"""The statistics extension, and dynamic batching seen through it, both protocols.

Counters are cumulative on the shared server, so every check compares a before/after pair
around traffic this test sends (tests run one at a time).
"""

from __future__ import annotations

import json
import queue
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    CLIENT_TIMEOUT_S,
    ServerProcess,
    add_sub_inputs,
    expect_error,
    http_request,
    inputs_of,
    make_client,
)

DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
# What perf_analyzer reads (as uint64, no presence checks) from each inference_stats entry.
PERF_ANALYZER_DURATIONS = tuple(d for d in DURATIONS if d != "fail")
BATCH_REQUESTS = 64


def _duration(d: Any) -> dict[str, int]:
    return {"count": d.count, "ns": d.ns}


def grpc_stats_dict(m: Any) -> dict[str, Any]:
    """A gRPC ModelStatistics message as the same dict HTTP returns (integers as ints)."""
    return {
        "name": m.name,
        "version": m.version,
        "last_inference": m.last_inference,
        "inference_count": m.inference_count,
        "execution_count": m.execution_count,
        "inference_stats": {d: _duration(getattr(m.inference_stats, d)) for d in DURATIONS},
        "batch_stats": [
            {
                "batch_size": b.batch_size,
                "compute_input": _duration(b.compute_input),
                "compute_infer": _duration(b.compute_infer),
                "compute_output": _duration(b.compute_output),
            }
            for b in m.batch_stats
        ],
    }


def model_stats(client: Any, protocol: str, name: str = "", version: str = "") -> list[Any]:
    response = client.get_inference_statistics(name, version)
    if protocol == "http":
        return list(response["model_stats"])
    return [grpc_stats_dict(m) for m in response.model_stats]


def one_stats(client: Any, protocol: str, name: str, version: str = "1") -> dict[str, Any]:
    stats = model_stats(client, protocol, name, version)
    assert len(stats) == 1
    assert stats[0]["name"] == name
    assert stats[0]["version"] == version
    return dict(stats[0])


def batch_counts(stats: dict[str, Any]) -> dict[int, int]:
    """batch size -> number of executions of that size."""
    return {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}


def delta(after: dict[str, Any], before: dict[str, Any], *path: str) -> int:
    a, b = after, before
    for key in path:
        a, b = a[key], b[key]
    return int(a) - int(b)


def test_stats_fields_perf_analyzer_reads(server: ServerProcess) -> None:
    """Raw JSON: every field perf_analyzer reads is present and a non-negative integer."""
    c = make_client("http", server)
    try:
        c.infer("add_sub_fp32", inputs_of("http", add_sub_inputs()))
    finally:
        c.close()
    status, _, body = http_request(server, "GET", "/v2/models/add_sub_fp32/versions/1/stats")
    assert status == 200
    (entry,) = json.loads(body)["model_stats"]
    assert entry["name"] == "add_sub_fp32"
    assert entry["version"] == "1"
    for key in ("inference_count", "execution_count", "last_inference"):
        assert type(entry[key]) is int, key
        assert entry[key] > 0, key
    for name in PERF_ANALYZER_DURATIONS:
        for part in ("count", "ns"):
            value = entry["inference_stats"][name][part]
            assert type(value) is int, (name, part)
            assert value >= 0, (name, part)
    for batch in entry["batch_stats"]:
        assert type(batch["batch_size"]) is int
        for name in ("compute_input", "compute_infer", "compute_output"):
            assert type(batch[name]["count"]) is int
            assert type(batch[name]["ns"]) is int


def int32_inputs(rows: int) -> dict[str, np.ndarray]:
    return {"INPUT0": np.full((rows, 4), rows, np.int32), "INPUT1": np.ones((rows, 4), np.int32)}


def fp32_inputs(rows: int) -> dict[str, np.ndarray]:
    return add_sub_inputs(seed=rows, rows=rows)


@pytest.mark.parametrize(
    ("model", "make_inputs"), [("add_sub_int32", int32_inputs), ("add_sub_fp32", fp32_inputs)]
)
def test_counts_after_inferences(
    client: Any,
    protocol: str,
    model: str,
    make_inputs: Callable[[int], dict[str, np.ndarray]],
) -> None:
    batch_sizes = [1, 3, 2, 8, 1]
    before = one_stats(client, protocol, model)
    for rows in batch_sizes:
        client.infer(model, inputs_of(protocol, make_inputs(rows)))
    after = one_stats(client, protocol, model)
    n = len(batch_sizes)
    assert delta(after, before, "inference_count") == sum(batch_sizes)
    assert delta(after, before, "inference_stats", "success", "count") == n
    assert delta(after, before, "inference_stats", "fail", "count") == 0
    assert delta(after, before, "inference_stats", "queue", "count") == n
    assert delta(after, before, "inference_stats", "compute_infer", "count") == n
    assert delta(after, before, "inference_stats", "success", "ns") > 0
    assert delta(after, before, "inference_stats", "compute_infer", "ns") > 0
    # Sequential requests: at most one execution each, and at least one execution in all.
    executions = delta(after, before, "execution_count")
    assert 1 <= executions <= n
    if model == "add_sub_int32":  # no dynamic batching: every request runs on its own
        assert executions == n
        grown = {
            size: count - batch_counts(before).get(size, 0)
            for size, count in batch_counts(after).items()
        }
        assert grown == {1: 2, 2: 1, 3: 1, 8: 1}
    assert after["last_inference"] >= before["last_inference"]
    assert after["last_inference"] > 0


def test_failed_request_counts_as_fail(client: Any, protocol: str) -> None:
    before = one_stats(client, protocol, "add_sub_int32")
    bad = {"INPUT0": np.zeros((1, 4), np.int32)}  # INPUT1 missing
    expect_error(
        protocol, ("INVALID_ARGUMENT",), client.infer, "add_sub_int32", inputs_of(protocol, bad)
    )
    after = one_stats(client, protocol, "add_sub_int32")
    assert delta(after, before, "inference_stats", "success", "count") == 0
    assert delta(after, before, "inference_count") == 0
    assert delta(after, before, "execution_count") == 0
    assert delta(after, before, "inference_stats", "fail", "count") == 1


def test_stats_of_all_models(client: Any, protocol: str) -> None:
    entries = model_stats(client, protocol)
    keys = {(e["name"], e["version"]) for e in entries}
    assert {("add_sub_fp32", "1"), ("two_versions", "1"), ("two_versions", "2")} <= keys
    assert all(name != "corrupt" for name, _ in keys)


def test_stats_per_version(client: Any, protocol: str) -> None:
    before = {v: one_stats(client, protocol, "two_versions", v) for v in ("1", "2")}
    arrays = {"INPUT0": np.zeros((2, 4), np.float32)}
    client.infer("two_versions", inputs_of(protocol, arrays), model_version="1")
    after = {v: one_stats(client, protocol, "two_versions", v) for v in ("1", "2")}
    assert delta(after["1"], before["1"], "inference_count") == 2
    assert delta(after["2"], before["2"], "inference_count") == 0
    both = model_stats(client, protocol, "two_versions")
    assert sorted(e["version"] for e in both) == ["1", "2"]


def test_stats_unknown_model(client: Any, protocol: str) -> None:
    message = expect_error(
        protocol, ("NOT_FOUND",), client.get_inference_statistics, "no_such_model"
    )
    assert "no_such_model" in message


# -- dynamic batching under concurrency --------------------------------------------------


def distinct_rows(i: int) -> np.ndarray:
    """1 or 2 rows whose values identify caller i."""
    rows = 1 + i % 2
    base = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    return base + np.float32(1000 * i)


def fire_http(server: ServerProcess, arrays: list[np.ndarray]) -> list[np.ndarray]:
    c = httpclient.InferenceServerClient(
        server.http_url,
        concurrency=len(arrays),
        connection_timeout=CLIENT_TIMEOUT_S,
        network_timeout=CLIENT_TIMEOUT_S,
    )
    try:
        pending = [
            c.async_infer("slow_fp32", inputs_of("http", {"INPUT0": a}), request_id=str(i))
            for i, a in enumerate(arrays)
        ]
        return [p.get_result(timeout=CLIENT_TIMEOUT_S).as_numpy("OUTPUT0") for p in pending]
    finally:
        c.close()


def fire_grpc(server: ServerProcess, arrays: list[np.ndarray]) -> list[np.ndarray]:
    answers: queue.Queue[tuple[Any, InferenceServerException | None]] = queue.Queue()
    c = make_client("grpc", server)
    try:
        for i, a in enumerate(arrays):
            c.async_infer(
                "slow_fp32",
                inputs_of("grpc", {"INPUT0": a}),
                lambda result, error: answers.put((result, error)),
                request_id=str(i),
            )
        results: list[np.ndarray | None] = [None] * len(arrays)
        for _ in arrays:
            result, error = answers.get(timeout=CLIENT_TIMEOUT_S)
            assert error is None, error
            results[int(result.get_response().id)] = result.as_numpy("OUTPUT0")
        return [r for r in results if r is not None]
    finally:
        c.close()


def test_dynamic_batching_under_concurrency(
    client: Any, protocol: str, server: ServerProcess
) -> None:
    arrays = [distinct_rows(i) for i in range(BATCH_REQUESTS)]
    before = one_stats(client, protocol, "slow_fp32")
    fire = fire_http if protocol == "http" else fire_grpc
    results = fire(server, arrays)
    assert len(results) == BATCH_REQUESTS
    for i, (sent, got) in enumerate(zip(arrays, results, strict=True)):
        np.testing.assert_array_equal(got, sent, err_msg=f"caller {i} got someone else's rows")
    after = one_stats(client, protocol, "slow_fp32")
    rows = sum(a.shape[0] for a in arrays)
    assert delta(after, before, "inference_count") == rows
    assert delta(after, before, "inference_stats", "success", "count") == BATCH_REQUESTS
    assert delta(after, before, "inference_stats", "queue", "count") == BATCH_REQUESTS
    executions = delta(after, before, "execution_count")
    assert 1 <= executions < BATCH_REQUESTS
    grown = {
        size: count - batch_counts(before).get(size, 0)
        for size, count in batch_counts(after).items()
    }
    assert sum(grown.values()) == executions
    assert sum(size * n for size, n in grown.items()) == rows
    assert any(size > 2 and n > 0 for size, n in grown.items()), grown
    assert max(grown) <= 32  # slow_fp32's max_batch_size
