"""Model control against the real server: poll mode following the repository, hot reloads
under load over HTTP and gRPC with no failed request, and explicit per-version reloads.

Versions are published as publishers should: written to a hidden temp folder (or file),
then renamed into place. Every wait has a deadline; the poll interval is a fraction of a second.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests import models
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    expect_error,
    inputs_of,
    make_client,
    running_server,
)
from tests.integration.test_repository import index_rows, rows_for

POLL_S = "0.2"
WAIT_S = 20.0
# Each graph maps FP32 INPUT0 [batch, 4] to INPUT0 + offset: the offset tells who answered.
OFFSETS: dict[float, Callable[[], Any]] = {
    1.0: models.GRAPHS["two_versions", 1],
    2.0: models.GRAPHS["two_versions", 2],
    0.5: models.GRAPHS["queued_fp32", 1],
}
IO: list[models.Tensor] = [("INPUT0", "FP32", [4])]
OUT: list[models.Tensor] = [("OUTPUT0", "FP32", [4])]
BATCHING = "dynamic_batching { max_queue_delay_microseconds: 1000 }\n"


def graph(offset: float) -> bytes:
    return bytes(OFFSETS[offset]().SerializeToString())


def publish(model_dir: Path, version: int, data: bytes) -> None:
    """A new version folder: a hidden temp folder, then one rename."""
    temp = model_dir / f".{version}.incoming"
    temp.mkdir(parents=True)
    (temp / "model.onnx").write_bytes(data)
    os.replace(temp, model_dir / str(version))


def republish(model_dir: Path, version: int, data: bytes) -> None:
    """New files for an existing version: a hidden temp file renamed over model.onnx."""
    temp = model_dir / str(version) / ".model.onnx.incoming"
    temp.write_bytes(data)
    os.replace(temp, model_dir / str(version) / "model.onnx")


def offset_model(root: Path, name: str, offsets: tuple[float, ...], extra: str = "") -> Path:
    """A model whose version v (from 1) answers INPUT0 + offsets[v - 1]."""
    model_dir = root / name
    models.write_config(model_dir, models.config_text(name, 8, IO, OUT, extra))
    for version, offset in enumerate(offsets, start=1):
        publish(model_dir, version, graph(offset))
    return model_dir


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def answer(client: Any, protocol: str, name: str, x: np.ndarray, version: str = "") -> Any:
    """(version that answered, OUTPUT0 - INPUT0) for one request."""
    result = client.infer(name, inputs_of(protocol, {"INPUT0": x}), model_version=version)
    response = result.get_response()
    answered = response["model_version"] if protocol == "http" else response.model_version
    return str(answered), result.as_numpy("OUTPUT0") - x


def offset_of(client: Any, protocol: str, name: str, version: str = "") -> tuple[str, float]:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    answered, delta = answer(client, protocol, name, x, version)
    assert np.allclose(delta, delta.flat[0]), delta
    return answered, float(delta.flat[0])


def ready(client: Any, name: str, version: str = "") -> bool:
    with contextlib.suppress(InferenceServerException):
        return bool(client.is_model_ready(name, version))
    return False


@contextlib.contextmanager
def poll_server(repo: Path) -> Iterator[ServerProcess]:
    with running_server(
        repo, "--model-control-mode", "poll", "--repository-poll-secs", POLL_S
    ) as srv:
        yield srv


@contextlib.contextmanager
def client_for(protocol: str, srv: ServerProcess) -> Iterator[Any]:
    c = make_client(protocol, srv)
    try:
        yield c
    finally:
        c.close()


# -- poll mode ---------------------------------------------------------------------------


def test_poll_loads_a_new_model_and_unloads_a_removed_one(protocol: str, tmp_path: Path) -> None:
    offset_model(tmp_path, "first", (1.0,))
    with poll_server(tmp_path) as srv, client_for(protocol, srv) as client:
        assert offset_of(client, protocol, "first") == ("1", 1.0)
        offset_model(tmp_path / ".incoming", "second", (2.0,))
        os.replace(tmp_path / ".incoming" / "second", tmp_path / "second")
        wait_until(lambda: ready(client, "second"), "the new model to load")
        assert offset_of(client, protocol, "second") == ("1", 2.0)

        shutil.rmtree(tmp_path / "first")
        wait_until(lambda: not ready(client, "first"), "the removed model to unload")
        message = expect_error(protocol, ("NOT_FOUND",), offset_of, client, protocol, "first")
        assert "first" in message
        assert {r["state"] for r in rows_for(index_rows(client, protocol), "first")} == {
            "UNAVAILABLE"
        }
        assert offset_of(client, protocol, "second") == ("1", 2.0)
        # As in Triton, poll mode leaves no room for the load/unload API.
        message = expect_error(protocol, ("UNAVAILABLE",), client.load_model, "second")
        assert "poll" in message
    assert "model 'first' left the repository" in srv.log_text()


def test_poll_moves_to_a_published_version(protocol: str, tmp_path: Path) -> None:
    model_dir = offset_model(tmp_path, "m", (1.0,))
    with poll_server(tmp_path) as srv, client_for(protocol, srv) as client:
        assert offset_of(client, protocol, "m") == ("1", 1.0)
        publish(model_dir, 2, graph(2.0))
        wait_until(lambda: offset_of(client, protocol, "m") == ("2", 2.0), "version 2 to answer")
        assert not ready(client, "m", "1")
        states = {r["version"]: r["state"] for r in rows_for(index_rows(client, protocol), "m")}
        assert states == {"1": "UNAVAILABLE", "2": "READY"}
        wait_until(
            lambda: "model 'm' unloaded versions [1]: drained" in srv.log_text(),
            "version 1 to be drained and closed",
        )
    assert "model 'm' swapped" in srv.log_text()


def test_poll_a_broken_new_version_leaves_the_old_one_serving(
    protocol: str, tmp_path: Path
) -> None:
    model_dir = offset_model(tmp_path, "m", (1.0,))
    with poll_server(tmp_path) as srv, client_for(protocol, srv) as client:
        publish(model_dir, 2, b"not an onnx model")

        def version_2_failed() -> bool:
            return any(r["version"] == "2" for r in rows_for(index_rows(client, protocol), "m"))

        wait_until(version_2_failed, "the index to report version 2")
        rows = {r["version"]: r for r in rows_for(index_rows(client, protocol), "m")}
        assert rows["2"]["state"] == "UNAVAILABLE"
        assert "cannot load" in rows["2"]["reason"]
        assert rows["1"]["state"] == "READY"
        assert ready(client, "m")
        assert offset_of(client, protocol, "m") == ("1", 1.0)


# -- hot reload under load ----------------------------------------------------------------


@dataclass
class Hammer:
    """A client thread sending requests back to back; records who answered and how."""

    protocol: str
    srv: ServerProcess
    seed: int
    answers: list[tuple[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"hammer-{self.seed}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(self.seed)
        with client_for(self.protocol, self.srv) as client:
            while not self.stop.is_set():
                x = rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32)
                try:
                    version, delta = answer(client, self.protocol, "m", x)
                except Exception as exc:  # every failure is the test's business
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                offsets = [o for o in OFFSETS if np.allclose(delta, o, atol=1e-5)]
                self.answers.append((version, offsets[0] if offsets else float("nan")))

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive()

    def latest(self) -> tuple[str, float] | None:
        return self.answers[-1] if self.answers else None


def more_traffic(hammers: list[Hammer], what: str, count: int = 20) -> None:
    """Wait until every client has had `count` more answers."""
    marks = [len(h.answers) for h in hammers]

    def enough() -> bool:
        return all(len(h.answers) >= m + count for h, m in zip(hammers, marks, strict=True))

    wait_until(enough, what)


def everyone_got(hammers: list[Hammer], wanted: tuple[str, float]) -> Callable[[], bool]:
    return lambda: all(h.latest() == wanted for h in hammers)


def test_hot_reload_under_load_fails_no_request(tmp_path: Path) -> None:
    """HTTP and gRPC clients hammer the model while version 2 is published, then republished."""
    model_dir = offset_model(tmp_path, "m", (1.0,), BATCHING)
    with poll_server(tmp_path) as srv:
        hammers = [Hammer(p, srv, seed) for seed, p in enumerate(PROTOCOLS * 2)]
        for h in hammers:
            h.start()
        generations = {("1", 1.0): 0, ("2", 2.0): 1, ("2", 0.5): 2}
        try:
            more_traffic(hammers, "traffic on version 1")
            publish(model_dir, 2, graph(2.0))
            wait_until(everyone_got(hammers, ("2", 2.0)), "every client to reach version 2")
            more_traffic(hammers, "traffic on version 2")
            republish(model_dir, 2, graph(0.5))
            wait_until(everyone_got(hammers, ("2", 0.5)), "every client to reach the new files")
            more_traffic(hammers, "traffic on the new files of version 2")
        finally:
            for h in hammers:
                h.join()
    for h in hammers:
        assert h.failures == [], f"{h.protocol} client {h.seed}: {h.failures[:5]}"
        # Right answers for the version that gave them, and never back to an older model.
        wrong = [a for a in h.answers if a not in generations]
        assert wrong == [], f"{h.protocol} client {h.seed}: wrong answers {wrong[:5]}"
        seen = [generations[a] for a in h.answers]
        assert seen == sorted(seen), f"{h.protocol} client {h.seed} went back to an old model"
        assert set(seen) == {0, 1, 2}
    log = srv.log_text()
    assert "unloaded versions [1]: drained" in log
    assert log.count("model 'm' swapped") >= 2


# -- explicit mode -----------------------------------------------------------------------

HELD = (
    "dynamic_batching { max_queue_delay_microseconds: 30000000 }\n"
    "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
)


@pytest.fixture(scope="module")
def explicit_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root: Path = tmp_path_factory.mktemp("control_repo")
    for protocol in PROTOCOLS:
        offset_model(root, f"both_{protocol}", (1.0, 2.0), "version_policy: { all {} }\n")
        offset_model(root, f"held_{protocol}", (1.0,), HELD)
    return root


@pytest.fixture(scope="module")
def explicit_server(explicit_repo: Path) -> Iterator[ServerProcess]:
    with running_server(explicit_repo, "--model-control-mode", "explicit") as srv:
        yield srv


def inference_counts(client: Any, protocol: str, name: str) -> dict[str, int]:
    if protocol == "http":
        stats = client.get_inference_statistics(name)["model_stats"]
    else:
        stats = client.get_inference_statistics(name, as_json=True)["model_stats"]
    return {s["version"]: int(s.get("inference_count", 0)) for s in stats}


def test_explicit_load_rebuilds_only_the_changed_version(
    protocol: str, explicit_repo: Path, explicit_server: ServerProcess
) -> None:
    name = f"both_{protocol}"
    with client_for(protocol, explicit_server) as client:
        client.load_model(name)
        for _ in range(3):
            assert offset_of(client, protocol, name, "1") == ("1", 1.0)
        assert offset_of(client, protocol, name, "2") == ("2", 2.0)
        assert inference_counts(client, protocol, name) == {"1": 3, "2": 1}

        republish(explicit_repo / name, 2, graph(0.5))
        client.load_model(name)
        # Version 1 is the same object: its statistics carried over; version 2 is new.
        assert inference_counts(client, protocol, name) == {"1": 3, "2": 0}
        assert offset_of(client, protocol, name, "2") == ("2", 0.5)
        assert offset_of(client, protocol, name, "1") == ("1", 1.0)
    assert f"model '{name}' swapped" in explicit_server.log_text()
    assert "(loaded [2], kept [1]), retiring [2]" in explicit_server.log_text()


def queue_depth(srv: ServerProcess, name: str) -> float:
    host, port = srv.metrics_url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT_S)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    prefix = f'conveyor_queue_depth{{model="{name}",version="1"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0][len(prefix) :]) if lines else 0.0


def test_explicit_unload_drains_queued_requests(
    protocol: str, explicit_server: ServerProcess
) -> None:
    """Requests waiting in the queue (held for up to 30 s) all finish when the model unloads."""
    name = f"held_{protocol}"
    results: list[tuple[str, float] | str] = []

    def one_request(value: float) -> None:
        x = np.full((1, 4), value, np.float32)
        with client_for(protocol, explicit_server) as c:
            try:
                version, delta = answer(c, protocol, name, x)
                results.append((version, float(delta.flat[0])))
            except Exception as exc:
                results.append(repr(exc))

    with client_for(protocol, explicit_server) as client:
        client.load_model(name)
        threads = [threading.Thread(target=one_request, args=(float(i),)) for i in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: queue_depth(explicit_server, name) == 3, "three queued requests")
        client.unload_model(name)
        for t in threads:
            t.join(WAIT_S)
        assert results == [("1", 1.0)] * 3
        assert not ready(client, name)
        expect_error(protocol, ("NOT_FOUND", "UNAVAILABLE"), offset_of, client, protocol, name)
