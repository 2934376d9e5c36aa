"""Triton's perf_analyzer drives the test server over gRPC and HTTP and reports throughput.

The binary comes from benchmarks/install_perf_analyzer.sh (which `make test` runs); where it
is missing the test is skipped with the reason, except in CI, where it must be there.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
PERF_ANALYZER = ROOT / ".tools" / "perf_analyzer" / "bin" / "perf_analyzer"


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    if not PERF_ANALYZER.exists():
        if os.environ.get("CI"):
            pytest.fail("perf_analyzer is not installed; `make test` installs it")
        pytest.skip("perf_analyzer not installed: run benchmarks/install_perf_analyzer.sh")
    return PERF_ANALYZER


@pytest.mark.perf_analyzer
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_measures_throughput(
    perf_analyzer: Path, server: ServerProcess, protocol: str
) -> None:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    before = _stats(server)
    cmd = [
        str(perf_analyzer),
        "-m", "add_sub_fp32",
        "-u", url,
        "-i", protocol,
        "-b", "2",
        "--concurrency-range=2",
        "--measurement-mode=count_windows",
        "--measurement-request-count=50",
        "-s", "50",
        "-r", "3",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"Concurrency: 2, throughput: ([\d.]+) infer/sec", out.stdout)
    assert match, out.stdout
    assert float(match.group(1)) > 0
    # It read the server-side breakdown from the statistics extension...
    assert "Server:" in out.stdout, out.stdout
    assert "queue" in out.stdout, out.stdout
    # ...and the requests really reached the model, two rows each.
    after = _stats(server)
    assert after["inference_count"] - before["inference_count"] >= 2 * 50


def _stats(server: ServerProcess) -> dict[str, int]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url, network_timeout=30)
    try:
        stats = client.get_inference_statistics("add_sub_fp32")["model_stats"][0]
    finally:
        client.close()
    return {"inference_count": int(stats["inference_count"])}
