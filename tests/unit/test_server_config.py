"""The server's settings and the `conveyor serve` flags declared with them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.access import Restriction
from runtime.cli import build_parser, server_config
from runtime.config import ServerConfig
from runtime.config.server import setting_flags
from runtime.monitoring.autoscale import AutoscalePolicy
from runtime.protocol.grpc.servicer import connection_options


def parse(*argv: str) -> ServerConfig:
    return server_config(build_parser().parse_args(["serve", "--model-repository", "/m", *argv]))


def test_every_setting_has_a_flag_and_every_flag_one_name() -> None:
    declared = setting_flags()
    assert list(declared) == [f.name for f in dataclasses.fields(ServerConfig)]
    assert all(declared.values())
    names = [name for flags in declared.values() for f in flags for name in f.names]
    assert len(names) == len(set(names))


def test_flag_defaults_are_the_settings_defaults() -> None:
    assert parse() == ServerConfig([Path("/m")])


def test_each_flag_reaches_its_setting() -> None:
    config = parse(
        "--model-store", "/n", "--http-port", "0", "--allow-grpc", "false",
        "--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b",
        "--repository-poll-secs", "2.5", "--grpc-server-cert", "cert.pem",
        "--http-restricted-api", "statistics:K=v", "--drift-window-samples", "300",
        "--autoscale-window-secs", "3", "--autoscale-latency-target-ms", "250",
    )  # fmt: skip
    assert config.model_repositories == [Path("/m"), Path("/n")]
    assert (config.http_port, config.allow_grpc) == (0, False)
    assert (config.model_control_mode, config.load_models) == ("explicit", ["a", "b"])
    assert config.repository_poll_s == 2.5
    assert config.grpc_server_cert == Path("cert.pem")
    assert config.http_restrictions == {"statistics": Restriction("k", "v")}
    assert config.grpc_restrictions == {}
    assert config.drift_defaults == {"window_samples": 300}
    assert config.autoscale == AutoscalePolicy(window_s=3.0, latency_target_s=0.25)


def test_parses_do_not_share_a_repeatable_flag_default() -> None:
    first = parse()
    first.load_models.append("x")
    assert parse().load_models == []


def test_the_settings_are_frozen() -> None:
    config = ServerConfig([Path("/m")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http_port = 1  # type: ignore[misc]


def test_door_limit_flags() -> None:
    config = parse(
        "--http-body-timeout-secs", "1.5", "--http-max-connections", "0",
        "--grpc-max-concurrent-rpcs", "64",
    )  # fmt: skip
    assert config.http_body_timeout_s == 1.5
    assert (config.http_max_connections, config.grpc_max_concurrent_rpcs) == (0, 64)
    for bad in (("--http-max-connections", "-1"), ("--http-body-timeout-secs", "0")):
        with pytest.raises(SystemExit):
            parse(*bad)


def test_grpc_connection_flags_become_grpc_channel_arguments() -> None:
    """tritonserver's keepalive and connection age flags, in its units (ms), as gRPC's args."""
    defaults = dict(connection_options(parse()))
    assert defaults == {
        "grpc.keepalive_time_ms": 7_200_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.http2.ping_timeout_ms": 20_000,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.http2.max_pings_without_data": 2,
        "grpc.http2.min_ping_interval_without_data_ms": 300_000,
        "grpc.http2.max_ping_strikes": 2,
    }  # no connection age unless asked for
    config = parse(
        "--grpc-keepalive-time", "1000", "--grpc-keepalive-timeout", "500",
        "--grpc-keepalive-permit-without-calls", "true",
        "--grpc-http2-max-pings-without-data", "0",
        "--grpc-http2-min-recv-ping-interval-without-data", "10000",
        "--grpc-http2-max-ping-strikes", "5",
        "--grpc-max-connection-age", "60000", "--grpc-max-connection-age-grace", "5000",
    )  # fmt: skip
    assert dict(connection_options(config)) == {
        "grpc.keepalive_time_ms": 1000,
        "grpc.keepalive_timeout_ms": 500,
        "grpc.http2.ping_timeout_ms": 500,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.http2.max_ping_strikes": 5,
        "grpc.max_connection_age_ms": 60_000,
        "grpc.max_connection_age_grace_ms": 5000,
    }


@pytest.mark.parametrize("value", ["-1", "2147483648", "1.5", "soon"])
def test_grpc_connection_flags_refuse_what_grpc_cannot_take(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse("--grpc-max-connection-age", value)
    error = capsys.readouterr().err
    assert "--grpc-max-connection-age" in error
    assert f"expected a whole number from 0 to 2147483647, got '{value}'" in error
