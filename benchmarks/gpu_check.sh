#!/usr/bin/env bash
# The GPU checks in one go, for a machine with an NVIDIA GPU; under 8 minutes, and nothing is
# fetched from the network.
#
#   bash benchmarks/gpu_check.sh            # results under $OUT (default /tmp/gpu_check)
#
# 1. what the machine has: the GPU, the Python packages, ONNX Runtime's providers;
# 2. the tests that need a device, on the real one (CONVEYOR_REAL_CUDA=1 turns numba's CUDA
#    simulator off): the numba.cuda kernels against their NumPy references, the IO-binding
#    runner, the GPU metrics, and the server with a KIND_GPU model (those skip, saying why,
#    where onnxruntime has no CUDA provider);
# 3. benchmarks/gpu_sweep.py: the wide MLP on CPU vs GPU, and the kernels on CPU vs GPU;
# 4. a short table last.
#
# A machine whose protobuf is 7.x or newer cannot load the generated gRPC stubs (6.x); put a
# protobuf 6 wheel (and any other missing wheel) in $WHEELS (default .tools/gpu-wheels, filled
# by `pip download` on a machine with a network) and it is installed from there, offline.
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${OUT:-/tmp/gpu_check}
WHEELS=${WHEELS:-.tools/gpu-wheels}
mkdir -p "$OUT"
start=$(date +%s)

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: no NVIDIA driver here"
"$PY" --version

if [ -d "$WHEELS" ]; then
    echo "== installing carried wheels from $WHEELS (no index)"
    "$PY" -m pip install -q --no-index --find-links "$WHEELS" --target "$OUT/site" \
        "protobuf>=6.33.5,<7" 2>&1 | tail -2
    export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
fi

echo "== packages"
"$PY" - <<'EOF'
import importlib
for name in ("numpy", "onnxruntime", "numba", "numba_cuda", "pynvml", "google.protobuf",
             "grpc", "starlette", "uvicorn", "orjson", "prometheus_client", "pydantic",
             "yaml", "pytest", "hypothesis", "tritonclient"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:18} {getattr(module, '__version__', 'present')}")
    except Exception as exc:
        print(f"  {name:18} MISSING ({type(exc).__name__}: {exc})")
try:
    import onnxruntime as ort
    print("  onnxruntime providers:", ", ".join(ort.get_available_providers()))
except Exception:
    pass
EOF

echo "== tests on the device"
CONVEYOR_REAL_CUDA=1 timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider \
    tests/unit/test_kernels_cuda.py tests/unit/test_device_runner.py \
    tests/unit/test_gpu_metrics.py tests/integration/test_gpu.py 2>&1 | tee "$OUT/pytest.txt" | tail -25
tests_rc=${PIPESTATUS[0]}

echo "== CPU vs GPU sweep"
CONVEYOR_REAL_CUDA=1 timeout 150 "$PY" benchmarks/gpu_sweep.py --seconds 1.5 \
    --out "$OUT/gpu_sweep.json" 2>&1 | tee "$OUT/sweep.txt"
sweep_rc=${PIPESTATUS[0]}

echo "== summary ($(( $(date +%s) - start )) s)"
echo "tests: exit $tests_rc, $(grep -E '[0-9]+ (passed|failed|skipped)' "$OUT/pytest.txt" | tail -1)"
echo "sweep: exit $sweep_rc"
grep -E '^ *[0-9]+ |^ +[a-z_]+ +[0-9]+ |skipped' "$OUT/sweep.txt" || true
