"""How long `conveyor publish` takes end to end, from a saved model to a published version.

    .venv/bin/python benchmarks/publish.py [--repeats 3]

The scikit-learn Pipeline(StandardScaler, LogisticRegression) on breast cancer, saved with
joblib, published through the command (a new process each time: interpreter start, imports,
conversion, parity gate, files, atomic rename) and through `conveyor.publish` in this process
(conversion onwards). Each repeat publishes the next version of the same model. Writes
benchmarks/results/publish.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import conveyor

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 10.0


def fitted() -> tuple[Any, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    return model, x[:200].astype(np.float32)


def cli_seconds(model_file: Path, sample_file: Path, repo: Path) -> float:
    command = [sys.executable, "-m", "runtime", "publish", str(model_file), "--repository",
               str(repo), "--name", "breast_cancer_cli", "--sample", str(sample_file)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def api_seconds(model: Any, sample: np.ndarray, repo: Path) -> float:
    start = time.perf_counter()
    conveyor.publish(model, sample, repository=repo, name="breast_cancer_api")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/publish.json")
    args = parser.parse_args()
    model, sample = fitted()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        joblib.dump(model, folder / "model.joblib")
        np.save(folder / "sample.npy", sample)
        repo = folder / "repo"
        cli = [cli_seconds(folder / "model.joblib", folder / "sample.npy", repo)
               for _ in range(args.repeats)]  # fmt: skip
        api = [api_seconds(model, sample, repo) for _ in range(args.repeats)]
    rows = [
        {"path": "conveyor publish (new process)", "seconds": cli},
        {"path": "conveyor.publish (in process)", "seconds": api},
    ]
    report = {
        "benchmark": "publish",
        "machine": f"{platform.machine()} {platform.platform()}",
        "model": "Pipeline(StandardScaler, LogisticRegression), breast cancer, 200-row sample",
        "goal_s": GOAL_S,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title="Publishing the breast cancer pipeline, end to end")
    for col in ("path", "median s", "runs s", f"goal <= {GOAL_S:.0f} s"):
        table.add_column(col, justify="right")
    for row in rows:
        median = statistics.median(row["seconds"])
        runs = ", ".join(f"{s:.2f}" for s in row["seconds"])
        table.add_row(row["path"], f"{median:.2f}", runs, "met" if median <= GOAL_S else "missed")
    Console().print(table)


if __name__ == "__main__":
    main()
