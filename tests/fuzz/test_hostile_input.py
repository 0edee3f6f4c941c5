"""Fuzz the parsers with hostile bytes: accepted, or refused with a documented error.

The contract of the protocol core: ``Connection.receive_data`` never raises, whatever it
is fed; a fault becomes a close frame with 1002, 1007 or 1009 (never 1011, which would
mean a bug of ours). ``RequestParser.feed`` and ``parse_response_head`` either parse or
raise ``InvalidRequest`` / ``InvalidResponse``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backchannel.exceptions import InvalidRequest, InvalidResponse
from backchannel.protocol import (
    CLIENT,
    CLOSED,
    SERVER,
    Connection,
    DeflateParams,
    Limits,
    PerMessageDeflate,
    RequestParser,
    parse_response_head,
)
from backchannel.protocol.frames import encode_frame

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Frames that are nearly valid reach deeper than random bytes: build some from parts.
frame_parts = st.builds(
    lambda opcode, payload, fin, rsv, mask: (
        bytes([(0x80 if fin else 0) | rsv | opcode]) + encode_frame(0, payload, mask=mask)[1:]
    ),
    st.integers(0, 15),
    st.binary(max_size=300),
    st.booleans(),
    st.sampled_from([0, 0x40, 0x20, 0x10]),
    st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
)
streams = st.lists(st.one_of(frame_parts, st.binary(max_size=64)), max_size=12)


def check_connection(conn: Connection, chunks: list[bytes]) -> None:
    for chunk in chunks:
        conn.receive_data(chunk)  # must not raise
        conn.data_to_send()
    if conn.failure is not None:
        assert conn.state is CLOSED
        assert conn.close_sent is not None
        assert conn.close_sent[0] in (1002, 1007, 1009), conn.failure


@SETTINGS
@given(streams, st.booleans())
def test_server_connection_never_raises(chunks: list[bytes], deflate: bool) -> None:
    extension = None
    if deflate:
        extension = PerMessageDeflate(DeflateParams(False, False, 15, 15), is_client=False)
    check_connection(Connection(SERVER, limits=Limits(max_size=1000), deflate=extension), chunks)


@SETTINGS
@given(streams)
def test_client_connection_never_raises(chunks: list[bytes]) -> None:
    check_connection(Connection(CLIENT, limits=Limits(max_size=1000)), chunks)


request_heads = st.one_of(
    st.binary(max_size=400),
    st.builds(
        lambda method, target, headers, tail: (
            f"{method} {target} HTTP/1.1\r\n".encode()
            + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
            + tail
        ),
        st.sampled_from(["GET", "POST", "CONNECT", "G ET", ""]),
        st.text(max_size=30),
        st.lists(st.tuples(st.binary(max_size=12), st.binary(max_size=40)), max_size=8),
        st.sampled_from([b"\r\n", b"", b"\r\n\x81\x00", b"\n\n"]),
    ),
)


@SETTINGS
@given(request_heads, st.integers(1, 50))
def test_request_parser_accepts_or_refuses_cleanly(data: bytes, step: int) -> None:
    parser = RequestParser(Limits(max_head_size=256, max_headers=4, max_line=64))
    try:
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
    except InvalidRequest as exc:
        assert exc.status in (400, 405, 413, 414, 431)


@SETTINGS
@given(st.binary(max_size=400))
def test_response_parser_accepts_or_refuses_cleanly(data: bytes) -> None:
    try:
        parse_response_head(b"HTTP/1.1 " + data, Limits(max_head_size=256))
    except InvalidResponse:
        pass
