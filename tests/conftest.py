"""Session setup that must run before numba is first imported, and the Hypothesis profiles.

The device kernels (kernels/cuda.py) run in Numba's CUDA simulator, on the CPU, unless
CONVEYOR_REAL_CUDA=1: a GPU machine's check script sets that to run the same tests on the
device. The simulator only takes effect if NUMBA_ENABLE_CUDASIM is set before numba loads.

Hypothesis runs the "ci" profile unless HYPOTHESIS_PROFILE (or --hypothesis-profile) names
another: the same examples on every run, so a red test means the code changed. `make fuzz`
runs the "fuzz" profile: new examples on every run, FUZZ_SCALE times as many as in CI, and
a failing example is saved under .hypothesis/ and tried first on the next run.
"""

import os
from pathlib import Path

from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

if os.environ.get("CONVEYOR_REAL_CUDA") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

FUZZ_DATABASE = Path(__file__).resolve().parents[1] / ".hypothesis" / "examples"
FUZZ_SCALE = int(os.environ.get("FUZZ_SCALE", "10"))

settings.register_profile("ci", settings.get_profile("ci"), deadline=None)
settings.register_profile(
    "fuzz",
    settings.get_profile("ci"),
    derandomize=False,
    database=DirectoryBasedExampleDatabase(FUZZ_DATABASE),
    max_examples=100 * FUZZ_SCALE,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def fuzz_examples(ci: int) -> int:
    """A fuzz test's example count: `ci` in the CI profile, FUZZ_SCALE times that in "fuzz"."""
    return ci * FUZZ_SCALE if settings.get_current_profile_name() == "fuzz" else ci
