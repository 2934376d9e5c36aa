"""Pre/post kernels: Numba against the NumPy reference, and the public choice, at batch 1/64/256.

    .venv/bin/python benchmarks/kernel_speed.py [--budget-s 0.2]

Median microseconds per call after warm-up. "Batch" is rows (images for the image ops, candidate
boxes for NMS). Then sigmoid over FP32 sizes either side of the public op's switch, up to a
[256, 1000] batch of logits, beside the one-line NumPy sigmoid a user would write, the four
measured call by call in turn so that the machine's load falls on each alike. Writes
benchmarks/results/kernels.json and prints both tables.

Named kernel_speed.py, not kernels.py: Python puts a script's own folder first on sys.path,
so a benchmarks/kernels.py would be what `import kernels` finds in every script here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
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
from kernels import compiled, reference  # noqa: E402

BATCHES = (1, 64, 256)
SIGMOID_SHAPES = ((1, 80), (4, 80), (8, 80), (16, 80), (24, 80), (32, 80), (64, 80), (256, 80),
                  (64, 1000), (256, 1000))  # fmt: skip
RESULTS = ROOT / "benchmarks" / "results" / "kernels.json"


def boxes(n: int, rng: np.random.Generator) -> tuple[Any, ...]:
    """n boxes clustered so that NMS has real suppression to do."""
    xy = rng.uniform(0, 500, (n, 2))
    wh = rng.uniform(20, 80, (n, 2))
    return np.hstack([xy, xy + wh]).astype(np.float32), rng.random(n).astype(np.float32), 0.5, 0.05


def inputs(name: str, batch: int, rng: np.random.Generator) -> tuple[Any, ...]:
    """Representative serving inputs for one op at one batch size."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    edges = np.tile(np.linspace(-2, 2, 11), (32, 1))
    table: dict[str, Callable[[], tuple[Any, ...]]] = {
        "standardize": lambda: (
            rng.normal(size=(batch, 32)).astype(np.float32),
            np.zeros(32, np.float32),
            np.ones(32, np.float32),
        ),
        "normalize_image": lambda: (
            rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
            mean,
            std,
        ),
        "resize_bilinear": lambda: (
            rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8),
            64,
            64,
        ),
        "one_hot": lambda: (rng.integers(-1, 50, batch), 50),
        "bucketize": lambda: (rng.normal(size=(batch, 32)).astype(np.float32), edges[0]),
        "softmax": lambda: (rng.normal(size=(batch, 1000)).astype(np.float32),),
        "sigmoid": lambda: (rng.normal(size=(batch, 80)).astype(np.float32),),
        "topk": lambda: (rng.normal(size=(batch, 1000)).astype(np.float32), 5),
        "nms": lambda: boxes(batch, rng),
        "histogram": lambda: (rng.normal(size=(batch, 32)).astype(np.float32), edges),
    }
    return table[name]()


def one_line_sigmoid(x: Any) -> Any:
    """The NumPy sigmoid as usually written; it warns on overflow below x = -88.7."""
    return 1 / (1 + np.exp(-x))


def interleaved_us(calls: dict[str, Callable[[], Any]], budget_s: float) -> dict[str, float]:
    """Median µs per call of each, timed one call of each per round (at least 5 rounds), in a
    new order each round: a call runs measurably slower after some others (after a Numba call
    the next NumPy one took 1 µs more at 32x80), and shuffling spreads that over all alike."""
    for call in calls.values():
        call()
    order = list(calls)
    shuffle = random.Random(0).shuffle
    samples: dict[str, list[float]] = {name: [] for name in calls}
    deadline = time.perf_counter() + budget_s * len(calls)
    while len(samples[order[0]]) < 5 or time.perf_counter() < deadline:
        shuffle(order)
        for name in order:
            start = time.perf_counter_ns()
            calls[name]()
            samples[name].append((time.perf_counter_ns() - start) / 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}


def sigmoid_sizes(budget_s: float, rng: np.random.Generator) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shape in SIGMOID_SHAPES:
        x = rng.normal(size=shape).astype(np.float32)
        us = interleaved_us(
            {
                "numpy_us": partial(reference.sigmoid, x),
                "numba_us": partial(compiled.sigmoid, x),
                "public_us": partial(kernels.sigmoid, x),
                "one_line_numpy_us": partial(one_line_sigmoid, x),
            },
            budget_s,
        )
        rows.append({"shape": list(shape), "elements": x.size, **us})
    return rows


def print_sigmoid_sizes(rows: list[dict[str, Any]]) -> None:
    table = Table(title="sigmoid, FP32: median µs per call (lower is better)")
    for col in ("shape", "elements", "NumPy µs", "Numba µs", "public µs", "1/(1+np.exp(-x)) µs",
                "public vs one-line"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            "x".join(map(str, r["shape"])), str(r["elements"]), f"{r['numpy_us']:.1f}",
            f"{r['numba_us']:.1f}", f"{r['public_us']:.1f}", f"{r['one_line_numpy_us']:.1f}",
            f"{r['one_line_numpy_us'] / r['public_us']:.2f}x",
        )  # fmt: skip
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget-s", type=float, default=0.2, help="time per measurement")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    kernels.warm_up()
    rows: list[dict[str, Any]] = []
    for name in kernels.KERNELS:
        for batch in BATCHES:
            call = inputs(name, batch, rng)
            numpy_us = median_us(partial(getattr(reference, name), *call), args.budget_s)
            numba_us = median_us(partial(getattr(compiled, name), *call), args.budget_s)
            public_us = median_us(partial(kernels.KERNELS[name], *call), args.budget_s)
            rows.append(
                {"op": name, "batch": batch, "numpy_us": numpy_us, "numba_us": numba_us,
                 "public_us": public_us, "speedup": numpy_us / numba_us}
            )  # fmt: skip
    table = Table(title="kernels: median µs per call (lower is better)")
    for col in ("op", "batch", "NumPy µs", "Numba µs", "Numba speedup", "public µs"):
        table.add_column(col, justify="left" if col == "op" else "right")
    for r in rows:
        table.add_row(
            r["op"], str(r["batch"]), f"{r['numpy_us']:.1f}", f"{r['numba_us']:.1f}",
            f"{r['speedup']:.2f}x", f"{r['public_us']:.1f}",
        )  # fmt: skip
    Console().print(table)
    sigmoid = sigmoid_sizes(args.budget_s, rng)
    print_sigmoid_sizes(sigmoid)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count()}
    document = {"meta": meta, "rows": rows, "sigmoid_sizes": sigmoid}
    RESULTS.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
