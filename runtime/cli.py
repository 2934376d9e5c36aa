"""The `conveyor` command: parse flags, build a ServerConfig, run the Server. Nothing else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime import __version__, logs
from runtime.access import Restriction, parse_restrictions
from runtime.config import ServerConfig
from runtime.config.server import positive_float, setting_flags


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    for flags in setting_flags().values():
        for flag in flags:
            p.add_argument(*flag.names, **flag.options())
    # Settings of this process, not of the server: _serve applies them itself, and --help
    # lists them after the server's.
    p.add_argument(
        "--gil-switch-interval-ms",
        type=positive_float,
        default=None,
        help="how long a thread may hold the GIL while another waits (Python's default: 5). "
        "Lower (0.5-1) shortens the wait of batches finishing in worker threads while the "
        "event loop is busy: better tails for heavy models, less gRPC throughput for tiny ones",
    )
    p.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop" if sys.platform != "win32" else "asyncio",
        help="event loop implementation (default uvloop)",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="measure latency and throughput of a KServe v2 server")
    p.add_argument("--url", required=True, help="HOST:PORT of the server (HTTP or gRPC port)")
    p.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", default="", help="closed-loop steps, e.g. 1,8,32")
    p.add_argument("--request-rate", default="", help="open-loop steps in req/s, e.g. 500,1000")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per step")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    p.add_argument("--batch-size", type=int, default=1, help="rows per request")
    p.add_argument("--input-data", type=Path, help="perf_analyzer-style JSON input file")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="write a latency-throughput plot (PNG) here")


def _numbers(text: str, kind: type) -> list[Any]:
    return [kind(x) for x in text.split(",") if x.strip()]


def _bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from runtime.loadtest import bench, report

    target = bench.Target.parse(args.url, args.protocol, args.model)
    concurrency = _numbers(args.concurrency, int)
    rates = _numbers(args.request_rate, float)
    if not concurrency and not rates:
        concurrency = [1, 8, 32]
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("benchmarking", total=len(concurrency) + len(rates))
            rows = asyncio.run(
                bench.sweep(
                    target, concurrency, rates, args.duration, args.warmup, args.batch_size,
                    args.input_data, lambda: progress.advance(task),
                )
            )  # fmt: skip
    except Exception as exc:  # unreachable server, unknown model, bad input file
        print(f"conveyor bench: {target.model} at {target.url}: {exc}", file=sys.stderr)
        return 1
    console = Console(width=160)
    console.print(report.table(target, rows))
    if args.json:
        report.write_json(args.json, target, rows)
        console.print(f"wrote {args.json}")
    if args.plot:
        report.plot(args.plot, target, rows)
        console.print(f"wrote {args.plot}")
    return 0


def _add_train(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train", help="train a model, export it to ONNX and publish it into a model repository"
    )
    p.add_argument(
        "recipe",
        nargs="?",
        choices=["digits", "tabular"],
        help="a bundled dataset (tabular: breast cancer); or train on a file with --data",
    )
    p.add_argument(
        "--repository",
        type=Path,
        help="model repository to publish into; default: the bundled example repository",
    )
    p.add_argument(
        "--model-name",
        "--name",
        dest="model_name",
        help="model folder name (default: digits / breast_cancer; required with --data)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    p.add_argument(
        "--epochs",
        type=_positive,
        help="epochs (default: the recipe's; with --data, enough to show about a million rows)",
    )
    p.add_argument("--fast", action="store_true", help="few epochs, for smoke runs and tests")
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="do nothing when the model already has a version in the repository",
    )
    # Light: pyarrow and torch load only when a run on a data file starts.
    from runtime.training import command

    command.add_arguments(p)


def _train(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from rich.console import Console

    # Light: runtime.training loads torch and scikit-learn only when a run starts.
    from runtime import training
    from runtime.examples import default_repository
    from runtime.training import command

    misused = command.misused(args)
    if misused:
        print(f"conveyor train: {misused}", file=sys.stderr)
        return 2
    if args.data is not None:
        return command.run(args, argv)
    recipe = training.RECIPES[args.recipe]
    repository = args.repository or default_repository()
    name = args.model_name or recipe.model_name
    console = Console(stderr=True)
    if args.if_missing and training.has_version(repository / name):
        console.print(f"conveyor train: {name} already has a version in {repository}")
        return 0
    try:
        record = training.run(
            recipe, repository, model_name=name, seed=args.seed, fast=args.fast,
            epochs=args.epochs, console=console,
        )  # fmt: skip
    except training.TrainingError as exc:
        console.print(f"conveyor train: {exc}", markup=False)
        return 1
    Console().print(training.summary(record))
    return 0


def _add_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Light: scikit-learn and skl2onnx load only when a source needs them.
    from runtime.publish import command

    command.add_parser(sub)


def _publish(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from runtime.publish import command

    return command.run(args, argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _restrictions(specs: list[str]) -> dict[str, Restriction]:
    try:
        return parse_restrictions(specs)
    except ValueError as exc:
        raise SystemExit(f"conveyor: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    parser.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_bench(sub)
    _add_train(sub)
    _add_publish(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from runtime.server import Server

    config = server_config(args)
    if args.gil_switch_interval_ms is not None:
        sys.setswitchinterval(args.gil_switch_interval_ms / 1000)
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(Server(config).serve())
    else:
        asyncio.run(Server(config).serve())
    return 0


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig that parsed `conveyor serve` flags describe."""
    from runtime.examples import default_repository
    from runtime.monitoring.autoscale import AutoscalePolicy

    # The settings that are not one flag's value as parsed, each for its reason:
    computed: dict[str, Any] = {
        # The example repository is built on first use, so only when none is given; as the
        # flag's default it would be built by every parse.
        "model_repositories": args.model_repository or [default_repository()],
        # Parsed as a whole: one API group named by two specs is an error.
        "http_restrictions": _restrictions(args.http_restricted_api),
        "grpc_restrictions": _restrictions(args.grpc_restricted_protocol),
        # Two flags; only those given, checked now so a bad value stops the start.
        "drift_defaults": _drift_defaults(args),
        # Two flags fill one policy; its latency target is in seconds, the flag's in ms.
        "autoscale": AutoscalePolicy(
            window_s=args.autoscale_window_secs,
            latency_target_s=args.autoscale_latency_target_ms / 1000,
        ),
    }
    # Every other setting is its one flag's value.
    copied: dict[str, Any] = {}
    for name, flags in setting_flags().items():
        if name not in computed:
            (flag,) = flags  # a setting that several flags fill needs its own step above
            copied[name] = getattr(args, flag.dest)
    return ServerConfig(**copied, **computed)


def _drift_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The drift flags given, checked now so a bad value stops the start with its reason."""
    from runtime.monitoring.drift import DriftSettings

    given = {
        "window_samples": args.drift_window_samples,
        "window_seconds": args.drift_window_seconds,
    }
    defaults = {k: v for k, v in given.items() if v is not None}
    try:
        DriftSettings.from_mapping(defaults)
    except ValueError as exc:
        raise SystemExit(f"conveyor serve: {exc}") from None
    return defaults


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "warning").upper(), logging.INFO),
        stream=sys.stderr,
    )
    # In the serve command's --log-format from the first line on; the server takes the
    # handlers over as it starts serving (runtime/logs.py).
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logs.formatter(getattr(args, "log_format", "default")))
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "train":
        return _train(args, argv)
    if args.command == "publish":
        return _publish(args, argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
