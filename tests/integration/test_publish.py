"""`conveyor publish` and `conveyor.publish` end to end: real models trained here on bundled
data, published, served by a real server, and compared with the native predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import lightgbm
import numpy as np
import onnx
import pytest
import torch
import xgboost
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import conveyor
from runtime import cli
from tests.integration.conftest import (
    PROTOCOLS,
    ServerProcess,
    infer_in_batches,
    inputs_of,
    make_client,
    requested_output,
    running_server,
)

ROOT = Path(__file__).resolve().parents[2]
BATCH = 32  # the iris models take at most 32 rows a request
BREAST_CANCER_NAMES = ["malignant", "benign"]
CLASSIFIER_OUTPUTS = ("label", "probabilities")


@dataclass(frozen=True, slots=True)
class Published:
    repo: Path
    work: Path
    bc: Any  # breast cancer classifier, published through the CLI from a .joblib file
    diabetes: Any  # regressor, published through conveyor.publish
    iris: Any  # string classes, published through conveyor.publish
    bc_x: np.ndarray
    diabetes_x: np.ndarray
    iris_x: np.ndarray
    cli_output: str


def classifier() -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=1000))])


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    work = tmp_path_factory.mktemp("publish")
    repo = work / "repo"
    bc_x, bc_y = load_breast_cancer(return_X_y=True)
    bc = classifier().fit(bc_x, bc_y)
    joblib.dump(bc, work / "bc.joblib")
    # A CSV sample with a header row; the reference (for the drift profile) as .npy.
    header = ",".join(f"f{i}" for i in range(bc_x.shape[1]))
    np.savetxt(work / "bc.csv", bc_x[::5], delimiter=",", header=header, comments="")
    np.save(work / "bc_reference.npy", bc_x)
    (work / "bc_labels.txt").write_text("\n".join(BREAST_CANCER_NAMES) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "publish", str(work / "bc.joblib"),
         "--repository", str(repo), "--name", "bc", "--sample", str(work / "bc.csv"),
         "--reference", str(work / "bc_reference.npy"), "--labels", str(work / "bc_labels.txt")],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    d_x, d_y = load_diabetes(return_X_y=True)
    diabetes = Pipeline([("scale", StandardScaler()), ("ridge", Ridge())]).fit(d_x, d_y)
    conveyor.publish(diabetes, d_x[:100], repository=repo, name="diabetes")

    iris_x, iris_y = load_iris(return_X_y=True)
    iris_names = np.array(load_iris().target_names)[iris_y]
    iris = classifier().fit(iris_x, iris_names)
    conveyor.publish(iris, iris_x, repository=repo, name="iris", max_batch_size=32)
    return Published(
        repo, work, bc, diabetes, iris,
        bc_x.astype(np.float32), d_x.astype(np.float32), iris_x.astype(np.float32), done.stdout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def onnx_published(published: Published) -> Path:
    """The iris graph saved as a .onnx file and published as is through the CLI."""
    path = published.work / "iris.onnx"
    path.write_bytes((published.repo / "iris" / "1" / "model.onnx").read_bytes())
    np.save(published.work / "iris.npy", published.iris_x)
    labels = published.work / "iris_labels.txt"
    labels.write_text("setosa\nversicolor\nvirginica\n")
    code = cli.main(
        ["publish", str(path), "--repository", str(published.repo), "--name", "iris_onnx",
         "--sample", str(published.work / "iris.npy"), "--labels", str(labels)]
    )  # fmt: skip
    assert code == 0
    return published.repo / "iris_onnx"


@dataclass(frozen=True, slots=True)
class Boosted:
    xgb_bc: Any  # XGBClassifier, saved as .json and published through the CLI
    lgb_diabetes: Any  # LGBMRegressor, published through conveyor.publish
    lgb_bc: Any  # LightGBM Booster, saved as .txt and published through the CLI


@pytest.fixture(scope="module")
def boosted(published: Published) -> Boosted:
    """Small XGBoost and LightGBM models (25 trees), published beside the scikit-learn ones."""
    work, repo = published.work, published.repo
    bc_y = load_breast_cancer().target
    xgb_bc = xgboost.XGBClassifier(n_estimators=25, max_depth=3).fit(published.bc_x, bc_y)
    xgb_bc.save_model(work / "xgb_bc.json")
    code = cli.main(
        ["publish", str(work / "xgb_bc.json"), "--repository", str(repo), "--name", "xgb_bc",
         "--sample", str(work / "bc.csv"), "--labels", str(work / "bc_labels.txt")]
    )  # fmt: skip
    assert code == 0

    d_y = load_diabetes().target
    lgb_diabetes = lightgbm.LGBMRegressor(n_estimators=25, verbose=-1).fit(
        published.diabetes_x, d_y
    )
    conveyor.publish(lgb_diabetes, published.diabetes_x, repository=repo, name="lgb_diabetes")

    lgb_bc = lightgbm.LGBMClassifier(n_estimators=25, verbose=-1).fit(published.bc_x, bc_y)
    lgb_bc.booster_.save_model(work / "lgb_bc.txt")
    code = cli.main(
        ["publish", str(work / "lgb_bc.txt"), "--repository", str(repo), "--name", "lgb_bc",
         "--sample", str(work / "bc_reference.npy")]
    )  # fmt: skip
    assert code == 0
    return Boosted(xgb_bc, lgb_diabetes, lightgbm.Booster(model_file=work / "lgb_bc.txt"))


@dataclass(frozen=True, slots=True)
class Torch:
    program: Any  # the module behind mlp_pt2, saved with torch.export.save, published by the CLI
    module: Any  # nn.Module published through conveyor.publish as mlp_api


def mlp(features: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    ).eval()


def torch_answer(module: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = module(torch.from_numpy(rows)).numpy()
    return out


@pytest.fixture(scope="module")
def torch_published(published: Published) -> Torch:
    """Two seeded MLPs on breast-cancer rows: one saved as a .pt2 program and published
    through the CLI, one published live through conveyor.publish."""
    work, repo, x = published.work, published.repo, published.bc_x
    saved = mlp(x.shape[1], 0)
    program = torch.export.export(
        saved, (torch.from_numpy(x[:4]),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, work / "mlp.pt2")
    code = cli.main(
        ["publish", str(work / "mlp.pt2"), "--repository", str(repo), "--name", "mlp_pt2",
         "--sample", str(work / "bc_reference.npy")]
    )  # fmt: skip
    assert code == 0
    live = mlp(x.shape[1], 1)
    conveyor.publish(live, x[:100], repository=repo, name="mlp_api")
    return Torch(saved, live)


CUSTOM_TRANSFORMER = """\
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class SignedLog(BaseEstimator, TransformerMixin):
    \"\"\"A transformer skl2onnx has no converter for.\"\"\"

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.sign(X) * np.log1p(np.abs(X))
"""


@dataclass(frozen=True, slots=True)
class Fallback:
    classifier: Any  # Pipeline with the custom transformer, published through the CLI
    regressor: Any  # the same with Ridge, published through conveyor.publish
    env: dict[str, str]  # PYTHONPATH with the transformer's folder, for the server too
    stderr: str  # what the CLI said


def with_path(folder: Path) -> dict[str, str]:
    paths = [str(folder), *filter(None, [os.environ.get("PYTHONPATH", "")])]
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture(scope="module")
def fallback(published: Published) -> Iterator[Fallback]:
    """Pipelines with a transformer from a module of their own, which skl2onnx cannot
    convert: published as Python models. The module lives in a folder on PYTHONPATH, for the
    publishing process and (through env) for the server."""
    work, repo = published.work, published.repo
    folder = work / "custom"
    folder.mkdir()
    (folder / "custom_transformers.py").write_text(CUSTOM_TRANSFORMER)
    env = with_path(folder)
    sys.path.insert(0, str(folder))
    try:
        from custom_transformers import SignedLog  # type: ignore[import-not-found]

        bc_y = load_breast_cancer().target
        clf = Pipeline([("log", SignedLog()), ("clf", LogisticRegression(max_iter=1000))])
        clf.fit(published.bc_x, bc_y)
        joblib.dump(clf, work / "custom_bc.joblib")
        done = subprocess.run(
            [sys.executable, "-m", "runtime", "publish", str(work / "custom_bc.joblib"),
             "--repository", str(repo), "--name", "custom_bc", "--sample", str(work / "bc.csv"),
             "--labels", str(work / "bc_labels.txt")],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, **env}, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        d_y = load_diabetes().target
        reg = Pipeline([("log", SignedLog()), ("ridge", Ridge())]).fit(published.diabetes_x, d_y)
        conveyor.publish(reg, published.diabetes_x[:100], repository=repo, name="custom_reg")
        yield Fallback(clf, reg, env, done.stderr)
    finally:
        sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def server(
    published: Published,
    onnx_published: Path,
    boosted: Boosted,
    torch_published: Torch,
    fallback: Fallback,
) -> Iterator[ServerProcess]:
    with running_server(published.repo, env=fallback.env) as srv:
        yield srv


def infer(
    srv: ServerProcess, protocol: str, model: str, rows: np.ndarray, outputs: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """The named outputs of model over rows, sent in batches."""
    return infer_in_batches(srv, protocol, model, rows, outputs, BATCH)


def top_class(srv: ServerProcess, protocol: str, model: str, rows: np.ndarray) -> list[str]:
    """The classification extension's answer: the top class's name per row."""
    client = make_client(protocol, srv)
    try:
        top = client.infer(
            model,
            inputs_of(protocol, {"input": rows}),
            outputs=[requested_output(protocol, "probabilities", class_count=1)],
        ).as_numpy("probabilities")
    finally:
        client.close()
    return [(t.decode() if isinstance(t, bytes) else t).split(":")[2] for t in top[:, 0]]


def assert_serves_like(
    srv: ServerProcess,
    protocol: str,
    model: str,
    rows: np.ndarray,
    native: Any,
    atol: float,
    rtol: float = 0.0,
) -> None:
    """The served breast cancer classifier answers as the native one: labels, probabilities,
    and the classification extension's class names."""
    served = infer(srv, protocol, model, rows, CLASSIFIER_OUTPUTS)
    np.testing.assert_array_equal(served["label"], native.predict(rows))
    np.testing.assert_allclose(
        served["probabilities"], native.predict_proba(rows), rtol=rtol, atol=atol
    )
    names = top_class(srv, protocol, model, rows[:16])
    assert names == [BREAST_CANCER_NAMES[i] for i in native.predict(rows[:16])]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_cli_published_classifier_answers_as_the_native_model(
    server: ServerProcess, published: Published, protocol: str
) -> None:
    # assert_allclose's default rtol, as before
    assert_serves_like(server, protocol, "bc", published.bc_x, published.bc, 1e-4, 1e-7)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_api_published_regressor_answers_as_the_native_model(
    server: ServerProcess, published: Published, protocol: str
) -> None:
    x = published.diabetes_x
    served = infer(server, protocol, "diabetes", x, ("prediction",))
    assert served["prediction"].shape == (len(x), 1)
    np.testing.assert_allclose(served["prediction"][:, 0], published.diabetes.predict(x), rtol=1e-4)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_cli_published_xgboost_classifier_answers_as_the_native_model(
    server: ServerProcess, published: Published, boosted: Boosted, protocol: str
) -> None:
    assert_serves_like(server, protocol, "xgb_bc", published.bc_x, boosted.xgb_bc, 1e-4)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_lightgbm_models_answer_as_the_native_ones(
    server: ServerProcess, published: Published, boosted: Boosted, protocol: str
) -> None:
    x = published.diabetes_x
    served = infer(server, protocol, "lgb_diabetes", x, ("prediction",))
    assert served["prediction"].shape == (len(x), 1)
    np.testing.assert_allclose(
        served["prediction"][:, 0], boosted.lgb_diabetes.predict(x), rtol=1e-4, atol=0
    )
    # The booster from the .txt file: its classes are 0 and 1, binary answers P(1).
    x = published.bc_x
    served = infer(server, protocol, "lgb_bc", x, CLASSIFIER_OUTPUTS)
    p1 = boosted.lgb_bc.predict(x)
    np.testing.assert_array_equal(served["label"], (p1 > 0.5).astype(np.int64))
    np.testing.assert_allclose(
        served["probabilities"], np.column_stack([1 - p1, p1]), rtol=0, atol=1e-4
    )


def test_boosted_cards_name_the_library_and_the_converter(
    published: Published, boosted: Boosted
) -> None:
    for name, library, version, kind in [
        ("xgb_bc", "xgboost", xgboost.__version__, "classifier"),
        ("lgb_diabetes", "lightgbm", lightgbm.__version__, "regressor"),
        ("lgb_bc", "lightgbm", lightgbm.__version__, "classifier"),
    ]:
        card = json.loads((published.repo / name / "1" / "model_card.json").read_text())
        assert card["source"]["library"] == library
        assert card["source"]["kind"] == kind
        assert card["source"]["library_version"] == version
        assert card["converter"].startswith("onnxmltools ")
        assert 1 <= card["opset"] <= 15
        assert card["opsets"]["ai.onnx.ml"] >= 1
        assert card["parity"]["label_mismatches"] == 0
        assert card["parity"]["max_abs_diff"] <= 1e-3
        assert card["parity"]["max_rel_diff"] <= 1e-4
    assert (published.repo / "xgb_bc" / "labels.txt").read_text().split() == BREAST_CANCER_NAMES
    assert (published.repo / "lgb_bc" / "labels.txt").read_text().split() == ["0", "1"]
    assert not (published.repo / "lgb_diabetes" / "labels.txt").exists()


def test_corrupt_boosted_files_exit_2_and_publish_nothing(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = published.work / "bc_reference.npy"
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"learner": ')
    broken_ubj = tmp_path / "broken.ubj"
    broken_ubj.write_bytes(b"\x00garbage")
    broken_txt = tmp_path / "broken.txt"
    broken_txt.write_text("not a lightgbm model\n")
    for source in (broken_json, broken_ubj, broken_txt, tmp_path / "missing.json"):
        code, err, repo = bad_publish(tmp_path, source, sample, capsys)
        assert code == 2, (source, err)
        assert source.name in err, err
        assert "nothing was published" in err
        assert not (repo / "m").exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_pytorch_models_answer_as_the_modules(
    server: ServerProcess, published: Published, torch_published: Torch, protocol: str
) -> None:
    x = published.bc_x
    for name, module in (("mlp_pt2", torch_published.program), ("mlp_api", torch_published.module)):
        served = infer(server, protocol, name, x, ("output",))
        assert served["output"].shape == (len(x), 3)
        np.testing.assert_allclose(served["output"], torch_answer(module, x), rtol=1e-4, atol=1e-4)


def test_pytorch_cards_name_torch_and_the_dynamo_exporter(
    published: Published, torch_published: Torch
) -> None:
    for name in ("mlp_pt2", "mlp_api"):
        version = published.repo / name / "1"
        card = json.loads((version / "model_card.json").read_text())
        assert card["source"]["library"] == "torch"
        assert card["source"]["library_version"] == torch.__version__
        assert card["converter"] == "torch.onnx (dynamo)"
        assert card["opset"] == 18
        assert card["outputs"] == ["output"]
        assert card["parity"]["max_rel_diff"] <= 1e-4
        assert not (published.repo / name / "labels.txt").exists()
        config = (published.repo / name / "config.pbtxt").read_text()
        assert 'name: "output"' in config
        assert "dims: 3" in config


def test_a_corrupt_pytorch_file_exits_2_naming_it(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = published.work / "bc_reference.npy"
    for name in ("broken.pt2", "broken.pt"):
        source = tmp_path / name
        source.write_bytes(b"not a torch file")
        code, err, repo = bad_publish(tmp_path, source, sample, capsys)
        assert code == 2, err
        assert name in err, err
        assert not (repo / "m").exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_python_fallback_models_answer_as_the_native_ones(
    server: ServerProcess, published: Published, fallback: Fallback, protocol: str
) -> None:
    assert_serves_like(server, protocol, "custom_bc", published.bc_x, fallback.classifier, 1e-6)
    x = published.diabetes_x
    served = infer(server, protocol, "custom_reg", x, ("prediction",))
    assert served["prediction"].shape == (len(x), 1)
    np.testing.assert_allclose(
        served["prediction"][:, 0], fallback.regressor.predict(x), rtol=1e-6, atol=0
    )


def test_the_fallback_is_said_on_the_terminal_and_in_the_card(
    published: Published, fallback: Fallback
) -> None:
    assert "fallback python" in fallback.stderr
    assert "Unable to find a shape calculator" in fallback.stderr
    assert "importable in the server's environment" in fallback.stderr
    version = published.repo / "custom_bc" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "drift_profile.npz", "model.joblib", "model.py", "model_card.json",
    ]  # fmt: skip
    assert (version / "model.joblib").read_bytes() == (
        published.work / "custom_bc.joblib"
    ).read_bytes()
    config = (published.repo / "custom_bc" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config
    assert "max_queue_delay_microseconds: 500" in config
    assert (published.repo / "custom_bc" / "labels.txt").read_text().split() == (
        BREAST_CANCER_NAMES
    )
    card = json.loads((version / "model_card.json").read_text())
    assert card["fallback"]["backend"] == "python"
    assert "SignedLog" in card["fallback"]["reason"]
    assert card["converter"].startswith("none (fallback python")
    assert card["parity"]["label_mismatches"] == 0
    assert card["parity"]["max_abs_diff"] == 0
    assert "Python model" in card["parity"]["compared"]
    regressor = json.loads((published.repo / "custom_reg" / "1" / "model_card.json").read_text())
    assert regressor["fallback"]["backend"] == "python"
    assert regressor["source"]["kind"] == "regressor"


def test_fallback_none_exits_1_with_the_converters_message(
    published: Published, fallback: Fallback, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "publish", str(published.work / "custom_bc.joblib"),
         "--repository", str(repo), "--name", "m", "--sample", str(published.work / "bc.csv"),
         "--fallback", "none"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **fallback.env},
        check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "skl2onnx cannot convert this model" in done.stderr
    assert "SignedLog" in done.stderr
    assert "nothing was published" in done.stderr
    assert not (repo / "m").exists()
    with pytest.raises(conveyor.PublishStopped, match="skl2onnx cannot convert") as caught:
        conveyor.publish(
            fallback.regressor, published.diabetes_x, repository=repo, name="m", fallback="none"
        )
    assert caught.value.exit_code == 1
    assert not (repo / "m").exists()


def test_a_torchscript_module_and_a_static_program(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, sample = published.bc_x, published.work / "bc_reference.npy"
    module = mlp(x.shape[1], 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(module), tmp_path / "mlp.pt")
    repo = tmp_path / "repo"
    code = cli.main(
        ["publish", str(tmp_path / "mlp.pt"), "--repository", str(repo), "--name", "ts",
         "--sample", str(sample)]
    )  # fmt: skip
    assert code == 0
    card = json.loads((repo / "ts" / "1" / "model_card.json").read_text())
    assert card["converter"] == "torch.onnx (TorchScript)"
    assert card["parity"]["max_rel_diff"] <= 1e-4
    # A program exported with a fixed batch cannot serve batches: exit 2, saying why.
    static = torch.export.export(module, (torch.from_numpy(x[:4]),))
    torch.export.save(static, tmp_path / "static.pt2")
    code, err, bad_repo = bad_publish(tmp_path, tmp_path / "static.pt2", sample, capsys)
    assert code == 2, err
    assert "fixed batch size" in err
    assert not (bad_repo / "m").exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", ["iris", "iris_onnx"])
def test_string_classes_are_served_as_indices_and_named_by_the_extension(
    server: ServerProcess, published: Published, protocol: str, model: str
) -> None:
    x = published.iris_x
    served = infer(server, protocol, model, x, CLASSIFIER_OUTPUTS)
    classes = list(published.iris.classes_)
    expected = [classes.index(c) for c in published.iris.predict(x)]
    np.testing.assert_array_equal(served["label"], expected)
    np.testing.assert_allclose(served["probabilities"], published.iris.predict_proba(x), atol=1e-4)
    assert top_class(server, protocol, model, x[::10]) == list(published.iris.predict(x[::10]))


def test_the_version_holds_the_model_the_profile_and_the_card(published: Published) -> None:
    import hashlib

    version = published.repo / "bc" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "drift_profile.npz", "model.onnx", "model_card.json",
    ]  # fmt: skip
    assert (published.repo / "bc" / "labels.txt").read_text().split() == BREAST_CANCER_NAMES
    config = (published.repo / "bc" / "config.pbtxt").read_text()
    assert "max_queue_delay_microseconds: 500" in config
    assert "max_batch_size: 64" in config
    card = json.loads((version / "model_card.json").read_text())
    assert card["source"]["library"] == "scikit-learn"
    assert card["converter"].startswith("skl2onnx ")
    assert card["opset"] == 17
    assert card["parity"]["label_mismatches"] == 0
    assert card["parity"]["max_abs_diff"] <= 1e-4
    sha = hashlib.sha256((published.work / "bc.csv").read_bytes()).hexdigest()
    assert card["sample"]["sha256"] == sha
    assert card["reference"]["rows"] == len(published.bc_x)
    assert card["command"].startswith("conveyor publish ")
    with np.load(version / "drift_profile.npz") as profile:
        assert str(profile["input_name"]) == "input"
        assert str(profile["output_name"]) == "probabilities"
        assert int(profile["rows"]) == len(published.bc_x)
    # The CLI ends with a tritonclient snippet and a curl call for the new model.
    assert "client.infer('bc'" in published.cli_output
    assert "curl -s localhost:8000/v2/models/bc/infer" in published.cli_output


def test_a_second_publish_is_the_next_version(published: Published, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = conveyor.publish(published.iris, published.iris_x, repository=repo, name="iris")
    second = conveyor.publish(published.iris, published.iris_x, repository=repo, name="iris")
    assert (first.version, second.version) == (1, 2)
    assert Path(second.paths["model"]).is_file()
    assert second.parity["rows"] == len(published.iris_x)


def bad_publish(
    work: Path, source: Path, sample: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, Path]:
    repo = work / "bad_repo"
    code = cli.main(
        ["publish", str(source), "--repository", str(repo), "--name", "m", "--sample", str(sample)]
    )
    return code, capsys.readouterr().err, repo


def test_bad_inputs_exit_2_and_publish_nothing(
    published: Published, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = published.work / "bc_reference.npy"
    narrow = tmp_path / "narrow.npy"
    np.save(narrow, published.bc_x[:10, :5])
    corrupt = tmp_path / "corrupt.joblib"
    corrupt.write_bytes(b"not a joblib file")
    broken_onnx = tmp_path / "broken.onnx"
    broken_onnx.write_bytes(b"\x08\x07garbage")
    unknown = tmp_path / "model.h5"
    unknown.write_bytes(b"")
    cases = [
        (corrupt, sample, "corrupt.joblib"),
        (broken_onnx, sample, "broken.onnx"),
        (unknown, sample, ".onnx"),
        (published.work / "bc.joblib", narrow, "narrow.npy"),
        (published.work / "iris.onnx", narrow, "4 features"),
        (published.work / "bc.joblib", tmp_path / "missing.npy", "missing.npy"),
    ]
    for source, rows, mentioned in cases:
        code, err, repo = bad_publish(tmp_path, source, rows, capsys)
        assert code == 2, (source, err)
        assert mentioned in err, err
        assert "nothing was published" in err
        assert not (repo / "m").exists()


def test_a_width_mismatch_through_the_api_raises_bad_input(
    published: Published, tmp_path: Path
) -> None:
    with pytest.raises(conveyor.BadInput, match="expects 4 features"):
        conveyor.publish(published.iris, published.bc_x, repository=tmp_path, name="iris")
    model = onnx.load(str(published.repo / "iris" / "1" / "model.onnx"))
    with pytest.raises(conveyor.BadInput, match="4 features"):
        conveyor.publish(model, published.bc_x, repository=tmp_path, name="iris")
    assert not (tmp_path / "iris").exists()


def test_a_failed_parity_gate_exits_1_with_the_worst_rows(
    published: Published, tmp_path: Path
) -> None:
    """No tolerance at all: float32 ONNX Runtime cannot match float64 scikit-learn exactly."""
    repo = tmp_path / "repo"
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "publish", str(published.work / "bc.joblib"),
         "--repository", str(repo), "--name", "bc", "--sample", str(published.work / "bc.csv"),
         "--atol", "0", "--rtol", "0"],
        capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "worst rows" in done.stderr, done.stderr
    assert "nothing was published" in done.stderr
    assert not (repo / "bc").exists()
