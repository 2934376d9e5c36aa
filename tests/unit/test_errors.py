"""The one error table: each ServingError maps to Triton's HTTP status and a real gRPC code."""

from __future__ import annotations

import grpc
import pytest

from runtime import errors
from runtime.errors import (
    Cancelled,
    Code,
    InternalError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Rejected,
    ServingError,
    TooLarge,
    Unavailable,
    Unsupported,
)
from runtime.protocol.grpc.servicer import status_code

EXPECTED: dict[type[ServingError], tuple[int, grpc.StatusCode]] = {
    InvalidInput: (400, grpc.StatusCode.INVALID_ARGUMENT),
    NotFound: (404, grpc.StatusCode.NOT_FOUND),
    Unavailable: (503, grpc.StatusCode.UNAVAILABLE),
    Rejected: (503, grpc.StatusCode.UNAVAILABLE),
    PermissionDenied: (403, grpc.StatusCode.PERMISSION_DENIED),
    Unsupported: (501, grpc.StatusCode.UNIMPLEMENTED),
    InternalError: (500, grpc.StatusCode.INTERNAL),
    Cancelled: (400, grpc.StatusCode.CANCELLED),
    TooLarge: (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
}


def all_subclasses(cls: type[ServingError]) -> set[type[ServingError]]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= all_subclasses(sub)
    return found


@pytest.mark.parametrize(
    ("cls", "expected"), EXPECTED.items(), ids=lambda v: getattr(v, "__name__", "")
)
def test_status_of_each_error(
    cls: type[ServingError], expected: tuple[int, grpc.StatusCode]
) -> None:
    http_status, grpc_code = expected
    error = cls("something went wrong")
    assert error.http_status == http_status
    assert status_code(error) is grpc_code
    assert error.message == "something went wrong"
    assert str(error) == "something went wrong"


def test_every_subclass_in_runtime_errors_is_covered() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, ServingError) and obj is not ServingError
    }
    assert defined == set(EXPECTED)
    assert all_subclasses(ServingError) >= defined


def test_every_code_has_an_http_status_and_a_grpc_status() -> None:
    assert set(errors.HTTP_STATUS) == set(Code)
    for code in Code:
        assert code.name == code.value
        assert isinstance(grpc.StatusCode[code.name], grpc.StatusCode)
        assert 400 <= errors.HTTP_STATUS[code] < 600


def test_base_error_is_internal() -> None:
    error = ServingError("unknown")
    assert error.code is Code.INTERNAL
    assert error.http_status == 500
    assert status_code(error) is grpc.StatusCode.INTERNAL


def test_code_is_per_class_not_per_instance() -> None:
    assert InvalidInput("a").code is InvalidInput("b").code is Code.INVALID_ARGUMENT
    assert issubclass(Unavailable, ServingError)
    with pytest.raises(ServingError):
        raise TooLarge("body over the limit")
