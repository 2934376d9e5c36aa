"""Why a publish stopped, and the exit status each reason maps to."""

from __future__ import annotations


class PublishStopped(RuntimeError):
    """A publish that did not put a version in place; `exit_code` is what the CLI returns."""

    exit_code = 1


class BadInput(PublishStopped):
    """A file the user named is missing, unreadable, corrupt or does not fit the model."""

    exit_code = 2


class ConversionImpossible(PublishStopped):
    """The converter does not know the model (a custom transformer, say), and no fallback was
    allowed."""

    exit_code = 1


class ParityFailed(PublishStopped):
    """ONNX Runtime and the native model disagree on the sample beyond the tolerances."""

    exit_code = 1
