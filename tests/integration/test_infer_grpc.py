"""What only gRPC has: async_infer futures, the asyncio client, the bidirectional stream."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import (
    CLIENT_TIMEOUT_S,
    ServerProcess,
    add_sub_inputs,
    inputs_of,
    make_client,
    requested_output,
)
from tests.integration.test_infer import assert_outputs
from tests.models import reference

Answer = tuple[Any, InferenceServerException | None]


@pytest.fixture
def grpc_client(server: ServerProcess) -> Iterator[Any]:
    c = make_client("grpc", server)
    try:
        yield c
    finally:
        c.close()


def collector() -> tuple[queue.Queue[Answer], Any]:
    """A queue and a tritonclient callback that puts (result, error) on it."""
    answers: queue.Queue[Answer] = queue.Queue()

    def callback(result: Any, error: InferenceServerException | None) -> None:
        answers.put((result, error))

    return answers, callback


def next_answer(answers: queue.Queue[Answer]) -> Answer:
    return answers.get(timeout=CLIENT_TIMEOUT_S)


def test_sync_infer_with_compression(grpc_client: Any) -> None:
    arrays = add_sub_inputs(seed=21, rows=3)
    result = grpc_client.infer(
        "add_sub_fp32", inputs_of("grpc", arrays), compression_algorithm="gzip"
    )
    assert_outputs(result, reference("add_sub_fp32", arrays))


def test_async_infer_callback(grpc_client: Any) -> None:
    answers, callback = collector()
    sent = {}
    for i in range(6):
        arrays = add_sub_inputs(seed=100 + i, rows=1 + i % 3)
        sent[str(i)] = arrays
        grpc_client.async_infer(
            "add_sub_fp32", inputs_of("grpc", arrays), callback, request_id=str(i)
        )
    for _ in range(len(sent)):
        result, error = next_answer(answers)
        assert error is None
        arrays = sent.pop(result.get_response().id)
        assert_outputs(result, reference("add_sub_fp32", arrays))
    assert not sent


def test_async_infer_error_through_callback(grpc_client: Any) -> None:
    answers, callback = collector()
    bad = {"INPUT0": np.zeros((1, 4), np.float32)}  # INPUT1 missing
    grpc_client.async_infer("add_sub_fp32", inputs_of("grpc", bad), callback)
    result, error = next_answer(answers)
    assert result is None
    assert error is not None
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT1" in error.message()


def test_aio_client(server: ServerProcess) -> None:
    async def scenario() -> None:
        async with grpcaio.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_live(client_timeout=CLIENT_TIMEOUT_S)
            assert await c.is_server_ready(client_timeout=CLIENT_TIMEOUT_S)
            assert await c.is_model_ready("add_sub_fp32", client_timeout=CLIENT_TIMEOUT_S)
            meta = await c.get_model_metadata("nobatch_fp32", client_timeout=CLIENT_TIMEOUT_S)
            assert list(meta.inputs[0].shape) == [2, 3]
            batches = [add_sub_inputs(seed=200 + i, rows=2) for i in range(8)]
            results = await asyncio.gather(
                *(
                    c.infer(
                        "add_sub_fp32",
                        inputs_of("grpc", arrays),
                        client_timeout=CLIENT_TIMEOUT_S,
                    )
                    for arrays in batches
                )
            )
            for arrays, result in zip(batches, results, strict=True):
                assert_outputs(result, reference("add_sub_fp32", arrays))
            with pytest.raises(InferenceServerException) as info:
                await c.infer(
                    "no_such_model",
                    inputs_of("grpc", batches[0]),
                    client_timeout=CLIENT_TIMEOUT_S,
                )
            assert info.value.status() == "StatusCode.NOT_FOUND"

    asyncio.run(scenario())


def _stream_send(c: Any, request_id: str, arrays: dict[str, np.ndarray], **kw: Any) -> None:
    c.async_stream_infer("add_sub_fp32", inputs_of("grpc", arrays), request_id=request_id, **kw)


def test_stream(grpc_client: Any) -> None:
    answers, callback = collector()
    grpc_client.start_stream(callback=callback, stream_timeout=CLIENT_TIMEOUT_S)
    try:
        sent = {str(i): add_sub_inputs(seed=300 + i, rows=1 + i % 2) for i in range(5)}
        for request_id, arrays in sent.items():
            _stream_send(grpc_client, request_id, arrays)
        for _ in range(len(sent)):
            result, error = next_answer(answers)
            assert error is None
            request_id = result.get_response().id
            assert_outputs(result, reference("add_sub_fp32", sent.pop(request_id)))
        assert not sent
    finally:
        grpc_client.stop_stream()


def test_stream_requested_output(grpc_client: Any) -> None:
    answers, callback = collector()
    grpc_client.start_stream(callback=callback, stream_timeout=CLIENT_TIMEOUT_S)
    try:
        arrays = add_sub_inputs(seed=310)
        outputs = [requested_output("grpc", "OUTPUT1")]
        _stream_send(grpc_client, "only-1", arrays, outputs=outputs)
        result, error = next_answer(answers)
        assert error is None
        assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
        assert_outputs(result, {"OUTPUT1": arrays["INPUT0"] - arrays["INPUT1"]})
    finally:
        grpc_client.stop_stream()


def test_stream_error_keeps_stream_open(grpc_client: Any) -> None:
    answers, callback = collector()
    grpc_client.start_stream(callback=callback, stream_timeout=CLIENT_TIMEOUT_S)
    try:
        good = add_sub_inputs(seed=320)
        _stream_send(grpc_client, "good-1", good)
        bad = {"INPUT0": good["INPUT0"], "BOGUS": good["INPUT1"]}
        _stream_send(grpc_client, "bad", bad)
        got = [next_answer(answers) for _ in range(2)]
        errors = [e for _, e in got if e is not None]
        results = [r for r, e in got if e is None]
        assert len(errors) == 1
        assert len(results) == 1
        assert "BOGUS" in errors[0].message()
        assert results[0].get_response().id == "good-1"
        assert_outputs(results[0], reference("add_sub_fp32", good))

        # The same stream still serves the next requests.
        after = add_sub_inputs(seed=321, rows=3)
        _stream_send(grpc_client, "good-2", after)
        _stream_send(grpc_client, "bad-2", {"INPUT0": after["INPUT0"]})
        _stream_send(grpc_client, "good-3", after)
        got = [next_answer(answers) for _ in range(3)]
        errors = [e for _, e in got if e is not None]
        results = [r for r, e in got if e is None]
        assert len(errors) == 1
        assert "INPUT1" in errors[0].message()
        assert sorted(r.get_response().id for r in results) == ["good-2", "good-3"]
        for result in results:
            assert_outputs(result, reference("add_sub_fp32", after))
    finally:
        grpc_client.stop_stream()
    assert answers.empty()


def test_stream_unknown_model(grpc_client: Any) -> None:
    answers, callback = collector()
    grpc_client.start_stream(callback=callback, stream_timeout=CLIENT_TIMEOUT_S)
    try:
        arrays = add_sub_inputs(seed=330)
        grpc_client.async_stream_infer("no_such_model", inputs_of("grpc", arrays))
        result, error = next_answer(answers)
        assert result is None
        assert error is not None
        assert "no_such_model" in error.message()
        _stream_send(grpc_client, "after", arrays)
        result, error = next_answer(answers)
        assert error is None
        assert_outputs(result, reference("add_sub_fp32", arrays))
    finally:
        grpc_client.stop_stream()
