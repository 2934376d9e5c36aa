"""Wiring: one event loop serving HTTP (uvicorn) and gRPC (grpc.aio) over one DataPlane.

The server owns the signals: SIGTERM or SIGINT turns readiness off at once, stops the
listeners, lets accepted requests finish, drains the batchers, then returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import uvicorn
from starlette.types import ASGIApp

from runtime.config import ServerConfig as ServerConfig  # re-exported: Server's own config
from runtime.dataplane import DataPlane
from runtime.loader import InstanceSettings
from runtime.logs import CallLog, LogSettings
from runtime.monitoring.metrics import Metrics
from runtime.monitoring.tracing import TraceConfig, Tracing
from runtime.poller import RepositoryPoller
from runtime.protocol.grpc.servicer import SERVER_OPTIONS, add_to_server, connection_options
from runtime.protocol.grpc_native import frontend as grpc_native
from runtime.protocol.http.app import create_app, create_metrics_app
from runtime.protocol.http.connection import http_protocol, limit_concurrency
from runtime.registry import Registry, Served

log = logging.getLogger("runtime.server")

# How often drift windows are checked for their time limit and judged.
DRIFT_TICK_S = 1.0
# After SIGTERM the server answers requests (refusing them: not ready) until none has
# arrived for this long, then stops listening; at most half of --exit-timeout-secs.
QUIET_S = 0.25


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the Conveyor server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _display_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class Server:
    """An embeddable server: `await start()`, `await stop()`, or `await serve()` for both."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = (
            Metrics(self._served, config.allow_gpu_metrics, config.allow_cpu_metrics)
            if config.allow_metrics
            else None
        )
        settings = InstanceSettings(
            device=config.device,
            default_max_queue_size=config.default_max_queue_size,
            autoscale=config.autoscale,
            drift_defaults=config.drift_defaults,
            monitors=(self.metrics.subscriber,) if self.metrics is not None else (),
        )
        self.registry = Registry(config.model_repositories, settings)
        tracing = Tracing(TraceConfig.parse(config.trace_config))
        self.dataplane = DataPlane(
            self.registry,
            config.model_control_mode,
            calls=CallLog(tracing, access=config.log_requests),
            logs=LogSettings.from_root(config.log_format),
        )
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self.metrics_port: int | None = None
        self._uvicorns: list[tuple[_UvicornServer, asyncio.Task[None]]] = []
        self._grpc: grpc.aio.Server | None = None
        self._native_grpc: grpc_native.NativeFrontend | None = None
        self._stop = asyncio.Event()
        self._poller: RepositoryPoller | None = None
        self._drift_ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen first (live, not ready), load the models, then report ready."""
        if self.config.allow_http:
            await self._start_http()
        if self.config.allow_grpc:
            await self._start_grpc()
        if self.metrics is not None:
            await self._start_metrics(self.metrics)
        await self._load_models()
        if self.config.model_control_mode == "poll":
            self._poller = RepositoryPoller(self.registry, self.config.repository_poll_s)
            self._poller.start()
        self._drift_ticker = asyncio.create_task(self._tick_drift())
        self.dataplane.ready = True
        log.info("server is ready")

    def _served(self) -> Iterator[Served]:
        """The versions being served now (what a metrics scrape reads)."""
        return iter(list(self.registry.models()))

    async def _tick_drift(self) -> None:
        """Close timed-out drift windows and judge closed ones, off the batches' path."""
        while True:
            await asyncio.sleep(DRIFT_TICK_S)
            for monitor in [m.drift for m in self.registry.models() if m.drift is not None]:
                try:
                    monitor.tick()
                except Exception:
                    log.exception("drift monitor of %s failed", monitor.model_name)

    async def _start_http(self) -> None:
        app = create_app(
            self.dataplane, self.config.http_max_input_size, self.config.http_restrictions
        )
        tls = (self.config.http_ssl_certfile, self.config.http_ssl_keyfile)
        self.http_port = await self._serve_asgi(
            app, self.config.http_port, "HTTPService", tls, self.config.http_max_connections
        )

    async def _start_metrics(self, metrics: Metrics) -> None:
        app = create_metrics_app(metrics)
        self.metrics_port = await self._serve_asgi(app, self.config.metrics_port, "Metrics Service")

    async def _serve_asgi(
        self,
        app: ASGIApp,
        port: int,
        name: str,
        tls: tuple[Path | None, Path | None] = (None, None),
        max_connections: int = 0,
    ) -> int:
        """Bind first (port 0 picks one), then run uvicorn on the socket in this loop.

        Each request must arrive within --http-body-timeout-secs; with `max_connections`,
        uvicorn answers 503 at once while more connections are open.
        """
        sock = _bind(self.config.host, port)
        bound: int = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            app,
            loop="none",
            http=http_protocol(self.config.http_body_timeout_s, max_connections),
            limit_concurrency=limit_concurrency(max_connections),
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=max(1, round(self.config.exit_timeout_s)),
            timeout_keep_alive=30,
            ssl_certfile=str(tls[0]) if tls[0] else None,
            ssl_keyfile=str(tls[1]) if tls[1] else None,
        )
        server = _UvicornServer(uv_config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self._uvicorns.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"{name} stopped during startup")
            await asyncio.sleep(0.01)
        log.info("Started %s at %s:%d", name, _display_host(self.config.host), bound)
        return bound

    async def _start_grpc(self) -> None:
        if self.config.grpc_frontend == "native":
            self._native_grpc = grpc_native.load(self.dataplane, self.config)
        if self._native_grpc is not None:
            address = f"{_display_host(self.config.host)}:{self.config.grpc_port}"
            self.grpc_port = await self._native_grpc.start(address)
            log.info(
                "Started GRPCInferenceService at %s:%d (native)",
                _display_host(self.config.host),
                self.grpc_port,
            )
            return
        self._grpc = grpc.aio.server(
            options=SERVER_OPTIONS + connection_options(self.config),
            # grpc.aio answers calls past it RESOURCE_EXHAUSTED at once, before any handler.
            maximum_concurrent_rpcs=self.config.grpc_max_concurrent_rpcs or None,
        )
        add_to_server(self._grpc, self.dataplane, self.config.grpc_restrictions)
        address = f"{_display_host(self.config.host)}:{self.config.grpc_port}"
        if self.config.grpc_use_ssl or self.config.grpc_use_ssl_mutual:
            self.grpc_port = self._grpc.add_secure_port(address, self._grpc_credentials())
        else:
            self.grpc_port = self._grpc.add_insecure_port(address)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {address}")
        await self._grpc.start()
        log.info(
            "Started GRPCInferenceService at %s:%d",
            _display_host(self.config.host),
            self.grpc_port,
        )

    def _grpc_credentials(self) -> grpc.ServerCredentials:
        c = self.config
        if c.grpc_server_cert is None or c.grpc_server_key is None:
            raise ValueError("--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key")
        if c.grpc_use_ssl_mutual and c.grpc_root_cert is None:
            raise ValueError("--grpc-use-ssl-mutual needs --grpc-root-cert")
        root = c.grpc_root_cert.read_bytes() if c.grpc_root_cert is not None else None
        return grpc.ssl_server_credentials(
            [(c.grpc_server_key.read_bytes(), c.grpc_server_cert.read_bytes())],
            root_certificates=root,
            require_client_auth=c.grpc_use_ssl_mutual,
        )

    async def _load_models(self) -> None:
        available = self.registry.repository_models()
        if self.config.model_control_mode == "explicit":
            names = list(available) if "*" in self.config.load_models else self.config.load_models
        else:
            names = list(available)
        await asyncio.gather(*(self.registry.load(name) for name in names))
        for row in self.registry.index(available):
            log.info(
                "model %s version %s: %s %s",
                row["name"],
                row.get("version", "-"),
                row.get("state", "not loaded"),
                row.get("reason", ""),
            )

    def request_stop(self) -> None:
        """Begin a graceful stop (what SIGTERM does)."""
        self.dataplane.ready = False
        self._stop.set()

    async def stop(self) -> None:
        """Refuse new work, finish what was accepted, close the models."""
        self.dataplane.ready = False
        deadline = time.monotonic() + self.config.exit_timeout_s
        self.registry.hurry()
        await self._settle(deadline - self.config.exit_timeout_s / 2)
        grace = max(deadline - time.monotonic(), 0.0)
        waits = []
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace))
        if self._native_grpc is not None:
            waits.append(self._native_grpc.stop(grace))
        for server, task in self._uvicorns:
            # uvicorn reads its grace as it begins to stop: what the exit timeout has left.
            server.config.timeout_graceful_shutdown = max(1, round(grace))
            server.should_exit = True
            waits.append(task)
        if self._poller is not None:
            waits.append(self._poller.stop())
        await asyncio.gather(*waits, return_exceptions=True)
        if self._drift_ticker is not None:
            self._drift_ticker.cancel()
        await self.registry.close()
        # Spans still queued go out within what the exit timeout has left (at most 5 s).
        flush_s = min(5.0, max(deadline - time.monotonic(), 1.0))
        await asyncio.to_thread(self.dataplane.tracing.close, flush_s)
        self.dataplane.live = False
        log.info("server stopped")

    async def _settle(self, until: float) -> None:
        """Wait until no request has arrived for QUIET_S (or until `until`, monotonic).

        Stopping grpc.aio drops the calls grpc core has taken but not yet handed to the
        servicer (their clients see CANCELLED), and closing a listener resets the
        connections in its backlog; while requests still arrive, each is answered instead.
        """
        while True:
            now = time.monotonic()
            quiet_at = self.dataplane.last_request_s + QUIET_S
            if now >= quiet_at or now >= until:
                return
            await asyncio.sleep(min(quiet_at, until) - now)

    async def serve(self) -> None:
        """Run until SIGTERM or SIGINT, then stop gracefully; own the process's log output."""
        self.dataplane.logs.install()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            await self.start()
            await self._stop.wait()
            log.info("stopping: draining accepted requests")
        finally:
            await self.stop()
