"""`conveyor train --data`: a user's CSV or Parquet file, read in batches, trained, gated and
published with the publish conventions; schema problems exit 2 naming the column.

The files are generated here with pyarrow; the runs go through the real command (`cli.main`)
with few epochs, and the published graphs are run with ONNX Runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from google.protobuf import text_format
from numpy.typing import NDArray

from runtime import cli
from runtime.monitoring import profile
from runtime.proto import model_config_pb2 as pb
from runtime.training import cache, scan, table

ROWS = 2000
# Features on very different scales: the graph must standardize them itself.
SCALES = np.array([1.0, 100.0, 0.01, 5.0])
OFFSETS = np.array([0.0, 1000.0, 0.0, -3.0])
CLASSES = ("high", "low", "mid")


@dataclass(frozen=True, slots=True)
class Data:
    """Raw features [n, 4] and their standardized form, from which the targets are made."""

    x: NDArray[np.float64]
    z: NDArray[np.float64]

    def classes(self) -> NDArray[np.str_]:
        score = 2 * self.z[:, 0] - 1.5 * self.z[:, 1]
        return np.where(score > 0.7, "high", np.where(score < -0.7, "low", "mid"))

    def quantity(self) -> NDArray[np.float64]:
        return 3 * self.z[:, 0] - 2 * self.z[:, 1] + 0.5 * self.z[:, 3] + 40.0

    def columns(self) -> dict[str, NDArray[np.float64]]:
        return {name: self.x[:, i] for i, name in enumerate("abcd")}


def make_data(rows: int = ROWS, seed: int = 0) -> Data:
    z = np.random.default_rng(seed).normal(size=(rows, 4))
    return Data(z * SCALES + OFFSETS, z)


def write_csv(path: Path, columns: dict[str, object]) -> Path:
    pacsv.write_csv(pa.table(columns), path)
    return path


def write_parquet(path: Path, columns: dict[str, object]) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=500)
    return path


def train(*flags: str) -> int:
    return cli.main(["train", *flags])


def data_flags(data: Path, target: str, repo: Path, name: str, *more: str) -> list[str]:
    return ["--data", str(data), "--target", target, "--repository", str(repo), "--name", name,
            *more]  # fmt: skip


def run_graph(version_dir: Path, x: NDArray[np.float64]) -> dict[str, NDArray[np.float32]]:
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {"input": x.astype(np.float32)})
    return dict(zip(names, values, strict=True))


def read_config(model_dir: Path) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def r2(predicted: NDArray[np.float32], y: NDArray[np.float64]) -> float:
    return float(1 - np.sum((predicted.reshape(-1) - y) ** 2) / np.sum((y - y.mean()) ** 2))


# End to end: CSV and Parquet, classification and regression


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train_data")


@pytest.fixture(scope="module")
def csv_classifier(work: Path) -> Path:
    """A three-class string target in a CSV, published as `cls`; its model folder."""
    data = make_data()
    path = write_csv(work / "cls.csv", {**data.columns(), "kind": data.classes()})
    assert train(*data_flags(path, "kind", work / "repo", "cls", "--epochs", "40")) == 0
    return work / "repo" / "cls"


@pytest.fixture(scope="module")
def parquet_regressor(work: Path) -> Path:
    """A decimal target in a Parquet file, published as `reg`; its model folder."""
    data = make_data(seed=1)
    path = write_parquet(work / "reg.parquet", {**data.columns(), "price": data.quantity()})
    assert train(*data_flags(path, "price", work / "repo", "reg", "--epochs", "40")) == 0
    return work / "repo" / "reg"


def test_a_csv_classifier_is_published_with_the_publish_tensors(csv_classifier: Path) -> None:
    config = read_config(csv_classifier)
    assert config.platform == "onnxruntime_onnx"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", pb.TYPE_FP32, [4])
    ]
    outputs = {o.name: o for o in config.output}
    assert outputs["label"].data_type == pb.TYPE_INT64
    assert outputs["probabilities"].data_type == pb.TYPE_FP32
    assert list(outputs["probabilities"].dims) == [3]
    assert outputs["probabilities"].label_filename == "labels.txt"
    assert (csv_classifier / "labels.txt").read_text().split() == list(CLASSES)
    assert sorted(p.name for p in (csv_classifier / "1").iterdir()) == [
        "drift_profile.npz", "model.onnx", "model_card.json",
    ]  # fmt: skip
    assert not (csv_classifier / "conveyor.yaml").exists()  # no server-side steps
    assert not list(csv_classifier.parent.glob(".train-*"))  # the cache of rows is gone


def test_the_classifier_takes_raw_feature_values(csv_classifier: Path) -> None:
    data = make_data(500, seed=7)  # rows it never saw
    out = run_graph(csv_classifier / "1", data.x)
    truth = np.searchsorted(CLASSES, data.classes())
    assert np.mean(out["label"] == truth) >= 0.9
    np.testing.assert_array_equal(out["label"], np.argmax(out["probabilities"], axis=1))
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)


def test_the_card_and_the_profile_describe_the_run(csv_classifier: Path) -> None:
    card = json.loads((csv_classifier / "1" / "model_card.json").read_text())
    assert card["task"] == "classification"
    assert card["data"]["features"] == ["a", "b", "c", "d"]
    assert card["data"]["classes"] == list(CLASSES)
    assert sum(card["data"]["split_rows"].values()) == ROWS == card["data"]["rows"]
    assert card["gate"]["metric"] == "accuracy"
    assert card["gate"]["value"] > card["gate"]["floor"]
    assert card["parity"]["label_mismatches"] == 0
    mean, std = (np.array(card["standardization"][k]) for k in ("mean", "std"))
    assert np.all(np.abs(mean - OFFSETS) < 0.2 * SCALES)
    assert np.all(np.abs(std / SCALES - 1) < 0.1)
    drift = profile.load(csv_classifier / "1" / profile.FILENAME)
    assert drift.input_name == "input"
    assert drift.feature_names == ("a", "b", "c", "d")
    assert drift.output_name == "probabilities"
    assert len(drift.class_proportions) == 3


def test_a_parquet_regressor_answers_on_the_targets_scale(parquet_regressor: Path) -> None:
    config = read_config(parquet_regressor)
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("prediction", pb.TYPE_FP32, [1])
    ]
    assert not (parquet_regressor / "labels.txt").exists()
    data = make_data(500, seed=8)
    out = run_graph(parquet_regressor / "1", data.x)
    assert out["prediction"].shape == (500, 1)
    assert r2(out["prediction"], data.quantity()) >= 0.95
    card = json.loads((parquet_regressor / "1" / "model_card.json").read_text())
    assert (card["task"], card["gate"]["metric"]) == ("regression", "r2")


def test_a_csv_regressor_with_an_r2_floor(work: Path) -> None:
    data = make_data(seed=2)
    path = write_csv(work / "reg.csv", {**data.columns(), "y": data.quantity()})
    flags = data_flags(path, "y", work / "repo", "csv_reg", "--epochs", "20", "--min-r2", "0.8")
    assert train(*flags) == 0
    out = run_graph(work / "repo" / "csv_reg" / "1", data.x)
    assert r2(out["prediction"], data.quantity()) >= 0.8


def test_a_parquet_classifier_on_chosen_features(work: Path) -> None:
    data = make_data(seed=3)
    labels = (data.z[:, 0] > 0).astype(np.int64) + 2 * (data.z[:, 1] > 0)  # classes 0..3
    path = write_parquet(work / "cls.parquet", {**data.columns(), "noise": data.z[:, 2],
                                                "group": labels})  # fmt: skip
    flags = data_flags(path, "group", work / "repo", "pq_cls", "--features", "b,a",
                       "--epochs", "20", "--min-accuracy", "0.85")  # fmt: skip
    assert train(*flags) == 0
    model_dir = work / "repo" / "pq_cls"
    assert (model_dir / "labels.txt").read_text().split() == ["0", "1", "2", "3"]
    assert list(read_config(model_dir).input[0].dims) == [2]
    out = run_graph(model_dir / "1", data.x[:, [1, 0]])
    assert np.mean(out["label"] == labels) >= 0.85


def test_a_failed_gate_exits_1_and_publishes_nothing(
    csv_classifier: Path, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_data(seed=4)
    noisy = np.random.default_rng(0).permutation(data.classes())  # labels unrelated to features
    path = write_csv(work / "noisy.csv", {**data.columns(), "kind": noisy})
    flags = data_flags(path, "kind", work / "repo", "cls", "--epochs", "1",
                       "--min-accuracy", "0.99")  # fmt: skip
    assert train(*flags) == 1
    err = capsys.readouterr().err
    assert "test accuracy" in err
    assert "at least 0.9900 (--min-accuracy)" in err
    assert "nothing was published" in err
    assert [p.name for p in csv_classifier.iterdir() if p.is_dir()] == ["1"]
    failed = [json.loads(p.read_text()) for p in (work / "repo" / ".runs").glob("cls-*.json")]
    assert [r["status"] for r in failed].count("failed") == 1


def test_the_next_run_publishes_the_next_version(csv_classifier: Path, work: Path) -> None:
    flags = data_flags(work / "cls.csv", "kind", work / "repo", "cls", "--epochs", "2",
                       "--min-accuracy", "0")  # fmt: skip
    assert train(*flags) == 0
    assert sorted(p.name for p in csv_classifier.iterdir() if p.is_dir()) == ["1", "2"]


# Schema problems: exit 2, naming the column; nothing is written


@pytest.fixture
def frame() -> dict[str, object]:
    data = make_data(400, seed=5)
    return {**data.columns(), "y": data.quantity()}


def refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: Path, *flags: str) -> str:
    """The message of a run that exits 2; the repository stays untouched."""
    repo = tmp_path / "repo"
    assert train(*data_flags(data, flags[0], repo, "m", *flags[1:])) == 2
    assert not repo.exists()
    err = capsys.readouterr().err
    assert "nothing was published" in err
    return err


def test_a_missing_target_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    err = refused(tmp_path, capsys, write_csv(tmp_path / "d.csv", frame), "price")
    assert "no target column 'price'" in err
    assert "'a', 'b', 'c', 'd', 'y'" in err


def test_an_unknown_feature_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    path = write_parquet(tmp_path / "d.parquet", frame)
    err = refused(tmp_path, capsys, path, "y", "--features", "a,zz")
    assert "no feature column 'zz'" in err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_categorical_column_is_refused_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object], suffix: str
) -> None:
    city = np.array(["Paris", "Oslo", "Lima", "Rome"])[np.arange(400) % 4]
    write = write_csv if suffix == ".csv" else write_parquet
    err = refused(tmp_path, capsys, write(tmp_path / f"d{suffix}", {**frame, "city": city}), "y")
    assert "categorical (string) feature column 'city'" in err
    assert "'Paris'" in err
    assert "one FP32 tensor 'input'" in err
    assert "--features" in err


def test_a_missing_target_value_in_a_csv_is_named_with_its_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    y = np.asarray(frame["y"]).copy()
    y[123] = np.nan  # written as "nan", one of the CSV reader's null values
    err = refused(tmp_path, capsys, write_csv(tmp_path / "d.csv", {**frame, "y": y}), "y")
    assert "target 'y' has no value" in err
    assert "data row 124" in err


def test_nan_in_a_parquet_target_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    y = np.asarray(frame["y"]).copy()
    y[7] = np.nan
    path = write_parquet(tmp_path / "d.parquet", {**frame, "y": y})
    assert "target 'y' has no value" in refused(tmp_path, capsys, path, "y")


def test_a_non_number_after_the_first_block_names_the_column(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    frame: dict[str, object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(table, "CSV_BLOCK_BYTES", 4096)  # many blocks from a small file
    path = write_csv(tmp_path / "d.csv", frame)
    lines = path.read_text().splitlines()
    lines[-1] = '"oops",' + lines[-1].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    err = refused(tmp_path, capsys, path, "y")
    assert "feature 'a'" in err
    assert "'oops'" in err


def test_a_decimal_target_is_not_taken_as_classes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    path = write_parquet(tmp_path / "d.parquet", frame)
    err = refused(tmp_path, capsys, path, "y", "--task", "classification")
    assert "target 'y' is double" in err
    assert "--task regression" in err


def test_an_integer_target_with_too_many_values_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    path = write_csv(tmp_path / "d.csv", {**frame, "y": np.arange(400) * 7})  # integer: classes
    err = refused(tmp_path, capsys, path, "y")
    assert "target 'y' has more than 256 distinct values" in err
    assert "--task regression" in err


def test_a_floor_of_the_other_task_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], frame: dict[str, object]
) -> None:
    path = write_parquet(tmp_path / "d.parquet", frame)
    err = refused(tmp_path, capsys, path, "y", "--min-accuracy", "0.9")
    assert "trained as a regression; use --min-r2" in err


def test_too_few_rows_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = {"a": np.arange(30.0), "y": np.arange(30.0)}
    err = refused(tmp_path, capsys, write_csv(tmp_path / "d.csv", small), "y")
    assert "30 data rows" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "name a recipe"),
        (["--data", "x.csv", "--repository", "r", "--name", "m"], "--data needs --target"),
        (["digits", "--data", "x.csv"], "either the recipe 'digits' or --data"),
        (["digits", "--target", "y"], "--target only apply with --data"),
    ],
)
def test_flags_that_do_not_make_one_run_exit_2(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(*flags) == 2
    assert message in capsys.readouterr().err


# The parts: the split, the statistics, the cache's shuffled epochs


def test_a_rows_draw_does_not_depend_on_the_batches() -> None:
    whole = scan.draws(3, 0, 1000)
    parts = np.concatenate([scan.draws(3, 0, 300), scan.draws(3, 300, 1), scan.draws(3, 301, 699)])
    np.testing.assert_array_equal(whole, parts)
    assert not np.array_equal(whole, scan.draws(4, 0, 1000))


def test_pass_one_reads_in_batches_and_gathers_the_training_rows(
    tmp_path: Path, frame: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table, "CSV_BLOCK_BYTES", 4096)
    path = write_csv(tmp_path / "d.csv", frame)
    source = table.open_table(path, "y")
    assert (source.task, source.features) == ("regression", ("a", "b", "c", "d"))
    with cache.CacheWriter(tmp_path / "c.arrow", 4, scan.cache_target_type(source)) as writer:
        result = scan.scan(source, 0, writer)
    assert result.batches > 5  # the file was never read whole
    x = np.column_stack([np.asarray(frame[c]) for c in "abcd"])
    train_rows = scan.draws(0, 0, len(x)) >= scan.TEST_FRACTION + scan.VALIDATION_FRACTION
    np.testing.assert_allclose(result.mean, x[train_rows].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(result.std, x[train_rows].std(axis=0), rtol=1e-5)
    assert result.split_rows["train"] == int(train_rows.sum())
    assert len(result.validation) + len(result.test) == len(x) - int(train_rows.sum())
    with cache.Cache(tmp_path / "c.arrow") as cached:
        rows = np.concatenate([cached.read(i)[0] for i in range(cached.batches)])
    np.testing.assert_array_equal(rows, x[train_rows].astype(np.float32))


def sorted_cache(path: Path, rows: int, batch_rows: int) -> None:
    """Rows 0..rows-1 (feature = row number, target = row number // 1000): sorted by target."""
    with cache.CacheWriter(path, 1, pa.int64()) as writer:
        for start in range(0, rows, batch_rows):
            index = np.arange(start, min(start + batch_rows, rows))
            writer.write(index.astype(np.float32).reshape(-1, 1), index // 1000)


def test_an_epoch_deals_every_row_once_in_a_shuffled_order(tmp_path: Path) -> None:
    sorted_cache(tmp_path / "c.arrow", 20_000, 500)
    with cache.Cache(tmp_path / "c.arrow") as cached:
        epochs = []
        for seed in (1, 2):
            rng = np.random.default_rng(seed)
            parts = list(cache.minibatches(cached, rng, batch_size=64, buffer_rows=4096))
            assert all(len(x) == 64 for x, _ in parts[:-1])
            rows = np.concatenate([x[:, 0] for x, _ in parts]).astype(np.int64)
            np.testing.assert_array_equal(np.sort(rows), np.arange(20_000))
            np.testing.assert_array_equal(np.concatenate([y for _, y in parts]), rows // 1000)
            # Minibatches mix targets the file keeps together.
            assert np.mean([len(np.unique(y)) > 1 for _, y in parts]) > 0.9
            epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])


def test_the_smallest_keys_are_kept_within_the_capacity() -> None:
    keys = np.random.default_rng(0).random(10_000)
    kept = scan.Smallest(100)
    for start in range(0, 10_000, 300):
        part = slice(start, start + 300)
        index = np.arange(10_000)[part]
        kept.add(keys[part], index.astype(np.float32).reshape(-1, 1), index)
    _, rows = kept.rows(1)
    np.testing.assert_array_equal(rows, np.argsort(keys)[:100])
