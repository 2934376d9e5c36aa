"""How often the drift monitor cries wolf: windows with no drift, judged as the server judges.

    .venv/bin/python benchmarks/drift_null.py [--windows 2000]

The digits profile is built from the training rows (60% of sklearn's digits, as
`conveyor train digits` does); each window is drawn with replacement from the held-out
rows (validation and test), which come from the same distribution but were never profiled.
Each window goes through a real DriftMonitor (observe, then tick) with the default
thresholds, and through a second monitor with the noise floor off (noise_alpha 1). A
20-feature Gaussian profile from as many rows shows the same for continuous features.
Writes benchmarks/results/drift_null.json and prints the share of windows that warn or
alert.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.monitoring import profile as profiles  # noqa: E402
from runtime.monitoring.drift import DriftMonitor, DriftSettings  # noqa: E402
from runtime.training import ingest  # noqa: E402

WINDOWS = (300, 500, 1000)
RESULTS = ROOT / "benchmarks" / "results" / "drift_null.json"


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(rows profiled, held-out rows) as the digits training stage splits them."""
    parts = ingest.split(ingest.load("digits"), seed=0)
    held_out = np.vstack([parts.validation.features, parts.test.features])
    return parts.train.features, held_out


def gaussian(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.normal(size=(1078, 20)), rng.normal(size=(20_000, 20))


def judge(
    reference: np.ndarray, pool: np.ndarray, rows: int, windows: int, rng: np.random.Generator
) -> dict[str, Any]:
    """The same windows through two monitors: the noise floor on (the default) and off."""
    profile = profiles.build(reference, "x")
    monitors = {
        floor: DriftMonitor(
            profile,
            DriftSettings(window_samples=rows, min_samples=rows, noise_alpha=alpha),
            "null",
            "1",
        )
        for floor, alpha in (("on", DriftSettings().noise_alpha), ("off", 1.0))
    }
    counts = {f"{what}_{floor}": 0 for what in ("warn", "alert") for floor in monitors}
    worst: list[float] = []
    for _ in range(windows):
        x = pool[rng.integers(0, len(pool), rows)]
        for floor, monitor in monitors.items():
            monitor.observe({"x": x}, {})
            monitor.tick()
            last = monitor.report()["recent"][-1]
            counts[f"warn_{floor}"] += last["warn"]
            counts[f"alert_{floor}"] += last["alert"]
        worst.append(last["max_psi"])
    floors = monitors["on"].floors(rows)
    assert floors is not None
    return {
        "rows": rows,
        "windows": windows,
        "reference_rows": len(reference),
        **{f"{key}_rate": value / windows for key, value in counts.items()},
        "psi_floor_median_feature": float(np.median(floors.psi)),
        "psi_floor_max_feature": float(floors.psi.max()),
        "max_psi_p50": float(np.percentile(worst, 50)),
        "max_psi_p99": float(np.percentile(worst, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=2000, help="windows per size")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    inputs = {"digits, 64 pixels": digits(), "Gaussian, 20 features": gaussian(rng)}
    results = [
        {"input": name, **judge(reference, pool, rows, args.windows, rng)}
        for name, (reference, pool) in inputs.items()
        for rows in WINDOWS
    ]
    table = Table(title="Windows without drift: share that warn or alert (lower is better)")
    columns = ("input", "rows", "warn", "warn, no floor", "alert", "alert, no floor",
               "PSI floor, median / max feature", "max PSI p50", "p99")  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col == "input" else "right")
    for r in results:
        table.add_row(
            r["input"], str(r["rows"]), f"{r['warn_on_rate']:.2%}", f"{r['warn_off_rate']:.2%}",
            f"{r['alert_on_rate']:.2%}", f"{r['alert_off_rate']:.2%}",
            f"{r['psi_floor_median_feature']:.3f} / {r['psi_floor_max_feature']:.3f}",
            f"{r['max_psi_p50']:.3f}", f"{r['max_psi_p99']:.3f}",
        )  # fmt: skip
    Console(width=140).print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "cpus": os.cpu_count()}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
