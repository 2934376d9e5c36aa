"""Sources: what a publish starts from, loaded from a file or taken live, and made ONNX.

Supported: an ONNX model (published as is), a fitted scikit-learn estimator or Pipeline
(converted with skl2onnx), XGBoost and LightGBM models (converted with onnxmltools, see
runtime.publish.boosted), and PyTorch modules and programs (torch.onnx, see
runtime.publish.pytorch). The training libraries and converters are imported only when a
source needs them, so the CLI and the server never load them otherwise.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from runtime.publish import boosted, fallback, pytorch
from runtime.publish.errors import BadInput, ConversionImpossible

# File kinds by extension, as the error for an unknown one lists them.
KINDS = {
    ".onnx": "ONNX model",
    ".joblib": "scikit-learn estimator saved with joblib",
    ".pkl": "scikit-learn estimator saved with pickle",
    ".json": "XGBoost model saved with save_model",
    ".ubj": "XGBoost model saved with save_model",
    ".txt": "LightGBM booster saved with save_model",
    ".pt2": "PyTorch program saved with torch.export.save",
    ".pt": "TorchScript module saved with torch.jit.save",
}
# The main opset of converted graphs: one every supported ONNX Runtime runs.
TARGET_OPSET = 17

Outputs = dict[str, NDArray[Any]]


@dataclass(slots=True)
class Source:
    """A model made ONNX, with what the parity gate and the files need to know about it."""

    model: onnx.ModelProto
    # classifier, regressor, module (a PyTorch module: `output` compared as a regression), or
    # onnx (a graph published as is: no native model to compare).
    kind: str
    library: str
    library_version: str
    converter: str
    # Class names in probability column order; empty for regressors and unlabelled graphs.
    classes: list[str] = field(default_factory=list)
    # The native model's answers on the sample, by ONNX output name; None for an ONNX source.
    native: Outputs | None = None
    # Set when the model is served as a Python model (the fallback); `model` then holds only
    # the tensors' signature.
    python: fallback.PythonModel | None = None

    @property
    def opset(self) -> int:
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 0)


def describe_kinds() -> str:
    return ", ".join(f"{ext} ({what})" for ext, what in KINDS.items())


def load_file(path: Path) -> Any:
    """The object saved in path. Pickle and joblib files run code when loaded: they are loaded
    only because the user named them, and never by the server. XGBoost and LightGBM files are
    plain data, read by those libraries' own parsers."""
    suffix = path.suffix.lower()
    if suffix not in KINDS:
        raise BadInput(
            f"source '{path}': unknown extension '{path.suffix}'; supported: {describe_kinds()}"
        )
    if not path.is_file():
        raise BadInput(f"source '{path}': no such file (expected a {KINDS[suffix]})")
    try:
        if suffix == ".onnx":
            model = onnx.load(str(path))
            onnx.checker.check_model(model)
            return model
        if suffix in (".json", ".ubj"):
            return boosted.load_xgboost(path)
        if suffix == ".txt":
            return boosted.load_lightgbm(path)
        if suffix == ".pt2":
            return pytorch.load_program(path)
        if suffix == ".pt":
            return pytorch.load_torchscript(path)
        if suffix == ".joblib":
            import joblib

            return joblib.load(path)
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:  # any failure to read the file is the file's fault
        raise BadInput(
            f"source '{path}': not a readable {KINDS[suffix]} "
            f"({type(exc).__name__}: {boosted.first_line(exc)})"
        ) from None


def prepare(
    obj: Any, sample: NDArray[np.float32], input_name: str, origin: str = "sample"
) -> Source:
    """obj as ONNX with the native answers on sample; BadInput when it cannot be. origin
    names the sample in messages."""
    if isinstance(obj, onnx.ModelProto):
        return from_onnx(obj, sample.shape[1], origin)
    if boosted.library_of(obj):
        return from_boosted(obj, sample, input_name, origin)
    if _is_sklearn(obj):
        return from_sklearn(obj, sample, input_name, origin)
    if pytorch.is_torch(obj):
        return from_torch(obj, sample, input_name, origin)
    raise BadInput(
        f"source: a {type(obj).__module__}.{type(obj).__qualname__} cannot be published; "
        "supported: an onnx.ModelProto, a fitted scikit-learn estimator or Pipeline, a fitted "
        "xgboost.XGBClassifier/XGBRegressor or Booster, a fitted "
        "lightgbm.LGBMClassifier/LGBMRegressor or Booster, or a PyTorch nn.Module or "
        "torch.export program"
    )


def _is_sklearn(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "sklearn" or hasattr(obj, "_get_tags")


def from_onnx(model: onnx.ModelProto, features: int, origin: str = "sample") -> Source:
    """An ONNX graph as is, after checking its one input is FP32 [batch, features]."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise BadInput(f"source: expected an ONNX graph with one input, found {len(inputs)}")
    tensor = inputs[0].type.tensor_type
    dims = tensor.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(fixed) != 2 or fixed[0] is not None:
        raise BadInput(
            f"source: input '{inputs[0].name}' must be FP32 [batch, n_features] with a variable "
            f"batch axis; found {onnx.TensorProto.DataType.Name(tensor.elem_type)} "
            f"{['batch' if d is None else d for d in fixed]}"
        )
    if fixed[1] is not None and fixed[1] != features:
        raise BadInput(
            f"source: input '{inputs[0].name}' takes {fixed[1]} features, "
            f"{origin} has {features} columns"
        )
    return Source(model, "onnx", "onnx", metadata.version("onnx"), "none (published as is)")


def from_boosted(
    model: Any, sample: NDArray[np.float32], input_name: str, origin: str = "sample"
) -> Source:
    """An XGBoost or LightGBM model converted with onnxmltools, with its answers on sample."""
    library = boosted.library_of(model)
    convert = boosted.from_xgboost if library == "xgboost" else boosted.from_lightgbm
    graph, kind, classes, native, version = convert(model, sample, input_name, origin)
    return Source(graph, kind, library, version, boosted.converter(), classes, native)


def from_torch(
    obj: Any, sample: NDArray[np.float32], input_name: str, origin: str = "sample"
) -> Source:
    """A PyTorch module or program exported with torch.onnx, with its answers on sample."""
    if pytorch.is_program(obj):
        # A program's shapes are fixed already: a static batch is named before it fails to run.
        model, converter = pytorch.to_onnx(obj, sample, input_name)
        native = {pytorch.OUTPUT_NAME: pytorch.native_output(obj, sample, origin)}
    else:
        # A module that cannot run on the sample's width is named as such, not as an export.
        native = {pytorch.OUTPUT_NAME: pytorch.native_output(obj, sample, origin)}
        model, converter = pytorch.to_onnx(obj, sample, input_name)
    return Source(model, "module", "torch", pytorch.version(), converter, native=native)


def from_sklearn(
    estimator: Any, sample: NDArray[np.float32], input_name: str, origin: str = "sample"
) -> Source:
    """A fitted estimator converted with skl2onnx, with its predictions on sample."""
    from sklearn.base import is_classifier, is_regressor
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError) as exc:
        raise BadInput(f"source: the scikit-learn estimator is not fitted ({exc})") from None
    expected = getattr(estimator, "n_features_in_", sample.shape[1])
    if expected != sample.shape[1]:
        raise BadInput(
            f"{origin}: {sample.shape[1]} columns, but the estimator expects {expected} features"
        )
    if is_classifier(estimator):
        return _classifier(estimator, sample, input_name)
    if is_regressor(estimator):
        return _regressor(estimator, sample, input_name)
    raise BadInput(
        f"source: {type(estimator).__name__} is neither a classifier nor a regressor; "
        "only those can be published"
    )


def _convert(estimator: Any, features: int, input_name: str, **kw: Any) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    try:
        model: onnx.ModelProto = convert_sklearn(
            estimator,
            initial_types=[(input_name, FloatTensorType([None, features]))],
            target_opset=TARGET_OPSET,
            **kw,
        )
    except (RuntimeError, NotImplementedError) as exc:  # MissingConverter, MissingShapeCalculator
        raise ConversionImpossible(f"source: skl2onnx cannot convert this model: {exc}") from None
    return model


def python_fallback(
    estimator: Any,
    sample: NDArray[np.float32],
    input_name: str,
    reason: str,
    source_file: str = "",
) -> Source:
    """A scikit-learn model skl2onnx cannot convert, as a Python model (see fallback)."""
    from sklearn.base import is_classifier

    kind = "classifier" if is_classifier(estimator) else "regressor"
    native = fallback.native_outputs(estimator, sample, kind)
    python = fallback.build(estimator, kind, input_name, reason, source_file)
    classes = [str(c) for c in np.asarray(estimator.classes_)] if kind == "classifier" else []
    return Source(
        fallback.signature(input_name, sample.shape[1], native),
        kind,
        "scikit-learn",
        metadata.version("scikit-learn"),
        fallback.converter(),
        classes=classes,
        native=native,
        python=python,
    )


def _classifier(estimator: Any, sample: NDArray[np.float32], input_name: str) -> Source:
    classes = np.asarray(estimator.classes_)
    integer = np.issubdtype(classes.dtype, np.integer)
    # Non-integer classes (strings): the graph answers the class index, labels.txt the name.
    options = {"zipmap": False} if integer else {"zipmap": False, "nocl": True}
    model = _convert(estimator, sample.shape[1], input_name, options=options)
    predicted = np.asarray(estimator.predict(sample))
    labels = predicted if integer else np.searchsorted(classes, predicted)
    native: Outputs = {
        "label": labels.astype(np.int64),
        "probabilities": np.asarray(estimator.predict_proba(sample), np.float32),
    }
    return Source(
        model,
        "classifier",
        "scikit-learn",
        metadata.version("scikit-learn"),
        f"skl2onnx {metadata.version('skl2onnx')}",
        classes=[str(c) for c in classes],
        native=native,
    )


def _regressor(estimator: Any, sample: NDArray[np.float32], input_name: str) -> Source:
    from skl2onnx.common.data_types import FloatTensorType

    predicted = np.asarray(estimator.predict(sample), np.float32).reshape(len(sample), -1)
    targets = predicted.shape[1]
    final = [("prediction", FloatTensorType([None, targets]))]
    model = _convert(estimator, sample.shape[1], input_name, final_types=final)
    return Source(
        model,
        "regressor",
        "scikit-learn",
        metadata.version("scikit-learn"),
        f"skl2onnx {metadata.version('skl2onnx')}",
        native={"prediction": predicted},
    )
