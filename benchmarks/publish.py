"""How long `conveyor publish` takes end to end, from a saved model to a published version.

    .venv/bin/python benchmarks/publish.py [--repeats 3]

Two models on breast cancer: the scikit-learn Pipeline(StandardScaler, LogisticRegression),
saved with joblib (goal 10 s), and an XGBoost classifier of 100 trees saved with save_model as
JSON (goal 20 s). Each is published through the command (a new process each time: interpreter
start, imports, conversion, parity gate, files, atomic rename) and through `conveyor.publish`
in this process (conversion onwards). Each repeat publishes the next version of the same
model. Writes benchmarks/results/publish.json and prints a table.
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


def sklearn_pipeline(x: np.ndarray, y: np.ndarray, folder: Path) -> tuple[Any, Path]:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    joblib.dump(model, folder / "pipeline.joblib")
    return model, folder / "pipeline.joblib"


def xgboost_100(x: np.ndarray, y: np.ndarray, folder: Path) -> tuple[Any, Path]:
    from xgboost import XGBClassifier

    model = XGBClassifier(n_estimators=100, max_depth=4, n_jobs=1).fit(x, y)
    model.save_model(folder / "xgboost.json")
    return model, folder / "xgboost.json"


# name: (what it is, how it is made, goal in seconds)
MODELS = {
    "sklearn_pipeline": ("Pipeline(StandardScaler, LogisticRegression)", sklearn_pipeline, 10.0),
    "xgboost_100": ("XGBClassifier, 100 trees of depth 4", xgboost_100, 20.0),
}


def cli_seconds(model_file: Path, sample_file: Path, repo: Path, name: str) -> float:
    command = [sys.executable, "-m", "runtime", "publish", str(model_file), "--repository",
               str(repo), "--name", f"{name}_cli", "--sample", str(sample_file)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def api_seconds(model: Any, sample: np.ndarray, repo: Path, name: str) -> float:
    start = time.perf_counter()
    conveyor.publish(model, sample, repository=repo, name=f"{name}_api")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/publish.json")
    args = parser.parse_args()
    x, y = load_breast_cancer(return_X_y=True)
    sample = x[:200].astype(np.float32)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "sample.npy", sample)
        repo = folder / "repo"
        for name, (what, make, goal) in MODELS.items():
            model, model_file = make(x, y, folder)
            cli = [cli_seconds(model_file, folder / "sample.npy", repo, name)
                   for _ in range(args.repeats)]  # fmt: skip
            api = [api_seconds(model, sample, repo, name) for _ in range(args.repeats)]
            rows.append({"model": name, "what": what, "path": "command", "seconds": cli,
                         "goal_s": goal})  # fmt: skip
            rows.append({"model": name, "what": what, "path": "api", "seconds": api,
                         "goal_s": goal})  # fmt: skip
    report = {
        "benchmark": "publish",
        "machine": f"{platform.machine()} {platform.platform()}",
        "data": "breast cancer, 200-row sample",
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    table = Table(title="Publishing on breast cancer, end to end")
    for col in ("model", "path", "median s", "runs s", "goal s", "met"):
        table.add_column(col, justify="right")
    for row in rows:
        median = statistics.median(row["seconds"])
        runs = ", ".join(f"{s:.2f}" for s in row["seconds"])
        met = "yes" if median <= row["goal_s"] else "no"
        table.add_row(row["model"], row["path"], f"{median:.2f}", runs, f"{row['goal_s']:.0f}", met)
    Console().print(table)


if __name__ == "__main__":
    main()
