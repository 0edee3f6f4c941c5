"""Tests of HTTP/1.1 parsing and serialization for the opening handshake."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backchannel.exceptions import InvalidRequest, InvalidResponse
from backchannel.protocol.http11 import (
    Headers,
    Request,
    RequestParser,
    Response,
    parse_response_head,
)
from backchannel.protocol.limits import Limits

GET = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: test\r\nAccept: */*\r\n\r\n"

UPGRADE = (
    b"GET /ws HTTP/1.1\r\n"
    b"Host: example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def post(body: bytes, path: str = "/upload") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def many_headers(count: int) -> bytes:
    lines = b"".join(b"X-Header-%d: value\r\n" % i for i in range(count))
    return b"GET / HTTP/1.1\r\nHost: example.com\r\n" + lines + b"\r\n"


def status_of(exc_info: pytest.ExceptionInfo[InvalidRequest]) -> int:
    return exc_info.value.status


# ---------------------------------------------------------------------------------------
# RequestParser: well-formed input


def check_get(request: Request) -> None:
    assert request.method == "GET"
    assert request.path == "/chat?room=1"
    assert list(request.headers) == [
        ("Host", "example.com"),
        ("User-Agent", "test"),
        ("Accept", "*/*"),
    ]
    assert request.body == b""
    assert request.keep_alive is True


def test_simple_get() -> None:
    parser = RequestParser()
    (request,) = parser.feed(GET)
    check_get(request)
    assert parser.upgraded is False
    assert parser.rest == b""


def test_get_split_at_every_byte() -> None:
    for i in range(len(GET) + 1):
        parser = RequestParser()
        requests = parser.feed(GET[:i]) + parser.feed(GET[i:])
        assert len(requests) == 1, i
        check_get(requests[0])


def test_get_fed_byte_by_byte() -> None:
    parser = RequestParser()
    requests: list[Request] = []
    for i in range(len(GET)):
        got = parser.feed(GET[i : i + 1])
        # Nothing is returned before the last byte.
        assert got == [] or i == len(GET) - 1
        requests += got
    assert len(requests) == 1
    check_get(requests[0])


def test_pipelined_requests() -> None:
    data = GET + post(b"payload") + b"GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n"
    requests = RequestParser().feed(data)
    assert [(r.method, r.path, r.body) for r in requests] == [
        ("GET", "/chat?room=1", b""),
        ("POST", "/upload", b"payload"),
        ("GET", "/second", b""),
    ]
    # Each request has its own headers.
    assert requests[1].headers.get("Content-Length") == "7"
    assert "Content-Length" not in requests[2].headers


def test_pipelined_requests_split_everywhere() -> None:
    data = GET + post(b"abc") + GET
    for i in range(len(data) + 1):
        parser = RequestParser()
        requests = parser.feed(data[:i]) + parser.feed(data[i:])
        assert [r.method for r in requests] == ["GET", "POST", "GET"], i
        assert requests[1].body == b"abc"


def test_post_with_content_length_body() -> None:
    body = b'{"key": "value"}'
    (request,) = RequestParser().feed(post(body))
    assert request.method == "POST"
    assert request.body == body
    assert request.headers["content-length"] == str(len(body))


def test_post_body_in_several_feeds() -> None:
    body = bytes(range(256)) * 40
    data = post(body)
    parser = RequestParser()
    requests: list[Request] = []
    for i in range(0, len(data), 1000):
        requests += parser.feed(data[i : i + 1000])
    assert len(requests) == 1
    assert requests[0].body == body


def test_chunked_body() -> None:
    data = (
        b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    (request,) = RequestParser().feed(data)
    assert request.body == b"hello world"
    parser = RequestParser()
    requests: list[Request] = []
    for i in range(len(data)):
        requests += parser.feed(data[i : i + 1])
    assert [r.body for r in requests] == [b"hello world"]


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive(data: bytes, keep_alive: bool) -> None:
    (request,) = RequestParser().feed(data)
    assert request.keep_alive is keep_alive


def test_upgrade_with_trailing_bytes_in_rest() -> None:
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    parser = RequestParser()
    (request,) = parser.feed(UPGRADE + frame)
    assert request.method == "GET"
    assert request.path == "/ws"
    assert request.headers["upgrade"] == "websocket"
    assert parser.upgraded is True
    assert parser.rest == frame


def test_upgrade_split_with_trailing_bytes() -> None:
    trailing = b"\x81\x80abcd"
    data = UPGRADE + trailing
    for i in range(len(UPGRADE)):
        parser = RequestParser()
        requests = parser.feed(data[:i]) + parser.feed(data[i:])
        assert [r.path for r in requests] == ["/ws"]
        assert parser.upgraded
        assert parser.rest == trailing


def test_upgrade_without_trailing_bytes() -> None:
    parser = RequestParser()
    assert len(parser.feed(UPGRADE)) == 1
    assert parser.upgraded
    assert parser.rest == b""


def test_no_request_after_upgrade() -> None:
    parser = RequestParser()
    parser.feed(UPGRADE)
    with pytest.raises(InvalidRequest):
        parser.feed(GET)


def test_pipelined_request_then_upgrade() -> None:
    parser = RequestParser()
    requests = parser.feed(GET + UPGRADE + b"\x88\x80")
    assert [r.path for r in requests] == ["/chat?room=1", "/ws"]
    assert parser.upgraded
    assert parser.rest == b"\x88\x80"


# ---------------------------------------------------------------------------------------
# RequestParser: limits and malformed input


@pytest.mark.parametrize("chunk_lines", [1, 50])
def test_too_many_header_lines_fail_early(chunk_lines: int) -> None:
    data = many_headers(10_000)
    lines = data.split(b"\r\n")
    chunks = [
        b"\r\n".join(lines[i : i + chunk_lines]) + b"\r\n"
        for i in range(0, len(lines), chunk_lines)
    ]
    parser = RequestParser()
    fed = 0
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest) as exc_info:
            for chunk in chunks:
                fed += len(chunk)
                parser.feed(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status_of(exc_info) == 431
    # Refused within the first few hundred lines (the limit is 128 fields), long before the
    # 10,000th, and without holding the rest.
    assert fed < 400 * 30, fed
    assert peak < 256 * 1024, peak


def test_too_many_header_lines_in_one_feed() -> None:
    data = many_headers(10_000)
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(data)
    assert status_of(exc_info) == 431
    # Also refused by the field count when the head size limit is out of the way.
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser(Limits(max_head_size=2**30)).feed(data)
    assert status_of(exc_info) == 431
    assert "header" in str(exc_info.value)


def test_header_count_limit_is_exact() -> None:
    limits = Limits(max_headers=10)
    # Host plus nine more: ten fields.
    (request,) = RequestParser(limits).feed(many_headers(9))
    assert len(request.headers) == 10
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser(limits).feed(many_headers(10))
    assert status_of(exc_info) == 431


def test_too_long_header_line() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n"
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(data)
    assert status_of(exc_info) == 431


def test_header_line_limit_is_exact() -> None:
    limits = Limits(max_line=100)
    # "X-A: " + 95 characters is a 100-byte line.
    ok = b"GET / HTTP/1.1\r\nX-A: " + b"a" * 95 + b"\r\n\r\n"
    (request,) = RequestParser(limits).feed(ok)
    assert request.headers["X-A"] == "a" * 95
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser(limits).feed(ok.replace(b"a" * 95, b"a" * 96))
    assert status_of(exc_info) == 431


def test_head_that_never_ends_is_refused_at_the_head_size_limit() -> None:
    parser = RequestParser(Limits(max_head_size=4096, max_line=2**20))
    parser.feed(b"GET / HTTP/1.1\r\nX-Endless: ")
    fed = 27
    with pytest.raises(InvalidRequest) as exc_info:
        while True:
            parser.feed(b"a" * 100)
            fed += 100
    assert status_of(exc_info) == 431
    assert fed <= 4096


def test_too_long_url() -> None:
    data = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(data)
    assert status_of(exc_info) == 414


def test_too_long_url_across_feeds() -> None:
    parser = RequestParser(Limits(max_line=1000))
    parser.feed(b"GET /" + b"a" * 600)
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(b"a" * 600)
    assert status_of(exc_info) == 414


def test_body_over_max_body_size() -> None:
    limits = Limits(max_body_size=100)
    (request,) = RequestParser(limits).feed(post(bytes(100)))
    assert request.body == bytes(100)
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser(limits).feed(post(bytes(101)))
    assert status_of(exc_info) == 413


def test_chunked_body_over_max_body_size_in_pieces() -> None:
    parser = RequestParser(Limits(max_body_size=100))
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    parser.feed(b"32\r\n" + bytes(50) + b"\r\n")
    parser.feed(b"32\r\n" + bytes(50) + b"\r\n")
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(b"1\r\nx\r\n")
    assert status_of(exc_info) == 413


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00\x01\x02 binary garbage\r\n\r\n", id="binary"),
        pytest.param(b"HELLO\r\n\r\n", id="no-target"),
        pytest.param(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", id="header-without-colon"),
        pytest.param(b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", id="bad-version"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            id="duplicate-content-length",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="smuggling-cl-and-te",
        ),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            id="bad-chunk-size",
        ),
    ],
)
def test_garbage_is_400(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(data)
    assert status_of(exc_info) == 400


@pytest.mark.parametrize(
    "case",
    ["post-body", "upgrade-rest", "pipelined"],
)
def test_head_limit_applies_to_the_head_only(case: str) -> None:
    # Each input has a small head but is more than max_head_size (64 KiB) in one chunk,
    # as one socket read can deliver it.
    parser = RequestParser()
    if case == "post-body":
        body = bytes(100_000)  # under max_body_size (1 MiB)
        (request,) = parser.feed(post(body))
        assert request.body == body
    elif case == "upgrade-rest":
        rest = b"\x82\x7f" + bytes(70_000)
        (request,) = parser.feed(UPGRADE + rest)
        assert parser.upgraded
        assert parser.rest == rest
    else:
        requests = parser.feed(GET * 2000)  # 2000 small requests, about 140 KB
        assert len(requests) == 2000


def head_of_size(size: int, path: bytes = b"/") -> bytes:
    """A complete GET head of exactly ``size`` bytes, padded with X-Pad fields."""
    start = b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n"
    head = start
    pad = size - len(start) - 2
    while pad > 0:
        # Each field is at most 4000 bytes, within max_line; the last takes what is left.
        value = min(pad - len(b"X-Pad: \r\n"), 4000)
        if value < 0:
            # Too little room for one more field: lengthen the path instead.
            return head_of_size(size, path + b"a" * pad)
        head += b"X-Pad: " + b"p" * value + b"\r\n"
        pad -= value + len(b"X-Pad: \r\n")
    head += b"\r\n"
    assert len(head) == size, (len(head), size)
    return head


def test_head_of_size_helper() -> None:
    for size in (40, 41, 50, 4100, 65536, 65537):
        assert len(head_of_size(size)) == size


@pytest.mark.parametrize("size", [65537, 100_000, 250_000])
def test_complete_head_over_the_limit_in_one_read_is_refused(size: int) -> None:
    # Issue 12: a whole head of up to about 256 KiB in one read got through a 64 KiB limit.
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(head_of_size(size))
    assert status_of(exc_info) == 431


def test_head_size_limit_is_exact() -> None:
    (request,) = RequestParser().feed(head_of_size(65536))
    assert request.method == "GET"
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser().feed(head_of_size(65537))
    assert status_of(exc_info) == 431


@pytest.mark.parametrize("body", ["content-length", "chunked", "none"])
def test_head_limit_applies_to_each_pipelined_request(body: str) -> None:
    # The second head is measured from its own first byte, even when it arrives in the
    # same read as the first request and its body.
    limits = Limits(max_head_size=1000)
    if body == "content-length":
        first = post(bytes(3000))
    elif body == "chunked":
        first = (
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n" + b"bb8\r\n" + bytes(3000) + b"\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
    else:
        first = head_of_size(900)
    requests = RequestParser(limits).feed(first + head_of_size(1000) + head_of_size(999))
    assert len(requests) == 3
    if body == "chunked":
        assert requests[0].body == b"hello" + bytes(3000)
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser(limits).feed(first + head_of_size(1001))
    assert status_of(exc_info) == 431


@given(
    size=st.integers(min_value=60, max_value=3000),
    limit=st.integers(min_value=60, max_value=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=12),
    pipelined=st.booleans(),
)
def test_head_limit_holds_whatever_the_reads(
    size: int, limit: int, cuts: list[int], pipelined: bool
) -> None:
    # The outcome depends on the head's size only, never on how the bytes are split.
    prefix = post(b"x" * 700) if pipelined else b""
    data = prefix + head_of_size(size)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    parser = RequestParser(Limits(max_head_size=limit, max_line=4096))
    requests: list[Request] = []
    try:
        for start, end in itertools.pairwise(bounds):
            requests += parser.feed(data[start:end])
    except InvalidRequest as exc:
        assert exc.status == 431
        assert size > limit or len(prefix) - 700 > limit
    else:
        assert size <= limit
        assert len(requests) == 1 + pipelined


def test_request_line_limit_is_exact() -> None:
    limits = Limits(max_line=100)
    # "GET " + target + " HTTP/1.1" is 13 bytes more than the target: 87 + 13 = 100.
    ok = b"GET /" + b"a" * 86 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    (request,) = RequestParser(limits).feed(ok)
    assert len(request.path) == 87
    with pytest.raises(InvalidRequest) as exc_info:
        RequestParser(limits).feed(ok.replace(b"/a", b"/aa", 1))
    assert status_of(exc_info) == 414


def limited_request(target: int, value: int, fields: int, body: int) -> bytes:
    """A POST whose target, X-Value field, extra field count and body have these sizes."""
    head = b"POST /" + b"t" * (target - 1) + b" HTTP/1.1\r\nHost: a\r\n"
    head += b"X-Value: " + b"v" * value + b"\r\n"
    head += b"".join(b"X-%d: f\r\n" % i for i in range(fields))
    head += b"Content-Length: %d\r\n\r\n" % body
    return head + b"b" * body


@given(
    target=st.integers(min_value=1, max_value=120),
    value=st.integers(min_value=0, max_value=120),
    fields=st.integers(min_value=0, max_value=12),
    body=st.integers(min_value=0, max_value=300),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=20),
)
def test_every_limit_holds_whatever_the_reads(
    target: int, value: int, fields: int, body: int, cuts: list[int]
) -> None:
    # max_line, max_headers and max_body_size give the status their exact rule says,
    # however the bytes are cut into reads.
    limits = Limits(max_line=100, max_headers=12, max_body_size=200, max_head_size=2**20)
    data = limited_request(target, value, fields, body)
    if len(b"POST ") + target + len(b" HTTP/1.1") > 100:
        expected = 414
    elif len(b"X-Value: ") + value > 100:
        expected = 431
    elif 3 + fields > 12:  # Host, X-Value, Content-Length and the extra fields
        expected = 431
    elif body > 200:
        expected = 413
    else:
        expected = 0
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    parser = RequestParser(limits)
    try:
        requests = [r for a, b in itertools.pairwise(bounds) for r in parser.feed(data[a:b])]
    except InvalidRequest as exc:
        assert exc.status == expected
    else:
        assert expected == 0
        assert len(requests) == 1
        assert len(requests[0].body) == body


def test_chunk_line_that_never_ends_is_refused() -> None:
    parser = RequestParser(Limits(max_line=100))
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;x=")
    with pytest.raises(InvalidRequest) as exc_info:
        for _ in range(100):
            parser.feed(b"e" * 50)
    assert status_of(exc_info) == 431


def test_declared_body_over_max_body_size_is_refused_at_the_head() -> None:
    parser = RequestParser(Limits(max_body_size=100))
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n"
    with pytest.raises(InvalidRequest) as exc_info:
        parser.feed(head)
    assert status_of(exc_info) == 413
    (request,) = RequestParser(Limits(max_body_size=100)).feed(post(b"b" * 100))
    assert request.body == b"b" * 100


# ---------------------------------------------------------------------------------------
# Headers


def test_headers_case_insensitive_lookup() -> None:
    headers = Headers([("Content-Type", "text/plain"), ("X-Multi", "a"), ("x-multi", "b")])
    assert headers.get("content-type") == "text/plain"
    assert headers.get("CONTENT-TYPE") == "text/plain"
    assert headers["Content-type"] == "text/plain"
    assert headers.get_all("X-MULTI") == ["a", "b"]
    assert headers.get("x-Multi") == "a, b"
    assert "x-multi" in headers
    assert "Missing" not in headers
    assert 42 not in headers
    assert headers.get("Missing") is None
    assert headers.get("Missing", "default") == "default"
    assert headers.get_all("Missing") == []
    with pytest.raises(KeyError):
        headers["Missing"]


def test_headers_set_replaces_every_case_variant() -> None:
    headers = Headers([("X-A", "1"), ("Other", "o"), ("x-a", "2")])
    headers.set("X-a", "3")
    assert headers.get_all("x-a") == ["3"]
    assert list(headers) == [("Other", "o"), ("X-a", "3")]


def test_headers_remove_and_add() -> None:
    headers = Headers({"Host": "h", "X-A": "1"})
    headers.add("x-a", "2")
    assert len(headers) == 3
    headers.remove("X-A")
    assert list(headers) == [("Host", "h")]
    headers.remove("not-there")
    assert len(headers) == 1


def test_headers_copy_and_equality() -> None:
    original = Headers([("A", "1")])
    copy = Headers(original)
    assert copy == original
    copy.add("B", "2")
    assert copy != original
    assert len(original) == 1
    assert Headers() == Headers([])
    assert Headers([("A", "1")]) != [("A", "1")]


def test_headers_serialize() -> None:
    headers = Headers([("Host", "example.com"), ("X-Latin", "caf\xe9")])
    assert headers.serialize() == b"Host: example.com\r\nX-Latin: caf\xe9\r\n"
    assert Headers().serialize() == b""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-A", "value\r\nInjected: yes"),
        ("X-A", "value\nInjected: yes"),
        ("X-A", "value\r"),
        ("X-A\r\nInjected", "yes"),
        ("X-A\n", "yes"),
    ],
)
def test_headers_serialize_refuses_crlf_injection(name: str, value: str) -> None:
    headers = Headers([("Host", "h"), (name, value)])
    with pytest.raises(ValueError):
        headers.serialize()
    with pytest.raises(ValueError):
        Response(200, headers).serialize()
    with pytest.raises(ValueError):
        Request("GET", "/", headers).serialize()


# ---------------------------------------------------------------------------------------
# Request and Response serialization


def test_request_serialize_round_trip() -> None:
    request = Request("GET", "/path?q=1", Headers([("Host", "example.com"), ("X-A", "1")]))
    data = request.serialize()
    assert data == b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\n\r\n"
    (parsed,) = RequestParser().feed(data)
    assert (parsed.method, parsed.path, parsed.headers) == ("GET", "/path?q=1", request.headers)


def test_response_serialize_adds_content_length() -> None:
    response = Response(200, Headers([("Server", "x")]), b"hello")
    assert response.reason == "OK"
    assert response.serialize() == (
        b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 5\r\n\r\nhello"
    )
    # Serializing does not change the response's own headers.
    assert "Content-Length" not in response.headers


@pytest.mark.parametrize("status", [101, 204, 304])
def test_response_without_body_has_no_content_length(status: int) -> None:
    data = Response(status).serialize()
    assert b"Content-Length" not in data
    assert data.endswith(b"\r\n\r\n")


def test_response_keeps_explicit_content_length() -> None:
    data = Response(200, Headers([("content-length", "0")])).serialize()
    assert data.count(b"ontent-") == 1


def test_response_reason_phrases() -> None:
    assert Response(101).reason == "Switching Protocols"
    assert Response(426).reason == "Upgrade Required"
    assert Response(599).reason == "Unknown"
    assert Response(200, reason="Fine").serialize().startswith(b"HTTP/1.1 200 Fine\r\n")


def test_response_text() -> None:
    response = Response.text(403, "nope", Headers([("Server", "s")]))
    assert response.status == 403
    assert response.body == b"nope"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["server"] == "s"
    head, body = response.serialize().split(b"\r\n\r\n")
    assert body == b"nope"
    assert b"Content-Length: 4" in head


# ---------------------------------------------------------------------------------------
# parse_response_head


SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)


def test_parse_101_response() -> None:
    result = parse_response_head(SWITCHING)
    assert result is not None
    response, rest = result
    assert response.status == 101
    assert response.reason == "Switching Protocols"
    assert response.headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert response.headers.get_all("upgrade") == ["websocket"]
    assert response.body == b""
    assert rest == b""


def test_parse_101_response_with_first_frames_after_it() -> None:
    frames = b"\x81\x05hello\x89\x00"
    result = parse_response_head(bytearray(SWITCHING + frames))
    assert result is not None
    assert result[0].status == 101
    assert result[1] == frames


def test_parse_403_response_leaves_body_in_rest() -> None:
    data = (
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nforbidden"
    )
    result = parse_response_head(data)
    assert result is not None
    response, rest = result
    assert (response.status, response.reason) == (403, "Forbidden")
    assert response.headers["content-length"] == "9"
    assert rest == b"forbidden"


@pytest.mark.parametrize("cut", [0, 1, 10, 40, len(SWITCHING) - 1])
def test_parse_incomplete_response_head(cut: int) -> None:
    assert parse_response_head(SWITCHING[:cut]) is None


def test_parse_oversized_response_head() -> None:
    limits = Limits(max_head_size=1024)
    endless = b"HTTP/1.1 101 Switching Protocols\r\nX-Pad: " + b"a" * 2000
    with pytest.raises(InvalidResponse):
        parse_response_head(endless, limits)
    # A complete head past the limit is refused too.
    with pytest.raises(InvalidResponse):
        parse_response_head(endless + b"\r\n\r\n", limits)
    # Within the limit it is only incomplete.
    assert parse_response_head(endless[:1000], limits) is None


def test_response_head_size_limit_is_exact() -> None:
    limits = Limits(max_head_size=1024)
    start = b"HTTP/1.1 101 Switching Protocols\r\nX-Pad: "
    exact = start + b"a" * (1024 - len(start) - 4) + b"\r\n\r\n"
    assert len(exact) == 1024
    parsed = parse_response_head(exact + b"after", limits)
    assert parsed is not None
    assert parsed[1] == b"after"
    over = exact.replace(b"aaaa", b"aaaaa", 1)
    with pytest.raises(InvalidResponse):
        parse_response_head(over, limits)
    # 1024 bytes without the end of the head: it cannot fit any more.
    with pytest.raises(InvalidResponse):
        parse_response_head(over[:1024], limits)
    assert parse_response_head(over[:1023], limits) is None


def test_parse_response_head_limits() -> None:
    with pytest.raises(InvalidResponse):
        parse_response_head(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n")
    with pytest.raises(InvalidResponse):
        parse_response_head(
            b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 200 + b"\r\n\r\n", Limits(max_line=100)
        )


@pytest.mark.parametrize(
    "data",
    [
        b"FOO BAR\r\n\r\n",
        b"HTTP/1.1 abc Bad\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nBad Header\r\n\r\n",
    ],
)
def test_parse_malformed_response_head(data: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_response_head(data)
