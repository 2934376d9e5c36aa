"""Drift monitors inside the server: traffic over both protocols, the report, the metrics."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.monitoring import profile
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    http_request,
    inputs_of,
    make_client,
    running_server,
)
from tests.integration.test_pipeline import add_model

FEATURES = 4
WINDOW = 400
DEADLINE_S = 15.0


def reference_rows(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)


def write_profile(version_dir: Path) -> None:
    x = reference_rows(20_000, seed=0)
    scores = x * 2  # the model doubles its input; classes are the argmax of the scores
    built = profile.build(x, "INPUT0", scores, "OUTPUT0")
    profile.save(built, version_dir / profile.FILENAME)


@pytest.fixture(scope="module")
def drift_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("drift")
    for protocol in PROTOCOLS:
        write_profile(add_model(root, f"watched_{protocol}", [FEATURES], ""))
    # Sample rows instead of a profile: the server builds the profile at load.
    samples = add_model(root, "from_samples", [FEATURES], "drift: {reference: rows.npz}\n")
    np.savez(samples / "rows.npz", INPUT0=reference_rows(5000, seed=1))
    add_model(root, "unwatched", [FEATURES], "")
    write_profile(add_model(root, "switched_off", [FEATURES], "drift: {enabled: false}\n"))
    write_profile(add_model(root, "bad_setting", [FEATURES], "drift: {window_rows: 5}\n"))
    flags = ("--drift-window-samples", str(WINDOW), "--drift-window-seconds", "60")
    with running_server(root, *flags) as srv:
        yield srv


def get_json(srv: ServerProcess, path: str) -> tuple[int, dict[str, Any]]:
    status, _, body = http_request(srv, "GET", path)
    return status, json.loads(body)


def send(client: Any, protocol: str, model: str, x: np.ndarray, batch: int = 8) -> None:
    for start in range(0, len(x), batch):
        client.infer(model, inputs_of(protocol, {"INPUT0": x[start : start + batch]}))


def judged_after(srv: ServerProcess, model: str, windows: int) -> dict[str, Any]:
    """The report once at least `windows` windows are judged (the server ticks each second)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        status, report = get_json(srv, f"/v2/models/{model}/drift")
        assert status == 200, report
        if report["windows_judged"] >= windows or time.monotonic() > deadline:
            return report
        time.sleep(0.1)


def scrape(srv: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{srv.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shift_raises_the_alert_within_one_window(
    drift_server: ServerProcess, protocol: str
) -> None:
    model = f"watched_{protocol}"
    client = make_client(protocol, drift_server)
    try:
        send(client, protocol, model, reference_rows(WINDOW, seed=10))
        calm = judged_after(drift_server, model, 1)
        assert calm["windows_judged"] == 1
        assert calm["alert"] is False
        assert calm["last_window"]["rows"] == WINDOW
        assert set(calm["last_window"]["psi"]) == {"0", "1", "2", "3"}
        shifted = reference_rows(WINDOW, seed=11)
        shifted[:, 2] += 1.0
        send(client, protocol, model, shifted)
        alarmed = judged_after(drift_server, model, 2)
    finally:
        client.close()
    assert alarmed["alert"] is True
    assert alarmed["worst_features"][0]["feature"] == "2"
    families = scrape(drift_server)
    alerts = {
        s.labels["model"]: s.value
        for s in families["conveyor_drift_alert"].samples
        if s.labels["version"] == "1"
    }
    assert alerts[model] == 1.0
    scores = [
        s
        for s in families["conveyor_drift_score"].samples
        if s.labels["model"] == model and s.labels["statistic"] == "psi"
    ]
    assert len(scores) == FEATURES
    assert max(scores, key=lambda s: s.value).labels["feature"] == "2"
    log = drift_server.log_text()
    assert log.count(f"drift alert for {model} v1") == 1


def test_profile_built_from_sample_rows(drift_server: ServerProcess) -> None:
    client = make_client("grpc", drift_server)
    try:
        send(client, "grpc", "from_samples", reference_rows(WINDOW, seed=20))
    finally:
        client.close()
    report = judged_after(drift_server, "from_samples", 1)
    assert report["windows_judged"] == 1
    assert report["alert"] is False


@pytest.mark.parametrize(
    ("model", "status", "text"),
    [
        ("unwatched", 404, "has no drift monitor"),
        ("switched_off", 404, "has no drift monitor"),
        ("missing", 404, "unknown model"),
    ],
)
def test_models_without_a_monitor_say_why(
    drift_server: ServerProcess, model: str, status: int, text: str
) -> None:
    code, body = get_json(drift_server, f"/v2/models/{model}/drift")
    assert code == status
    assert text in body["error"]


def test_bad_drift_settings_make_only_that_model_unavailable(drift_server: ServerProcess) -> None:
    client = make_client("http", drift_server)
    try:
        rows = [dict(r) for r in client.get_model_repository_index()]
        assert client.is_model_ready("watched_http")
    finally:
        client.close()
    row = next(r for r in rows if r["name"] == "bad_setting")
    assert row["state"] == "UNAVAILABLE"
    assert "unknown drift setting 'window_rows'" in row["reason"]
