"""A burst far beyond what the queue admits: the excess is refused at once with 503 /
UNAVAILABLE, everything admitted is answered correctly, memory stays put, and the server
serves normally right after."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    infer_input,
    make_client,
    running_server,
)

MODEL = "slow_fp32"  # 20 ms queue delay: a burst piles up in the queue
QUEUE = 4
BURST = 64


@pytest.fixture(scope="module")
def small_queue_server(test_repo: Path) -> Iterator[ServerProcess]:
    with running_server(test_repo, "--default-max-queue-size", str(QUEUE)) as server:
        yield server


def _rss_kib(server: ServerProcess) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _one(server: ServerProcess, protocol: str, i: int) -> tuple[str, Any]:
    client = make_client(protocol, server)
    x = np.full((1, 4), i, dtype=np.float32)
    try:
        out = client.infer(MODEL, [infer_input(protocol, "INPUT0", x)]).as_numpy("OUTPUT0")
        return "ok", (out, x)
    except InferenceServerException as exc:
        return "refused", (exc.status(), str(exc.message()))
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_burst_is_shed_and_the_server_recovers(
    small_queue_server: ServerProcess, protocol: str
) -> None:
    rss_before = _rss_kib(small_queue_server)
    with ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(lambda i: _one(small_queue_server, protocol, i), range(BURST)))
    answered = [r for kind, r in results if kind == "ok"]
    refused = [r for kind, r in results if kind == "refused"]
    assert len(answered) + len(refused) == BURST
    assert answered, "nothing was admitted"
    assert refused, "a burst of 64 against a queue of 4 must shed load"
    for status, message in refused:
        assert status in ("503", "StatusCode.UNAVAILABLE")
        assert "Exceeds maximum queue size" in message
    for out, x in answered:
        np.testing.assert_array_equal(out, x)
    # Recovery: the same client code, one at a time, all served.
    for i in range(10):
        kind, value = _one(small_queue_server, protocol, 1000 + i)
        assert kind == "ok", value
    assert _rss_kib(small_queue_server) - rss_before < 64 * 1024  # refusing costs no memory
