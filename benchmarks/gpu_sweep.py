"""CPU vs GPU on one machine: a model large enough to matter, and the device kernels.

    python benchmarks/gpu_sweep.py [--seconds 2] [--out benchmarks/results/gpu_sweep.json]

1. The wide MLP (256-1024-1024-1024-10, 2.4 M weights) in-process: ONNX Runtime's CPU
   provider, its CUDA provider fed numpy arrays (`session.run`), and the CUDA provider
   through Conveyor's IO-binding backend (pinned staging), rows/s per batch size.
2. Pre/post kernels: the CPU kernel (`kernels.<op>`) against its numba.cuda version
   (`kernels.cuda.<op>`), both timed host array in, host array out.

Each part says why it was skipped where the machine cannot run it (no CUDA provider in
onnxruntime, no CUDA device for numba). Writes JSON and prints a table; gpu_check.sh runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402

from runtime.examples import mlp_model  # noqa: E402

WIDE = (256, 1024, 1024, 1024, 10)
BATCHES = (1, 16, 64, 256)
CUDA = "CUDAExecutionProvider"


def rate(fn: Callable[[], Any], rows: int, seconds: float) -> float:
    """Rows per second of fn, after a few warm-up calls."""
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * rows / (time.perf_counter() - start)


def model_rows(seconds: float) -> tuple[list[dict[str, Any]], str]:
    if CUDA not in ort.get_available_providers():
        return [], f"onnxruntime {ort.__version__} has no CUDA provider"
    from runtime.backends.onnx import OnnxBackend
    from runtime.backends.onnx_cuda import CudaMemory
    from runtime.loader import device_pipeline
    from runtime.pipeline import Steps

    data = mlp_model(WIDE).SerializeToString()
    cpu = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    gpu = ort.InferenceSession(data, providers=[CUDA, "CPUExecutionProvider"])
    backend = OnnxBackend(data, providers=[CUDA, "CPUExecutionProvider"])
    runner = device_pipeline(backend, Steps(), ["OUTPUT0"], CudaMemory(0))
    rows = []
    for batch in BATCHES:
        x = np.random.default_rng(batch).random((batch, WIDE[0]), dtype=np.float32)
        feeds = {"INPUT0": x}
        row = {
            "batch": batch,
            "cpu_rows_per_s": rate(lambda f=feeds: cpu.run(None, f), batch, seconds),
            "gpu_run_rows_per_s": rate(lambda f=feeds: gpu.run(None, f), batch, seconds),
            "gpu_iobinding_rows_per_s": rate(lambda f=feeds: runner.run(f), batch, seconds),
        }
        row["gpu_vs_cpu"] = row["gpu_iobinding_rows_per_s"] / row["cpu_rows_per_s"]
        rows.append(row)
    return rows, ""


def kernel_cases() -> dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """op -> (host args, extra args), at serving-sized batches."""
    rng = np.random.default_rng(0)
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    return {
        "normalize_image": (
            (rng.integers(0, 256, (64, 224, 224, 3), dtype=np.uint8),),
            (mean, std),
        ),
        "standardize": (
            (rng.normal(size=(256, 1024)).astype(np.float32),),
            (np.zeros(1024), np.ones(1024)),
        ),
        "softmax": ((rng.normal(size=(256, 1000)).astype(np.float32),), ()),
        "topk": ((rng.normal(size=(256, 1000)).astype(np.float32),), (5,)),
    }


def kernel_rows(seconds: float) -> tuple[list[dict[str, Any]], str]:
    try:
        from numba import cuda

        if not cuda.is_available():
            return [], "numba finds no CUDA device"
        from kernels import cuda as device
    except Exception as exc:  # no driver, no numba-cuda: the reason is the result
        return [], f"numba.cuda is not usable: {exc}"
    import kernels

    rows = []
    for op, (data, extra) in kernel_cases().items():
        host = getattr(kernels, op)
        on_device = getattr(device, op)
        uploaded = tuple(device.upload({str(i): a for i, a in enumerate(extra)}).values())

        def device_call(d: tuple[Any, ...] = data, f: Any = on_device, u: Any = uploaded) -> Any:
            out = f(cuda.to_device(d[0]), *u)
            return [o.copy_to_host() for o in out] if isinstance(out, tuple) else out.copy_to_host()

        n = len(data[0])
        cpu_rate = rate(lambda d=data, f=host, e=extra: f(*d, *e), n, seconds)
        gpu_rate = rate(device_call, n, seconds)
        rows.append({"op": op, "batch": n, "cpu_rows_per_s": cpu_rate,
                     "gpu_rows_per_s": gpu_rate, "gpu_vs_cpu": gpu_rate / cpu_rate})  # fmt: skip
    return rows, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_sweep.json")
    args = parser.parse_args()
    models, model_skip = model_rows(args.seconds)
    kernel_table, kernel_skip = kernel_rows(args.seconds)
    report = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "onnxruntime": ort.__version__,
        "model": {"sizes": WIDE, "rows": models, "skipped": model_skip},
        "kernels": {"rows": kernel_table, "skipped": kernel_skip},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wide MLP {WIDE}, rows/s" + (f": skipped, {model_skip}" if model_skip else ""))
    if models:
        print(f"{'batch':>6} {'CPU':>12} {'GPU run':>12} {'GPU IO-bind':>12} {'GPU/CPU':>8}")
    for r in models:
        print(f"{r['batch']:>6} {r['cpu_rows_per_s']:>12,.0f} {r['gpu_run_rows_per_s']:>12,.0f} "
              f"{r['gpu_iobinding_rows_per_s']:>12,.0f} {r['gpu_vs_cpu']:>7.1f}x")  # fmt: skip
    print("kernels, rows/s host to host" + (f": skipped, {kernel_skip}" if kernel_skip else ""))
    if kernel_table:
        print(f"{'op':>16} {'batch':>6} {'CPU':>12} {'GPU':>12} {'GPU/CPU':>8}")
    for r in kernel_table:
        print(f"{r['op']:>16} {r['batch']:>6} {r['cpu_rows_per_s']:>12,.0f} "
              f"{r['gpu_rows_per_s']:>12,.0f} {r['gpu_vs_cpu']:>7.1f}x")  # fmt: skip
    print(f"wrote {args.out} ({report['machine']})")


if __name__ == "__main__":
    main()
