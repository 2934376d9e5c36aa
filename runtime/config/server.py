"""The server's settings, each declared once together with the `conveyor serve` flag(s) it takes.

runtime/cli.py builds the serve command from these declarations; flag names follow tritonserver's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from runtime.access import Restriction
from runtime.monitoring.tracing import trace_spec

if TYPE_CHECKING:
    from runtime.monitoring.autoscale import AutoscalePolicy

DEFAULT_MAX_INPUT_SIZE = 64 * 1024 * 1024  # Triton's --http-max-input-size

# The key under which a setting's field metadata holds its flags.
FLAGS = "conveyor.flags"
# The default of a flag declared without one: the default of the setting it fills.
SETTING_DEFAULT: Final[Any] = object()


GRPC_FRONTENDS = ("native", "aio")


def default_grpc_frontend() -> str:
    """The gRPC front end when --grpc-frontend is not given: $CONVEYOR_GRPC_FRONTEND or native."""
    value = os.environ.get("CONVEYOR_GRPC_FRONTEND", "native")
    return value if value in GRPC_FRONTENDS else "native"


def parse_bool(text: str) -> bool:
    """A flag's true/false value, in the spellings tritonserver accepts."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def positive_float(text: str) -> float:
    """A flag's number above 0: an interval, which 0 or less would make meaningless."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    """A flag's count of 0 or more: a limit, where 0 means none."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of 0 or more, got '{text}'")
    return value


# gRPC's channel arguments are C ints.
GRPC_INT_MAX = 2**31 - 1


def grpc_int(text: str) -> int:
    """A gRPC connection setting, milliseconds or a count: 0 to 2**31 - 1 (a C int)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= GRPC_INT_MAX:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {GRPC_INT_MAX}, got '{text}'"
        )
    return value


@dataclass(frozen=True, slots=True)
class Flag:
    """One `conveyor serve` flag: its names (aliases after the first), help and how it parses.

    Without its own `default`, the flag's default is the default of the setting it fills.
    """

    names: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    repeatable: bool = False
    metavar: str | None = None
    default: Any = SETTING_DEFAULT
    # The value of the flag given alone (`--log-requests` = `--log-requests true`).
    const: Any = None

    @property
    def dest(self) -> str:
        """The attribute argparse stores the value under: the first name, as argparse derives it."""
        return self.names[0].removeprefix("--").replace("-", "_")

    def options(self) -> dict[str, Any]:
        """The keyword arguments of argparse's `add_argument` for this flag."""
        options: dict[str, Any] = {"help": self.help}
        if self.repeatable:
            options["action"] = "append"
        if self.type is not None:
            options["type"] = self.type
        if self.choices is not None:
            options["choices"] = list(self.choices)
        if self.metavar is not None:
            options["metavar"] = self.metavar
        if self.const is not None:
            options["nargs"] = "?"
            options["const"] = self.const
        if self.default is SETTING_DEFAULT:
            raise TypeError(f"flag {self.names[0]} has no default; see setting_flags()")
        if self.default is not None:
            # A list of its own per parser: argparse hands the default itself to the caller.
            options["default"] = list(self.default) if self.repeatable else self.default
        return options


def flag(
    *names: str,
    help: str,
    type: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    repeatable: bool = False,
    metavar: str | None = None,
    default: Any = SETTING_DEFAULT,
    const: Any = None,
) -> dict[str, tuple[Flag, ...]]:
    """Field metadata: the one flag that fills a setting."""
    return flags(Flag(names, help, type, choices, repeatable, metavar, default, const))


def flags(*declared: Flag) -> dict[str, tuple[Flag, ...]]:
    """Field metadata: the flags that fill one setting together (the CLI combines them)."""
    return {FLAGS: declared}


def _autoscale_policy() -> AutoscalePolicy:
    # Imported on use: runtime.monitoring.autoscale imports the batcher, which imports this
    # package, so importing it at the top would be circular (and put config above batching).
    from runtime.monitoring.autoscale import AutoscalePolicy

    return AutoscalePolicy()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `conveyor serve` can set; each setting's help is its flag's help text.

    Fields are in the order `conveyor serve --help` lists their flags.
    """

    # Required here; only the command line falls back to the bundled example repository.
    model_repositories: list[Path] = field(
        metadata=flag(
            "--model-repository",
            "--model-store",
            repeatable=True,
            type=Path,
            default=None,
            help="model repository folder (repeatable); default: the bundled example repository",
        )
    )
    host: str = field(
        default="0.0.0.0", metadata=flag("--host", help="address to listen on (default 0.0.0.0)")
    )
    http_port: int = field(
        default=8000,
        metadata=flag("--http-port", type=int, help="HTTP port, 0 = any (default 8000)"),
    )
    grpc_port: int = field(
        default=8001,
        metadata=flag("--grpc-port", type=int, help="gRPC port, 0 = any (default 8001)"),
    )
    metrics_port: int = field(
        default=8002,
        metadata=flag("--metrics-port", type=int, help="Prometheus metrics port (default 8002)"),
    )
    allow_http: bool = field(
        default=True,
        metadata=flag("--allow-http", type=parse_bool, help="serve HTTP (default true)"),
    )
    allow_grpc: bool = field(
        default=True,
        metadata=flag("--allow-grpc", type=parse_bool, help="serve gRPC (default true)"),
    )
    # Native by default: gRPC's C++ server, built by make install (native/); grpc.aio where
    # it is not built, with a warning. CONVEYOR_GRPC_FRONTEND sets the default, for a
    # container or a test run of the gRPC tests against grpc.aio.
    grpc_frontend: str = field(
        default_factory=default_grpc_frontend,
        metadata=flag(
            "--grpc-frontend",
            choices=GRPC_FRONTENDS,
            default=default_grpc_frontend(),
            help="native: gRPC C++ (the conveyor-grpc-native extension; grpc.aio with a "
            "warning where it is not installed); aio: grpc.aio (default: "
            "$CONVEYOR_GRPC_FRONTEND, else native)",
        ),
    )
    allow_metrics: bool = field(
        default=True,
        metadata=flag(
            "--allow-metrics", type=parse_bool, help="serve Prometheus metrics (default true)"
        ),
    )
    # Triton's nv_gpu_* families, read through NVML; absent without nvidia-ml-py or a GPU.
    allow_gpu_metrics: bool = field(
        default=True,
        metadata=flag(
            "--allow-gpu-metrics",
            type=parse_bool,
            help="export Triton's nv_gpu_* metrics when NVML (nvidia-ml-py) finds GPUs "
            "(default true)",
        ),
    )
    allow_cpu_metrics: bool = field(
        default=True,
        metadata=flag(
            "--allow-cpu-metrics",
            type=parse_bool,
            help="export Triton's nv_cpu_* metrics, the host's CPU utilization and memory "
            "from /proc (default true)",
        ),
    )
    model_control_mode: str = field(
        default="none",
        metadata=flag(
            "--model-control-mode",
            choices=("none", "explicit", "poll"),
            help="none: load everything at start; explicit: load/unload through the API; "
            "poll: load everything at start, then follow changes to the repository",
        ),
    )
    repository_poll_s: float = field(
        default=15.0,
        metadata=flag(
            "--repository-poll-secs",
            type=positive_float,
            help="with poll model control: seconds between scans of the repository (default 15)",
        ),
    )
    load_models: list[str] = field(
        default_factory=list,
        metadata=flag(
            "--load-model",
            repeatable=True,
            default=(),
            help="with explicit model control: a model to load at start ('*' = all)",
        ),
    )
    http_max_input_size: int = field(
        default=DEFAULT_MAX_INPUT_SIZE,
        metadata=flag(
            "--http-max-input-size",
            type=int,
            help="largest accepted HTTP request body in bytes (default 64 MiB)",
        ),
    )
    # Bounds at the door, each for a resource a client can hold without sending work: a
    # connection and its buffers (HTTP), an RPC in flight (gRPC). Sizing: README, Reliability.
    http_body_timeout_s: float = field(
        default=30.0,
        metadata=flag(
            "--http-body-timeout-secs",
            type=positive_float,
            help="seconds a request's headers, and then its body, may take to arrive; a "
            "slower request is answered 408 and its connection closed (default 30)",
        ),
    )
    http_max_connections: int = field(
        default=512,
        metadata=flag(
            "--http-max-connections",
            type=non_negative_int,
            help="open HTTP connections served at once; while more are open, requests are "
            "answered 503 at once and their connections closed (default 512; 0 = no limit)",
        ),
    )
    grpc_max_concurrent_rpcs: int = field(
        default=512,
        metadata=flag(
            "--grpc-max-concurrent-rpcs",
            type=non_negative_int,
            help="gRPC calls in flight at once (a stream counts as one); beyond it calls are "
            "answered RESOURCE_EXHAUSTED at once (default 512; 0 = no limit)",
        ),
    )
    # gRPC connection management, with tritonserver's flags, units (ms) and defaults, which
    # are gRPC's own. Keepalive: the server pings each connection after --grpc-keepalive-time
    # without activity and closes it when no answer comes within --grpc-keepalive-timeout.
    # Ping policing: a client's pings closer than the minimum interval, with no data sent
    # meanwhile, are strikes; past the strikes the connection gets GOAWAY (too_many_pings).
    # Connection age: each connection is sent GOAWAY after --grpc-max-connection-age, so
    # that long-lived clients spread over replicas added since they connected; calls in
    # flight get the grace to finish.
    grpc_keepalive_time_ms: int = field(
        default=7_200_000,
        metadata=flag(
            "--grpc-keepalive-time",
            type=grpc_int,
            help="milliseconds without activity after which the server pings a connection "
            "(default 7200000, 2 hours)",
        ),
    )
    grpc_keepalive_timeout_ms: int = field(
        default=20_000,
        metadata=flag(
            "--grpc-keepalive-timeout",
            type=grpc_int,
            help="milliseconds the server waits for a keepalive ping's answer before it "
            "closes the connection (default 20000)",
        ),
    )
    grpc_keepalive_permit_without_calls: bool = field(
        default=False,
        metadata=flag(
            "--grpc-keepalive-permit-without-calls",
            type=parse_bool,
            help="keepalive pings, both ways, also on connections with no call in flight "
            "(default false)",
        ),
    )
    grpc_http2_max_pings_without_data: int = field(
        default=2,
        metadata=flag(
            "--grpc-http2-max-pings-without-data",
            type=grpc_int,
            help="pings that may be sent with no data frame between them (0 = no limit; default 2)",
        ),
    )
    grpc_http2_min_recv_ping_interval_without_data_ms: int = field(
        default=300_000,
        metadata=flag(
            "--grpc-http2-min-recv-ping-interval-without-data",
            type=grpc_int,
            help="while the server sends no data: the least milliseconds expected between a "
            "client's pings; a closer one is a strike (default 300000)",
        ),
    )
    grpc_http2_max_ping_strikes: int = field(
        default=2,
        metadata=flag(
            "--grpc-http2-max-ping-strikes",
            type=grpc_int,
            help="strikes a connection may take before it is sent GOAWAY and closed (0 = no "
            "limit; default 2)",
        ),
    )
    grpc_max_connection_age_ms: int | None = field(
        default=None,
        metadata=flag(
            "--grpc-max-connection-age",
            type=grpc_int,
            help="milliseconds after which a connection is sent GOAWAY, so that clients "
            "reconnect, possibly to another replica (default: no limit)",
        ),
    )
    grpc_max_connection_age_grace_ms: int | None = field(
        default=None,
        metadata=flag(
            "--grpc-max-connection-age-grace",
            type=grpc_int,
            help="milliseconds a connection past its age keeps for the calls in flight "
            "before it is closed (default: no limit)",
        ),
    )
    exit_timeout_s: float = field(
        default=30.0,
        metadata=flag(
            "--exit-timeout-secs",
            type=float,
            help="grace period to finish accepted requests on shutdown (default 30)",
        ),
    )
    device: str = field(
        default="auto",
        metadata=flag(
            "--device",
            choices=("auto", "cpu", "gpu"),
            help="auto: follow each model's instance_group; cpu/gpu: force it",
        ),
    )
    # TLS: HTTPS with a certificate and key; gRPC with Triton's flags (mutual: clients
    # must present a certificate signed by grpc_root_cert).
    http_ssl_certfile: Path | None = field(
        default=None,
        metadata=flag(
            "--http-ssl-certfile", type=Path, help="serve HTTPS with this certificate (PEM)"
        ),
    )
    http_ssl_keyfile: Path | None = field(
        default=None,
        metadata=flag("--http-ssl-keyfile", type=Path, help="the HTTPS certificate's key (PEM)"),
    )
    grpc_use_ssl: bool = field(
        default=False,
        metadata=flag("--grpc-use-ssl", type=parse_bool, help="serve gRPC over TLS"),
    )
    grpc_use_ssl_mutual: bool = field(
        default=False,
        metadata=flag(
            "--grpc-use-ssl-mutual",
            type=parse_bool,
            help="gRPC over TLS, clients must present a certificate signed by --grpc-root-cert",
        ),
    )
    grpc_server_cert: Path | None = field(
        default=None,
        metadata=flag("--grpc-server-cert", type=Path, help="gRPC server certificate (PEM)"),
    )
    grpc_server_key: Path | None = field(
        default=None,
        metadata=flag("--grpc-server-key", type=Path, help="gRPC server key (PEM)"),
    )
    grpc_root_cert: Path | None = field(
        default=None,
        metadata=flag(
            "--grpc-root-cert", type=Path, help="root certificate for client certificates"
        ),
    )
    # The flags take Triton's specs (runtime.access.parse_restrictions); the settings hold
    # what they parse to, by API group.
    http_restrictions: dict[str, Restriction] = field(
        default_factory=dict,
        metadata=flag(
            "--http-restricted-api",
            repeatable=True,
            default=(),
            metavar="API[,API...]:KEY=VALUE",
            help="require header KEY=VALUE for these APIs over HTTP (e.g. model-repository:k=v)",
        ),
    )
    grpc_restrictions: dict[str, Restriction] = field(
        default_factory=dict,
        metadata=flag(
            "--grpc-restricted-protocol",
            repeatable=True,
            default=(),
            metavar="API[,API...]:KEY=VALUE",
            help="require metadata KEY=VALUE for these APIs over gRPC",
        ),
    )
    # Tracing and logs (runtime/monitoring/tracing.py, runtime/logs.py). The trace specs are
    # Triton's; each is checked as it is parsed, and together as the server starts.
    trace_config: list[str] = field(
        default_factory=list,
        metadata=flag(
            "--trace-config",
            repeatable=True,
            default=(),
            type=trace_spec,
            metavar="[opentelemetry,]SETTING=VALUE",
            help="tracing with OpenTelemetry (the `trace` extra), Triton's settings: level="
            "TIMESTAMPS|OFF, rate=N (1 in N requests), count=N (-1: no limit), mode="
            "opentelemetry; opentelemetry,url=http://HOST:PORT/v1/traces, "
            "opentelemetry,resource=KEY=VALUE, opentelemetry,bsp_schedule_delay=MS, "
            "opentelemetry,bsp_max_queue_size=N, opentelemetry,bsp_max_export_batch_size=N "
            "(repeatable)",
        ),
    )
    log_format: str = field(
        default="default",
        metadata=flag(
            "--log-format",
            choices=("default", "ISO8601", "json"),
            help="log lines: default, ISO8601 (UTC times) or json (one object a line, with "
            "request id, model, version, status, duration and trace id where they apply)",
        ),
    )
    log_requests: bool = field(
        default=False,
        metadata=flag(
            "--log-requests",
            type=parse_bool,
            const=True,
            help="an access log line per inference request (default false)",
        ),
    )
    # Requests one model version queues when its config sets no max_queue_size. Triton
    # leaves that unbounded; a bound turns overload into fast 503s instead of memory growth.
    default_max_queue_size: int = field(
        default=4096,
        metadata=flag(
            "--default-max-queue-size",
            type=int,
            help="requests a model queues when its config sets no max_queue_size; beyond it "
            "requests are refused at once with 503 (default 4096; 0 = unbounded, as Triton)",
        ),
    )
    # Drift monitor settings every model starts from (a model's conveyor.yaml overrides):
    # DriftSettings field names, only those whose flag was given.
    drift_defaults: dict[str, Any] = field(
        default_factory=dict,
        metadata=flags(
            Flag(
                ("--drift-window-samples",),
                "rows per drift window for every model with a drift reference "
                "(default 1000; a model's conveyor.yaml overrides)",
                type=int,
                default=None,
            ),
            Flag(
                ("--drift-window-seconds",),
                "a drift window also closes this many seconds after its first row (default 60)",
                type=float,
                default=None,
            ),
        ),
    )
    # The flag gives the latency target in ms; the policy holds seconds.
    autoscale: AutoscalePolicy = field(
        default_factory=_autoscale_policy,
        metadata=flags(
            Flag(
                ("--autoscale-window-secs",),
                "window of the autoscaling signals in seconds (default 10)",
                type=float,
                default=10.0,
            ),
            Flag(
                ("--autoscale-latency-target-ms",),
                "latency target behind conveyor_desired_replicas, in ms (default 100)",
                type=float,
                default=100.0,
            ),
        ),
    )


def setting_flags() -> dict[str, tuple[Flag, ...]]:
    """Each ServerConfig setting's flags, in declaration order, with their defaults resolved."""
    result: dict[str, tuple[Flag, ...]] = {}
    for f in dataclasses.fields(ServerConfig):
        declared: tuple[Flag, ...] = f.metadata[FLAGS]
        result[f.name] = tuple(_with_default(d, f) for d in declared)
    return result


def _with_default(declared: Flag, setting: dataclasses.Field[Any]) -> Flag:
    if declared.default is not SETTING_DEFAULT:
        return declared
    if setting.default is not dataclasses.MISSING:
        return dataclasses.replace(declared, default=setting.default)
    raise TypeError(f"flag {declared.names[0]} needs a default: its setting has none")
