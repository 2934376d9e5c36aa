"""The lock, requirements/*.txt: every package pinned with its hashes, covering what
pyproject.toml names, one version of each package across the files, and the installs that
take it (`make install`, `make install-server`) taking nothing else."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
NATIVE_BUILD_REQUIRES: list[str] = tomllib.loads((ROOT / "native" / "pyproject.toml").read_text())[
    "build-system"
]["requires"]
# What the lock is resolved for: markers are evaluated as on Linux x86_64, CPython 3.11.
TARGET = {
    **default_environment(),
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "python_version": "3.11",
    "python_full_version": "3.11.0",
}
SHA256 = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def logical_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file: comments dropped, continuations joined."""
    lines = (line.strip() for line in re.sub(r"\\\n", " ", path.read_text()).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pins(name: str) -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in logical_lines(LOCKS / name):
        req = Requirement(line.split()[0])
        (spec,) = req.specifier
        out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def named(deps: list[str], *, leave_out: tuple[str, ...] = ()) -> list[Requirement]:
    """pyproject requirements that apply to the lock's target, less `leave_out`."""
    reqs = [Requirement(d) for d in deps]
    return [
        r
        for r in reqs
        if (r.marker is None or r.marker.evaluate(TARGET)) and r.name not in leave_out
    ]


# Each lock file and what it must hold: the project's dependencies and some extras.
# Tracing (the trace extra) is in every lock the server runs from.
COVERS = {
    "server.txt": named(PROJECT["dependencies"] + EXTRAS["trace"]),
    "dev.txt": named(
        PROJECT["dependencies"]
        + [d for e in ("test", "proto", "bench", "publish", "train", "trace") for d in EXTRAS[e]],
        leave_out=("torch",),  # its CPU build: torch-cpu.txt
    ),
    "gpu.txt": named(
        PROJECT["dependencies"] + EXTRAS["gpu"] + EXTRAS["trace"], leave_out=("onnxruntime",)
    ),
    "torch-cpu.txt": [r for r in named(EXTRAS["train"]) if r.name == "torch"],
    # The native gRPC front end's build tools, which both installs and the image build with.
    "native-build.txt": named(NATIVE_BUILD_REQUIRES),
}


@pytest.mark.parametrize("name", sorted(COVERS))
def test_every_line_is_one_pinned_version_with_hashes(name: str) -> None:
    lines = logical_lines(LOCKS / name)
    assert lines
    for line in lines:
        requirement, *options = line.split()
        req = Requirement(requirement)
        specs = list(req.specifier)
        assert len(specs) == 1, line
        assert specs[0].operator == "==", line
        assert "*" not in specs[0].version, line
        assert req.marker is None, line  # resolved for one platform: nothing conditional
        assert options, f"{req.name} has no hash"
        for option in options:  # hashes only: no index, link or editable option hides here
            assert SHA256.fullmatch(option), f"{req.name}: {option}"


@pytest.mark.parametrize("name", sorted(COVERS))
def test_the_lock_covers_what_pyproject_names(name: str) -> None:
    locked = pins(name)
    for req in COVERS[name]:
        key = canonicalize_name(req.name)
        assert key in locked, f"{name} lacks {req}: run `make lock`"
        assert req.specifier.contains(locked[key], prereleases=True), (
            f"{name} pins {req.name}=={locked[key]}, outside {req}: run `make lock`"
        )


def test_the_gpu_lock_has_onnxruntime_gpu_alone() -> None:
    assert any(Requirement(d).name == "onnxruntime-gpu" for d in EXTRAS["gpu"])
    locked = pins("gpu.txt")
    assert "onnxruntime-gpu" in locked
    assert "onnxruntime" not in locked  # the same module: the two would overwrite each other


def test_torch_is_the_cpu_build_and_only_in_its_own_file() -> None:
    (torch_req,) = COVERS["torch-cpu.txt"]
    torch = pins("torch-cpu.txt")["torch"]
    assert torch.local == "cpu"
    assert torch.public == next(iter(torch_req.specifier)).version
    for other in ("dev.txt", "server.txt", "gpu.txt"):
        assert "torch" not in pins(other), other


def test_one_version_of_each_package_across_the_files() -> None:
    # `make serve` then `make install` (server.txt, then dev.txt and torch-cpu.txt) must never
    # move a pin, and the images run what the tests ran.
    dev = pins("dev.txt")
    for name in ("server.txt", "gpu.txt", "torch-cpu.txt", "native-build.txt"):
        for package, version in pins(name).items():
            if package in dev:
                assert version == dev[package], f"{package}: {name} {version}, dev.txt"


def install_commands(target: str) -> list[list[str]]:
    """The pip install commands `make <target>` runs on a fresh checkout, by make's dry run."""
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed")
    out = subprocess.run(
        [make, "-n", "-B", "-C", str(ROOT), target, "VENV=/nonexistent/venv"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    commands = []
    for line in out.replace("\\\n", " ").splitlines():
        if "pip install" not in line:
            continue
        # A recipe line may chain commands (a && b || c): keep its pip installs.
        segment: list[str] = []
        for token in [*shlex.split(line), "&&"]:
            if token in ("&&", "||", ";"):
                if "install" in segment and any(t.endswith("pip") for t in segment):
                    commands.append(segment)
                segment = []
            else:
                segment.append(token)
    assert commands, out
    return [c[c.index("install") + 1 :] for c in commands]


def from_lock(args: list[str]) -> str | None:
    """The lock file an install takes, hash-checked; None for anything else."""
    if "--require-hashes" in args and "-r" in args:
        return args[args.index("-r") + 1]
    return None


@pytest.mark.parametrize(
    ("target", "locks"),
    [
        (
            "install",
            [
                "requirements/dev.txt",
                "requirements/torch-cpu.txt",
                "requirements/native-build.txt",
            ],
        ),
        ("install-server", ["requirements/server.txt", "requirements/native-build.txt"]),
    ],
)
def test_make_installs_from_the_lock_alone(target: str, locks: list[str]) -> None:
    commands = install_commands(target)
    assert [from_lock(c) for c in commands if from_lock(c)] == locks
    for args in commands:
        if from_lock(args):
            continue
        # Besides the lock: pip itself, the project with no dependency resolved, and the
        # native gRPC front end, a distribution that depends on nothing, built with the tools
        # the lock installed.
        allowed = (
            ["-q", "--upgrade", "pip"],
            ["-q", "--no-deps", "-e", "."],
            ["-q", "--no-build-isolation", "./native"],
        )
        assert args in allowed, args


def test_torch_comes_from_pytorchs_cpu_index() -> None:
    (torch_install,) = [c for c in install_commands("install") if "torch-cpu" in str(from_lock(c))]
    assert "--index-url" in torch_install
    assert torch_install[torch_install.index("--index-url") + 1] == (
        "https://download.pytorch.org/whl/cpu"
    )


def test_the_readme_says_how_to_regenerate_and_where_cpu_torch_is() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make lock" in readme
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
