# Type stub of the compiled module (native/src/module.cc).
from collections.abc import Sequence
from typing import Any

# drain() events, by their first element (the kind):
#   (0, call_id, model_name, model_version, request_id,
#       [(input_name, datatype, shape, Blob), ...], parameters | None,
#       requested_output_names | None, metadata | None)        ModelInfer decoded natively
#   (1, call_id, method_path, request_bytes, metadata | None)  any other unary call
#   (2, call_id, metadata | None)                              a stream opened
#   (3, call_id, request_bytes)                                a stream's next message
#   (4, call_id)                                               the client half-closed
#   (5, call_id)                                               the call was cancelled
# finish() answers, by their second element:
#   (call_id, 0, model_name, model_version, request_id, [(name, datatype, shape, buffer), ...])
#   (call_id, 1, response_bytes)       a unary reply, or one more message on a stream
#   (call_id, 2, status_code, message) an error status (a stream: after its queued messages)
#   (call_id, 3)                       a stream ends with OK
# Any answer may end with one element more: trailing metadata for the call's status,
# [(key, value), ...] (on a stream, sent with the stream's final status).
Event = tuple[Any, ...]
Answer = tuple[Any, ...]
# start(tls=...): (server key PEM, certificate chain PEM, client roots PEM or b"", mutual)
Tls = tuple[bytes, bytes, bytes, bool]

class Blob:
    """Read-only bytes of one input inside a decoded request (buffer protocol)."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

class Server:
    def __init__(
        self,
        metadata_keys: Sequence[str],
        max_message_bytes: int,
        max_concurrent_rpcs: int,
        channel_arguments: Sequence[tuple[str, int]] = (),
    ) -> None: ...
    def start(self, address: str, tls: Tls | None = None) -> int: ...
    def fileno(self) -> int: ...
    def corked_groups(self) -> int: ...
    def drain(self) -> list[Event]: ...
    def finish(self, answers: list[Answer]) -> None: ...
    def fail(self, call_id: int, code: int, message: str) -> None: ...
    def shutdown(self, grace_s: float) -> None: ...
