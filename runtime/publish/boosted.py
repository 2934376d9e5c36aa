"""Gradient-boosted tree sources: XGBoost and LightGBM models converted with onnxmltools.

Saved models are read with the libraries' own loaders (XGBoost JSON/UBJSON, LightGBM text),
which parse plain data and run no pickle code. xgboost, lightgbm and onnxmltools are imported
only when a source needs them, so the CLI and the server never load them otherwise.

The converted graphs are shaped like the scikit-learn ones: classifiers answer `label` (INT64,
one per row) and `probabilities` (FP32 [n_classes]), regressors `prediction` (FP32).
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from runtime.publish.errors import BadInput

# onnxmltools' converters refuse a main opset above 15; every supported ONNX Runtime runs it.
ONNXMLTOOLS_OPSET = 15

XGBOOST_CLASSIFIERS = ("binary:logistic", "multi:softprob", "multi:softmax")
# The first word of LightGBM's objective string, by task, as onnxmltools reads it.
LIGHTGBM_CLASSIFIERS = ("binary", "multiclass", "multiclassova")
LIGHTGBM_REGRESSORS = (
    "regression", "regression_l1", "huber", "fair", "poisson", "quantile", "mape", "gamma",
    "tweedie",
)  # fmt: skip

Outputs = dict[str, NDArray[Any]]


def library_of(obj: Any) -> str:
    """xgboost or lightgbm when obj comes from one of them, else ''."""
    root = type(obj).__module__.split(".")[0]
    return root if root in ("xgboost", "lightgbm") else ""


def load_xgboost(path: Path) -> Any:
    """An xgboost.Booster from a model saved with save_model (.json or .ubj)."""
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(path))
    return booster


def load_lightgbm(path: Path) -> Any:
    """A lightgbm.Booster from a model saved with save_model (.txt)."""
    import lightgbm

    return lightgbm.Booster(model_file=str(path))


def first_line(exc: BaseException) -> str:
    """The message without the native stack trace the libraries append."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _check_width(features: int, sample: NDArray[np.float32], origin: str) -> None:
    if features != sample.shape[1]:
        raise BadInput(
            f"{origin}: {sample.shape[1]} columns, but the model expects {features} features"
        )


def _two_columns(p: Any) -> NDArray[Any]:
    """Probabilities [n, k] from a booster's answer: [n] is the positive class of a binary one."""
    p = np.asarray(p, np.float64)
    return np.column_stack([1.0 - p, p]) if p.ndim == 1 else p


def from_xgboost(
    model: Any, sample: NDArray[np.float32], input_name: str, origin: str = "sample"
) -> tuple[onnx.ModelProto, str, list[str], Outputs, str]:
    """(graph, kind, classes, native answers, library version) of an XGBoost model."""
    import xgboost

    if isinstance(model, xgboost.Booster):
        booster, wrapper = model, None
    elif isinstance(model, xgboost.XGBModel):
        try:
            booster, wrapper = model.get_booster(), model
        except Exception as exc:  # NotFittedError or XGBoostError, by version
            raise BadInput(f"source: the XGBoost model is not fitted ({exc})") from None
        if getattr(model, "best_iteration", None) is not None:
            # The wrapper predicts with the trees up to the early-stopping best iteration only.
            booster = booster[: model.best_iteration + 1]
    else:
        raise BadInput(f"source: a {type(model).__qualname__} from xgboost cannot be published")
    _check_width(booster.num_features(), sample, origin)
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    # Converted trees must name features f0, f1, ...; names from a DataFrame are dropped (the
    # columns keep their training order).
    plain = booster.copy()
    plain.feature_names = None
    rows = xgboost.DMatrix(sample)
    native: Outputs
    if objective in XGBOOST_CLASSIFIERS:
        kind = "classifier"
        if wrapper is not None and hasattr(wrapper, "predict_proba"):
            probabilities = np.asarray(wrapper.predict_proba(sample), np.float64)
            classes = [str(c) for c in wrapper.classes_]
        elif objective == "multi:softmax":  # predict answers the class; softmax of the margins
            margin = np.asarray(plain.predict(rows, output_margin=True), np.float64)
            e = np.exp(margin - margin.max(axis=1, keepdims=True))
            probabilities = e / e.sum(axis=1, keepdims=True)
            classes = [str(c) for c in range(probabilities.shape[1])]
        else:
            probabilities = _two_columns(plain.predict(rows))
            classes = [str(c) for c in range(probabilities.shape[1])]
        native = {
            "label": np.argmax(probabilities, axis=1).astype(np.int64),
            "probabilities": probabilities.astype(np.float32),
        }
    elif objective.startswith("reg:") or objective in ("count:poisson", "reg:gamma"):
        kind, classes = "regressor", []
        predicted = wrapper.predict(sample) if wrapper is not None else plain.predict(rows)
        native = {"prediction": np.asarray(predicted, np.float32).reshape(len(sample), -1)}
    else:
        raise BadInput(
            f"source: XGBoost objective '{objective}' cannot be published; supported: "
            f"{', '.join(XGBOOST_CLASSIFIERS)} (classifiers) and reg:* (regressors)"
        )
    import onnxmltools

    graph = _convert(onnxmltools.convert_xgboost, plain, sample.shape[1], input_name)
    return _finish(graph, kind), kind, classes, native, xgboost.__version__


def from_lightgbm(
    model: Any, sample: NDArray[np.float32], input_name: str, origin: str = "sample"
) -> tuple[onnx.ModelProto, str, list[str], Outputs, str]:
    """(graph, kind, classes, native answers, library version) of a LightGBM model."""
    import lightgbm

    if isinstance(model, lightgbm.Booster):
        booster, wrapper = model, None
    elif isinstance(model, lightgbm.LGBMModel):
        try:
            booster, wrapper = model.booster_, model
        except Exception as exc:  # LGBMNotFittedError
            raise BadInput(f"source: the LightGBM model is not fitted ({exc})") from None
    else:
        raise BadInput(f"source: a {type(model).__qualname__} from lightgbm cannot be published")
    _check_width(booster.num_feature(), sample, origin)
    objective = str(booster.dump_model(num_iteration=1).get("objective", "")).split(" ")[0]
    converted: Any = wrapper if wrapper is not None else booster
    native: Outputs
    if objective in LIGHTGBM_CLASSIFIERS:
        kind = "classifier"
        if wrapper is not None and hasattr(wrapper, "predict_proba"):
            probabilities = np.asarray(wrapper.predict_proba(sample), np.float64)
            found = np.asarray(wrapper.classes_)
            classes = [str(c) for c in found]
            predicted = np.asarray(wrapper.predict(sample))
            if np.issubdtype(found.dtype, np.integer):
                labels = predicted
            else:  # the booster's graph answers the class index; labels.txt names it
                labels, converted = np.searchsorted(found, predicted), booster
        else:
            probabilities = _two_columns(booster.predict(sample))
            classes = [str(c) for c in range(probabilities.shape[1])]
            labels = np.argmax(probabilities, axis=1)
        native = {
            "label": np.asarray(labels).astype(np.int64),
            "probabilities": probabilities.astype(np.float32),
        }
    elif objective in LIGHTGBM_REGRESSORS:
        kind, classes = "regressor", []
        answer: Any = wrapper.predict(sample) if wrapper is not None else booster.predict(sample)
        native = {"prediction": np.asarray(answer, np.float32).reshape(len(sample), -1)}
    else:
        raise BadInput(
            f"source: LightGBM objective '{objective}' cannot be published; supported: "
            f"{', '.join(LIGHTGBM_CLASSIFIERS + LIGHTGBM_REGRESSORS)}"
        )
    import onnxmltools

    graph = _convert(
        onnxmltools.convert_lightgbm, converted, sample.shape[1], input_name, zipmap=False
    )
    return _finish(graph, kind), kind, classes, native, lightgbm.__version__


def converter() -> str:
    return f"onnxmltools {metadata.version('onnxmltools')}"


def _convert(convert: Any, model: Any, features: int, input_name: str, **kw: Any) -> Any:
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        return convert(
            model,
            initial_types=[(input_name, FloatTensorType([None, features]))],
            target_opset=ONNXMLTOOLS_OPSET,
            **kw,
        )
    except Exception as exc:  # onnxmltools raises RuntimeError, ValueError, NotImplementedError
        message = first_line(exc)
        raise BadInput(f"source: onnxmltools cannot convert this model: {message}") from None


def _finish(model: onnx.ModelProto, kind: str) -> onnx.ModelProto:
    """The converted graph with the served tensor names and shapes, and a main opset."""
    graph = model.graph
    if kind == "regressor" and len(graph.output) == 1:
        _rename_output(model, graph.output[0].name, "prediction")
    for output in graph.output:
        if output.name == "label":
            # LightGBM's converter declares [1]; the graph answers one label per row.
            dims = output.type.tensor_type.shape.dim
            del dims[:]
            dims.add().dim_param = "batch"
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        # XGBoost graphs use ONNX-ML operators only; declaring the main opset the converter
        # targeted keeps the card's opset and ONNX Runtime's checks meaningful.
        model.opset_import.append(onnx.helper.make_opsetid("", ONNXMLTOOLS_OPSET))
    return model


def _rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for output in model.graph.output:
        if output.name == old:
            output.name = new
