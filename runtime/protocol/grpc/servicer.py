"""inference.GRPCInferenceService on grpc.aio, calling the same DataPlane as HTTP."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from runtime.access import Restriction
from runtime.dataplane import DataPlane
from runtime.errors import InternalError, InvalidInput, PermissionDenied, ServingError
from runtime.logs import CALL_KEYS, REQUEST_ID_HEADER, Call
from runtime.proto import grpc_service_pb2 as pb
from runtime.proto import grpc_service_pb2_grpc as pb_grpc
from runtime.protocol.grpc import codec

if TYPE_CHECKING:
    from runtime.config import ServerConfig

log = logging.getLogger(__name__)

# tritonclient raises its own limits to INT32_MAX; a grpcio server defaults to 4 MiB.
MAX_MESSAGE_BYTES = 2**31 - 1
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def connection_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC's channel arguments for the keepalive, ping and connection age flags.

    Both front ends take the same list (grpc.aio as server options, the native server as
    channel arguments of its builder), so the flags mean the same on either. The ping
    timeout is the keepalive timeout too: the gRPC core in grpcio closes a connection whose
    ping goes unanswered after the ping timeout (default 1 minute) and no longer by the
    keepalive timeout, which the native server's gRPC (1.51) does; unknown to 1.51, the
    argument is ignored there.
    """
    options = [
        ("grpc.keepalive_time_ms", config.grpc_keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.grpc_keepalive_timeout_ms),
        ("grpc.http2.ping_timeout_ms", config.grpc_keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(config.grpc_keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", config.grpc_http2_max_pings_without_data),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            config.grpc_http2_min_recv_ping_interval_without_data_ms,
        ),
        ("grpc.http2.max_ping_strikes", config.grpc_http2_max_ping_strikes),
    ]
    if config.grpc_max_connection_age_ms is not None:
        options.append(("grpc.max_connection_age_ms", config.grpc_max_connection_age_ms))
    if config.grpc_max_connection_age_grace_ms is not None:
        options.append(
            ("grpc.max_connection_age_grace_ms", config.grpc_max_connection_age_grace_ms)
        )
    return options


def call_metadata(context: Any) -> dict[str, str]:
    """The metadata an infer call reads (trace context, request id), by lower-case key."""
    return {k: v for k, v in context.invocation_metadata() or () if k in CALL_KEYS}


def status_code(exc: ServingError) -> grpc.StatusCode:
    """The gRPC status for an error, from the one table in runtime.errors."""
    return grpc.StatusCode[exc.code.name]


Handler = Callable[..., Awaitable[Any]]


def unary(api_group: str) -> Callable[[Handler], Handler]:
    """Abort the call with the mapped status when a handler raises; check its API's key."""

    def decorate(method: Handler) -> Handler:
        return _guard(method, api_group)

    return decorate


def _guard(method: Handler, api_group: str) -> Handler:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self.check_restriction(api_group, context)
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(status_code(exc), exc.message)
        except Exception:
            log.exception("internal error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return wrapper


_Message = TypeVar("_Message", bound=Message)


def _parsed(data: Mapping[str, Any], message: _Message) -> _Message:
    """`message` filled from the data plane's answer, which has the message's JSON shape."""
    json_format.ParseDict(data, message)
    return message


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Translates each RPC to one DataPlane call."""

    def __init__(
        self, dataplane: DataPlane, restrictions: Mapping[str, Restriction] | None = None
    ) -> None:
        self.dp = dataplane
        self.restrictions = dict(restrictions or {})

    def check_restriction(self, api_group: str, context: Any) -> None:
        """A restricted API needs its metadata key with its value (PERMISSION_DENIED)."""
        restriction = self.restrictions.get(api_group)
        if restriction is None:
            return
        metadata = dict(context.invocation_metadata() or ())
        if metadata.get(restriction.key) != restriction.value:
            raise PermissionDenied(f"This API is restricted, expecting header '{restriction.key}'")

    @unary("health")
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live)

    @unary("health")
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.ready)

    @unary("health")
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    @unary("metadata")
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return _parsed(self.dp.server_metadata(), pb.ServerMetadataResponse())

    @unary("metadata")
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        meta = self.dp.model_metadata(request.name, request.version)
        return _parsed(meta, pb.ModelMetadataResponse())

    @unary("model-config")
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Any
    ) -> pb.ModelConfigResponse:
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(self.dp.model_config(request.name, request.version))
        return response

    @unary("statistics")
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        stats = self.dp.statistics(request.name, request.version)
        return _parsed(stats, pb.ModelStatisticsResponse())

    @unary("model-repository")
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        rows = self.dp.repository_index(request.ready)
        return _parsed({"models": rows}, pb.RepositoryIndexResponse())

    @unary("model-repository")
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        config = None
        for key, value in request.parameters.items():
            if key.startswith("file:"):
                raise InvalidInput("load request: 'file:' parameters are not supported")
            if key == "config":
                config = value.string_param
        await self.dp.load_model(request.model_name, config)
        return pb.RepositoryModelLoadResponse()

    @unary("model-repository")
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    @unary("inference")
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Any
    ) -> pb.ModelInferResponse:
        """One infer call; its request id goes back in the trailing metadata."""

        def answer_with_id(call: Call) -> None:
            context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))

        try:
            return await self._call(request, call_metadata(context), answer_with_id)
        except ServingError:
            raise
        except Exception:  # logged with its request id by CallLog.end
            raise InternalError("internal server error") from None

    async def _call(
        self,
        message: pb.ModelInferRequest,
        carrier: Mapping[str, str],
        begun: Callable[[Call], None] | None = None,
    ) -> pb.ModelInferResponse:
        """One inference call, as CallLog sees it: its request id and trace from `carrier`
        (metadata), `begun` told of it first, and its end logged with its outcome."""
        received_ns = time.monotonic_ns()
        version = message.model_version
        call = self.dp.calls.begin("grpc", message.model_name, version, carrier, received_ns)
        if begun is not None:
            begun(call)
        error: BaseException | None = None
        try:
            request = codec.decode_request(message)
            request.received_ns = received_ns
            request.protocol = "grpc"
            request.trace = call.trace
            response = await self.dp.infer(request)
            version = response.model_version
            return codec.encode_response(response)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.dp.calls.end(call, version, error)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; each answer carries its request's id.

        An error goes into that response's error_message and the stream stays open.
        """
        try:
            self.check_restriction("inference", context)
        except PermissionDenied as exc:
            await context.abort(status_code(exc), exc.message)
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        carrier = call_metadata(context)

        async def one(message: pb.ModelInferRequest) -> None:
            await results.put(await self._stream_answer(message, carrier))

        async def read() -> None:
            async for message in request_iterator:
                task = asyncio.create_task(one(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await results.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_answer(
        self, message: pb.ModelInferRequest, carrier: Mapping[str, str]
    ) -> pb.ModelStreamInferResponse:
        """One message of a stream, a call of its own for the logs and traces: its request id
        is the stream's (its metadata's) or a new one, and the stream's `traceparent` is the
        parent of each message's span."""
        try:
            answer = await self._call(message, carrier)
            return pb.ModelStreamInferResponse(infer_response=answer)
        except ServingError as exc:
            error = exc
        except Exception as exc:  # logged with its request id by CallLog.end
            error = InternalError(f"internal server error: {type(exc).__name__}")
        reply = pb.ModelStreamInferResponse(error_message=error.message)
        reply.infer_response.id = message.id
        reply.infer_response.model_name = message.model_name
        return reply

    @unary("trace")
    async def TraceSetting(
        self, request: pb.TraceSettingRequest, context: Any
    ) -> pb.TraceSettingResponse:
        """Triton's trace extension: no settings reads them, an empty value clears one."""
        changes: dict[str, Any] = {}
        for key, setting in request.settings.items():
            values = list(setting.value)
            if key == "trace_level" or not values:
                changes[key] = values or None
            elif len(values) == 1:
                changes[key] = values[0]
            else:
                raise InvalidInput(f"trace setting '{key}': expected one value, got {values}")
        model = request.model_name
        if changes:
            settings = await self.dp.update_trace_settings(model, changes)
        else:
            settings = self.dp.trace_settings(model)
        response = pb.TraceSettingResponse()
        for key, value in settings.items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    @unary("logging")
    async def LogSettings(
        self, request: pb.LogSettingsRequest, context: Any
    ) -> pb.LogSettingsResponse:
        """Triton's logging extension: no settings reads them."""
        changes: dict[str, Any] = {}
        for key, setting in request.settings.items():
            kind = setting.WhichOneof("parameter_choice")
            changes[key] = None if kind is None else getattr(setting, kind)
        settings = self.dp.logs.update(changes) if changes else self.dp.logs.settings()
        response = pb.LogSettingsResponse()
        for key, value in settings.items():
            entry = response.settings[key]
            if isinstance(value, bool):
                entry.bool_param = value
            elif isinstance(value, int):
                entry.uint32_param = value
            else:
                entry.string_param = str(value)
        return response

    async def _unimplemented(self, request: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "this RPC is not implemented by Conveyor"
        )

    SystemSharedMemoryStatus = _unimplemented
    SystemSharedMemoryRegister = _unimplemented
    SystemSharedMemoryUnregister = _unimplemented
    CudaSharedMemoryStatus = _unimplemented
    CudaSharedMemoryRegister = _unimplemented
    CudaSharedMemoryUnregister = _unimplemented


SERVICE = "inference.GRPCInferenceService"


# What a request that does not parse is told (INVALID_ARGUMENT), on both front ends.
MALFORMED_STREAM_MESSAGE = "a ModelStreamInfer message could not be parsed (malformed protobuf)"


def malformed(request_type: type[Message]) -> str:
    return f"the {request_type.__name__} could not be parsed (malformed protobuf)"


def _parsing_unary(
    handler: Callable[[Any, Any], Awaitable[Message]], request_type: type[Message]
) -> Callable[[bytes, Any], Awaitable[Message]]:
    async def parse_then_handle(payload: bytes, context: Any) -> Message:
        try:
            request = request_type.FromString(payload)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed(request_type))
        return await handler(request, context)

    return parse_then_handle


def _parsing_stream(
    handler: Callable[[AsyncIterator[Any], Any], AsyncIterator[Message]],
    request_type: type[Message],
) -> Callable[[AsyncIterator[bytes], Any], AsyncIterator[Message]]:
    async def parse_then_handle(payloads: AsyncIterator[bytes], context: Any) -> Any:
        broken = False

        async def requests() -> AsyncIterator[Message]:
            nonlocal broken
            async for payload in payloads:
                try:
                    request = request_type.FromString(payload)
                except DecodeError:
                    broken = True  # read no further; what was accepted is still answered
                    return
                yield request

        async for response in handler(requests(), context):
            yield response
        if broken:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_STREAM_MESSAGE)

    return parse_then_handle


def add_to_server(
    server: grpc.aio.Server,
    dataplane: DataPlane,
    restrictions: Mapping[str, Restriction] | None = None,
) -> None:
    """The service with its requests parsed here rather than by grpc.aio, whose own parser
    answers a message that does not parse with UNKNOWN and the parser's exception: here it
    is INVALID_ARGUMENT naming the message, as on the native front end."""
    servicer = InferenceServicer(dataplane, restrictions)
    service = pb.DESCRIPTOR.services_by_name[SERVICE.split(".")[-1]]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                _parsing_stream(behaviour, request_type), response_serializer=serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _parsing_unary(behaviour, request_type), response_serializer=serialize
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
