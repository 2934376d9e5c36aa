"""The events a model version publishes, and the backends' registration by platform."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from runtime import backends
from runtime.backends.python import PYTHON_BACKEND
from runtime.config import ONNX_PLATFORM, ConfigError
from runtime.events import BatchDone, Events, QueuedRequest, Subscriber
from runtime.proto import model_config_pb2 as pb


class Counts(Subscriber):
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def arrived(self) -> None:
        self.log.append(f"{self.name}:arrived")

    def batch_done(self, batch: BatchDone) -> None:
        self.log.append(f"{self.name}:batch {batch.size}")

    def rejected(self, request: QueuedRequest, error: BaseException) -> None:
        self.log.append(f"{self.name}:rejected {error}")

    def request_done(self, duration_ns: int, error: BaseException | None, protocol: str) -> None:
        self.log.append(f"{self.name}:done {protocol}")


class Broken(Subscriber):
    def batch_ran(self, inputs: object, outputs: object) -> None:
        raise RuntimeError("monitor bug")

    def __repr__(self) -> str:
        return "the broken monitor"


class Queued:
    rows = 2
    enqueued_ns = 5


def test_each_event_reaches_its_subscribers_in_order() -> None:
    log: list[str] = []
    events = Events([Counts(log, "a"), Subscriber(), Counts(log, "b")])
    events.arrived()
    events.batch_done(BatchDone(2, 0, 0, 0, 0, [Queued()], True))
    events.rejected(Queued(), ValueError("late"))
    events.request_done(1, None, "grpc")
    assert log == [
        "a:arrived", "b:arrived", "a:batch 2", "b:batch 2",
        "a:rejected late", "b:rejected late", "a:done grpc", "b:done grpc",
    ]  # fmt: skip
    assert not events.watches_batches  # nobody overrides batch_ran: the batcher skips it


def test_a_failing_watcher_is_logged_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []

    class Watcher(Subscriber):
        def batch_ran(self, inputs: object, outputs: object) -> None:
            seen.append(1)

    events = Events([Broken(), Watcher()])
    assert events.watches_batches
    with caplog.at_level(logging.ERROR, logger="runtime.events"):
        events.batch_ran({"x": np.zeros(1)}, {"y": np.zeros(1)})
    assert seen == [1]  # the watcher after the broken one still saw the batch
    assert "the broken monitor failed" in caplog.text


def message(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


def test_platform_and_backend_must_name_one_runtime() -> None:
    same = backends.registration(message('platform: "onnxruntime_onnx" backend: "onnxruntime"'))
    assert same.platform == ONNX_PLATFORM
    with pytest.raises(ConfigError, match="different runtimes"):
        backends.registration(message('platform: "onnxruntime_onnx" backend: "python"'))


@pytest.mark.parametrize(
    ("files", "backend", "platform"),
    [
        (["model.py"], PYTHON_BACKEND, ""),
        (["model.onnx"], "", ONNX_PLATFORM),
        ([], "", ONNX_PLATFORM),
    ],
)
def test_a_config_naming_no_runtime_takes_the_one_whose_file_is_there(
    tmp_path: Path, files: list[str], backend: str, platform: str
) -> None:
    for name in files:
        (tmp_path / name).write_text("")
    found = backends.registration(pb.ModelConfig(), tmp_path)
    named = found.named(pb.ModelConfig())
    assert (named.backend, named.platform) == (backend, platform)
    # A config that names its runtime keeps it, whatever the folder holds.
    assert found.named(message('backend: "python"')).backend == "python"
