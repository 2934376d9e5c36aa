"""Why a training run stopped: each gate raises its own TrainingError subclass."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A stage refused to go on; the message names the stage's check and the figures."""


class AccuracyBelowFloor(TrainingError):
    """Held-out accuracy is below the recipe's floor: the model is not published."""


class ParityError(TrainingError):
    """ONNX Runtime on the exported graph disagrees with PyTorch beyond the tolerance."""


class PublishError(TrainingError):
    """The version folder could not be put in place."""


class R2BelowFloor(TrainingError):
    """Held-out R^2 of a regressor is below the floor: the model is not published."""
