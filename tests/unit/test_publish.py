"""The publish gate and readers on their own: figures, the worst-rows table, bad files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from runtime.publish import boosted, data, fallback, files, parity, sources
from runtime.publish.errors import BadInput, ParityFailed


def classifier_outputs(rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    p = np.random.default_rng(seed).dirichlet(np.ones(3), size=rows).astype(np.float32)
    return {"label": np.argmax(p, axis=1).astype(np.int64), "probabilities": p}


def test_matching_classifier_answers_pass_with_their_figures() -> None:
    native = classifier_outputs(20)
    got = {k: v.copy() for k, v in native.items()}
    got["probabilities"][3, 0] += 5e-5
    result = parity.check("classifier", native, got, 1e-4, 1e-4, 20)
    assert result.label_mismatches == 0
    assert result.max_abs_diff == pytest.approx(5e-5, rel=1e-2)
    assert result.as_dict()["rows"] == 20


def test_differing_classifier_answers_fail_with_the_worst_rows_first() -> None:
    native = classifier_outputs(20)
    got = {k: v.copy() for k, v in native.items()}
    got["probabilities"][7] += 0.01
    got["label"][12] = (got["label"][12] + 1) % 3
    with pytest.raises(ParityFailed) as caught:
        parity.check("classifier", native, got, 1e-4, 1e-4, 20)
    assert caught.value.exit_code == 1
    message = str(caught.value)
    assert "differ on 2 of 20 sample rows" in message
    assert "1 labels differ" in message
    table = message.split("worst rows:\n")[1].splitlines()
    assert [int(line.split()[0]) for line in table[1:3]] == [12, 7]


def test_regression_is_relative_with_an_absolute_floor_near_zero() -> None:
    native = {"prediction": np.array([[100.0], [0.0], [-50.0]], np.float32)}
    close = {"prediction": np.array([[100.005], [5e-5], [-50.002]], np.float32)}
    result = parity.check("regressor", native, close, 1e-4, 1e-4, 3)
    assert result.max_rel_diff <= 1e-4
    far = {"prediction": np.array([[100.5], [0.0], [-50.0]], np.float32)}
    with pytest.raises(ParityFailed, match=r"max relative 0\.005") as caught:
        parity.check("regressor", native, far, 1e-4, 1e-4, 3)
    assert "100.5" in str(caught.value)
    assert parity.check("regressor", native, far, 1e-4, 1e-2, 3).max_abs_diff == 0.5


def test_an_onnx_source_has_nothing_to_compare() -> None:
    result = parity.check("onnx", None, classifier_outputs(4), 1e-4, 1e-4, 4)
    assert result.max_abs_diff == 0.0
    assert "no native model" in result.compared


def test_a_csv_sample_may_have_a_header_row(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("a,b,c\n1,2,3\n4.5,5,6\n")
    rows = data.read_rows(path, "sample")
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, [[1, 2, 3], [4.5, 5, 6]])


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("rows.csv", "1,2\n3,x\n", "not a number"),
        ("rows.csv", "1,2\n3\n", "different numbers of columns"),
        ("rows.csv", "a,b\n", "expected rows"),
        ("rows.npy", "not numpy", "cannot be read"),
        ("rows.parquet", "not parquet", "cannot be read as .parquet"),
        ("rows.feather", "", "expected a .npy, .csv, .parquet"),
    ],
)
def test_bad_sample_files_name_the_file(
    tmp_path: Path, name: str, content: str, expected: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(BadInput, match=expected) as caught:
        data.read_rows(path, "sample")
    assert str(path) in str(caught.value)
    assert caught.value.exit_code == 2


def test_a_parquet_sample_gives_its_numeric_columns_in_order(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    table = pa.table({"b": [1.5, 2.5], "a": pa.array([3, 4], pa.int16()), "c": [True, False]})
    pq.write_table(table, path)
    rows = data.read_rows(path, "sample")
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, [[1.5, 3, 1], [2.5, 4, 0]])


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (["x", "y"], "column 'bad' is string; expected numeric feature columns only"),
        ([1.0, None], "column 'bad' has 1 nulls"),
    ],
)
def test_a_parquet_sample_with_a_column_that_is_no_feature_is_refused(
    tmp_path: Path, column: list[object], expected: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"good": [1.0, 2.0], "bad": column}), path)
    with pytest.raises(BadInput, match=re.escape(expected)):
        data.read_rows(path, "sample")


def test_a_pickled_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BadInput, match="cannot be read"):
        data.read_rows(path, "sample")


def small_rows(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(60, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def test_an_unfitted_xgboost_model_is_bad_input() -> None:
    import xgboost

    x, _ = small_rows()
    with pytest.raises(BadInput, match="not fitted"):
        sources.prepare(xgboost.XGBClassifier(), x, "input")


def test_an_xgboost_objective_without_a_served_form_is_bad_input() -> None:
    import xgboost

    x, y = small_rows()
    ranker = xgboost.train({"objective": "rank:pairwise"}, xgboost.DMatrix(x, y), 2)
    with pytest.raises(BadInput, match="objective 'rank:pairwise'"):
        sources.prepare(ranker, x, "input")


def test_a_boosted_model_checks_the_sample_width() -> None:
    import lightgbm

    x, y = small_rows()
    model = lightgbm.LGBMClassifier(n_estimators=3, min_child_samples=5, verbose=-1).fit(x, y)
    with pytest.raises(BadInput, match="expects 4 features"):
        sources.prepare(model, x[:, :3], "input")


def test_a_converted_regressor_answers_prediction_one_row_each() -> None:
    import xgboost

    x, y = small_rows()
    model = xgboost.XGBRegressor(n_estimators=3).fit(x, y.astype(np.float32))
    source = sources.prepare(model, x, "features")
    assert source.kind == "regressor"
    assert [o.name for o in source.model.graph.output] == ["prediction"]
    assert [i.name for i in source.model.graph.input] == ["features"]
    assert source.opset == boosted.ONNXMLTOOLS_OPSET
    got = parity.run_onnx(source.model.SerializeToString(), x)
    assert source.native is not None
    result = parity.check("regressor", source.native, got, 1e-4, 1e-4, len(x))
    assert result.max_rel_diff <= 1e-4


def test_the_fallback_gate_wants_identical_answers() -> None:
    native = classifier_outputs(10)
    same = {k: v.copy() for k, v in native.items()}
    result = fallback.check(native, same, 1e-4, 1e-4, 10)
    assert result.max_abs_diff == 0.0
    assert "Python model" in result.compared
    same["probabilities"][4, 1] += 1e-7
    with pytest.raises(ParityFailed, match="differ on 1 sample answers"):
        fallback.check(native, same, 1e-4, 1e-4, 10)
    with pytest.raises(BadInput, match="fallback 'onnx'"):
        fallback.check_choice("onnx")


def test_a_python_model_config_has_the_signatures_tensors() -> None:
    outputs = classifier_outputs(4)
    model = fallback.signature("input", 7, outputs)
    text = files.config_text("m", model, 16, files.label_output(model, 3), python=True)
    assert 'backend: "python"' in text
    assert "platform" not in text
    assert "intra_op_thread_count" not in text
    assert 'label_filename: "labels.txt"' in text
    assert "dims: 7" in text
    assert "dims: 3" in text
