"""The repository on disk: version folders, version policy, loading and warming one version."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from runtime import classification, repository
from runtime.config import ConfigError, read_config_file
from runtime.loader import InstanceSettings, load_instance, warm_up
from runtime.monitoring import profile
from runtime.monitoring.drift import DriftMonitor
from runtime.proto import model_config_pb2 as pb
from tests import models

CPU = InstanceSettings(device="cpu")


def policy(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


def test_version_folders_ignores_non_numeric_and_leading_zero(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "01", "0", "007", "abc", "3a", "-4", "1.5", ".7"):
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a folder")
    assert repository.version_folders(tmp_path) == [1, 2, 10]


def test_version_folders_ignores_unicode_digits(tmp_path: Path) -> None:
    """str.isdigit() accepts superscript and Arabic-Indic digits; Triton loads neither."""
    (tmp_path / "3").mkdir()
    (tmp_path / "\u00b2").mkdir()  # superscript two: isdigit() but int() fails
    (tmp_path / "\u0661").mkdir()  # Arabic-Indic one: isdigit() and int() == 1
    assert repository.version_folders(tmp_path) == [3]


def test_version_folders_empty(tmp_path: Path) -> None:
    assert repository.version_folders(tmp_path) == []


def test_list_models_skips_hidden_and_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "README").write_text("x")
    assert list(repository.list_models(tmp_path)) == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        repository.list_models(tmp_path / "missing")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [7]),
        ("version_policy: { latest { num_versions: 1 } }", [7]),
        ("version_policy: { latest { num_versions: 2 } }", [3, 7]),
        ("version_policy: { latest { num_versions: 10 } }", [1, 3, 7]),
        ("version_policy: { latest { } }", [7]),
        ("version_policy: { all { } }", [1, 3, 7]),
        ("version_policy: { specific { versions: [ 1, 7 ] } }", [1, 7]),
        ("version_policy: { specific { versions: [ 3 ] } }", [3]),
    ],
)
def test_select_versions(text: str, expected: list[int]) -> None:
    assert repository.select_versions([1, 3, 7], policy(text)) == expected


def test_select_versions_missing_specific_version() -> None:
    message = policy("version_policy: { specific { versions: [ 1, 4 ] } }")
    with pytest.raises(ConfigError, match=r"\[4\]"):
        repository.select_versions([1, 3, 7], message)


def test_load_instance_add_sub(tmp_path: Path) -> None:
    model_dir = models.add_sub_fp32(tmp_path)
    loaded = load_instance(model_dir, 1, read_config_file(model_dir), CPU)
    assert loaded.version == "1"
    config = loaded.config
    assert config.name == "add_sub_fp32"
    assert config.max_batch_size == 8
    assert config.batching.enabled
    assert config.batching.max_queue_delay_us == 2000
    assert [i.name for i in config.inputs] == ["INPUT0", "INPUT1"]
    assert config.output("OUTPUT0").labels == ("label0", "label1", "label2", "label3")  # type: ignore[union-attr]
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, dtype=np.float32)
    out = loaded.pipeline.backend.run({"INPUT0": a, "INPUT1": b}, ["OUTPUT0", "OUTPUT1"])
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


def test_load_instance_warms_the_kernels_requests_and_batches_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request pays a Numba compile or cache load: the classification extension's topk
    (each float output) and the drift monitor's kernels run on zeros at load."""
    model_dir = models.add_sub_fp32(tmp_path)
    rows = np.random.default_rng(0).normal(size=(500, 4))
    profile.save(profile.build(rows, "INPUT0"), model_dir / "1" / profile.FILENAME)
    classified: list[tuple[tuple[int, ...], np.dtype]] = []
    warmed: list[dict[str, tuple[int, ...]]] = []
    real_classify = classification.classify

    def classify(arr: np.ndarray, *args: object) -> np.ndarray:
        classified.append((arr.shape, arr.dtype))
        return real_classify(arr, *args)  # type: ignore[arg-type]

    def warm(self: DriftMonitor, inputs: dict[str, np.ndarray], outputs: object) -> None:
        warmed.append({k: v.shape for k, v in inputs.items()})

    monkeypatch.setattr(classification, "classify", classify)
    monkeypatch.setattr(DriftMonitor, "warm", warm)
    loaded = load_instance(model_dir, 1, read_config_file(model_dir), CPU)
    assert loaded.drift is not None
    assert classified == [((1, 4), np.dtype(np.float32))] * 2  # OUTPUT0 and OUTPUT1
    assert warmed == [{"INPUT0": (1, 4), "INPUT1": (1, 4)}]


def test_load_instance_completes_a_missing_config(tmp_path: Path) -> None:
    model_dir = models.noconfig(tmp_path)
    loaded = load_instance(model_dir, 1, read_config_file(model_dir), CPU)
    config = loaded.config
    assert config.name == "noconfig"
    assert config.max_batch_size == 4
    assert config.batching.enabled
    assert config.inputs[0].dims == (3,)
    x = np.ones((3, 3), dtype=np.float32)
    np.testing.assert_array_equal(
        loaded.pipeline.backend.run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"], x * 3
    )


def test_load_instance_non_batching(tmp_path: Path) -> None:
    model_dir = models.nobatch_fp32(tmp_path)
    loaded = load_instance(model_dir, 1, read_config_file(model_dir), CPU)
    assert loaded.config.max_batch_size == 0
    assert loaded.config.inputs[0].dims == (2, 3)


def test_load_instance_picks_the_asked_version(tmp_path: Path) -> None:
    model_dir = models.two_versions(tmp_path)
    message = read_config_file(model_dir)
    assert repository.select_versions(repository.version_folders(model_dir), message) == [1, 2]
    x = np.zeros((1, 4), dtype=np.float32)
    for version in (1, 2):
        loaded = load_instance(model_dir, version, message, CPU)
        out = loaded.pipeline.backend.run({"INPUT0": x}, ["OUTPUT0"])["OUTPUT0"]
        np.testing.assert_array_equal(out, x + version)


def test_load_instance_missing_file(tmp_path: Path) -> None:
    model_dir = models.add_sub_fp32(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_instance(model_dir, 2, read_config_file(model_dir), CPU)


def test_load_instance_corrupt_model(tmp_path: Path) -> None:
    model_dir = models.corrupt(tmp_path)
    with pytest.raises(ConfigError, match="ONNX Runtime cannot load"):
        load_instance(model_dir, 1, read_config_file(model_dir), CPU)


def test_load_instance_config_that_does_not_match_the_graph(tmp_path: Path) -> None:
    model_dir = models.write_model(tmp_path, "add_sub_fp32")
    io: list[models.Tensor] = [("INPUT0", "INT32", [4]), ("INPUT1", "FP32", [4])]
    out: list[models.Tensor] = [("OUTPUT0", "FP32", [4])]
    models.write_config(model_dir, models.config_text("add_sub_fp32", 8, io, out))
    with pytest.raises(ConfigError, match="INPUT0"):
        load_instance(model_dir, 1, read_config_file(model_dir), CPU)


@pytest.mark.parametrize("builder", [models.identity_bytes, models.identity_fp16, models.all_types])
def test_warm_up_succeeds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, builder: Callable[[Path], Path]
) -> None:
    """Warm-up runs the model for real: no exception and no 'warm-up failed' warning."""
    model_dir = builder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="runtime.loader"):
        loaded = load_instance(model_dir, 1, read_config_file(model_dir), CPU)
        warm_up(loaded.pipeline.backend, loaded.config)
    assert [r.getMessage() for r in caplog.records if "warm-up" in r.getMessage()] == []


def test_bytes_model_runs_on_bytes(tmp_path: Path) -> None:
    model_dir = models.identity_bytes(tmp_path)
    loaded = load_instance(model_dir, 1, read_config_file(model_dir), CPU)
    data = np.array([[b"ab", b"\xc3\xa9"]], dtype=object)
    out = loaded.pipeline.backend.run({"INPUT0": data}, ["OUTPUT0"])["OUTPUT0"]
    assert out.shape == (1, 2)
    assert [str(v) for v in out.ravel()] == ["ab", "\u00e9"]
