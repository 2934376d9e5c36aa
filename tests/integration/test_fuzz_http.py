"""Hypothesis writes HTTP/1.1 requests byte by byte, in framings no client library sends.

Chunked bodies cut at random (down to one byte a chunk), with chunk extensions and
trailers; bodies trickled over many send() calls; header sections of every size and count,
up to and past what servers usually accept; several requests pipelined on one connection;
and malformed framing. A well-formed request must get its right answer (numpy says what
that is), in request order; a malformed one a 4xx that says why, or a closed connection;
never a 5xx, never a wait past READ_TIMEOUT_S; and after every example the server must
still answer a valid request on a new connection. h11 reads the answers.
"""

from __future__ import annotations

import contextlib
import socket
import string
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import h11
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import fuzz_examples
from tests.integration.conftest import HOST, ServerProcess

MODEL = "add_sub_fp32"
INFER = f"/v2/models/{MODEL}/infer"
READY = "/v2/health/ready"
MAX_ROWS = 8  # add_sub_fp32's max_batch_size
READ_TIMEOUT_S = 10.0
SERVED_HEAD_BYTES = 8192  # a request head this size is served by every HTTP server
MAX_EXTRA_HEADER_BYTES = 2 << 20
TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
OBS_TEXT = "".join(chr(c) for c in range(0x80, 0x100))  # allowed in values, as latin-1


def fuzz(ci_examples: int) -> settings:
    return settings(
        max_examples=fuzz_examples(ci_examples),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- reading answers ----------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer; status None when the server closed the connection instead."""

    status: int | None
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


CLOSED = Answer(None, {}, b"")


class Connection:
    """One TCP connection: requests go out as raw bytes, h11 reads the answers in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=READ_TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = h11.Connection(h11.CLIENT)
        self._received = 0  # bytes of the answer being read, so far

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, wire: bytes, delivery: Delivery | None = None) -> None:
        for piece in (delivery or Delivery()).pieces(wire):
            try:
                self.sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                return  # the server refused and closed early; its answer is still to read
            if delivery is not None and delivery.pause_s:
                time.sleep(delivery.pause_s)

    def finish_sending(self) -> None:
        """Half-close: the server sees the end of the stream mid-request."""
        with contextlib.suppress(OSError):  # unless it has closed the connection already
            self.sock.shutdown(socket.SHUT_WR)

    def answer(self, method: str) -> Answer:
        """The next answer on the connection (h11 must be told which request it answers)."""
        if self.parser.their_state in (h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._expect_eof()
            return CLOSED
        if self.parser.our_state is h11.DONE:
            self.parser.start_next_cycle()
        self.parser.send(h11.Request(method=method, target="/", headers=[("Host", HOST)]))
        self.parser.send(h11.EndOfMessage())
        self._received = len(self.parser.trailing_data[0])
        try:
            return self._read_answer()
        except h11.RemoteProtocolError as exc:
            # EOF before the first byte of an answer is a close; anything else is a bad answer.
            if self._received:
                pytest.fail(f"malformed answer: {exc}")
            return CLOSED

    def _read_answer(self) -> Answer:
        event = self._next_event()
        while isinstance(event, h11.InformationalResponse):  # 100 Continue
            event = self._next_event()
        assert isinstance(event, h11.Response), event
        body = bytearray()
        while isinstance(part := self._next_event(), h11.Data):
            body += part.data
        assert isinstance(part, h11.EndOfMessage), part
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        return Answer(event.status_code, headers, bytes(body))

    def _next_event(self) -> Any:
        while (event := self.parser.next_event()) is h11.NEED_DATA:
            data = self._recv()
            self._received += len(data)
            self.parser.receive_data(data)
        return event

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(1 << 16)
        except ConnectionResetError:
            return b""
        except TimeoutError:
            pytest.fail(f"the server sent no answer within {READ_TIMEOUT_S} s")

    def _expect_eof(self) -> None:
        extra = self._recv()
        assert extra == b"", f"data after the server said it would close: {extra[:200]!r}"


# -- the requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Infer:
    """One add_sub_fp32 request, and the answer numpy says it must get."""

    inputs: np.ndarray  # [2, rows, 4] float32: INPUT0 and INPUT1
    binary_inputs: bool
    outputs: tuple[tuple[str, bool], ...] | None  # requested (name, as binary); None: all
    binary_output: bool  # the request's binary_data_output when no outputs are named
    request_id: str | None

    def body(self) -> tuple[bytes, list[tuple[str, str]]]:
        """The body, and the headers that belong to it (the binary extension's length)."""
        doc: dict[str, Any] = {"inputs": [self._tensor(n, a) for n, a in self._named()]}
        if self.outputs is not None:
            doc["outputs"] = [
                {"name": n, "parameters": {"binary_data": b}} for n, b in self.outputs
            ]
        elif self.binary_output:
            doc["parameters"] = {"binary_data_output": True}
        if self.request_id is not None:
            doc["id"] = self.request_id
        header = orjson.dumps(doc)
        if not self.binary_inputs:
            return header, []
        blobs = b"".join(a.astype("<f4").tobytes() for _, a in self._named())
        return header + blobs, [("Inference-Header-Content-Length", str(len(header)))]

    def expected(self) -> dict[str, tuple[np.ndarray, bool]]:
        """Output name -> (its value, whether it comes back binary)."""
        a, b = self.inputs
        values = {"OUTPUT0": a + b, "OUTPUT1": a - b}
        if self.outputs is None:
            return {n: (v, self.binary_output) for n, v in values.items()}
        return {n: (values[n], binary) for n, binary in self.outputs}

    def _named(self) -> list[tuple[str, np.ndarray]]:
        return list(zip(("INPUT0", "INPUT1"), self.inputs, strict=True))

    def _tensor(self, name: str, array: np.ndarray) -> dict[str, Any]:
        tensor: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": "FP32"}
        if self.binary_inputs:
            tensor["parameters"] = {"binary_data_size": array.nbytes}
        else:
            tensor["data"] = array.ravel().tolist()  # float32 -> float is exact
        return tensor


def check_infer(answer: Answer, case: Infer) -> None:
    """200, the request's id echoed, each asked-for output right and in the asked-for form."""
    assert answer.status == 200, answer
    assert "content-length" in answer.headers, answer.headers  # tritonclient needs it
    doc, blobs = _split(answer)
    assert doc["model_name"] == MODEL
    # An empty id is no id, as in Triton (and in gRPC, where "" is the field's default).
    assert doc.get("id") == (case.request_id or None), (doc.get("id"), case.request_id)
    got = _outputs(doc, blobs)
    expected = case.expected()
    assert got.keys() == expected.keys()
    for name, (value, binary) in expected.items():
        assert got[name][1] == binary, (name, doc)
        np.testing.assert_array_equal(got[name][0], value, err_msg=name)


def _split(answer: Answer) -> tuple[Any, bytes]:
    length = answer.headers.get("inference-header-content-length")
    if length is None:
        return answer.json(), b""
    return orjson.loads(answer.body[: int(length)]), answer.body[int(length) :]


def _outputs(doc: Any, blobs: bytes) -> dict[str, tuple[np.ndarray, bool]]:
    """Each output as (array, came as binary), the blobs read in output order."""
    arrays: dict[str, tuple[np.ndarray, bool]] = {}
    offset = 0
    for output in doc["outputs"]:
        assert output["datatype"] == "FP32", output
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            flat = np.asarray(output["data"], np.float32)
        else:
            flat = np.frombuffer(blobs[offset : offset + size], "<f4")
            offset += size
        arrays[output["name"]] = (flat.reshape(output["shape"]), size is not None)
    assert offset == len(blobs), "binary data past the last output"
    return arrays


def check_ready(answer: Answer) -> None:
    assert answer.status == 200, answer
    assert answer.json() == {"ready": True}


def check_refused(answer: Answer) -> None:
    """A malformed request: a 4xx with a body that says why, or a closed connection."""
    if answer.status is not None:
        assert 400 <= answer.status < 500, answer
        assert answer.body.strip(), answer


def check_error(answer: Answer, status: int, names: str) -> None:
    """An application error: the status, and a JSON error that names `names`."""
    assert answer.status == status, answer
    assert answer.headers.get("content-type") == "application/json", answer.headers
    message = answer.json()["error"]
    assert names in message, message


# -- framing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunking:
    """How a chunked body is cut and dressed: sizes and extensions are used in turn."""

    sizes: tuple[int, ...]
    extensions: tuple[bytes, ...]
    upper_hex: bool
    zero_pad: int
    trailers: tuple[tuple[bytes, bytes], ...]

    def encode(self, body: bytes) -> bytes:
        out = []
        position = index = 0
        while position < len(body):
            piece = body[position : position + self.sizes[index % len(self.sizes)]]
            out += [self.size_line(len(piece), index), piece, b"\r\n"]
            position += len(piece)
            index += 1
        out.append(self.size_line(0, index))
        out += [name + b": " + value + b"\r\n" for name, value in self.trailers]
        out.append(b"\r\n")
        return b"".join(out)

    def size_line(self, size: int, index: int) -> bytes:
        digits = (b"%X" if self.upper_hex else b"%x") % size
        return (
            b"0" * self.zero_pad + digits + self.extensions[index % len(self.extensions)] + b"\r\n"
        )


@dataclass(frozen=True)
class Framing:
    """Content-Length (chunking None) or chunked; how the framing headers are spelled."""

    chunking: Chunking | None
    spell: Callable[[str], str]
    expect_continue: bool

    def frame(self, body: bytes) -> tuple[list[tuple[str, str]], bytes]:
        if self.chunking is None:
            return [(self.spell("Content-Length"), str(len(body)))], body
        return [(self.spell("Transfer-Encoding"), "chunked")], self.chunking.encode(body)

    def headers(self) -> list[tuple[str, str]]:
        return [(self.spell("Expect"), "100-continue")] if self.expect_continue else []

    def describe(self) -> str:
        if self.chunking is None:
            return "Content-Length"
        sizes = self.chunking.sizes
        return "chunked, " + ("one-byte chunks" if sizes == (1,) else f"{len(sizes)} sizes")


@dataclass(frozen=True)
class Delivery:
    """Where the bytes are cut into send() calls, and the pause after each."""

    cuts: tuple[int, ...] = ()
    pause_s: float = 0.0

    def pieces(self, wire: bytes) -> Iterator[bytes]:
        bounds = sorted({cut % len(wire) for cut in self.cuts} - {0}) if wire else []
        for start, end in zip([0, *bounds], [*bounds, len(wire)], strict=True):
            yield wire[start:end]


def request(
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> bytes:
    """A request's bytes: request line, Host, headers as given (latin-1), blank line, body."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", *(f"{k}: {v}" for k, v in headers)]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + body


def infer_request(case: Infer, framing: Framing, extra: Sequence[tuple[str, str]] = ()) -> bytes:
    body, body_headers = case.body()
    framing_headers, framed = framing.frame(body)
    return request(
        "POST", INFER, [*extra, *framing.headers(), *body_headers, *framing_headers], framed
    )


# -- strategies ---------------------------------------------------------------------------

finite_float32 = st.floats(-1e6, 1e6, width=32, allow_subnormal=False)


@st.composite
def infers(draw: st.DrawFn, request_id: str | None = None) -> Infer:
    rows = draw(st.integers(1, MAX_ROWS))
    output = st.tuples(st.sampled_from(["OUTPUT0", "OUTPUT1"]), st.booleans())
    return Infer(
        inputs=draw(hnp.arrays(np.float32, (2, rows, 4), elements=finite_float32)),
        binary_inputs=draw(st.booleans()),
        outputs=draw(
            st.none()
            | st.lists(output, min_size=1, max_size=2, unique_by=lambda o: o[0]).map(tuple)
        ),
        binary_output=draw(st.booleans()),
        request_id=request_id if request_id is not None else draw(st.none() | st.text(max_size=12)),
    )


tokens = st.text(alphabet=TCHAR, min_size=1, max_size=8).map(str.encode)
QDTEXT = VCHAR.replace('"', "").replace("\\", "") + " \t" + OBS_TEXT
quoted = st.lists(
    st.sampled_from(QDTEXT) | st.sampled_from(VCHAR).map("\\".__add__), max_size=8
).map(
    lambda parts: b'"' + "".join(parts).encode("latin-1") + b'"'  # qdtext and quoted-pairs
)
extension = st.builds(
    lambda name, value: b";" + name + (b"=" + value if value else b""),
    tokens,
    st.none() | tokens | quoted,
)
chunk_sizes = (
    st.lists(st.integers(1, 64), min_size=1, max_size=16).map(tuple)
    | st.just((1,))  # one byte a chunk
    | st.just((1 << 20,))  # the whole body in one chunk
)
chunk_extensions = st.lists(st.lists(extension, max_size=2).map(b"".join), min_size=1, max_size=4)
chunkings = st.builds(
    Chunking,
    sizes=chunk_sizes,
    extensions=chunk_extensions.map(tuple),
    upper_hex=st.booleans(),
    zero_pad=st.integers(0, 3),
    trailers=st.lists(
        st.tuples(
            tokens.map(lambda t: b"X-Trailer-" + t), st.text(VCHAR, max_size=16).map(str.encode)
        ),
        max_size=3,
    ).map(tuple),
)
spellings = st.sampled_from([str, str.lower, str.upper])
chunked_framings = st.builds(Framing, chunkings, spellings, st.booleans())
length_framings = st.builds(Framing, st.none(), spellings, st.booleans())
framings = length_framings | chunked_framings
deliveries = st.builds(
    Delivery,
    st.lists(st.integers(1, 1 << 16), max_size=48).map(tuple),
    st.sampled_from([0.0, 0.0002, 0.002]),
)
trickles = st.builds(
    Delivery,
    st.lists(st.integers(1, 1 << 16), min_size=8, max_size=64).map(tuple),
    st.sampled_from([0.0, 0.0002, 0.002]),
)


@st.composite
def extra_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Header fields of any count and size, up to MAX_EXTRA_HEADER_BYTES in all."""
    name = st.text(alphabet=TCHAR, max_size=24).map(lambda t: "X-" + t)
    size = st.integers(0, 64) | st.sampled_from([1023, 4096, 8190, 8192, 16384, 65536, 1 << 20])
    pattern = st.text(alphabet=VCHAR + " \t" + OBS_TEXT, min_size=1, max_size=8)
    fields = draw(st.lists(st.tuples(name, size, pattern), max_size=40))
    many = draw(st.sampled_from([0, 0, 0, 99, 100, 101, 1000]))
    headers = [(n, (p * (s // len(p) + 1))[:s].strip(" \t")) for n, s, p in fields]
    headers += [(f"X-Many-{i}", "v") for i in range(many)]
    total = 0
    for index, (k, v) in enumerate(headers):
        total += len(k) + len(v) + 4
        if total > MAX_EXTRA_HEADER_BYTES:
            return headers[:index]
    return headers


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_port(server: ServerProcess) -> int:
    """The server's HTTP port: Hypothesis prints each argument of a failing example."""
    return server.ports["HTTPService"]


def still_serves(http_port: int) -> None:
    """A valid request on a new connection still gets its right answer."""
    case = Infer(np.arange(8, dtype=np.float32).reshape(2, 1, 4), False, None, False, "check")
    plain = Framing(None, str, False)
    with Connection(http_port) as conn:
        conn.send(infer_request(case, plain))
        check_infer(conn.answer("POST"), case)


def ready_again(conn: Connection) -> None:
    """The same connection answers a readiness probe next."""
    conn.send(request("GET", READY, []))
    check_ready(conn.answer("GET"))


@fuzz(100)
@given(case=infers(), framing=chunked_framings, delivery=deliveries)
def test_chunked_bodies_get_their_answer(
    http_port: int, case: Infer, framing: Framing, delivery: Delivery
) -> None:
    """Chunks of any size down to one byte, with extensions and trailers, sent in pieces;
    the connection then carries another request (so the whole body, trailers too, was read).
    """
    event(framing.describe())
    with Connection(http_port) as conn:
        conn.send(infer_request(case, framing), delivery)
        check_infer(conn.answer("POST"), case)
        ready_again(conn)
    still_serves(http_port)


@fuzz(40)
@given(case=infers(), framing=length_framings, delivery=trickles)
def test_trickled_bodies_get_their_answer(
    http_port: int, case: Infer, framing: Framing, delivery: Delivery
) -> None:
    """A Content-Length request cut into many small send() calls with pauses between."""
    event(f"{len(list(delivery.pieces(infer_request(case, framing))))} pieces")
    with Connection(http_port) as conn:
        conn.send(infer_request(case, framing), delivery)
        check_infer(conn.answer("POST"), case)
        ready_again(conn)
    still_serves(http_port)


@fuzz(50)
@given(case=infers(), framing=framings, extra=extra_headers())
def test_header_sections_of_any_size(
    http_port: int, case: Infer, framing: Framing, extra: list[tuple[str, str]]
) -> None:
    """Up to SERVED_HEAD_BYTES the request is served; past it, served or refused, no more."""
    wire = infer_request(case, framing, extra)
    with Connection(http_port) as conn:
        conn.send(wire)
        answer = conn.answer("POST")
    head_bytes = wire.index(b"\r\n\r\n")
    event(f"head {'within' if head_bytes < SERVED_HEAD_BYTES else 'past'} 8 KiB: {answer.status}")
    if head_bytes < SERVED_HEAD_BYTES or answer.status == 200:
        check_infer(answer, case)
    else:
        check_refused(answer)
    still_serves(http_port)


@dataclass(frozen=True)
class Step:
    """One request on a connection, and what its answer must be."""

    method: str
    wire: bytes
    check: Callable[[Answer], None]


@st.composite
def steps(draw: st.DrawFn, index: int) -> Step:
    """A valid infer, a readiness probe, or a well-framed request the application refuses."""
    case = draw(infers(request_id=f"request-{index}"))
    framing = draw(framings)
    kind = draw(st.sampled_from(["infer", "infer", "ready", "bad shape", "no model"]))
    if kind == "infer":
        return Step("POST", infer_request(case, framing), lambda a: check_infer(a, case))
    if kind == "ready":
        return Step("GET", request("GET", READY, framing.headers()), check_ready)
    if kind == "bad shape":
        doc = {"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}
        headers, body = framing.frame(orjson.dumps(doc))
        wire = request("POST", INFER, framing.headers() + headers, body)
        return Step("POST", wire, lambda a: check_error(a, 400, "INPUT0"))
    wire = infer_request(case, framing).replace(INFER.encode(), b"/v2/models/nope/infer", 1)
    return Step("POST", wire, lambda a: check_error(a, 404, "nope"))


@st.composite
def pipelines(draw: st.DrawFn) -> list[Step]:
    return [draw(steps(index)) for index in range(draw(st.integers(2, 6)))]


@fuzz(60)
@given(pipeline=pipelines(), delivery=deliveries)
def test_pipelined_requests_answered_in_order(
    http_port: int, pipeline: list[Step], delivery: Delivery
) -> None:
    """Requests sent back to back on one connection: each answer in turn, each right."""
    with Connection(http_port) as conn:
        conn.send(b"".join(step.wire for step in pipeline), delivery)
        for step in pipeline:
            step.check(conn.answer(step.method))
    still_serves(http_port)


# -- malformed framing --------------------------------------------------------------------

TE = ("Transfer-Encoding", "chunked")
BAD_SIZES = [b"zz", b"-1", b"0x10", b"", b"+1", b"1_0", b"f" * 20, b"1;", b"1;=x", b'1;a="x']
BAD_LENGTHS = ["abc", "-1", "1e3", "+5", "0x10", "1 2", ""]
BAD_VALUES = ["a\x00b", "a\rb", "a\x7fb", "a\nb"]


def _post(case: Infer, headers: list[tuple[str, str]], body: bytes) -> bytes:
    return request("POST", INFER, [*case.body()[1], *headers], body)


def _chunked(body: bytes, size_line: bytes, tail: bytes = b"\r\n0\r\n\r\n") -> bytes:
    return size_line + b"\r\n" + body + tail


# Name -> (builder of a broken request from a valid one's body, whether the stream then stops
# short, so the client half-closes). RFC 9112 lets a server refuse each; this one must.
Build = Callable[[Infer, bytes, st.DataObject], bytes]
MALFORMED: dict[str, tuple[Build, bool]] = {
    "bad chunk size": (
        lambda c, b, d: _post(c, [TE], _chunked(b, d.draw(st.sampled_from(BAD_SIZES)))),
        False,
    ),
    "chunk longer than its size": (
        lambda c, b, d: _post(c, [TE], _chunked(b, b"%x" % (len(b) - d.draw(st.integers(1, 3))))),
        False,
    ),
    "chunk without its CRLF": (
        lambda c, b, d: _post(c, [TE], _chunked(b, b"%x" % len(b), b"0\r\n\r\n")),
        False,
    ),
    "both framings": (
        lambda c, b, d: _post(
            c, [("Content-Length", str(len(b))), TE], _chunked(b, b"%x" % len(b))
        ),
        False,
    ),
    "chunked not last": (
        lambda c, b, d: _post(
            c, [("Transfer-Encoding", "chunked, identity")], _chunked(b, b"%x" % len(b))
        ),
        False,
    ),
    "two lengths": (
        lambda c, b, d: _post(
            c, [("Content-Length", str(len(b))), ("Content-Length", str(len(b) + 1))], b
        ),
        False,
    ),
    "length not a number": (
        lambda c, b, d: _post(c, [("Content-Length", d.draw(st.sampled_from(BAD_LENGTHS)))], b),
        False,
    ),
    "space before colon": (
        lambda c, b, d: _post(c, [("Content-Length ", str(len(b)))], b),
        False,
    ),
    "control byte in a value": (
        lambda c, b, d: _post(
            c, [("X-Bad", d.draw(st.sampled_from(BAD_VALUES))), ("Content-Length", str(len(b)))], b
        ),
        False,
    ),
    "chunk shorter than its size": (
        lambda c, b, d: _post(c, [TE], _chunked(b, b"%x" % (len(b) + d.draw(st.integers(1, 9))))),
        True,
    ),
    "no last chunk": (
        lambda c, b, d: _post(c, [TE], _chunked(b, b"%x" % len(b), b"\r\n")),
        True,
    ),
    "length past the body": (
        lambda c, b, d: _post(c, [("Content-Length", str(len(b) + d.draw(st.integers(1, 9))))], b),
        True,
    ),
    "length short of the body": (
        lambda c, b, d: _post(c, [("Content-Length", str(len(b) - d.draw(st.integers(1, 9))))], b),
        True,
    ),
    "head never ends": (
        lambda c, b, d: _post(c, [("Content-Length", str(len(b)))], b"")[:-2],
        True,
    ),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
@fuzz(10)
@given(data=st.data(), case=infers(), delivery=deliveries)
def test_malformed_framing_is_refused(
    http_port: int, kind: str, data: st.DataObject, case: Infer, delivery: Delivery
) -> None:
    """A 4xx or a close, within the bound; a stream cut short ends in a close."""
    build, ends = MALFORMED[kind]
    wire = build(case, case.body()[0], data)
    with Connection(http_port) as conn:
        conn.send(wire, delivery)
        if ends:
            conn.finish_sending()
        answer = conn.answer("POST")
        event(f"{answer.status or 'closed'}")
        check_refused(answer)
        while ends and answer.status is not None:
            answer = conn.answer("POST")
            check_refused(answer)
    still_serves(http_port)


# -- what the grammar found, and the server now does -------------------------------------


def test_an_oversized_head_is_refused(http_port: int) -> None:
    """A 1 MiB header field is answered 431, naming the head, and the connection closed."""
    with Connection(http_port) as conn:
        conn.send(request("GET", READY, [("X-Big", "a" * (1 << 20))]))
        check_error(conn.answer("GET"), 431, "head")
        assert conn.answer("GET") is CLOSED
    still_serves(http_port)


def test_a_malformed_request_behind_a_valid_one(http_port: int) -> None:
    """The valid request is answered first; then the malformed one is refused."""
    malformed = request("POST", INFER, [TE], _chunked(b"{}", b"zz"))
    with Connection(http_port) as conn:
        conn.send(request("GET", READY, []) + malformed)
        check_ready(conn.answer("GET"))
        check_error(conn.answer("POST"), 400, "not valid HTTP/1.1")
        assert conn.answer("GET") is CLOSED
    still_serves(http_port)
