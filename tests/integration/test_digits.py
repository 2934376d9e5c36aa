"""The whole workflow: train digits, serve it, predict over both protocols, watch drift."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime import training
from runtime.training.ingest import Split
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    http_request,
    inputs_of,
    make_client,
    requested_output,
    running_server,
)

BATCH = 64
DEADLINE_S = 15.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Split]:
    repo = tmp_path_factory.mktemp("digits_repo")
    record = training.digits(repo, fast=True)
    return repo, training.held_out(record)


@pytest.fixture(scope="module")
def digits_server(trained: tuple[Path, Split]) -> Iterator[ServerProcess]:
    with running_server(trained[0]) as srv:
        yield srv


@pytest.fixture
def drift_server(trained: tuple[Path, Split]) -> Iterator[ServerProcess]:
    """A server of its own, so that its drift windows hold only this test's traffic."""
    repo, test = trained
    # One drift window holds the whole held-out set.
    with running_server(repo, "--drift-window-samples", str(len(test))) as srv:
        yield srv


def predict(client: Any, protocol: str, pixels: np.ndarray) -> np.ndarray:
    scores = [
        client.infer("digits", inputs_of(protocol, {"pixels": pixels[i : i + BATCH]})).as_numpy(
            "scores"
        )
        for i in range(0, len(pixels), BATCH)
    ]
    return np.concatenate(scores)


def drift_report(srv: ServerProcess, windows: int) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, _, body = http_request(srv, "GET", "/v2/models/digits/drift")
        report: dict[str, Any] = json.loads(body)
        assert status == 200, report
        if report["windows_judged"] >= windows or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_held_out_accuracy_through_the_server(
    digits_server: ServerProcess, trained: tuple[Path, Split], protocol: str
) -> None:
    _, test = trained
    client = make_client(protocol, digits_server)
    try:
        scores = predict(client, protocol, test.features)
        top = client.infer(
            "digits",
            inputs_of(protocol, {"pixels": test.features[:8]}),
            outputs=[requested_output(protocol, "scores", class_count=1)],
        ).as_numpy("scores")
    finally:
        client.close()
    accuracy = float(np.mean(np.argmax(scores, axis=1) == test.labels))
    assert accuracy >= 0.95
    # The serving pipeline's softmax: every row is a distribution over the 10 digits.
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    labels = [(t.decode() if isinstance(t, bytes) else t).split(":")[2] for t in top[:, 0]]
    assert labels == [str(d) for d in np.argmax(scores[:8], axis=1)]


def test_drift_stays_quiet_on_held_out_digits_and_alerts_on_inverted_ones(
    drift_server: ServerProcess, trained: tuple[Path, Split]
) -> None:
    _, test = trained
    client = make_client("grpc", drift_server)
    try:
        predict(client, "grpc", test.features)
        calm = drift_report(drift_server, 1)
        predict(client, "grpc", 16 - test.features)
        alarmed = drift_report(drift_server, 2)
    finally:
        client.close()
    assert calm["windows_judged"] == 1
    assert calm["alert"] is False
    assert alarmed["alert"] is True
    assert alarmed["recent"][-1]["rows"] == len(test)


class DigitsClient:
    """A client thread classifying held-out rows back to back; records versions and failures."""

    def __init__(self, protocol: str, srv: ServerProcess, test: Split, seed: int) -> None:
        self.protocol, self.srv, self.test, self.seed = protocol, srv, test, seed
        self.versions: list[str] = []
        self.correct = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        client = make_client(self.protocol, self.srv)
        try:
            while not self.stop.is_set():
                rows = rng.integers(0, len(self.test), 8)
                try:
                    result = client.infer(
                        "digits", inputs_of(self.protocol, {"pixels": self.test.features[rows]})
                    )
                except Exception as exc:  # every failure is the test's business
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                response = result.get_response()
                version = (
                    response["model_version"] if self.protocol == "http" else response.model_version
                )
                self.versions.append(str(version))
                predicted = np.argmax(result.as_numpy("scores"), axis=1)
                self.correct += int(np.sum(predicted == self.test.labels[rows]))
        finally:
            client.close()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(DEADLINE_S)
        assert not self.thread.is_alive()


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_republishing_digits_under_load_fails_nothing(tmp_path: Path) -> None:
    """Train v1, serve it in poll mode under HTTP and gRPC load, train and publish v2."""
    record = training.digits(tmp_path, fast=True)
    test = training.held_out(record)
    flags = ("--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    with running_server(tmp_path, *flags) as srv:
        clients = [DigitsClient(p, srv, test, seed) for seed, p in enumerate(PROTOCOLS)]
        try:
            wait_for(lambda: all(len(c.versions) >= 10 for c in clients), "traffic on v1")
            training.digits(tmp_path, fast=True, seed=1)
            wait_for(lambda: all(c.versions[-1] == "2" for c in clients), "every client on v2")
            marks = [len(c.versions) for c in clients]
            wait_for(
                lambda: all(len(c.versions) >= m + 10 for c, m in zip(clients, marks, strict=True)),
                "traffic on v2",
            )
        finally:
            for c in clients:
                c.join()
    for c in clients:
        assert c.failures == [], f"{c.protocol}: {c.failures[:3]}"
        assert c.versions == sorted(c.versions), f"{c.protocol} went back to version 1"
        assert c.correct / (8 * len(c.versions)) >= 0.9
