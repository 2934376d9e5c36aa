"""Drift monitor cost on the hot path: `observe` per batch at batch 1/64/256, and `tick` per window.

    .venv/bin/python benchmarks/drift.py [--budget-s 0.3]

Median per call after warm-up, for a digits-like input (64 features, values 0-16) and a
32-feature Gaussian one, both with 10 bins and 10-class scores. `histogram µs` is
`kernels.histogram` alone, so the monitor's own overhead is the difference. Writes
benchmarks/results/drift_kernel.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from serverproc import median_us

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kernels  # noqa: E402
from runtime.monitoring import profile as profiles  # noqa: E402
from runtime.monitoring.drift import DriftMonitor, DriftSettings  # noqa: E402

BATCHES = (1, 64, 256)
BINS = 10
CLASSES = 10
RESULTS = ROOT / "benchmarks" / "results" / "drift_kernel.json"


def digits_like(rows: int, rng: np.random.Generator) -> np.ndarray:
    """64 pixel intensities 0-16, mostly dark at the borders as in the digits images."""
    brightness = np.tile(np.linspace(2, 14, 8), 8)
    return np.clip(rng.poisson(brightness, (rows, 64)), 0, 16).astype(np.float32)


def gaussian(rows: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(rows, 32)).astype(np.float32)


INPUTS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "digits-like 64x10": digits_like,
    "gaussian 32x10": gaussian,
}


def measure(name: str, budget_s: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    make = INPUTS[name]
    scores = rng.normal(size=(5000, CLASSES)).astype(np.float32)
    profile = profiles.build(make(5000, rng), "x", scores, "y", bins=BINS)
    monitor = DriftMonitor(profile, DriftSettings(), "bench", "1")
    rows: list[dict[str, Any]] = []
    for batch in BATCHES:
        x = make(batch, rng)
        inputs, outputs = {"x": x}, {"y": rng.normal(size=(batch, CLASSES)).astype(np.float32)}
        observe_us = median_us(partial(monitor.observe, inputs, outputs), budget_s, 3, 20000)
        histogram_us = median_us(partial(kernels.histogram, x, profile.edges), budget_s, 3, 20000)
        rows.append(
            {"input": name, "features": profile.features, "batch": batch,
             "observe_us": observe_us, "ns_per_row": observe_us * 1e3 / batch,
             "histogram_us": histogram_us}
        )  # fmt: skip
    return rows


def tick_us(budget_s: float, rng: np.random.Generator) -> float:
    """Judging one closed window of 64 features (the off-path cost), per window."""
    profile = profiles.build(digits_like(5000, rng), "x", bins=BINS)
    monitor = DriftMonitor(profile, DriftSettings(window_samples=300, min_samples=1), "b", "1")
    batch = {"x": digits_like(300, rng)}

    def one_window() -> None:
        monitor.observe(batch, {})
        monitor.tick()

    observe_us = median_us(lambda: monitor.observe(batch, {}), budget_s, 3, 20000)
    return median_us(one_window, budget_s, 3, 20000) - observe_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-s", type=float, default=0.3, help="time per measurement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    kernels.warm_up()
    rows = [row for name in INPUTS for row in measure(name, args.budget_s, rng)]
    judge_us = tick_us(args.budget_s, rng)
    table = Table(title="drift observe(): median per call, 10 bins, 10 classes (lower is better)")
    for col in ("input", "batch", "observe µs", "ns / row", "histogram µs"):
        table.add_column(col, justify="left" if col == "input" else "right")
    for r in rows:
        table.add_row(
            r["input"], str(r["batch"]), f"{r['observe_us']:.1f}", f"{r['ns_per_row']:.0f}",
            f"{r['histogram_us']:.1f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"tick(): {judge_us:.0f} µs to judge one window of 64 features (off the path)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count()}
    RESULTS.write_text(
        json.dumps({"meta": meta, "rows": rows, "tick_us_64_features": judge_us}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
