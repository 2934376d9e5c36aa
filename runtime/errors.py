"""One exception tree for the whole server; each class carries one status code.

The single table below maps a code to its HTTP status and its gRPC status name, so the
two protocol adapters cannot disagree (Triton's mapping is the compatibility target).
"""

from __future__ import annotations

import enum
from typing import ClassVar


class Code(enum.Enum):
    """Canonical status codes, named after gRPC's."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    CANCELLED = "CANCELLED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


# Triton: INTERNAL->500, NOT_FOUND->404, UNAVAILABLE->503, UNSUPPORTED->501, the rest 400.
# RESOURCE_EXHAUSTED is a body over the size limit: 413 is the precise HTTP answer.
HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_ARGUMENT: 400,
    Code.NOT_FOUND: 404,
    Code.UNAVAILABLE: 503,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.CANCELLED: 400,
    Code.ALREADY_EXISTS: 400,
    Code.RESOURCE_EXHAUSTED: 413,
    Code.PERMISSION_DENIED: 403,
}


class ServingError(Exception):
    """Base of every error the server answers with; `code` decides the status."""

    code: ClassVar[Code] = Code.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


class InvalidInput(ServingError):
    """The request is malformed or does not match the model."""

    code = Code.INVALID_ARGUMENT


class NotFound(ServingError):
    """The model, version or route does not exist."""

    code = Code.NOT_FOUND


class Unavailable(ServingError):
    """The model or server cannot take the request now (not ready, queue full, timed out)."""

    code = Code.UNAVAILABLE


class Rejected(Unavailable):
    """The queue refused or gave up on the request (full, or its queue timeout ran out)."""


class Unsupported(ServingError):
    """The request asks for something this server does not implement."""

    code = Code.UNIMPLEMENTED


class InternalError(ServingError):
    """A fault inside the server or the model; details go to the log."""

    code = Code.INTERNAL


class Cancelled(ServingError):
    """The client went away or cancelled before the answer was ready."""

    code = Code.CANCELLED


class PermissionDenied(ServingError):
    """A restricted API was called without its key."""

    code = Code.PERMISSION_DENIED


class TooLarge(ServingError):
    """The request body or message is over the configured size limit."""

    code = Code.RESOURCE_EXHAUSTED
