"""Publishing a user's own model: an ONNX file or a fitted scikit-learn estimator becomes the
next version of a served model, with config.pbtxt, labels, a drift profile and a model card.

scikit-learn and skl2onnx are imported only when a source needs them; the server imports
none of this package.
"""

from __future__ import annotations

from runtime.publish.api import PublishRecord, publish
from runtime.publish.errors import BadInput, ParityFailed, PublishStopped

__all__ = ["BadInput", "ParityFailed", "PublishRecord", "PublishStopped", "publish"]
