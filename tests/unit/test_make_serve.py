"""`make serve` installs the server alone, and trains the digits example only where the train
extra (torch, scikit-learn, onnxscript) is installed; it serves either way.

The recipe runs for real against a stand-in virtual environment: its python is this one with
no site-packages (-S), and its conveyor writes down the commands it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _make() -> str:
    make = shutil.which("make")
    if make is None:
        pytest.fail("make is not installed")
    return make


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _serve(tmp_path: Path, *, train_extra: bool) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    site = tmp_path / "site"
    site.mkdir()
    if train_extra:
        for module in ("torch", "sklearn", "onnxscript"):
            (site / module).mkdir()
            (site / module / "__init__.py").write_text("")
    _executable(
        venv / "bin" / "python", f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} -S "$@"\n'
    )
    log = tmp_path / "conveyor.log"
    _executable(venv / "bin" / "conveyor", f'#!/bin/sh\necho "$*" >> {log}\n')
    # Both install stamps newer than what they depend on, so that only serve's recipe runs.
    later = time.time() + 3600
    for stamp in (".installed", ".installed-server"):
        (venv / stamp).touch()
        os.utime(venv / stamp, (later, later))
    subprocess.run(
        [_make(), "-s", "-C", str(ROOT), "serve", f"VENV={venv}", "ARGS=--http-port 0"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return log.read_text().splitlines()


def test_serve_without_the_train_extra_only_serves(tmp_path: Path) -> None:
    assert _serve(tmp_path, train_extra=False) == ["serve --http-port 0"]


def test_serve_with_the_train_extra_trains_digits_first(tmp_path: Path) -> None:
    assert _serve(tmp_path, train_extra=True) == [
        "train digits --if-missing",
        "serve --http-port 0",
    ]


def test_serve_installs_the_server_alone() -> None:
    dry_run = subprocess.run(
        [_make(), "-n", "-B", "-C", str(ROOT), "serve", "VENV=/nonexistent/venv"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "requirements/server.txt" in dry_run
    assert "requirements/dev.txt" not in dry_run
    assert "torch-cpu" not in dry_run
