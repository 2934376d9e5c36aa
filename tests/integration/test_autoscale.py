"""A load step through the real server: the autoscaling signals rise with it and fall back.

The server runs with a 1 s signal window so the test can watch a step come and go. The
load is closed-loop on `slow_fp32`, whose 20 ms queue delay keeps every caller's request
in flight most of the time, so the in-flight level tracks the number of callers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from tests.integration.conftest import (
    ServerProcess,
    http_request,
    infer_input,
    make_client,
    running_server,
)

MODEL = "slow_fp32"
WINDOW_S = 1.0


@pytest.fixture(scope="module")
def fast_window_server(test_repo: Path) -> Iterator[ServerProcess]:
    with running_server(test_repo, "--autoscale-window-secs", str(WINDOW_S)) as server:
        yield server


def _signals(server: ServerProcess) -> dict[str, Any]:
    status, _, body = http_request(server, "GET", "/v2/autoscale", timeout_s=10)
    assert status == 200, body
    doc = orjson.loads(body)
    assert set(doc) == {"models", "total"}
    return dict(doc["models"][MODEL])


def _load(server: ServerProcess, callers: int, seconds: float) -> dict[str, Any]:
    """Run `callers` closed-loop clients; read the signals near the end of the step."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        client = make_client("http", server)
        x = np.full((1, 4), seed, dtype=np.float32)
        try:
            while not stop.is_set():
                client.infer(MODEL, [infer_input("http", "INPUT0", x)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for t in threads:
        t.start()
    time.sleep(seconds)  # a load step of fixed length; the window must fill
    signals = _signals(server)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return signals


def test_signals_rise_with_load_and_fall_back(fast_window_server: ServerProcess) -> None:
    idle = _signals(fast_window_server)
    assert idle["in_flight_avg"] == 0
    low = _load(fast_window_server, callers=2, seconds=1.5 * WINDOW_S)
    high = _load(fast_window_server, callers=12, seconds=1.5 * WINDOW_S)
    for step in (low, high):
        assert step["arrival_rate"] > 0
        assert step["completion_rate"] > 0
        assert step["utilisation"] > 0
        assert step["capacity_rps"] is not None
    # Six times the callers: several times the requests in flight (not exactly six,
    # the machine is shared), and more replicas asked for, never fewer.
    assert high["in_flight_avg"] > 3 * low["in_flight_avg"] > 0
    assert high["desired_replicas"] >= low["desired_replicas"] >= 1
    deadline = time.monotonic() + 10 * WINDOW_S
    while time.monotonic() < deadline:
        after = _signals(fast_window_server)
        if after["arrival_rate"] == 0 and after["in_flight_avg"] == 0:
            break
        time.sleep(0.1)
    assert after["arrival_rate"] == 0
    assert after["in_flight"] == 0
    assert after["desired_replicas"] == 0
