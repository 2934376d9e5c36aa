"""The KServe v2 REST API on Starlette: routes translate HTTP to DataPlane calls and back."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from runtime.access import Restriction
from runtime.config import DEFAULT_MAX_INPUT_SIZE
from runtime.dataplane import DataPlane
from runtime.errors import (
    Cancelled,
    InvalidInput,
    PermissionDenied,
    ServingError,
    TooLarge,
    Unavailable,
)
from runtime.logs import REQUEST_ID_HEADER
from runtime.monitoring.metrics import CONTENT_TYPE, Metrics
from runtime.monitoring.tracing import RequestTrace
from runtime.protocol.http import codec

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def _error_headers(exc: ServingError) -> dict[str, str] | None:
    return {"Accept-Encoding": "gzip, deflate"} if "Content-Encoding" in exc.message else None


def error_response(exc: ServingError) -> Response:
    return json_response({"error": exc.message}, exc.http_status, _error_headers(exc))


@dataclass(slots=True)
class Reply:
    """An infer answer before it becomes a Response (Starlette) or two ASGI messages."""

    body: bytes
    media_type: str
    headers: dict[str, str]
    status: int = 200
    model_version: str = ""  # the version that answered


def check_restriction(restriction: Restriction | None, headers: Mapping[str, str]) -> None:
    """A restricted API needs its header with its value (PermissionDenied otherwise)."""
    if restriction is not None and headers.get(restriction.key) != restriction.value:
        raise PermissionDenied(f"This API is restricted, expecting header '{restriction.key}'")


def guarded(endpoint: Endpoint, restriction: Restriction | None = None) -> Endpoint:
    """Turn errors into `{"error": ...}` with the status from the one error table.

    With a restriction, the request must carry its header with its value (403 otherwise).
    """

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        try:
            check_restriction(restriction, request.headers)
            return await endpoint(request)
        except ServingError as exc:
            return error_response(exc)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.url.path)
            return json_response({"error": "internal server error"}, 500)

    return wrapper


class HttpApi:
    """Route handlers bound to one data plane."""

    def __init__(self, dataplane: DataPlane, max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> None:
        self.dp = dataplane
        self.max_input_size = max_input_size
        self.calls = dataplane.calls

    # -- health and metadata ------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        if self.dp.live:
            return json_response({"live": True})
        return json_response({"live": False, "error": "server is not live"}, 503)

    async def ready(self, request: Request) -> Response:
        if self.dp.ready:
            return json_response({"ready": True})
        return json_response({"ready": False, "error": "server is not ready"}, 503)

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dp.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        return json_response(self.dp.model_metadata(name, version))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        if self.dp.model_ready(name, version):
            return json_response({"name": name, "ready": True})
        raise Unavailable(f"model '{name}'{f' version {version}' if version else ''} is not ready")

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        return json_response(self.dp.model_config_json(name, version))

    async def autoscale(self, request: Request) -> Response:
        return json_response(self.dp.autoscale())

    async def statistics(self, request: Request) -> Response:
        name, version = _model(request) if "name" in request.path_params else ("", "")
        return json_response(self.dp.statistics(name, version))

    async def drift(self, request: Request) -> Response:
        return json_response(self.dp.drift(*_model(request)))

    # -- trace and logging extensions ---------------------------------------------------

    async def trace_settings(self, request: Request) -> Response:
        """GET or POST the global trace settings, or a model's (no version: Triton's path)."""
        model = request.path_params.get("name", "")
        if request.method == "POST":
            changes = codec.load_json_object(await self._body(request))
            return json_response(await self.dp.update_trace_settings(model, changes))
        return json_response(self.dp.trace_settings(model))

    async def log_settings(self, request: Request) -> Response:
        if request.method == "POST":
            changes = codec.load_json_object(await self._body(request))
            return json_response(self.dp.logs.update(changes))
        return json_response(self.dp.logs.settings())

    # -- repository ---------------------------------------------------------------------

    async def repository_index(self, request: Request) -> Response:
        body = await self._body(request)
        ready_only = False
        if body.strip():
            doc = codec.load_json_object(body)
            ready_only = bool(doc.get("ready", False))
        return json_response(self.dp.repository_index(ready_only))

    async def load(self, request: Request) -> Response:
        body = await self._body(request)
        config = None
        if body.strip():
            params = codec.load_json_object(body).get("parameters", {})
            if not isinstance(params, dict):
                raise InvalidInput("load request: 'parameters' must be an object")
            if any(k.startswith("file:") for k in params):
                raise InvalidInput("load request: 'file:' parameters are not supported")
            config = params.get("config")
            if config is not None and not isinstance(config, str):
                raise InvalidInput("load request: parameter 'config' must be a JSON string")
        await self.dp.load_model(request.path_params["name"], config)
        return Response(b"", 200)

    async def unload(self, request: Request) -> Response:
        await self._body(request)
        await self.dp.unload_model(request.path_params["name"])
        return Response(b"", 200)

    # -- inference ----------------------------------------------------------------------

    async def infer(self, request: Request) -> Response:
        """The Starlette route; POSTs normally take InferFirst's path, which ends the same."""
        received_ns = time.monotonic_ns()
        name, version = _model(request)
        headers, receive = request.headers, request.receive
        reply = await self.answer_infer(name, version, headers, receive, received_ns)
        if reply is None:
            raise Cancelled("the client went away while sending the request")
        return Response(reply.body, reply.status, reply.headers, reply.media_type)

    async def answer_infer(
        self,
        name: str,
        version: str,
        headers: Mapping[str, str],
        receive: Receive,
        received_ns: int,
    ) -> Reply | None:
        """One infer call, from its (lower-case) headers and body to its answer or error.

        Every answer carries the call's request id; None when the client left while sending.
        """
        call = self.calls.begin("http", name, version, headers, received_ns)
        answered = version
        error: BaseException | None = None
        try:
            body = await self.read_body(receive, headers.get("content-length"))
            if body is None:
                error = Cancelled("the client went away while sending the request")
                return None  # nobody to answer
            probe = _disconnect_probe(receive)
            trace = call.trace
            reply = await self.infer_body(name, version, headers, body, probe, received_ns, trace)
            answered = reply.model_version
        except ServingError as exc:
            error = exc
            payload = orjson.dumps({"error": exc.message})
            reply = Reply(payload, "application/json", _error_headers(exc) or {}, exc.http_status)
        except Exception as exc:
            error = exc
            payload = orjson.dumps({"error": "internal server error"})
            reply = Reply(payload, "application/json", {}, 500)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.calls.end(call, answered, error)
        reply.headers[REQUEST_ID_HEADER] = call.request_id
        return reply

    async def infer_body(
        self,
        name: str,
        version: str,
        headers: Mapping[str, str],
        body: bytes,
        client_gone: Callable[[], bool] | None,
        received_ns: int,
        trace: RequestTrace | None = None,
    ) -> Reply:
        """One infer request from its body and (lower-case) headers to the answer's bytes."""
        body = codec.decompress(body, headers.get("content-encoding", ""), self.max_input_size)
        doc, blobs = codec.split_body(body, headers.get(codec.HEADER_LENGTH))
        if doc is None:
            spec, batched = self.dp.single_input(name, version)
            decoded = codec.decode_raw_request(blobs, name, version, spec, batched)
        else:
            decoded = codec.decode_request(doc, blobs, name, version)
        decoded.request.client_gone = client_gone
        decoded.request.received_ns = received_ns
        decoded.request.protocol = "http"
        decoded.request.trace = trace
        response = await self.dp.infer(decoded.request)
        payload, header_length = codec.encode_response(response, decoded)
        extra: dict[str, str] = {}
        if header_length is not None:
            extra["Inference-Header-Content-Length"] = str(header_length)
        media = "application/octet-stream" if header_length is not None else "application/json"
        encoding = codec.accepted_encoding(headers.get("accept-encoding", ""))
        if encoding:
            payload = codec.compress(payload, encoding)
            extra["Content-Encoding"] = encoding
        return Reply(payload, media, extra, model_version=response.model_version)

    async def _body(self, request: Request) -> bytes:
        body = await self.read_body(request.receive, request.headers.get("content-length"))
        if body is None:
            raise Cancelled("the client went away while sending the request")
        return body

    async def read_body(self, receive: Receive, declared: str | None) -> bytes | None:
        """The whole request body within --http-max-input-size; None if the client left."""
        if declared is not None and declared.isdigit() and int(declared) > self.max_input_size:
            raise TooLarge(
                f"request body of {declared} bytes exceeds the limit of {self.max_input_size} "
                "bytes (--http-max-input-size)"
            )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_input_size:
                raise TooLarge(
                    f"request body exceeds the limit of {self.max_input_size} bytes "
                    "(--http-max-input-size)"
                )
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _disconnect_probe(receive: Receive) -> Callable[[], bool] | None:
    """A zero-cost check of whether the HTTP client went away, where uvicorn offers one.

    uvicorn marks its request cycle `disconnected` when the connection drops; the batcher
    asks at dequeue, so a request whose client left is dropped without running. A watcher
    task per request would notice sooner but measurably costs the hot path.
    """
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not isinstance(getattr(cycle, "disconnected", None), bool):
        return None
    return lambda: bool(cycle.disconnected)


def _model(request: Request) -> tuple[str, str]:
    version = request.path_params.get("version")
    return request.path_params["name"], "" if version is None else str(version)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "Not Found", 405: "Method Not Allowed"}
    return json_response({"error": messages.get(exc.status_code, exc.detail)}, exc.status_code)


def create_metrics_app(metrics: Metrics) -> Starlette:
    """The Prometheus endpoint, on its own port as Triton serves it."""

    async def scrape(request: Request) -> Response:
        return Response(await metrics.render_async(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[Route("/metrics", scrape, methods=["GET"])],
        exception_handlers={HTTPException: _http_error},
    )


def _infer_target(path: str) -> tuple[str, str] | None:
    """(model, version) for /v2/models/{name}[/versions/{n}]/infer, as the routes match."""
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    parts = path[len("/v2/models/") : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], ""
    if len(parts) == 3 and parts[0] and parts[1] == "versions":
        n = parts[2]
        if n.isascii() and n.isdigit():  # Starlette's int convertor: [0-9]+, leading zeros go
            return parts[0], str(int(n))
    return None


class InferFirst:
    """POST .../infer straight to the handler; every other request to the Starlette app.

    Starlette's routing (a regex per route, in order), its two middlewares and its request
    and response objects took about 37% of the event loop's time per inference in a
    profile under load (one-row requests at concurrency 64), more than Conveyor's own
    decoding, validation and batching together; this is the one route that carries the
    load. Its errors, limits and headers are the route's own: both end in
    HttpApi.infer_body, and the Starlette route still answers other methods and roots.
    """

    def __init__(self, app: Starlette, api: HttpApi, restriction: Restriction | None) -> None:
        self.app = app
        self.api = api
        self.restriction = restriction

    @property
    def routes(self) -> list[Any]:
        return self.app.routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            target = _infer_target(scope["path"])
            if target is not None:
                await self._infer(scope, receive, send, *target)
                return
        await self.app(scope, receive, send)

    async def _infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str
    ) -> None:
        received_ns = time.monotonic_ns()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            check_restriction(self.restriction, headers)
        except PermissionDenied as exc:
            payload = orjson.dumps({"error": exc.message})
            reply: Reply | None = Reply(payload, "application/json", {}, exc.http_status)
        else:
            reply = await self.api.answer_infer(name, version, headers, receive, received_ns)
        if reply is None:
            return  # the client left; nobody to answer
        raw = [
            (b"content-length", b"%d" % len(reply.body)),
            (b"content-type", reply.media_type.encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()),
        ]
        await send({"type": "http.response.start", "status": reply.status, "headers": raw})
        await send({"type": "http.response.body", "body": reply.body})


def create_app(
    dataplane: DataPlane,
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE,
    restrictions: Mapping[str, Restriction] | None = None,
) -> InferFirst:
    """The ASGI application serving the v2 REST API."""
    api = HttpApi(dataplane, max_input_size)
    restricted = dict(restrictions or {})

    def route(path: str, endpoint: Endpoint, api_group: str, method: str = "GET") -> Route:
        return Route(path, guarded(endpoint, restricted.get(api_group)), methods=[method])

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version:int}"
    routes: list[Route] = [
        route("/v2/health/live", api.live, "health"),
        route("/v2/health/ready", api.ready, "health"),
        route("/v2", api.server_metadata, "metadata"),
        route("/v2/models/stats", api.statistics, "statistics"),
        route("/v2/autoscale", api.autoscale, "statistics"),
        route("/v2/repository/index", api.repository_index, "model-repository", "POST"),
        route("/v2/repository/models/{name}/load", api.load, "model-repository", "POST"),
        route("/v2/repository/models/{name}/unload", api.unload, "model-repository", "POST"),
    ]
    for method in ("GET", "POST"):
        routes += [
            route("/v2/trace/setting", api.trace_settings, "trace", method),
            route(model + "/trace/setting", api.trace_settings, "trace", method),
            route("/v2/logging", api.log_settings, "logging", method),
        ]
    for prefix in (model, versioned):
        routes += [
            route(prefix, api.model_metadata, "metadata"),
            route(prefix + "/ready", api.model_ready, "health"),
            route(prefix + "/config", api.model_config, "model-config"),
            route(prefix + "/stats", api.statistics, "statistics"),
            route(prefix + "/drift", api.drift, "statistics"),
            route(prefix + "/infer", api.infer, "inference", "POST"),
        ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return InferFirst(app, api, restricted.get("inference"))
