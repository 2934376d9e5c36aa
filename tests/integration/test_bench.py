"""`conveyor bench` against the real server over both protocols: closed and open loop,
generated and file inputs, the JSON report and the plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import PROTOCOLS, ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bench_sweeps_closed_and_open_loop(
    server: ServerProcess, protocol: str, tmp_path: Path
) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = _bench(
        "--url", url, "--protocol", protocol, "--model", "add_sub_fp32",
        "--concurrency", "1,2", "--request-rate", "100",
        "--duration", "0.5", "--warmup", "0.1", "--batch-size", "2",
        "--json", str(out), "--plot", str(png),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "p99.9 ms" in result.stdout
    doc = json.loads(out.read_text())
    assert doc["target"] == {"url": url, "protocol": protocol, "model": "add_sub_fp32"}
    steps = doc["steps"]
    assert [(s["mode"], s["concurrency"]) for s in steps] == [
        ("closed", 1),
        ("closed", 2),
        ("open", 0),
    ]
    for step in steps:
        assert step["requests"] > 0
        assert step["errors"] == {}
        assert step["p50_ms"] <= step["p99_ms"] <= step["p999_ms"]
        assert step["server_queue_ms"] >= 0  # read from the statistics extension
    assert steps[2]["offered_rps"] == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reads_a_perf_analyzer_input_file(server: ServerProcess, tmp_path: Path) -> None:
    data = tmp_path / "input.json"
    data.write_text(
        json.dumps({"data": [{"INPUT0": [1, 2, 3, 4], "INPUT1": {"content": [4, 3, 2, 1]}}]})
    )
    out = tmp_path / "bench.json"
    result = _bench(
        "--url", server.grpc_url, "--model", "add_sub_fp32", "--concurrency", "1",
        "--duration", "0.3", "--warmup", "0", "--input-data", str(data), "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(out.read_text())["steps"][0]["requests"] > 0


def test_bench_says_why_it_cannot_start(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _bench(
        "--url", server.http_url, "--protocol", "http", "--model", "corrupt",
        "--concurrency", "1", "--duration", "0.2", "--warmup", "0", "--json", str(out),
    )  # fmt: skip
    # The corrupt model has no metadata: the sweep cannot start, and says why.
    assert result.returncode == 1
    assert "corrupt" in result.stderr
    assert "404" in result.stderr
    assert "Traceback" not in result.stderr
