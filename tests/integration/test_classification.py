"""The classification extension: top-k "value:index:label" strings, both protocols."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ServerProcess, inputs_of, make_client, requested_output
from tests.models import reference


def parse(entry: bytes | str) -> tuple[float, int, str]:
    text = entry.decode() if isinstance(entry, bytes) else entry
    value, index, label = text.split(":")
    return float(value), int(index), label


def distinct_scores(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs whose OUTPUT0 (the sum) has no ties, so the top-k order is unique."""
    rng = np.random.default_rng(seed)
    sums = np.stack([rng.permutation(4).astype(np.float32) * 1.5 - 2 for _ in range(rows)])
    delta = rng.standard_normal((rows, 4)).astype(np.float32).round(2)
    return {"INPUT0": sums - delta, "INPUT1": delta}


@pytest.mark.parametrize("class_count", [1, 2, 4])
def test_top_k(client: Any, protocol: str, class_count: int) -> None:
    arrays = distinct_scores(rows=3, seed=class_count)
    outputs = [requested_output(protocol, "OUTPUT0", class_count=class_count)]
    result = client.infer("add_sub_fp32", inputs_of(protocol, arrays), outputs=outputs)
    got = result.as_numpy("OUTPUT0")
    assert got.dtype == object
    assert got.shape == (3, class_count)
    response = result.get_response()
    datatype = (
        response["outputs"][0]["datatype"] if protocol == "http" else (response.outputs[0].datatype)
    )
    assert datatype == "BYTES"
    scores = reference("add_sub_fp32", arrays)["OUTPUT0"]
    for row, entries in zip(scores, got, strict=True):
        top = np.argsort(-row, kind="stable")[:class_count]
        parsed = [parse(e) for e in entries]
        assert [index for _, index, _ in parsed] == top.tolist()
        assert [label for _, _, label in parsed] == [f"label{i}" for i in top]
        np.testing.assert_allclose([v for v, _, _ in parsed], row[top], rtol=1e-5)


def test_classification_with_plain_output(client: Any, protocol: str) -> None:
    arrays = distinct_scores(rows=2, seed=9)
    outputs = [
        requested_output(protocol, "OUTPUT0", class_count=2),
        requested_output(protocol, "OUTPUT1"),
    ]
    result = client.infer("add_sub_fp32", inputs_of(protocol, arrays), outputs=outputs)
    assert result.as_numpy("OUTPUT0").shape == (2, 2)
    np.testing.assert_allclose(
        result.as_numpy("OUTPUT1"), reference("add_sub_fp32", arrays)["OUTPUT1"], rtol=1e-6
    )


def test_classification_without_labels(client: Any, protocol: str) -> None:
    """OUTPUT1 has no label file: entries are "value:index"."""
    arrays = distinct_scores(rows=1, seed=10)
    outputs = [requested_output(protocol, "OUTPUT1", class_count=2)]
    result = client.infer("add_sub_fp32", inputs_of(protocol, arrays), outputs=outputs)
    diff = reference("add_sub_fp32", arrays)["OUTPUT1"][0]
    top = np.argsort(-diff, kind="stable")[:2]
    entries = [e.decode() if isinstance(e, bytes) else e for e in result.as_numpy("OUTPUT1")[0]]
    assert [int(e.split(":")[1]) for e in entries] == top.tolist()
    assert all(e.count(":") == 1 for e in entries)


def test_classification_json_output(server: ServerProcess) -> None:
    arrays = distinct_scores(rows=2, seed=11)
    c = make_client("http", server)
    try:
        outputs = [requested_output("http", "OUTPUT0", class_count=2, binary=False)]
        result = c.infer("add_sub_fp32", inputs_of("http", arrays), outputs=outputs)
    finally:
        c.close()
    scores = reference("add_sub_fp32", arrays)["OUTPUT0"]
    got = result.as_numpy("OUTPUT0")
    for row, entries in zip(scores, got, strict=True):
        assert [parse(e)[1] for e in entries] == np.argsort(-row, kind="stable")[:2].tolist()
