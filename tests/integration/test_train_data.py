"""`conveyor train --data` end to end: a classifier trained from a CSV file and a regressor from
a Parquet file, served by a real server and called over HTTP and gRPC with raw feature values."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray

from runtime import cli
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    infer_in_batches,
    inputs_of,
    make_client,
    requested_output,
    running_server,
)

ROWS = 2000
BATCH = 64  # the published models' max_batch_size
CLASSES = ["east", "north", "west"]  # sorted: labels.txt's order
# Raw features on very different scales; the served graph standardizes them itself.
SCALES = np.array([1.0, 250.0, 0.02])
OFFSETS = np.array([5.0, 3000.0, 0.0])


@dataclass(frozen=True, slots=True)
class Rows:
    x: NDArray[np.float32]
    z: NDArray[np.float64]

    def classes(self) -> NDArray[np.str_]:
        score = self.z[:, 0] + self.z[:, 1]
        return np.array(CLASSES)[np.digitize(score, [-0.8, 0.8])]

    def quantity(self) -> NDArray[np.float64]:
        return 10 * self.z[:, 0] - 4 * self.z[:, 2] + 100.0


def rows(count: int, seed: int) -> Rows:
    z = np.random.default_rng(seed).normal(size=(count, 3))
    return Rows((z * SCALES + OFFSETS).astype(np.float32), z)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`direction` trained from a CSV file, `amount` from a Parquet file."""
    work = tmp_path_factory.mktemp("train_data")
    train = rows(ROWS, 0)
    columns = {name: train.x[:, i] for i, name in enumerate(["speed", "altitude", "drift"])}
    csv = work / "flights.csv"
    pacsv.write_csv(pa.table({**columns, "direction": train.classes()}), csv)
    parquet = work / "flights.parquet"
    pq.write_table(pa.table({**columns, "amount": train.quantity()}), parquet)
    for data, target, name in ((csv, "direction", "direction"), (parquet, "amount", "amount")):
        flags = ["--data", str(data), "--target", target, "--repository", str(work / "repo"),
                 "--name", name, "--epochs", "40"]  # fmt: skip
        assert cli.main(["train", *flags]) == 0
    return work / "repo"


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[ServerProcess]:
    with running_server(repo) as srv:
        yield srv


def local(repo: Path, model: str, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
    """The published graph's answer, run here with ONNX Runtime."""
    session = ort.InferenceSession(
        str(repo / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def served(
    srv: ServerProcess, protocol: str, model: str, x: NDArray[np.float32], outputs: list[str]
) -> dict[str, NDArray[np.float32]]:
    return infer_in_batches(srv, protocol, model, x, outputs, BATCH)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_classifier_trained_from_csv_serves_raw_rows(
    server: ServerProcess, repo: Path, protocol: str
) -> None:
    fresh = rows(300, 1)
    got = served(server, protocol, "direction", fresh.x, ["label", "probabilities"])
    want = local(repo, "direction", fresh.x)
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)
    truth = np.searchsorted(CLASSES, fresh.classes())
    assert np.mean(got["label"] == truth) >= 0.9
    client = make_client(protocol, server)
    try:
        top = client.infer(
            "direction",
            inputs_of(protocol, {"input": fresh.x[:16]}),
            outputs=[requested_output(protocol, "probabilities", class_count=1)],
        ).as_numpy("probabilities")
    finally:
        client.close()
    names = [(t.decode() if isinstance(t, bytes) else t).split(":")[2] for t in top[:, 0]]
    assert names == [CLASSES[i] for i in want["label"][:16]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_regressor_trained_from_parquet_serves_raw_rows(
    server: ServerProcess, repo: Path, protocol: str
) -> None:
    fresh = rows(300, 2)
    got = served(server, protocol, "amount", fresh.x, ["prediction"])["prediction"]
    np.testing.assert_allclose(got, local(repo, "amount", fresh.x)["prediction"], rtol=1e-6)
    y = fresh.quantity()
    r2 = 1 - np.sum((got[:, 0] - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 >= 0.95
