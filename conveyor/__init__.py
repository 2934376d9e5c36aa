"""Conveyor's public Python API.

    import conveyor
    record = conveyor.publish(model, sample, repository="models", name="my_model")

publishes a fitted scikit-learn estimator or Pipeline, a fitted XGBoost or LightGBM model
(XGBClassifier/XGBRegressor, LGBMClassifier/LGBMRegressor or a Booster), a PyTorch
nn.Module (the sample's first rows are its example input), or an onnx.ModelProto, as the
next version of a served model; see runtime.publish for the details.
"""

from __future__ import annotations

from runtime.publish import (
    BadInput,
    ConversionImpossible,
    ParityFailed,
    PublishRecord,
    PublishStopped,
    publish,
)

__all__ = [
    "BadInput", "ConversionImpossible", "ParityFailed", "PublishRecord", "PublishStopped",
    "publish",
]  # fmt: skip
