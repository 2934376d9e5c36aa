"""Session setup that must run before numba is first imported.

The device kernels (kernels/cuda.py) run in Numba's CUDA simulator, on the CPU, unless
CONVEYOR_REAL_CUDA=1: a GPU machine's check script sets that to run the same tests on the
device. The simulator only takes effect if NUMBA_ENABLE_CUDASIM is set before numba loads.
"""

import os

if os.environ.get("CONVEYOR_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
