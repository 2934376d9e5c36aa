"""`conveyor train --data`: the flags of a run on the user's own file, its exit status, and what
is printed. Exit status 0 published, 1 a gate stopped the run, 2 bad input; nothing is
published on 1 or 2."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.training.userdata import DataRecord

# Flags that only a run on a data file reads, and the value each has when not given.
DATA_FLAGS = {
    "target": None,
    "task": None,
    "features": None,
    "batch_size": None,
    "min_accuracy": None,
    "min_r2": None,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `train` flags of a run on a data file (the recipe's flags are the CLI's own)."""
    group = p.add_argument_group(
        "training on your own data",
        "conveyor train --data FILE --target COLUMN --repository DIR --name NAME: an MLP on a "
        "CSV (with a header row) or Parquet file, read in batches, published as the next "
        "version of NAME",
    )
    group.add_argument(
        "--data", type=Path, metavar="FILE", help=".csv (.csv.gz) or .parquet file to train on"
    )
    group.add_argument("--target", metavar="COLUMN", help="the column to predict")
    group.add_argument(
        "--task",
        choices=["classification", "regression"],
        help="default: regression for a decimal target, classification for integer, boolean "
        "or string labels",
    )
    group.add_argument(
        "--features",
        metavar="COL,...",
        help="comma-separated feature columns (default: every column but the target)",
    )
    group.add_argument(
        "--batch-size", type=int, metavar="N", help="rows per training step (default 256)"
    )
    group.add_argument(
        "--min-accuracy",
        type=float,
        metavar="SHARE",
        help="classification gate: test accuracy floor (default: beat the most frequent class)",
    )
    group.add_argument(
        "--min-r2",
        type=float,
        metavar="R2",
        help="regression gate: test R^2 floor (default: above 0)",
    )


def misused(args: argparse.Namespace) -> str:
    """Why the flags do not make one run (empty when they do)."""
    given = [f"--{k.replace('_', '-')}" for k, v in DATA_FLAGS.items() if getattr(args, k) != v]
    if args.data is None:
        if args.recipe is None:
            return "name a recipe (digits, tabular) or a data file (--data FILE --target COLUMN)"
        return f"{', '.join(given)} only apply with --data" if given else ""
    if args.recipe is not None:
        return f"give either the recipe '{args.recipe}' or --data, not both"
    needed = {"--target": args.target, "--repository": args.repository, "--name": args.model_name}
    missing = [flag for flag, value in needed.items() if value is None]
    if missing:
        return f"--data needs {', '.join(missing)}"
    return "--fast only applies to the digits and tabular recipes" if args.fast else ""


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> int:
    """Train on args.data and publish; 0 published, 1 a failed gate, 2 bad input."""
    from runtime import training
    from runtime.publish.errors import PublishStopped
    from runtime.training import userdata

    if args.if_missing and training.has_version(args.repository / args.model_name):
        print(f"conveyor train: {args.model_name} already has a version in {args.repository}")
        return 0
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        record = userdata.train_data(
            args.data, args.target, repository=args.repository, name=args.model_name,
            task=args.task, features=_columns(args.features), seed=args.seed, epochs=args.epochs,
            batch_size=args.batch_size or userdata.DEFAULT_BATCH_SIZE,
            min_accuracy=args.min_accuracy, min_r2=args.min_r2,
            command=shlex.join(["conveyor", *words]), say=_say,
        )  # fmt: skip
    except (PublishStopped, training.TrainingError) as exc:
        print(f"conveyor train: {exc}", file=sys.stderr)
        print("conveyor train: nothing was published", file=sys.stderr)
        return exc.exit_code if isinstance(exc, PublishStopped) else 1
    print(summary(record))
    return 0


def _columns(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def _say(line: str) -> None:
    print(f"conveyor train: {line}", file=sys.stderr, flush=True)


def summary(record: DataRecord) -> str:
    """What a person wants after a run: where it went, how good it is, how fast it read."""
    gate, metric = record.gate, record.gate["metric"]
    relation = "at least" if gate["inclusive"] else "above"
    classes = f", {len(record.classes)} classes" if record.classes else ""
    rates = record.rows_per_second
    return (
        f"published {record.model} version {record.version} ({record.task}{classes}, "
        f"{len(record.features)} features) to {record.version_dir}\n"
        f"test {metric} {gate['value']:.4f} on {record.evaluated_rows['test']:,} held-out rows "
        f"(required {relation} {gate['floor']:.4f}: {gate['floor_from']})\n"
        f"rows {record.rows:,}: read at {rates.get('read', 0):,.0f} rows/s, trained "
        f"{record.settings['epochs']} epochs at {rates.get('train', 0):,.0f} rows/s\n"
        f"parity on {record.parity.get('rows')} test rows: max abs diff "
        f"{record.parity.get('max_abs_diff', 0):.3g}\n"
        f"model card: {record.paths.get('card')}\nrun record: {record.record_path}\n"
        f"serve it: conveyor serve --model-repository {shlex.quote(record.repository)}"
    )
