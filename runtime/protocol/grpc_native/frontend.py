"""The native gRPC front end, driven by this event loop: one port serves every RPC.

The server's own thread accepts the calls (gRPC C++), decodes ModelInfer and queues them;
the loop is woken once per group of calls that arrived together (an eventfd) and takes them
all in one `drain()`. Answers collect during one loop iteration and go back in one
`finish()`, which hands them to the server's thread to serialise and send, so the loop does
not wait for the sockets.

ModelInfer requests the server decodes go straight to the data plane. Everything else
(metadata, model control, statistics, streaming, ModelInfer with typed contents) runs the
grpc.aio servicer's own handlers on messages the Python stubs decode, so the semantics of
those RPCs are that servicer's, error mapping and restrictions included.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message

from runtime.access import Restriction
from runtime.config import ServerConfig
from runtime.dataplane import DataPlane
from runtime.errors import ServingError
from runtime.logs import CALL_KEYS, REQUEST_ID_HEADER, Call
from runtime.proto import grpc_service_pb2 as pb
from runtime.protocol.grpc.servicer import (
    MALFORMED_STREAM_MESSAGE,
    MAX_MESSAGE_BYTES,
    SERVICE,
    InferenceServicer,
    connection_options,
    malformed,
    status_code,
)
from runtime.protocol.grpc_native import codec
from runtime.protocol.grpc_native.codec import ANSWER_CLOSE, ANSWER_ERROR, ANSWER_MESSAGE
from runtime.types import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

EXTENSION = "conveyor_grpc_native"

# The first element of an event tuple (native/python/conveyor_grpc_native/_native.pyi).
INFER, UNARY, STREAM_OPEN, STREAM_MESSAGE, STREAM_END, CANCEL = range(6)

Event = tuple[Any, ...]
Answer = tuple[Any, ...]
# Trailing metadata an answer may end with: the call's request id.
Trailing = tuple[tuple[str, str], ...]
Handler = Callable[[Any, Any], Awaitable[Message]]


# TLS as the server takes it: key PEM, certificate chain PEM, client roots PEM, mutual.
Tls = tuple[bytes, bytes, bytes, bool]


class NativeServer(Protocol):
    """conveyor_grpc_native.Server, as this module uses it."""

    def start(self, address: str, tls: Tls | None = None) -> int: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[Event]: ...
    def finish(self, answers: list[Answer]) -> None: ...
    def fail(self, call_id: int, code: int, message: str) -> None: ...
    def shutdown(self, grace_s: float) -> None: ...


class Abort(Exception):
    """What `Context.abort` raises: the status the call ends with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """The part of grpc.aio's ServicerContext the servicer's handlers use."""

    def __init__(self, metadata: Mapping[str, str] | None) -> None:
        self._metadata = metadata
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self._metadata.items()) if self._metadata else ()

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Abort(code, details)


def error_answer(
    call_id: int, code: grpc.StatusCode, message: str, trailing: Trailing = ()
) -> Answer:
    answer = (call_id, ANSWER_ERROR, code.value[0], message)
    return (*answer, trailing) if trailing else answer


def exception_answer(
    call_id: int, exc: BaseException, trailing: Trailing = (), logged: bool = False
) -> Answer:
    """The servicer's mapping: a ServingError's own status, anything else INTERNAL (logged
    here unless `logged`: CallLog.end logs an infer call's failures with its request id)."""
    if isinstance(exc, ServingError):
        return error_answer(call_id, status_code(exc), exc.message, trailing)
    if not logged:
        log.error("internal error in ModelInfer", exc_info=exc)
    return error_answer(call_id, grpc.StatusCode.INTERNAL, "internal server error", trailing)


def unary_methods(servicer: InferenceServicer) -> dict[str, tuple[Handler, type[Message]]]:
    """Each unary RPC's full path -> (the servicer's handler, its request message class)."""
    service = pb.DESCRIPTOR.services_by_name[SERVICE.split(".")[-1]]
    return {
        f"/{SERVICE}/{method.name}": (
            getattr(servicer, method.name),
            getattr(pb, method.input_type.name),
        )
        for method in service.methods
        if not method.client_streaming
    }


class NativeFrontend:
    """inference.GRPCInferenceService on the native server, over one DataPlane."""

    def __init__(
        self,
        server: NativeServer,
        dataplane: DataPlane,
        restrictions: Mapping[str, Restriction] | None = None,
        tls: Tls | None = None,
    ) -> None:
        self._server = server
        self._tls = tls
        self._dp = dataplane
        self._restricted = bool(restrictions)
        self._servicer = InferenceServicer(dataplane, restrictions)
        self._methods = unary_methods(self._servicer)
        self._tasks: dict[int, asyncio.Future[Any]] = {}
        self._streams: dict[int, asyncio.Queue[pb.ModelInferRequest | None]] = {}
        self._answers: list[Answer] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, address: str) -> int:
        """Listen on `address` (port 0 picks one); returns the bound port."""
        self._loop = asyncio.get_running_loop()
        port = self._server.start(address, self._tls)
        self._loop.add_reader(self._server.fileno(), self._on_events)
        return port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls; calls still open after `grace_s` are cancelled."""
        await asyncio.to_thread(self._server.shutdown, grace_s)
        if self._loop is not None:
            self._loop.remove_reader(self._server.fileno())
        self._on_events()  # the cancellations of the calls shutdown ended
        for task in list(self._tasks.values()):
            task.cancel()
        self._flush()

    # -- events -----------------------------------------------------------------------

    def _on_events(self) -> None:
        received_ns = time.monotonic_ns()
        for event in self._server.drain():
            try:
                if event[0] == INFER:
                    self._infer(event, received_ns)
                else:
                    self._other(event)
            except Exception as exc:
                self._answer(exception_answer(event[1], exc))

    def _infer(self, event: Event, received_ns: int) -> None:
        call_id, model, version, metadata = event[1], event[2], event[3], event[8]
        try:
            if self._restricted:
                self._servicer.check_restriction("inference", Context(metadata))
        except ServingError as exc:
            self._answer(exception_answer(call_id, exc))
            return
        # As the grpc.aio servicer's ModelInfer: a request id (and a trace when sampled) for
        # every call that passed the restriction, sent back in the trailing metadata.
        call = self._dp.calls.begin("grpc", model, version, metadata or {}, received_ns)
        trailing = ((REQUEST_ID_HEADER, call.request_id),)
        try:
            request = codec.decode_request(event)
        except ServingError as exc:
            self._dp.calls.end(call, version, exc)
            self._answer(exception_answer(call_id, exc, trailing))
            return
        request.received_ns = received_ns
        request.protocol = "grpc"
        request.trace = call.trace
        done = functools.partial(self._infer_done, trailing)
        self._track(call_id, self._run_infer(request, call), done)

    async def _run_infer(self, request: InferenceRequest, call: Call) -> InferenceResponse:
        # The version is looked up in the task's first step, which also queues the request:
        # looked up before the task starts, it could be retired (a reload) in between, and
        # the request refused as sent to a model no longer accepting requests.
        version, error = request.model_version, None
        try:
            response = await self._dp.infer(request)
            version = response.model_version
            return response
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._dp.calls.end(call, version, error)

    def _other(self, event: Event) -> None:
        kind, call_id = event[0], event[1]
        if kind == UNARY:
            self._track(call_id, self._unary(event), self._done)
        elif kind == STREAM_OPEN:
            queue: asyncio.Queue[pb.ModelInferRequest | None] = asyncio.Queue()
            self._streams[call_id] = queue
            stream = self._stream(call_id, queue, event[2])
            self._track(call_id, stream, self._done)
        elif kind == STREAM_MESSAGE:
            self._stream_message(call_id, event[2])
        elif kind == STREAM_END:
            ended = self._streams.pop(call_id, None)
            if ended is not None:
                ended.put_nowait(None)
        elif kind == CANCEL:
            self._streams.pop(call_id, None)
            task = self._tasks.pop(call_id, None)
            if task is not None:
                task.cancel()

    def _stream_message(self, call_id: int, payload: bytes) -> None:
        queue = self._streams.get(call_id)
        if queue is None:
            return
        try:
            queue.put_nowait(pb.ModelInferRequest.FromString(payload))
        except DecodeError:
            # grpc.aio ends a stream whose message does not parse; so does this.
            self._streams.pop(call_id, None)
            task = self._tasks.pop(call_id, None)
            if task is not None:
                task.cancel()
            self._answer(
                error_answer(call_id, grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_STREAM_MESSAGE)
            )

    # -- calls --------------------------------------------------------------------------

    def _track(
        self,
        call_id: int,
        work: Coroutine[Any, Any, Any],
        done: Callable[[int, asyncio.Future[Any]], None],
    ) -> None:
        assert self._loop is not None, "started"
        task = self._loop.create_task(work)
        self._tasks[call_id] = task
        task.add_done_callback(functools.partial(done, call_id))

    def _infer_done(
        self, trailing: Trailing, call_id: int, task: asyncio.Future[InferenceResponse]
    ) -> None:
        if self._tasks.pop(call_id, None) is None or task.cancelled():
            return  # cancelled: the server has finished the call already
        exc = task.exception()
        if exc is None:
            self._answer((*codec.encode_response(call_id, task.result()), trailing))
        else:
            self._answer(exception_answer(call_id, exc, trailing, logged=True))

    def _done(self, call_id: int, task: asyncio.Future[Answer]) -> None:
        if self._tasks.pop(call_id, None) is None or task.cancelled():
            return
        exc = task.exception()
        self._answer(task.result() if exc is None else exception_answer(call_id, exc))

    async def _unary(self, event: Event) -> Answer:
        _, call_id, method, payload, metadata = event
        entry = self._methods.get(method)
        if entry is None:
            return error_answer(call_id, grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        handler, request_type = entry
        try:
            request = request_type.FromString(payload)
        except DecodeError:
            message = malformed(request_type)
            return error_answer(call_id, grpc.StatusCode.INVALID_ARGUMENT, message)
        context = Context(metadata)
        try:
            response = await handler(request, context)
        except Abort as abort:
            return error_answer(call_id, abort.code, abort.details, context.trailing)
        except Exception as exc:
            return exception_answer(call_id, exc, context.trailing)
        answer = (call_id, ANSWER_MESSAGE, response.SerializeToString())
        return (*answer, context.trailing) if context.trailing else answer

    async def _stream(
        self,
        call_id: int,
        queue: asyncio.Queue[pb.ModelInferRequest | None],
        metadata: Mapping[str, str] | None,
    ) -> Answer:
        async def requests() -> AsyncIterator[pb.ModelInferRequest]:
            while (request := await queue.get()) is not None:
                yield request

        try:
            async for reply in self._servicer.ModelStreamInfer(requests(), Context(metadata)):
                self._answer((call_id, ANSWER_MESSAGE, reply.SerializeToString()))
        except Abort as abort:
            return error_answer(call_id, abort.code, abort.details)
        return (call_id, ANSWER_CLOSE)

    # -- answers ------------------------------------------------------------------------

    def _answer(self, answer: Answer) -> None:
        """Queue an answer; the first of an iteration schedules the one flush of them all."""
        self._answers.append(answer)
        if len(self._answers) == 1 and self._loop is not None:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        answers, self._answers = self._answers, []
        if not answers:
            return
        try:
            self._server.finish(answers)
        except Exception:
            log.exception("the native gRPC server could not send an answer")


def tls_settings(config: ServerConfig) -> Tls | None:
    """The TLS the flags ask for, read from the PEM files; None without --grpc-use-ssl(-mutual).

    The same checks and messages as the grpc.aio path (runtime.server).
    """
    if not (config.grpc_use_ssl or config.grpc_use_ssl_mutual):
        return None
    if config.grpc_server_cert is None or config.grpc_server_key is None:
        raise ValueError("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
    if config.grpc_use_ssl_mutual and config.grpc_root_cert is None:
        raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert")
    roots = config.grpc_root_cert.read_bytes() if config.grpc_root_cert is not None else b""
    return (
        config.grpc_server_key.read_bytes(),
        config.grpc_server_cert.read_bytes(),
        roots,
        config.grpc_use_ssl_mutual,
    )


def load(dataplane: DataPlane, config: ServerConfig) -> NativeFrontend | None:
    """The native front end as the server's config sets it up (restrictions, TLS, the limit
    on calls in flight, the connections' keepalive and age), or None with a warning where
    the extension is not installed (the caller then serves gRPC on grpc.aio).
    """
    return _load(
        dataplane,
        config.grpc_restrictions,
        tls_settings(config),
        config.grpc_max_concurrent_rpcs,
        connection_options(config),
    )


def _load(
    dataplane: DataPlane,
    restrictions: Mapping[str, Restriction],
    tls: Tls | None,
    max_concurrent_rpcs: int,
    channel_arguments: list[tuple[str, int]],
) -> NativeFrontend | None:
    try:
        module = importlib.import_module(EXTENSION)
    except ImportError as exc:
        log.warning(
            "the native gRPC front end is not installed (%s; build it with "
            "`pip install ./native`); gRPC runs on grpc.aio",
            exc,
        )
        return None
    # The metadata each call event carries: the restriction keys, and the request id and
    # trace context every infer call reads (runtime.logs.CALL_KEYS).
    keys = sorted({r.key for r in restrictions.values()} | CALL_KEYS)
    server: NativeServer = module.Server(
        keys, MAX_MESSAGE_BYTES, max_concurrent_rpcs, channel_arguments
    )
    return NativeFrontend(server, dataplane, restrictions, tls)
