"""The Prometheus endpoint, read with prometheus_client's own parser after real traffic."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    add_sub_inputs,
    inputs_of,
    make_client,
    running_server,
)

MODEL = "add_sub_fp32"
LABELS = {"model": MODEL, "version": "1"}


def _scrape(server: ServerProcess) -> tuple[str, dict[str, Any]]:
    url = f"http://{server.metrics_url}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def _value(families: dict[str, Any], family: str, **labels: str) -> float:
    matches = [s.value for s in families[family].samples if labels.items() <= s.labels.items()]
    assert len(matches) == 1, (family, labels, families[family].samples)
    return float(matches[0])


@pytest.fixture(scope="module")
def traffic(server: ServerProcess) -> dict[str, Any]:
    """Some successes over both protocols and one bad request, then the statistics."""
    for protocol in PROTOCOLS:
        client = make_client(protocol, server)
        try:
            for seed in range(3):
                client.infer(MODEL, inputs_of(protocol, add_sub_inputs(seed, rows=2)))
            bad = {k: v[:, :3] for k, v in add_sub_inputs(9).items()}  # wrong shape
            with pytest.raises(Exception, match="unexpected shape"):
                client.infer(MODEL, inputs_of(protocol, bad))
        finally:
            client.close()
    http = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
    try:
        return dict(http.get_inference_statistics(MODEL, "1")["model_stats"][0])
    finally:
        http.close()


def test_triton_families_agree_with_the_statistics_extension(
    server: ServerProcess, traffic: dict[str, Any]
) -> None:
    text, families = _scrape(server)
    stats = traffic["inference_stats"]
    assert _value(families, "nv_inference_request_success", **LABELS) == stats["success"]["count"]
    assert _value(families, "nv_inference_count", **LABELS) == traffic["inference_count"]
    assert _value(families, "nv_inference_exec_count", **LABELS) == traffic["execution_count"]
    assert _value(families, "nv_inference_queue_duration_us", **LABELS) == (
        stats["queue"]["ns"] // 1000
    )
    assert _value(families, "nv_inference_request_failure", reason="OTHER", **LABELS) >= 2
    for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
        _value(families, "nv_inference_request_failure", reason=reason, **LABELS)
    assert _value(families, "nv_inference_pending_request_count", **LABELS) == 0
    assert families["nv_inference_request_success"].type == "counter"
    assert families["nv_inference_pending_request_count"].type == "gauge"
    # Triton's names exactly: dashboards break on a _total suffix.
    assert "nv_inference_request_success_total" not in text
    assert "\nnv_inference_count{" in text


def test_conveyor_histograms_and_state(server: ServerProcess, traffic: dict[str, Any]) -> None:
    _, families = _scrape(server)
    for protocol in PROTOCOLS:
        count = _value(
            families,
            "conveyor_request_duration_seconds",
            protocol=protocol,
            le="+Inf",
            **LABELS,
        )
        assert count >= 4  # three successes and one failure each
    executions = _value(families, "conveyor_batch_size", le="+Inf", **LABELS)
    assert executions == traffic["execution_count"]
    assert _value(families, "conveyor_model_ready", **LABELS) == 1
    assert _value(families, "conveyor_queue_depth", **LABELS) == 0
    assert _value(families, "conveyor_request_errors", reason="OTHER", **LABELS) >= 2
    assert families["process_cpu_seconds"].samples[0].value > 0
    corrupt = [
        s for s in families["conveyor_model_ready"].samples if s.labels["model"] == "corrupt"
    ]
    assert corrupt == []  # a model that never loaded has no version to report


def test_unknown_metrics_path_is_404(server: ServerProcess) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{server.metrics_url}/nope", timeout=10)
    info.value.close()
    assert info.value.code == 404


def test_host_cpu_and_memory_families(server: ServerProcess) -> None:
    """Triton's nv_cpu_* gauges: the host's CPU share busy and its memory (MemTotal)."""
    _, families = _scrape(server)
    total_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    assert _value(families, "nv_cpu_memory_total_bytes") == total_kib * 1024
    assert 0 < _value(families, "nv_cpu_memory_used_bytes") < total_kib * 1024
    assert 0.0 <= _value(families, "nv_cpu_utilization") <= 1.0
    for name in ("nv_cpu_utilization", "nv_cpu_memory_total_bytes", "nv_cpu_memory_used_bytes"):
        assert families[name].type == "gauge"


def test_host_families_off(test_repo: Path) -> None:
    with running_server(test_repo, "--allow-cpu-metrics", "false") as srv:
        text, families = _scrape(srv)
    assert "nv_inference_count" in families
    assert "nv_cpu_" not in text
