"""Publishing a user's own model: an ONNX file, a fitted scikit-learn estimator, or an XGBoost
or LightGBM model becomes the next version of a served model, with config.pbtxt, labels, a
drift profile and a model card.

scikit-learn, skl2onnx, xgboost, lightgbm and onnxmltools are imported only when a source
needs them; the server imports none of this package.
"""

from __future__ import annotations

from runtime.publish.api import PublishRecord, publish
from runtime.publish.errors import BadInput, ParityFailed, PublishStopped

__all__ = ["BadInput", "ParityFailed", "PublishRecord", "PublishStopped", "publish"]
