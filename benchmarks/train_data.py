"""`conveyor train --data` on a generated CSV: peak memory and rows per second.

    .venv/bin/python benchmarks/train_data.py [--size-gb 2] [--csv PATH] [--epochs N]
                                              [--batch-size N]

Generates a CSV of 20 numeric features and an integer class label (about 12 million rows for
2 GB; rows drawn from a fixed seed, values with four decimals) in a temporary folder, or at
--csv (kept, and reused when it is already that large), then runs `conveyor train --data` on it
as a subprocess and takes its peak resident memory from the kernel (`wait4`'s ru_maxrss, the
child's high-water mark). Rows per second come from the run record (pass one; the epochs) and
from the wall time. Goal: peak RSS under 1 GB at 2 GB of CSV. Writes
benchmarks/results/train_data.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 20
CHUNK_ROWS = 200_000
GOAL_RSS_BYTES = 1 << 30


def generate(path: Path, size_bytes: int, seed: int = 0) -> int:
    """Write rows until the file holds size_bytes; returns the rows written."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=FEATURES)
    names = [f"f{i}" for i in range(FEATURES)]
    schema = pa.schema([*[(n, pa.float32()) for n in names], ("label", pa.int64())])
    rows = 0
    with pacsv.CSVWriter(str(path), schema) as writer:
        while path.stat().st_size < size_bytes:
            x = np.round(rng.normal(size=(CHUNK_ROWS, FEATURES)), 4).astype(np.float32)
            score = x @ weights / np.sqrt(FEATURES) + 0.3 * rng.normal(size=CHUNK_ROWS)
            label = np.digitize(score, [-0.5, 0.5])  # three classes
            arrays = [pa.array(x[:, i]) for i in range(FEATURES)] + [pa.array(label)]
            writer.write_batch(pa.record_batch(arrays, schema=schema))
            rows += CHUNK_ROWS
    return rows


def run_train(data: Path, repo: Path, flags: list[str]) -> tuple[float, int, int, str]:
    """(wall seconds, peak RSS bytes, exit status, stderr) of one `conveyor train --data`."""
    command = [sys.executable, "-m", "runtime", "train", "--data", str(data), "--target",
               "label", "--repository", str(repo), "--name", "bench", *flags]  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        # wait4 reports the child's own peak resident set (kilobytes on Linux).
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err.seek(0)
        return wall, usage.ru_maxrss * 1024, process.returncode, err.read()


def latest_record(repo: Path) -> dict[str, Any]:
    path = max((repo / ".runs").glob("bench-*.json"))
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def prepare(args: argparse.Namespace, folder: Path) -> tuple[Path, int | None, float]:
    """(the CSV, rows generated or None when reused, seconds spent generating)."""
    size = int(args.size_gb * 1e9)
    path = args.csv or folder / "data.csv"
    if path.is_file() and path.stat().st_size >= size:
        return path, None, 0.0
    free = shutil.disk_usage(path.parent).free
    # The CSV, and the cache of training rows (float32: about half the CSV's size).
    if free < 1.7 * size:
        raise SystemExit(f"{path.parent}: {free / 1e9:.1f} GB free; about {1.7 * size / 1e9:.1f} "
                         "GB are needed (pass --size-gb to run smaller)")  # fmt: skip
    start = time.perf_counter()
    rows = generate(path, size)
    return path, rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="CSV size (default 2)")
    parser.add_argument("--csv", type=Path, help="where the CSV goes (kept); default: a temp dir")
    parser.add_argument("--epochs", type=int, help="default: the command's own choice")
    parser.add_argument("--batch-size", type=int, help="default: the command's (256)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_data.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-") as tmp:
        data, generated, generate_s = prepare(args, Path(tmp))
        flags = [f"--{name.replace('_', '-')}={value}"
                 for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size))
                 if value is not None]  # fmt: skip
        wall, peak, code, err = run_train(data, Path(tmp) / "repo", flags)
        if code != 0:
            raise SystemExit(f"conveyor train exited {code}:\n{err[-3000:]}")
        record = latest_record(Path(tmp) / "repo")
    report = {
        "benchmark": "train_data",
        "machine": f"{platform.machine()} {platform.platform()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB memory",
        "csv_bytes": data.stat().st_size if data.exists() else int(args.size_gb * 1e9),
        "features": FEATURES,
        "rows": record["rows"],
        "generated_rows": generated,
        "generate_s": round(generate_s, 1),
        "epochs": record["settings"]["epochs"],
        "batch_size": record["settings"]["batch_size"],
        "wall_s": round(wall, 1),
        "peak_rss_bytes": peak,
        "goal_peak_rss_bytes": GOAL_RSS_BYTES,
        "rows_per_s_end_to_end": round(record["rows"] / wall),
        "rows_per_s": record["rows_per_second"],
        "stage_seconds": record["stage_seconds"],
        "test_accuracy": record["metrics"].get("test_accuracy"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    table = Table(title="conveyor train --data on a generated CSV", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(justify="right")
    stages = ", ".join(f"{k} {v:.1f}" for k, v in report["stage_seconds"].items())
    peak, goal = report["peak_rss_bytes"], report["goal_peak_rss_bytes"]
    met = "met" if peak < goal else "missed"
    for key, value in [
        ("CSV", f"{report['csv_bytes'] / 1e9:.2f} GB, {report['rows']:,} rows, 20 features"),
        ("epochs, batch size", f"{report['epochs']}, {report['batch_size']}"),
        ("wall time", f"{report['wall_s']:.1f} s"),
        ("stages (s)", stages),
        ("peak RSS", f"{peak / 2**20:,.0f} MiB (goal < {goal / 2**20:,.0f}: {met})"),
        ("rows/s, pass one", f"{report['rows_per_s'].get('read', 0):,.0f}"),
        ("rows/s, epochs", f"{report['rows_per_s'].get('train', 0):,.0f}"),
        ("rows/s, end to end", f"{report['rows_per_s_end_to_end']:,.0f}"),
        ("test accuracy", f"{report['test_accuracy']:.4f}"),
        ("machine", report["machine"]),
    ]:
        table.add_row(key, value)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
