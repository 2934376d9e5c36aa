"""Every benchmark script starts: imports resolve and the arguments parse.

Scripts run from benchmarks/, which Python puts first on the import path; a script named
like a package (benchmarks/kernels.py once shadowed the kernels package) breaks every
other script there, and nothing else would notice.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "serverproc.py")
PACKAGES = {"runtime", "kernels", "tests"}


def test_no_script_shadows_a_package() -> None:
    names = {Path(s).stem for s in SCRIPTS} | {"serverproc"}
    assert names.isdisjoint(PACKAGES)


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_starts(script: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
