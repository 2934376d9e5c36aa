"""The training stages: ingest -> preprocess -> train -> evaluate -> export -> publish.

Digits is trained once per module with the fast settings; the gates and the publish step are
tested on cheap inputs (one epoch, an untrained MLP, small byte strings).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from numpy.typing import NDArray

from runtime import cli, config, training
from runtime.monitoring import profile
from runtime.proto import model_config_pb2 as pb
from runtime.training import export, ingest, pipeline, preprocess, publish, train
from runtime.training.record import RunRecord

# The contract the server reads, as documented for conveyor.yaml.
DIGITS_CONTRACT = yaml.safe_load("""
pipeline:
  pre:
    - kernel: standardize
      tensor: pixels
      args: {mean: "@mean", std: "@std"}
  post:
    - kernel: softmax
      tensor: scores
""")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="module")
def record(repository: Path) -> RunRecord:
    """Digits trained with the fast settings and published as version 1."""
    return training.digits(repository, fast=True)


@pytest.fixture(scope="module")
def version_dir(record: RunRecord) -> Path:
    return Path(record.version_dir)


def _writer(data: bytes) -> publish.Writer:
    return lambda path: path.write_bytes(data)


def _scores(model: bytes, features: NDArray[np.float32]) -> NDArray[np.float32]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out: NDArray[np.float32] = session.run(["scores"], {"pixels": features})[0]
    return out


# The end-to-end run


def test_digits_is_published_above_the_floor(record: RunRecord, repository: Path) -> None:
    assert record.status == "published"
    assert record.error == ""
    assert record.version == 1
    assert Path(record.version_dir) == repository / "digits" / "1"
    assert record.metrics["test_accuracy"] >= training.DIGITS.accuracy_floor
    assert record.split_sizes == {"train": 1077, "validation": 360, "test": 360}
    assert len(record.history) == training.DIGITS.fast_epochs
    assert set(record.stage_seconds) == {
        "ingest",
        "preprocess",
        "train",
        "evaluate",
        "export",
        "publish",
    }


def test_the_version_folder_holds_every_file(version_dir: Path) -> None:
    assert sorted(p.name for p in version_dir.iterdir()) == [
        "drift_profile.npz",
        "model.onnx",
        "model_card.json",
        "pipeline.npz",
    ]
    assert sorted(p.name for p in version_dir.parent.iterdir()) == [
        "1",
        "config.pbtxt",
        "conveyor.yaml",
        "labels.txt",
    ]


def test_pipeline_arrays_are_float32_with_no_zero_std(version_dir: Path) -> None:
    with np.load(version_dir / "pipeline.npz", allow_pickle=False) as data:
        mean, std = data["mean"], data["std"]
    assert mean.dtype == std.dtype == np.float32
    assert mean.shape == std.shape == (64,)
    assert np.all(std > 0)
    # Pixel (0, 0) is blank in every digit: constant, so std 1 and mean 0.
    assert (mean[0], std[0]) == (0.0, 1.0)


def test_the_model_card(record: RunRecord, version_dir: Path) -> None:
    card = json.loads((version_dir / "model_card.json").read_text())
    assert card["model"] == "digits"
    assert card["dataset"]["name"] == "digits"
    assert card["dataset"]["split_sizes"] == record.split_sizes
    assert card["dataset"]["classes"] == [str(i) for i in range(10)]
    assert card["metrics"] == record.metrics
    assert card["parity"]["max_abs_diff"] <= card["parity"]["tolerance"] == 1e-4
    assert card["parity"]["argmax_mismatches"] == 0
    assert {"torch", "onnx", "onnxruntime", "numpy", "scikit-learn"} <= set(card["libraries"])
    assert datetime.fromisoformat(card["created_at"]).utcoffset() is not None
    assert card["seed"] == 0
    assert card["settings"]["epochs"] == training.DIGITS.fast_epochs


def test_the_drift_profile_is_of_raw_features(record: RunRecord, version_dir: Path) -> None:
    p = profile.load(version_dir / profile.FILENAME)
    assert (p.input_name, p.output_name, p.features) == ("pixels", "scores", 64)
    assert p.rows == record.split_sizes["train"]
    assert p.feature_names[:2] == ("pixel_0_0", "pixel_0_1")
    assert p.class_proportions.shape == (10,)
    assert p.class_proportions.sum() == pytest.approx(1.0)
    # Raw pixels are 0..16; standardized ones would reach far beyond.
    assert p.edges[:, -1].max() <= 16.0 + 1e-6


def test_config_pbtxt(version_dir: Path) -> None:
    message = config.read_config_file(version_dir.parent)
    assert message.name == "digits"
    assert message.platform == "onnxruntime_onnx"
    assert message.max_batch_size == 64
    assert [(t.name, t.data_type, list(t.dims)) for t in message.input] == [
        ("pixels", pb.TYPE_FP32, [64])
    ]
    (output,) = message.output
    assert (output.name, output.data_type, list(output.dims)) == ("scores", pb.TYPE_FP32, [10])
    assert output.label_filename == "labels.txt"
    assert message.dynamic_batching.max_queue_delay_microseconds == 500


def test_labels_and_the_serving_pipeline(version_dir: Path) -> None:
    model_dir = version_dir.parent
    assert (model_dir / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    assert yaml.safe_load((model_dir / "conveyor.yaml").read_text()) == DIGITS_CONTRACT


def test_the_onnx_model_has_a_dynamic_batch_and_no_standardization(version_dir: Path) -> None:
    model = onnx.load(version_dir / "model.onnx")
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "pixels"
    assert dims[0].dim_param
    assert dims[1].dim_value == 64
    assert [o.name for o in model.graph.output] == ["scores"]
    assert {n.op_type for n in model.graph.node} <= {"Gemm", "Relu", "MatMul", "Add"}


def test_raw_pixels_through_the_served_steps_give_the_recorded_accuracy(
    record: RunRecord, version_dir: Path
) -> None:
    test = training.held_out(record)
    assert len(test) == 360
    assert test.features.max() == 16.0
    standardizer = preprocess.load(version_dir / "pipeline.npz")
    model = (version_dir / "model.onnx").read_bytes()
    scores = _scores(model, standardizer.apply(test.features))
    accuracy = float(np.mean(np.argmax(scores, axis=1) == test.labels))
    assert accuracy == pytest.approx(record.metrics["test_accuracy"])
    one_row = _scores(model, standardizer.apply(test.features[:1]))
    np.testing.assert_allclose(one_row, scores[:1], atol=1e-5)


def test_the_run_record_is_written(record: RunRecord, repository: Path) -> None:
    path = Path(record.record_path)
    assert path.parent == repository / ".runs"
    written = json.loads(path.read_text())
    assert written["status"] == "published"
    assert written["version"] == 1
    assert written["metrics"] == record.metrics


# Reproducibility


def _standardized_digits(seed: int) -> ingest.Splits:
    raw = ingest.split(ingest.load("digits"), seed)
    s = preprocess.fit(raw.train.features)
    parts = (raw.train, raw.validation, raw.test)
    return ingest.Splits(*(ingest.Split(s.apply(p.features), p.labels) for p in parts))


def test_the_same_seed_gives_the_same_weights() -> None:
    splits = _standardized_digits(seed=3)
    settings = training.DIGITS.settings_for(epochs=2)
    threads = torch.get_num_threads()
    runs = [train.train(splits.train, splits.validation, 10, settings, seed=s) for s in (3, 3, 4)]
    first, again, other = (r.module.state_dict() for r in runs)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert runs[0].history == runs[1].history
    # The training's thread and determinism settings do not leak out of it.
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_split_is_seeded_and_stratified() -> None:
    dataset = ingest.load("digits")
    a, b = ingest.split(dataset, 5), ingest.split(dataset, 5)
    np.testing.assert_array_equal(a.test.features, b.test.features)
    assert not np.array_equal(a.test.labels, ingest.split(dataset, 6).test.labels)
    shares = np.bincount(a.test.labels) / len(a.test)
    np.testing.assert_allclose(shares, np.bincount(dataset.labels) / len(dataset.labels), atol=0.01)


def test_constant_columns_get_std_one() -> None:
    s = preprocess.fit(np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 5.0]], np.float32))
    np.testing.assert_array_equal(s.mean, [0.0, 2.0, 5.0])
    np.testing.assert_array_equal(s.std, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(s.apply(np.array([[0.0, 2.0, 5.0]])), [[0.0, 0.0, 0.0]])


# The gates


@pytest.fixture(scope="module")
def untrained() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return train.build_mlp(64, 10, (16,)).eval()


@pytest.fixture(scope="module")
def exported(untrained: torch.nn.Sequential) -> bytes:
    return export.to_onnx(untrained, 64, "pixels", "scores")


@pytest.fixture(scope="module")
def rows() -> NDArray[np.float32]:
    return np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)


def test_the_parity_gate_passes_a_faithful_export(
    exported: bytes, untrained: torch.nn.Sequential, rows: NDArray[np.float32]
) -> None:
    parity = export.check_parity(exported, untrained, rows, ("pixels", "scores"))
    assert parity.max_abs_diff <= 1e-4
    assert parity.argmax_mismatches == 0
    assert parity.rows == 50


def test_the_parity_gate_stops_a_tampered_graph(
    exported: bytes, untrained: torch.nn.Sequential, rows: NDArray[np.float32]
) -> None:
    model = onnx.load_from_string(exported)
    last_bias = next(t for t in model.graph.initializer if list(t.dims) == [10])
    bias = onnx.numpy_helper.to_array(last_bias) + np.float32(0.01)
    last_bias.CopyFrom(onnx.numpy_helper.from_array(bias, last_bias.name))
    with pytest.raises(training.ParityError, match=r"max abs diff 0\.01 \(tolerance 0\.0001\)"):
        export.check_parity(model.SerializeToString(), untrained, rows, ("pixels", "scores"))


def test_the_parity_gate_stops_another_model(exported: bytes, rows: NDArray[np.float32]) -> None:
    torch.manual_seed(1)
    other = train.build_mlp(64, 10, (16,))
    with pytest.raises(training.ParityError, match="argmax mismatches"):
        export.check_parity(exported, other, rows, ("pixels", "scores"))


def test_the_parity_gate_checks_tensor_names(
    exported: bytes, untrained: torch.nn.Sequential, rows: NDArray[np.float32]
) -> None:
    with pytest.raises(training.ParityError, match=r"inputs \['pixels'\].*expected \['features'\]"):
        export.check_parity(exported, untrained, rows, ("features", "scores"))


def test_the_accuracy_floor_stops_the_pipeline(tmp_path: Path) -> None:
    recipe = replace(training.DIGITS, accuracy_floor=1.01)
    with pytest.raises(training.AccuracyBelowFloor, match=r"below the floor 1\.0100"):
        training.run(recipe, tmp_path, epochs=1)
    assert not (tmp_path / "digits").exists()
    (path,) = (tmp_path / ".runs").iterdir()
    written = json.loads(path.read_text())
    assert written["status"] == "failed"
    assert "AccuracyBelowFloor" in written["error"]
    assert "export" not in written["stage_seconds"]


# Publishing


def test_versions_count_up_from_the_highest(tmp_path: Path) -> None:
    for name in ("1", "3", "07", "x", ".9"):
        (tmp_path / name).mkdir()
    assert publish.versions(tmp_path) == [1, 3]
    assert publish.next_version(tmp_path) == 4
    assert publish.next_version(tmp_path / "absent") == 1


def test_a_second_publish_is_version_two(tmp_path: Path) -> None:
    recipe = replace(training.DIGITS, accuracy_floor=0.0)
    first = training.run(recipe, tmp_path, epochs=1)
    second = training.run(recipe, tmp_path, epochs=1)
    assert (first.version, second.version) == (1, 2)
    assert first.model_files_changed == ["config.pbtxt", "labels.txt", "conveyor.yaml"]
    assert second.model_files_changed == []
    assert publish.versions(tmp_path / "digits") == [1, 2]


def test_model_files_are_rewritten_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    assert publish.write_if_changed(path, b"a\n")
    assert not publish.write_if_changed(path, b"a\n")
    assert publish.write_if_changed(path, b"b\n")
    assert path.read_bytes() == b"b\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]


def _crash(path: Path) -> None:
    path.write_bytes(b"half a file")
    raise OSError("disk full")


def test_a_crash_mid_publish_leaves_no_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    publish.publish(model_dir, {"config.pbtxt": b"v1"}, {"model.onnx": _writer(b"1")})
    with pytest.raises(OSError, match="disk full"):
        publish.publish(
            model_dir,
            {"config.pbtxt": b"v1"},
            {"model.onnx": _writer(b"2"), "pipeline.npz": _crash},
        )
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == b"1"


def test_a_crash_in_a_first_publish_leaves_no_model(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk full"):
        publish.publish(tmp_path / "m", {"config.pbtxt": b"c"}, {"model.onnx": _crash})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_in_the_pipeline_publish_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = replace(training.DIGITS, accuracy_floor=0.0)
    training.run(recipe, tmp_path, epochs=1)
    monkeypatch.setattr(pipeline.profile, "save", lambda p, path: _crash(path))
    with pytest.raises(OSError, match="disk full"):
        training.run(recipe, tmp_path, epochs=1)
    model_dir = tmp_path / "digits"
    assert publish.versions(model_dir) == [1]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")]


# The command line


def test_cli_trains_tabular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "tabular", "--repository", str(tmp_path), "--fast"]) == 0
    assert "breast_cancer version 1" in capsys.readouterr().out
    model_dir = tmp_path / "breast_cancer"
    assert (model_dir / "labels.txt").read_text() == "malignant\nbenign\n"
    message = config.read_config_file(model_dir)
    assert [(t.name, list(t.dims)) for t in message.input] == [("features", [30])]
    assert [(t.name, list(t.dims)) for t in message.output] == [("scores", [2])]
    settings = yaml.safe_load((model_dir / "conveyor.yaml").read_text())
    assert settings["pipeline"]["pre"][0]["tensor"] == "features"
    card = json.loads((model_dir / "1" / "model_card.json").read_text())
    assert card["metrics"]["test_accuracy"] >= training.TABULAR.accuracy_floor


def test_cli_if_missing_skips_a_trained_model(
    record: RunRecord, repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "digits", "--repository", str(repository), "--if-missing"]
    assert cli.main(argv) == 0
    assert "already has a version" in capsys.readouterr().err
    assert publish.versions(repository / "digits") == [record.version]


def test_cli_refuses_zero_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "digits", "--repository", "unused", "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err
