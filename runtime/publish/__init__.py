"""Publishing a user's own model: an ONNX file, a fitted scikit-learn estimator, an XGBoost
or LightGBM model, or a PyTorch module becomes the next version of a served model, with
config.pbtxt, labels, a drift profile and a model card. A scikit-learn model skl2onnx
cannot convert is published as a Python model instead (the fallback).

scikit-learn, skl2onnx, xgboost, lightgbm, onnxmltools and torch are imported only when a source
needs them; the server imports none of this package.
"""

from __future__ import annotations

from runtime.publish.api import PublishRecord, publish
from runtime.publish.errors import BadInput, ConversionImpossible, ParityFailed, PublishStopped

__all__ = [
    "BadInput", "ConversionImpossible", "ParityFailed", "PublishRecord", "PublishStopped",
    "publish",
]  # fmt: skip
