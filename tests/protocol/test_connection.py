"""Tests of the Sans-I/O connection state machine (RFC 6455 sections 5, 7 and 8; RFC 7692)."""

from __future__ import annotations

import itertools
import struct
import tracemalloc
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backchannel.protocol.connection as connection_module
from backchannel.exceptions import (
    InvalidArgument,
    InvalidPayload,
    InvalidState,
    PayloadTooBig,
    PeerError,
    ProtocolError,
)
from backchannel.protocol.connection import (
    CLIENT,
    CLOSED,
    CLOSING,
    OPEN,
    SERVER,
    Connection,
    Side,
)
from backchannel.protocol.deflate import DeflateParams, PerMessageDeflate
from backchannel.protocol.events import (
    BinaryMessage,
    CloseReceived,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from backchannel.protocol.frames import Opcode, encode_frame
from backchannel.protocol.limits import Limits

MASK = b"\x5a\x13\xc4\x7e"
CONT, TEXT, BINARY = Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY
CLOSE, PING, PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG
DEFLATE_PARAMS = DeflateParams(False, False, 15, 15)


# ---------------------------------------------------------------------------------------
# Helpers: an independent frame reader, frame builders and a wired pair of connections.


@dataclass(frozen=True)
class Frame:
    fin: bool
    rsv1: bool
    rsv2: bool
    rsv3: bool
    opcode: int
    masked: bool
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == CLOSE
        return int.from_bytes(self.payload[:2], "big") if self.payload else None

    @property
    def close_reason(self) -> str:
        assert self.opcode == CLOSE
        return self.payload[2:].decode()


def parse_frames(data: bytes) -> list[Frame]:
    """Read complete frames from ``data`` (the test's own reader, per section 5.2)."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack("!H", data[pos : pos + 2])
            pos += 2
        elif length == 127:
            (length,) = struct.unpack("!Q", data[pos : pos + 8])
            pos += 8
        masked = bool(b1 & 0x80)
        mask = b""
        if masked:
            mask = data[pos : pos + 4]
            pos += 4
        payload = data[pos : pos + length]
        assert len(payload) == length, "incomplete frame"
        pos += length
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append(
            Frame(
                bool(b0 & 0x80),
                bool(b0 & 0x40),
                bool(b0 & 0x20),
                bool(b0 & 0x10),
                b0 & 0x0F,
                masked,
                payload,
            )
        )
    return frames


def frame_to(
    side: Side,
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes = MASK,
) -> bytes:
    """A well-formed frame for a connection on ``side`` to receive (masked for a server)."""
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask if side is SERVER else None)


def to_server(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    return frame_to(SERVER, opcode, payload, fin=fin, rsv1=rsv1)


def to_client(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    return frame_to(CLIENT, opcode, payload, fin=fin, rsv1=rsv1)


def raw_header(first: int, length: int, *, masked: bool, form: int | None = None) -> bytes:
    """A header with a chosen length form (7, 16 or 64 bits), minimal or not."""
    if form is None:
        form = 7 if length < 126 else 16 if length < 65536 else 64
    bit = 0x80 if masked else 0
    if form == 7:
        header = bytes((first, bit | length))
    elif form == 16:
        header = bytes((first, bit | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, bit | 127)) + struct.pack("!Q", length)
    return header + (MASK if masked else b"")


def outgoing(conn: Connection) -> list[Frame]:
    return parse_frames(b"".join(conn.data_to_send()))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def assert_failed(conn: Connection, code: int, exc_type: type[PeerError]) -> None:
    """The connection failed with ``code``: one close frame queued, CLOSED, nothing more."""
    frames = outgoing(conn)
    assert len(frames) == 1, frames
    (close,) = frames
    assert close.opcode == CLOSE
    assert close.fin
    assert close.masked == (conn.side is CLIENT)
    assert close.close_code == code
    assert len(close.payload) <= 125
    assert conn.state is CLOSED
    assert isinstance(conn.failure, exc_type)
    assert conn.close_code == code
    assert conn.close_sent is not None
    assert conn.close_sent[0] == code
    assert conn.close_received is None
    # Everything after the failure is ignored, and nothing more is queued.
    assert conn.receive_data(frame_to(conn.side, TEXT, b"after")) == []
    assert conn.receive_data(frame_to(conn.side, PING, b"after")) == []
    assert conn.data_to_send() == []
    assert conn.state is CLOSED


class Pair:
    """A client and a server wired to each other."""

    def __init__(
        self,
        client: Connection | None = None,
        server: Connection | None = None,
    ) -> None:
        self.client = client or Connection(CLIENT)
        self.server = server or Connection(SERVER)

    def peer(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def transmit(self, sender: Connection, data: bytes) -> list[Event]:
        """Deliver bytes ``sender`` produced to the other side; return its events."""
        return self.peer(sender).receive_data(data)

    def pump(self) -> tuple[list[Event], list[Event]]:
        """Deliver queued automatic output both ways until both are quiet."""
        client_events: list[Event] = []
        server_events: list[Event] = []
        while True:
            to_server_data = b"".join(self.client.data_to_send())
            to_client_data = b"".join(self.server.data_to_send())
            if not to_server_data and not to_client_data:
                return client_events, server_events
            if to_server_data:
                server_events += self.server.receive_data(to_server_data)
            if to_client_data:
                client_events += self.client.receive_data(to_client_data)


def deflate_pair(**limits: int | None) -> Pair:
    lim = Limits(**limits) if limits else None  # type: ignore[arg-type]
    return Pair(
        Connection(CLIENT, limits=lim, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=True)),
        Connection(SERVER, limits=lim, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False)),
    )


SIDES = pytest.mark.parametrize("side", [SERVER, CLIENT], ids=["server", "client"])


# ---------------------------------------------------------------------------------------
# Data messages


MESSAGES = [
    pytest.param("text", "hello", id="text"),
    pytest.param("text", "", id="empty-text"),
    pytest.param("text", "héllo € 😀", id="unicode-text"),
    pytest.param("text", "x" * 70_000, id="text-64-bit-length"),
    pytest.param("binary", b"\x00\xffdata", id="binary"),
    pytest.param("binary", b"", id="empty-binary"),
    pytest.param("binary", bytes(range(256)) * 300, id="binary-16-and-64-bit"),
]


@pytest.mark.parametrize(("kind", "data"), MESSAGES)
@pytest.mark.parametrize("sender_is_client", [True, False], ids=["c2s", "s2c"])
def test_messages_both_directions(kind: str, data: str | bytes, sender_is_client: bool) -> None:
    pair = Pair()
    sender = pair.client if sender_is_client else pair.server
    if kind == "text":
        assert isinstance(data, str)
        wire = sender.send_text(data)
        expected: Event = TextMessage(data)
    else:
        assert isinstance(data, bytes)
        wire = sender.send_binary(data)
        expected = BinaryMessage(data)
    (frame,) = parse_frames(wire)
    assert frame.masked == sender_is_client
    assert frame.opcode == (TEXT if kind == "text" else BINARY)
    assert frame.fin and not frame.rsv1
    assert pair.transmit(sender, wire) == [expected]
    assert pair.pump() == ([], [])
    assert pair.client.state is OPEN and pair.server.state is OPEN


def test_send_text_accepts_utf8_bytes() -> None:
    pair = Pair()
    wire = pair.client.send_text("é€".encode())
    assert pair.transmit(pair.client, wire) == [TextMessage("é€")]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_send_binary_and_receive_accept_buffers(kind: type) -> None:
    pair = Pair()
    wire = pair.server.send_binary(kind(b"buffer"))
    assert pair.client.receive_data(kind(wire)) == [BinaryMessage(b"buffer")]


def test_client_frames_use_a_fresh_mask_each_time() -> None:
    client = Connection(CLIENT)
    first = client.send_binary(b"same")
    second = client.send_binary(b"same")
    # Bytes 2..5 are the masking key; equal keys have a probability of 2**-32.
    assert first[2:6] != second[2:6]
    assert Connection(SERVER).send_binary(b"same") == b"\x82\x04same"


def test_several_messages_in_one_chunk_and_split_byte_by_byte() -> None:
    stream = (
        to_server(TEXT, b"one")
        + to_server(BINARY, b"two")
        + to_server(TEXT, b"thr", fin=False)
        + to_server(CONT, b"ee")
        + to_server(BINARY, bytes(300))
    )
    expected = [
        TextMessage("one"),
        BinaryMessage(b"two"),
        TextMessage("three"),
        BinaryMessage(bytes(300)),
    ]
    assert Connection(SERVER).receive_data(stream) == expected
    server = Connection(SERVER)
    events: list[Event] = []
    for i in range(len(stream)):
        events += server.receive_data(stream[i : i + 1])
    assert events == expected


# ---------------------------------------------------------------------------------------
# Fragmentation and control frames


def test_fragmented_text_with_pings_in_the_middle() -> None:
    pair = Pair()
    client = pair.client
    parts = [
        client.send_text("Hel", fin=False),
        client.send_ping(b"p1"),
        client.send_continuation("l", fin=False),
        client.send_ping(b"p2"),
        client.send_continuation("o", fin=True),
    ]
    events: list[Event] = []
    for part in parts:
        events += pair.transmit(client, part)
    assert events == [Ping(b"p1"), Ping(b"p2"), TextMessage("Hello")]
    pongs = outgoing(pair.server)
    assert [(f.opcode, f.payload, f.masked) for f in pongs] == [
        (PONG, b"p1", False),
        (PONG, b"p2", False),
    ]


def test_fragmented_binary_from_server_with_ping_and_pong() -> None:
    pair = Pair()
    server = pair.server
    wire = b"".join(
        [
            server.send_binary(b"ab", fin=False),
            server.send_ping(b"?"),
            server.send_continuation(b"", fin=False),
            server.send_pong(b"!"),
            server.send_continuation(b"cd", fin=True),
        ]
    )
    assert pair.transmit(server, wire) == [Ping(b"?"), Pong(b"!"), BinaryMessage(b"abcd")]
    client_events, server_events = pair.pump()
    assert client_events == []
    assert server_events == [Pong(b"?")]


def test_fragmented_utf8_character_split_across_fragments() -> None:
    data = "€".encode()
    stream = to_server(TEXT, data[:1], fin=False) + to_server(CONT, data[1:2], fin=False)
    stream += to_server(CONT, data[2:])
    assert Connection(SERVER).receive_data(stream) == [TextMessage("€")]


def test_fragmented_message_with_empty_fragments() -> None:
    stream = (
        to_server(TEXT, b"", fin=False)
        + to_server(CONT, b"", fin=False)
        + to_server(CONT, b"x", fin=False)
        + to_server(CONT, b"")
    )
    assert Connection(SERVER).receive_data(stream) == [TextMessage("x")]


def test_send_continuation_without_message_in_progress_raises() -> None:
    conn = Connection(CLIENT)
    with pytest.raises(InvalidState):
        conn.send_continuation(b"x", fin=True)
    conn.send_binary(b"a", fin=False)
    conn.send_continuation(b"b", fin=True)
    with pytest.raises(InvalidState):
        conn.send_continuation(b"c", fin=True)


def test_new_message_while_sending_fragmented_one_raises() -> None:
    conn = Connection(SERVER)
    conn.send_text("a", fin=False)
    with pytest.raises(InvalidState):
        conn.send_text("b")
    with pytest.raises(InvalidState):
        conn.send_binary(b"b")
    # Control frames may still be interleaved.
    conn.send_ping(b"")
    conn.send_continuation("c", fin=True)
    conn.send_text("d")


@SIDES
def test_ping_queues_automatic_pong(side: Side) -> None:
    conn = Connection(side)
    assert conn.receive_data(frame_to(side, PING, b"are you there")) == [Ping(b"are you there")]
    (pong,) = outgoing(conn)
    assert pong.opcode == PONG
    assert pong.payload == b"are you there"
    assert pong.masked == (side is CLIENT)
    assert conn.data_to_send() == []


@SIDES
def test_empty_and_maximal_ping(side: Side) -> None:
    conn = Connection(side)
    payload = bytes(range(125))
    events = conn.receive_data(frame_to(side, PING) + frame_to(side, PING, payload))
    assert events == [Ping(b""), Ping(payload)]
    assert [f.payload for f in outgoing(conn)] == [b"", payload]


@SIDES
def test_pong_is_reported_and_not_answered(side: Side) -> None:
    conn = Connection(side)
    assert conn.receive_data(frame_to(side, PONG, b"beat")) == [Pong(b"beat")]
    assert conn.data_to_send() == []


def test_ping_split_across_chunks() -> None:
    conn = Connection(SERVER)
    wire = to_server(PING, b"0123456789")
    assert conn.receive_data(wire[:3]) == []
    assert conn.receive_data(wire[3:9]) == []
    assert conn.receive_data(wire[9:]) == [Ping(b"0123456789")]
    assert [f.payload for f in outgoing(conn)] == [b"0123456789"]


def test_send_control_frames_refuse_long_payloads() -> None:
    conn = Connection(CLIENT)
    with pytest.raises(InvalidArgument):
        conn.send_ping(bytes(126))
    with pytest.raises(InvalidArgument):
        conn.send_pong(bytes(126))
    with pytest.raises(InvalidArgument):
        conn.send_close(1000, "x" * 124)
    with pytest.raises(InvalidArgument):
        conn.send_close(1005)
    with pytest.raises(InvalidArgument):
        conn.send_close(None, "reason without code")
    # None of the refused calls changed the state.
    assert conn.state is OPEN
    assert conn.close_sent is None
    assert len(conn.send_ping(bytes(125))) == 2 + 4 + 125


# ---------------------------------------------------------------------------------------
# The closing handshake


@pytest.mark.parametrize("initiator_is_client", [True, False], ids=["client", "server"])
def test_close_handshake(initiator_is_client: bool) -> None:
    pair = Pair()
    first = pair.client if initiator_is_client else pair.server
    second = pair.peer(first)
    assert first.state is OPEN and second.state is OPEN
    wire = first.send_close(1001, "going away")
    assert first.state is CLOSING
    assert first.close_sent == (1001, "going away")
    assert first.close_received is None
    (frame,) = parse_frames(wire)
    assert (frame.opcode, frame.close_code, frame.close_reason) == (CLOSE, 1001, "going away")

    assert pair.transmit(first, wire) == [CloseReceived(1001, "going away")]
    assert second.state is CLOSED
    assert second.close_received == (1001, "going away")
    assert second.close_code == 1001
    assert second.close_reason == "going away"
    assert second.failure is None
    (echo,) = outgoing(second)
    assert echo.opcode == CLOSE
    assert echo.close_code == 1001  # section 5.5.1: echo the code
    assert echo.masked == (second is pair.client)

    events = first.receive_data(
        encode_frame(CLOSE, echo.payload, mask=MASK if first is pair.server else None)
    )
    assert events == [CloseReceived(1001, echo.close_reason)]
    assert first.state is CLOSED
    assert first.close_code == 1001
    assert first.failure is None
    assert first.data_to_send() == []


def test_close_handshake_through_pump() -> None:
    pair = Pair()
    wire = pair.client.send_close(1000, "bye")
    assert pair.transmit(pair.client, wire) == [CloseReceived(1000, "bye")]
    client_events, server_events = pair.pump()
    # The echo repeats code and reason, so both ends report the same closure.
    assert client_events == [CloseReceived(1000, "bye")]
    assert server_events == []
    assert pair.client.state is CLOSED and pair.server.state is CLOSED
    assert (pair.client.close_code, pair.client.close_reason) == (1000, "bye")
    assert (pair.server.close_code, pair.server.close_reason) == (1000, "bye")


def test_close_sent_matches_the_echo_frame() -> None:
    server = Connection(SERVER)
    server.receive_data(to_server(CLOSE, close_payload(1000, b"bye")))
    (echo,) = outgoing(server)
    assert server.close_sent == (echo.close_code, echo.close_reason)


@SIDES
def test_close_without_payload_is_1005_and_echoed_empty(side: Side) -> None:
    conn = Connection(side)
    assert conn.receive_data(frame_to(side, CLOSE)) == [CloseReceived(1005, "")]
    assert conn.close_code == 1005
    assert conn.close_reason == ""
    assert conn.state is CLOSED
    (echo,) = outgoing(conn)
    assert echo.opcode == CLOSE
    assert echo.payload == b""


def test_send_close_without_code_gives_peer_1005() -> None:
    pair = Pair()
    wire = pair.server.send_close(None)
    assert parse_frames(wire)[0].payload == b""
    assert pair.server.close_sent == (1005, "")
    assert pair.transmit(pair.server, wire) == [CloseReceived(1005, "")]


def test_simultaneous_close() -> None:
    pair = Pair()
    from_client = pair.client.send_close(1000, "c")
    from_server = pair.server.send_close(1001, "s")
    assert pair.server.receive_data(from_client) == [CloseReceived(1000, "c")]
    assert pair.client.receive_data(from_server) == [CloseReceived(1001, "s")]
    # Both had already sent their close: no echo.
    assert pair.client.data_to_send() == []
    assert pair.server.data_to_send() == []
    assert pair.client.state is CLOSED and pair.server.state is CLOSED
    assert pair.client.close_code == 1001
    assert pair.server.close_code == 1000


@SIDES
def test_nothing_processed_after_close(side: Side) -> None:
    conn = Connection(side)
    stream = (
        frame_to(side, CLOSE, close_payload(1000))
        + frame_to(side, TEXT, b"late")
        + frame_to(side, PING, b"late")
    )
    assert conn.receive_data(stream) == [CloseReceived(1000, "")]
    assert conn.receive_data(frame_to(side, TEXT, b"later")) == []
    assert conn.receive_data(b"\xff\xff garbage") == []
    (echo,) = outgoing(conn)
    assert echo.opcode == CLOSE
    assert conn.data_to_send() == []
    assert conn.failure is None


def test_messages_still_received_while_closing() -> None:
    # Section 1.4: after sending a close, an endpoint still reads until the peer's close.
    conn = Connection(SERVER)
    conn.send_close(1000)
    events = conn.receive_data(to_server(TEXT, b"in flight") + to_server(PING, b"p"))
    assert events == [TextMessage("in flight"), Ping(b"p")]
    # No pong after our close frame: nothing may follow it.
    assert conn.data_to_send() == []
    assert conn.receive_data(to_server(CLOSE, close_payload(1000))) == [CloseReceived(1000, "")]
    assert conn.state is CLOSED
    assert conn.data_to_send() == []


def test_peer_fault_while_closing_sends_no_second_close() -> None:
    conn = Connection(SERVER)
    (ours,) = parse_frames(conn.send_close(1000, "done"))
    assert conn.receive_data(to_server(TEXT, b"\xff")) == []
    assert conn.state is CLOSED
    assert isinstance(conn.failure, InvalidPayload)
    # Our close frame went out already; nothing may follow it.
    assert conn.data_to_send() == []
    assert conn.close_sent == (ours.close_code, ours.close_reason)
    assert conn.receive_data(to_server(CLOSE, close_payload(1000))) == []


def _send_calls(conn: Connection) -> list[Callable[[], bytes]]:
    return [
        lambda: conn.send_text("x"),
        lambda: conn.send_binary(b"x"),
        lambda: conn.send_ping(b""),
        lambda: conn.send_pong(b""),
        lambda: conn.send_close(1000),
    ]


def _after_send_close(conn: Connection) -> None:
    conn.send_close(1000)


def _after_receive_close(conn: Connection) -> None:
    conn.receive_data(frame_to(conn.side, CLOSE, close_payload(1000)))


def _after_failure(conn: Connection) -> None:
    conn.receive_data(frame_to(conn.side, 3))


def _after_eof(conn: Connection) -> None:
    conn.receive_eof()


@SIDES
@pytest.mark.parametrize(
    "close", [_after_send_close, _after_receive_close, _after_failure, _after_eof]
)
def test_sending_after_close_raises_invalid_state(
    side: Side, close: Callable[[Connection], None]
) -> None:
    conn = Connection(side)
    conn.send_text("start", fin=False)
    close(conn)
    assert conn.state in (CLOSING, CLOSED)
    for call in _send_calls(conn):
        with pytest.raises(InvalidState):
            call()
    with pytest.raises(InvalidState):
        conn.send_continuation("end", fin=True)


def test_receive_eof_is_abnormal_closure() -> None:
    conn = Connection(CLIENT)
    conn.receive_data(to_client(TEXT, b"partial", fin=False))
    conn.receive_eof()
    assert conn.state is CLOSED
    assert conn.close_code == 1006
    assert conn.close_reason == ""
    assert conn.receive_data(to_client(TEXT, b"x")) == []
    assert conn.data_to_send() == []


def test_initial_state() -> None:
    conn = Connection(SERVER)
    assert conn.state is OPEN
    assert conn.failure is None
    assert conn.close_sent is None and conn.close_received is None
    assert conn.close_code == 1006
    assert conn.data_to_send() == []


# ---------------------------------------------------------------------------------------
# Peer faults: each becomes a close with the mapped code, and none raises.


def _rsv(bits: int) -> Callable[[Side], bytes]:
    def build(side: Side) -> bytes:
        frame = bytearray(frame_to(side, TEXT, b"hi"))
        frame[0] |= bits
        return bytes(frame)

    return build


def _reserved_opcode(opcode: int) -> Callable[[Side], bytes]:
    return lambda side: frame_to(side, opcode, b"x")


def _non_minimal(length: int, form: int) -> Callable[[Side], bytes]:
    return lambda side: raw_header(0x82, length, masked=side is SERVER, form=form) + bytes(length)


def _close_with_code(code: int) -> Callable[[Side], bytes]:
    return lambda side: frame_to(side, CLOSE, close_payload(code))


def _top_bit_length(side: Side) -> bytes:
    return raw_header(0x82, (1 << 63) | 5, masked=side is SERVER, form=64) + b"abcde"


FAULTS: list[tuple[str, Callable[[Side], bytes], int, type[PeerError]]] = [
    ("rsv2", _rsv(0x20), 1002, ProtocolError),
    ("rsv3", _rsv(0x10), 1002, ProtocolError),
    ("rsv1-no-deflate", lambda s: frame_to(s, TEXT, b"hi", rsv1=True), 1002, ProtocolError),
    *[
        (f"opcode-{op}", _reserved_opcode(op), 1002, ProtocolError)
        for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
    ],
    ("fragmented-ping", lambda s: frame_to(s, PING, b"x", fin=False), 1002, ProtocolError),
    ("fragmented-close", lambda s: frame_to(s, CLOSE, b"", fin=False), 1002, ProtocolError),
    ("fragmented-pong", lambda s: frame_to(s, PONG, b"", fin=False), 1002, ProtocolError),
    ("ping-126", lambda s: frame_to(s, PING, bytes(126)), 1002, ProtocolError),
    (
        "close-126",
        lambda s: frame_to(s, CLOSE, close_payload(1000, bytes(124))),
        1002,
        ProtocolError,
    ),
    ("rsv1-on-ping", lambda s: frame_to(s, PING, b"", rsv1=True), 1002, ProtocolError),
    ("continuation-first", lambda s: frame_to(s, CONT, b"x"), 1002, ProtocolError),
    ("empty-continuation-first", lambda s: frame_to(s, CONT), 1002, ProtocolError),
    (
        "text-in-fragmented",
        lambda s: frame_to(s, TEXT, b"a", fin=False) + frame_to(s, TEXT, b"b"),
        1002,
        ProtocolError,
    ),
    (
        "binary-in-fragmented",
        lambda s: frame_to(s, BINARY, b"a", fin=False) + frame_to(s, BINARY, b"b", fin=False),
        1002,
        ProtocolError,
    ),
    ("length-top-bit", _top_bit_length, 1002, ProtocolError),
    *[
        (
            f"non-minimal-{form}-bit-{n}",
            _non_minimal(n, form),
            1002,
            ProtocolError,
        )
        for n, form in [(0, 16), (5, 16), (125, 16), (0, 64), (125, 64), (65535, 64)]
    ],
    ("invalid-utf8", lambda s: frame_to(s, TEXT, b"ok \xff"), 1007, InvalidPayload),
    ("surrogate-utf8", lambda s: frame_to(s, TEXT, b"\xed\xa0\x80"), 1007, InvalidPayload),
    ("truncated-utf8", lambda s: frame_to(s, TEXT, b"\xe2\x82"), 1007, InvalidPayload),
    *[
        (
            f"close-code-{code}",
            _close_with_code(code),
            1002,
            ProtocolError,
        )
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
    ],
    ("close-1-byte", lambda s: frame_to(s, CLOSE, b"\x03"), 1002, ProtocolError),
    (
        "close-reason-invalid-utf8",
        lambda s: frame_to(s, CLOSE, close_payload(1000, b"\xc0\x80")),
        1007,
        InvalidPayload,
    ),
]


@SIDES
@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize(
    ("build", "code", "exc_type"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_peer_fault_fails_connection(
    side: Side,
    split: bool,
    build: Callable[[Side], bytes],
    code: int,
    exc_type: type[PeerError],
) -> None:
    conn = Connection(side)
    wire = build(side)
    events: list[Event] = []
    if split:
        for i in range(len(wire)):
            events += conn.receive_data(wire[i : i + 1])
    else:
        events = conn.receive_data(wire)
    assert events == []
    assert_failed(conn, code, exc_type)


def test_unmasked_client_frame_fails_server() -> None:
    conn = Connection(SERVER)
    assert conn.receive_data(encode_frame(TEXT, b"hi")) == []
    assert_failed(conn, 1002, ProtocolError)


def test_unmasked_client_control_frame_fails_server() -> None:
    conn = Connection(SERVER)
    assert conn.receive_data(encode_frame(PING, b"hi")) == []
    assert_failed(conn, 1002, ProtocolError)


def test_masked_server_frame_fails_client() -> None:
    conn = Connection(CLIENT)
    assert conn.receive_data(encode_frame(TEXT, b"hi", mask=MASK)) == []
    assert_failed(conn, 1002, ProtocolError)


def test_fault_after_good_messages_in_same_chunk_keeps_earlier_events() -> None:
    conn = Connection(SERVER)
    stream = to_server(TEXT, b"fine") + to_server(PING, b"p") + to_server(7, b"bad")
    stream += to_server(TEXT, b"never")
    assert conn.receive_data(stream) == [TextMessage("fine"), Ping(b"p")]
    frames = outgoing(conn)
    assert [(f.opcode, f.payload) for f in frames[:-1]] == [(PONG, b"p")]
    assert frames[-1].opcode == CLOSE
    assert frames[-1].close_code == 1002
    assert conn.state is CLOSED


def test_invalid_utf8_split_across_fragments_fails_at_the_bad_fragment() -> None:
    conn = Connection(SERVER)
    # "€" is E2 82 AC; the second fragment continues it with an ASCII byte.
    assert conn.receive_data(to_server(TEXT, b"price: \xe2\x82", fin=False)) == []
    assert conn.data_to_send() == []
    assert conn.state is OPEN
    assert conn.receive_data(to_server(CONT, b"(oops", fin=False)) == []
    # Failed now, before the final fragment arrived.
    assert_failed(conn, 1007, InvalidPayload)


def test_invalid_utf8_in_middle_of_large_fragment_fails_before_frame_ends() -> None:
    conn = Connection(SERVER)
    payload = b"a" * 1000 + b"\xff" + b"b" * 1000
    wire = to_server(TEXT, payload, fin=False)
    header = len(wire) - len(payload)
    assert conn.receive_data(wire[: header + 500]) == []
    assert conn.state is OPEN
    assert conn.receive_data(wire[header + 500 : header + 1001]) == []
    assert_failed(conn, 1007, InvalidPayload)


def test_surrogate_prefix_fails_when_its_second_byte_arrives() -> None:
    conn = Connection(SERVER)
    conn.receive_data(to_server(TEXT, b"ab\xed", fin=False))
    assert conn.state is OPEN
    conn.receive_data(to_server(CONT, b"\xa0", fin=False))
    assert_failed(conn, 1007, InvalidPayload)


def test_truncated_utf8_at_end_of_fragmented_message() -> None:
    conn = Connection(SERVER)
    conn.receive_data(to_server(TEXT, b"ok\xf0\x9f", fin=False))
    assert conn.state is OPEN
    conn.receive_data(to_server(CONT, b""))
    assert_failed(conn, 1007, InvalidPayload)


def test_internal_error_becomes_1011_without_details(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(payload: bytes) -> tuple[int, str]:
        raise RuntimeError("secret details")

    monkeypatch.setattr(connection_module, "parse_close", broken)
    conn = Connection(SERVER)
    assert conn.receive_data(to_server(CLOSE, close_payload(1000))) == []
    (close,) = outgoing(conn)
    assert close.close_code == 1011
    assert close.close_reason == ""
    assert conn.state is CLOSED
    assert isinstance(conn.failure, PeerError)
    assert isinstance(conn.failure.__cause__, RuntimeError)


# ---------------------------------------------------------------------------------------
# Size limits


def test_message_over_max_size_refused_at_header() -> None:
    # The frame limit is larger, so this is the message limit at work.
    conn = Connection(SERVER, limits=Limits(max_size=1000, max_frame_size=10_000))
    wire = to_server(BINARY, bytes(1001))
    header = wire[:8]
    assert conn.receive_data(header) == []
    # Queued before a byte of the payload arrived.
    assert_failed(conn, 1009, PayloadTooBig)


def test_frame_over_default_frame_limit_refused_at_header() -> None:
    conn = Connection(SERVER, limits=Limits(max_size=1000))
    assert conn.receive_data(raw_header(0x82, 1001, masked=True)) == []
    assert_failed(conn, 1009, PayloadTooBig)


def test_huge_declared_length_refused_at_header() -> None:
    conn = Connection(CLIENT)
    assert conn.receive_data(raw_header(0x82, 2**62, masked=False)) == []
    assert_failed(conn, 1009, PayloadTooBig)


def test_message_of_exactly_max_size_accepted() -> None:
    conn = Connection(SERVER, limits=Limits(max_size=1000))
    assert conn.receive_data(to_server(BINARY, bytes(1000))) == [BinaryMessage(bytes(1000))]
    assert conn.receive_data(to_server(TEXT, b"a" * 1000)) == [TextMessage("a" * 1000)]


def test_fragmented_message_over_max_size_refused_before_buffering() -> None:
    conn = Connection(SERVER, limits=Limits(max_size=1000))
    assert conn.receive_data(to_server(BINARY, bytes(100), fin=False)) == []
    for _ in range(9):
        assert conn.receive_data(to_server(CONT, bytes(100), fin=False)) == []
    assert conn.state is OPEN
    # 1000 bytes so far: the header of one more fragment is enough to refuse.
    assert conn.receive_data(to_server(CONT, bytes(1))[:6]) == []
    assert_failed(conn, 1009, PayloadTooBig)


def test_fragmented_message_of_exactly_max_size_accepted() -> None:
    conn = Connection(SERVER, limits=Limits(max_size=1000))
    stream = to_server(TEXT, b"a" * 100, fin=False)
    stream += b"".join(to_server(CONT, b"a" * 100, fin=False) for _ in range(8))
    stream += to_server(CONT, b"a" * 100)
    assert conn.receive_data(stream) == [TextMessage("a" * 1000)]


def test_frame_over_max_frame_size() -> None:
    limits = Limits(max_size=10_000, max_frame_size=100)
    conn = Connection(SERVER, limits=limits)
    stream = b"".join(
        to_server(BINARY if i == 0 else CONT, bytes(100), fin=i == 9) for i in range(10)
    )
    assert conn.receive_data(stream) == [BinaryMessage(bytes(1000))]
    assert conn.receive_data(to_server(BINARY, bytes(101))[:8]) == []
    assert_failed(conn, 1009, PayloadTooBig)


def test_no_limit() -> None:
    conn = Connection(CLIENT, limits=Limits(max_size=None))
    payload = bytes(3 * 2**20)
    assert conn.receive_data(to_client(BINARY, payload)) == [BinaryMessage(payload)]


def test_large_message_in_small_chunks() -> None:
    conn = Connection(SERVER)
    payload = bytes(range(256)) * 1024
    wire = to_server(BINARY, payload)
    events: list[Event] = []
    for i in range(0, len(wire), 1000):
        events += conn.receive_data(wire[i : i + 1000])
    assert events == [BinaryMessage(payload)]


# ---------------------------------------------------------------------------------------
# Fragment floods: memory must follow payload bytes, not the number of fragments.


def _flood(
    conn: Connection,
    first: bytes,
    fragment: bytes,
    count: int,
    last: bytes,
    *,
    traced: bool,
) -> tuple[list[Event], int]:
    """Feed ``first``, ``count`` copies of ``fragment`` and ``last`` in socket-sized reads."""
    per_read = 8192
    chunk = fragment * per_read
    tail = fragment * (count % per_read) + last
    events: list[Event] = []
    peak = 0
    if traced:
        tracemalloc.start()
    try:
        events += conn.receive_data(first)
        for _ in range(count // per_read):
            events += conn.receive_data(chunk)
        events += conn.receive_data(tail)
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        if traced:
            tracemalloc.stop()
    return events, peak


def test_flood_of_a_million_empty_fragments_server_side_bounded_memory() -> None:
    conn = Connection(SERVER)
    events, peak = _flood(
        conn,
        to_server(BINARY, b"", fin=False),
        to_server(CONT, b"", fin=False),
        1_000_000,
        to_server(CONT, b"end"),
        traced=True,
    )
    assert events == [BinaryMessage(b"end")]
    assert conn.failure is None
    assert conn.state is OPEN
    # No payload at all: a per-fragment cost of even 8 bytes would be 8 MB.
    assert peak < 256 * 1024, peak


def test_flood_of_a_million_empty_fragments_client_side() -> None:
    conn = Connection(CLIENT)
    events, _ = _flood(
        conn,
        to_client(TEXT, b"", fin=False),
        to_client(CONT, b"", fin=False),
        1_000_000,
        to_client(CONT, b"ok"),
        traced=False,
    )
    assert events == [TextMessage("ok")]
    assert conn.failure is None
    assert conn.state is OPEN


def test_flood_of_one_byte_fragments_server_side_bounded_memory() -> None:
    conn = Connection(SERVER)
    count = 200_000
    events, peak = _flood(
        conn,
        to_server(BINARY, b"a", fin=False),
        to_server(CONT, b"a", fin=False),
        count - 2,
        to_server(CONT, b"a"),
        traced=True,
    )
    assert events == [BinaryMessage(b"a" * count)]
    assert conn.failure is None
    # The message itself (buffer and final bytes) plus slack; a per-fragment object
    # (even a 33-byte bytes) would cost more than 6.6 MB.
    assert peak < 3 * count + 256 * 1024, peak


@pytest.mark.parametrize("side", [SERVER, CLIENT], ids=["server", "client"])
def test_autobahn_9_3_1_like_4mib_in_64_byte_fragments(side: Side) -> None:
    size = 4 * 2**20
    count = size // 64
    assert count == 65_536
    conn = Connection(side, limits=Limits(max_size=size))
    piece = b"*" * 64
    prefix = frame_to(side, TEXT, piece, fin=False)
    prefix += frame_to(side, CONT, piece, fin=False) * (count - 2)
    stream = prefix + frame_to(side, CONT, piece)
    events: list[Event] = []
    for i in range(0, len(stream), 65536):
        events += conn.receive_data(stream[i : i + 65536])
    assert events == [TextMessage("*" * size)]
    assert conn.failure is None
    # One byte more and the same limit refuses it.
    conn = Connection(side, limits=Limits(max_size=size))
    assert conn.receive_data(prefix) == []
    assert conn.state is OPEN
    assert conn.receive_data(frame_to(side, CONT, piece + b"*")) == []
    assert_failed(conn, 1009, PayloadTooBig)


# ---------------------------------------------------------------------------------------
# permessage-deflate


@pytest.mark.parametrize("sender_is_client", [True, False], ids=["c2s", "s2c"])
def test_deflate_round_trip(sender_is_client: bool) -> None:
    pair = deflate_pair()
    sender = pair.client if sender_is_client else pair.server
    messages: list[Event] = [
        TextMessage("compress me " * 100),
        BinaryMessage(bytes(5000)),
        TextMessage("compress me " * 100),  # context takeover: the window is reused
        TextMessage("tiny"),
        BinaryMessage(b""),
        TextMessage("é€😀" * 200),
    ]
    for message in messages:
        if isinstance(message, TextMessage):
            wire = sender.send_text(message.data)
            size = len(message.data.encode())
        else:
            assert isinstance(message, BinaryMessage)
            wire = sender.send_binary(message.data)
            size = len(message.data)
        (frame,) = parse_frames(wire)
        compressed = size >= 128
        assert frame.rsv1 == compressed
        if compressed:
            assert len(frame.payload) < size
        assert pair.transmit(sender, wire) == [message]
    assert pair.pump() == ([], [])
    assert pair.client.failure is None and pair.server.failure is None


def test_deflate_compress_flag_overrides_threshold() -> None:
    pair = deflate_pair()
    wire = pair.client.send_text("tiny", compress=True)
    assert parse_frames(wire)[0].rsv1
    assert pair.transmit(pair.client, wire) == [TextMessage("tiny")]
    wire = pair.client.send_binary(bytes(1000), compress=False)
    (frame,) = parse_frames(wire)
    assert not frame.rsv1
    assert frame.payload == bytes(1000)
    assert pair.transmit(pair.client, wire) == [BinaryMessage(bytes(1000))]


def test_deflate_fragmented_send_is_uncompressed() -> None:
    pair = deflate_pair()
    wire = pair.server.send_text("a" * 500, fin=False)
    wire += pair.server.send_continuation("b" * 500, fin=True)
    assert not any(f.rsv1 for f in parse_frames(wire))
    assert pair.transmit(pair.server, wire) == [TextMessage("a" * 500 + "b" * 500)]


def test_deflate_compressed_message_received_in_fragments() -> None:
    sender = PerMessageDeflate(DEFLATE_PARAMS, is_client=True)
    text = "fragmented and compressed " * 200
    payload = sender.compress(text.encode())
    cuts = [0, 1, 7, len(payload) // 2, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(cuts)]
    stream = to_server(TEXT, pieces[0], fin=False, rsv1=True)
    for i, piece in enumerate(pieces[1:], start=1):
        stream += to_server(PING, b"mid") + to_server(CONT, piece, fin=i == len(pieces) - 1)
    server = Connection(SERVER, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False))
    events: list[Event] = []
    for i in range(0, len(stream), 13):
        events += server.receive_data(stream[i : i + 13])
    assert events == [Ping(b"mid")] * 3 + [TextMessage(text)]


_WORDS = ["fragment", "é", "ü", "😀", "inflate", " ", "\n", "0123456789", "文字"]


@settings(max_examples=30, deadline=None)
@given(
    words=st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3000),
    binary=st.booleans(),
    fragment=st.integers(1, 300),
    read=st.integers(1, 5000),
    bits=st.integers(8, 15),
)
def test_deflate_message_in_many_fragments_decodes_identically(
    words: list[str], binary: bool, fragment: int, read: int, bits: int
) -> None:
    """A compressed message cut into many small fragments (as Autobahn 12.x and 13.x send
    them, 256 bytes each), received in reads of any size, decodes to what was sent, twice
    in a row so the second inflates with the first's window."""
    params = DeflateParams(False, False, bits, bits)
    sender = PerMessageDeflate(params, is_client=True)
    server = Connection(SERVER, deflate=PerMessageDeflate(params, is_client=False))
    data = "".join(words).encode()
    expected = BinaryMessage(data) if binary else TextMessage(data.decode())
    stream = b""
    for _ in range(2):
        payload = sender.compress(data)
        pieces = [payload[i : i + fragment] for i in range(0, len(payload), fragment)]
        stream += to_server(BINARY if binary else TEXT, pieces[0], fin=len(pieces) == 1, rsv1=True)
        for i, piece in enumerate(pieces[1:], start=2):
            stream += to_server(CONT, piece, fin=i == len(pieces))
    events: list[Event] = []
    for i in range(0, len(stream), read):
        events += server.receive_data(stream[i : i + read])
    assert events == [expected, expected]


@pytest.mark.parametrize("size", [0, 125, 16383, 16384, 65535, 65536, 2**20])
@pytest.mark.parametrize("text", [False, True])
def test_send_message_parts_joined_equal_the_whole_frame(size: int, text: bool) -> None:
    server = Connection(SERVER)
    data: str | bytes = "a" * size if text else bytes(size)
    whole = server.send_text(data) if isinstance(data, str) else server.send_binary(data)
    parts = server.send_message_parts(data)
    assert b"".join(parts) == whole
    if size >= 16384:
        # The payload is a piece of its own; a binary one is the caller's object itself.
        assert len(parts) == 2 and len(parts[1]) == size
        if not text:
            assert parts[1] is data
    else:
        assert len(parts) == 1


def test_send_message_parts_of_a_client_or_a_compressed_message_is_one_frame() -> None:
    data = bytes(range(256)) * 256
    client = Connection(CLIENT)
    (frame,) = client.send_message_parts(data)
    assert frame[1] == 0x80 | 127  # masked, 64-bit length
    pair = deflate_pair()
    (frame,) = pair.server.send_message_parts(data)
    assert frame[0] & 0x40  # RSV1: compressed
    assert pair.client.receive_data(frame) == [BinaryMessage(data)]


def test_send_message_parts_checks_the_state() -> None:
    server = Connection(SERVER)
    server.send_binary(b"first", fin=False)
    with pytest.raises(InvalidState):
        server.send_message_parts(bytes(20_000))
    server = Connection(SERVER)
    server.send_close()
    with pytest.raises(InvalidState):
        server.send_message_parts(bytes(20_000))


def test_deflate_invalid_utf8_in_compressed_text_is_1007() -> None:
    payload = PerMessageDeflate(DEFLATE_PARAMS, is_client=True).compress(b"abc\xff" * 100)
    server = Connection(SERVER, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False))
    assert server.receive_data(to_server(TEXT, payload, rsv1=True)) == []
    assert_failed(server, 1007, InvalidPayload)


def test_deflate_corrupt_data_is_1002() -> None:
    server = Connection(SERVER, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False))
    # BFINAL=1 with the reserved block type 11.
    assert server.receive_data(to_server(BINARY, b"\xff\xff\xff\xff", rsv1=True)) == []
    assert_failed(server, 1002, ProtocolError)


def test_deflate_rsv1_on_continuation_is_1002() -> None:
    server = Connection(SERVER, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False))
    payload = PerMessageDeflate(DEFLATE_PARAMS, is_client=True).compress(b"x" * 300)
    assert server.receive_data(to_server(TEXT, payload[:5], fin=False, rsv1=True)) == []
    assert server.receive_data(to_server(CONT, payload[5:], rsv1=True)) == []
    assert_failed(server, 1002, ProtocolError)


def test_deflate_rsv1_on_control_frame_is_1002() -> None:
    client = Connection(CLIENT, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=True))
    assert client.receive_data(to_client(PING, b"", rsv1=True)) == []
    assert_failed(client, 1002, ProtocolError)


def test_deflate_inflated_size_limit_is_exact() -> None:
    limit = 10_000
    for size, ok in [(limit, True), (limit + 1, False)]:
        payload = PerMessageDeflate(DEFLATE_PARAMS, is_client=True).compress(bytes(size))
        server = Connection(
            SERVER,
            limits=Limits(max_size=limit),
            deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False),
        )
        events = server.receive_data(to_server(BINARY, payload, rsv1=True))
        if ok:
            assert events == [BinaryMessage(bytes(size))]
        else:
            assert events == []
            assert_failed(server, 1009, PayloadTooBig)


@pytest.fixture(scope="module")
def deflate_bomb() -> bytes:
    """Raw DEFLATE data that inflates to 100 MiB of zeros (about 100 KB of it)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    # A full flush resets the compressor, so every MiB compresses to the same bytes.
    block = deflater.compress(bytes(2**20)) + deflater.flush(zlib.Z_FULL_FLUSH)
    assert zlib.decompressobj(-15).decompress(block * 2) == bytes(2 * 2**20)
    return block * 100


def test_deflate_bomb_refused_early(deflate_bomb: bytes) -> None:
    assert len(deflate_bomb) < 2**17
    server = Connection(SERVER, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False))
    wire = to_server(BINARY, deflate_bomb, rsv1=True)
    header = len(wire) - len(deflate_bomb)
    # A few KB of it already inflate past the 1 MiB limit.
    assert server.receive_data(wire[: header + 4096]) == []
    assert_failed(server, 1009, PayloadTooBig)


def test_deflate_bomb_bounded_memory(deflate_bomb: bytes) -> None:
    server = Connection(SERVER, deflate=PerMessageDeflate(DEFLATE_PARAMS, is_client=False))
    wire = to_server(TEXT, deflate_bomb, rsv1=True)
    tracemalloc.start()
    try:
        events = server.receive_data(wire)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert events == []
    assert_failed(server, 1009, PayloadTooBig)
    # The limit is 1 MiB; inflating 100 MiB (or buffering it) would show here.
    assert peak < 4 * 2**20, peak


# ---------------------------------------------------------------------------------------
# Property tests


@dataclass(frozen=True)
class Spec:
    """One message or control frame to send, with its fragmentation and masks."""

    kind: str  # text, binary, ping, pong
    data: bytes
    cuts: tuple[int, ...]
    masks: tuple[bytes, ...]

    def event(self) -> Event:
        if self.kind == "text":
            return TextMessage(self.data.decode())
        if self.kind == "binary":
            return BinaryMessage(self.data)
        if self.kind == "ping":
            return Ping(self.data)
        return Pong(self.data)

    def frames(self, side: Side) -> list[bytes]:
        """The frames a connection on ``side`` receives for this message."""
        if self.kind in ("ping", "pong"):
            opcode = PING if self.kind == "ping" else PONG
            return [frame_to(side, opcode, self.data, mask=self.masks[0])]
        bounds = [0, *self.cuts, len(self.data)]
        pieces = [self.data[a:b] for a, b in itertools.pairwise(bounds)]
        first = TEXT if self.kind == "text" else BINARY
        return [
            frame_to(
                side,
                first if i == 0 else CONT,
                piece,
                fin=i == len(pieces) - 1,
                mask=self.masks[i % len(self.masks)],
            )
            for i, piece in enumerate(pieces)
        ]


masks_st = st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=4).map(tuple)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    kind = draw(st.sampled_from(["text", "binary", "ping", "pong"]))
    if kind == "text":
        data = draw(st.text(max_size=200)).encode()
    elif kind == "binary":
        data = draw(st.binary(max_size=300))
    else:
        data = draw(st.binary(max_size=125))
    cuts: tuple[int, ...] = ()
    if kind in ("text", "binary"):
        cuts = tuple(sorted(draw(st.lists(st.integers(0, len(data)), max_size=5))))
    return Spec(kind, data, cuts, draw(masks_st))


def expected_auto_replies(specs_: Sequence[Spec]) -> list[tuple[int, bytes]]:
    return [(PONG, s.data) for s in specs_ if s.kind == "ping"]


@settings(deadline=None, max_examples=75)
@given(st.lists(st.tuples(st.booleans(), specs()), max_size=12))
def test_property_frames_round_trip_through_a_pair(messages: list[tuple[bool, Spec]]) -> None:
    pair = Pair()
    for to_server_side, spec in messages:
        receiver = pair.server if to_server_side else pair.client
        events: list[Event] = []
        for frame in spec.frames(receiver.side):
            events += receiver.receive_data(frame)
        assert events == [spec.event()]
        replies = outgoing(receiver)
        assert [(f.opcode, f.payload) for f in replies] == expected_auto_replies([spec])
        assert all(f.masked == (receiver.side is CLIENT) for f in replies)
    assert pair.client.state is OPEN and pair.server.state is OPEN
    assert pair.client.failure is None and pair.server.failure is None


@settings(deadline=None, max_examples=75)
@given(st.lists(st.tuples(st.booleans(), specs()), max_size=12))
def test_property_send_api_round_trip(messages: list[tuple[bool, Spec]]) -> None:
    pair = Pair()
    for from_client, spec in messages:
        sender = pair.client if from_client else pair.server
        bounds = [0, *spec.cuts, len(spec.data)]
        pieces = [spec.data[a:b] for a, b in itertools.pairwise(bounds)]
        if spec.kind == "ping":
            wire = sender.send_ping(spec.data)
        elif spec.kind == "pong":
            wire = sender.send_pong(spec.data)
        else:
            start = sender.send_text if spec.kind == "text" else sender.send_binary
            wire = start(pieces[0], fin=len(pieces) == 1)
            for i, piece in enumerate(pieces[1:], start=2):
                wire += sender.send_continuation(piece, fin=i == len(pieces))
        assert all(f.masked == from_client for f in parse_frames(wire))
        assert pair.transmit(sender, wire) == [spec.event()]
        client_events, server_events = pair.pump()
        got_back = client_events if from_client else server_events
        assert got_back == ([Pong(spec.data)] if spec.kind == "ping" else [])


FAULT_TAILS = [
    "",
    # A close ends the stream: later frames are not processed.
    "close",
    "reserved-opcode",
    "bad-utf8",
    "truncated-utf8",
    "too-big",
    "unmasked",
]


def fault_tail(name: str, side: Side) -> bytes:
    if name == "close":
        return frame_to(side, CLOSE, close_payload(1000, b"bye")) + frame_to(side, TEXT, b"x")
    if name == "reserved-opcode":
        return frame_to(side, 5, b"x")
    if name == "bad-utf8":
        return frame_to(side, TEXT, b"abc\xc3\x28def")
    if name == "truncated-utf8":
        return frame_to(side, TEXT, b"abc\xe2\x82")
    if name == "too-big":
        return frame_to(side, BINARY, bytes(5000))
    if name == "unmasked":
        return encode_frame(BINARY, b"x", mask=None if side is SERVER else MASK)
    return b""


def run_stream(
    side: Side, chunks: Sequence[bytes]
) -> tuple[list[Event], list[tuple[int, int | bytes | None]], tuple[object, ...]]:
    conn = Connection(side, limits=Limits(max_size=4096))
    events: list[Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    out = [(f.opcode, f.close_code if f.opcode == CLOSE else f.payload) for f in outgoing(conn)]
    state = (conn.state, conn.close_code, type(conn.failure))
    return events, out, state


@settings(deadline=None, max_examples=100)
@given(
    side=st.sampled_from([SERVER, CLIENT]),
    messages=st.lists(specs(), max_size=8),
    tail=st.sampled_from(FAULT_TAILS),
    data=st.data(),
)
def test_property_any_split_gives_the_same_events(
    side: Side, messages: list[Spec], tail: str, data: st.DataObject
) -> None:
    stream = b"".join(frame for spec in messages for frame in spec.frames(side))
    stream += fault_tail(tail, side)
    whole = run_stream(side, [stream])
    # Sanity: the whole stream gives the messages, then the tail's outcome.
    assert whole[0][: len(messages)] == [spec.event() for spec in messages]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    assert run_stream(side, chunks) == whole
    # And the most extreme split, one byte at a time, for short streams.
    if len(stream) <= 400:
        assert run_stream(side, [stream[i : i + 1] for i in range(len(stream))]) == whole


@settings(deadline=None, max_examples=100)
@given(
    kind=st.sampled_from(["text", "binary"]),
    text=st.text(max_size=300),
    data=st.data(),
)
def test_property_any_fragmentation_with_pings_reassembles(
    kind: str, text: str, data: st.DataObject
) -> None:
    payload = text.encode() if kind == "text" else text.encode("utf-16-le")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=10)))
    bounds = [0, *cuts, len(payload)]
    pieces = [payload[a:b] for a, b in itertools.pairwise(bounds)]
    # Pings to put before each fragment after the first (none, one or two).
    pings = data.draw(
        st.lists(
            st.lists(st.binary(max_size=20), max_size=2),
            min_size=len(pieces) - 1,
            max_size=len(pieces) - 1,
        )
    )
    first = TEXT if kind == "text" else BINARY
    stream = to_server(first, pieces[0], fin=len(pieces) == 1)
    for i, piece in enumerate(pieces[1:]):
        for ping in pings[i]:
            stream += to_server(PING, ping)
        stream += to_server(CONT, piece, fin=i == len(pieces) - 2)
    conn = Connection(SERVER)
    events = conn.receive_data(stream)
    all_pings = [p for group in pings for p in group]
    message: Event = TextMessage(text) if kind == "text" else BinaryMessage(payload)
    assert events == [Ping(p) for p in all_pings] + [message]
    assert [(f.opcode, f.payload) for f in outgoing(conn)] == [(PONG, p) for p in all_pings]
    assert conn.state is OPEN


# ---------------------------------------------------------------------------------------
# After a failure: frames dropped unread, the peer's close frame noticed (section 7.1.1)


def _oversized_then(side: Side, after: bytes, size: int = 5000) -> tuple[Connection, bytes]:
    """A connection with a 1 KiB limit and the bytes of a frame past it, then ``after``."""
    conn = Connection(side, limits=Limits(max_size=1024))
    return conn, frame_to(side, BINARY, bytes(size)) + after


@pytest.mark.parametrize("side", [SERVER, CLIENT])
def test_peer_close_after_failure_is_noticed_and_payloads_dropped(side: Side) -> None:
    after = frame_to(side, BINARY, bytes(3000)) + frame_to(side, PING, b"p")
    after += frame_to(side, CLOSE, close_payload(1009))
    conn, data = _oversized_then(side, after)
    assert conn.receive_data(data) == []
    assert [f.close_code for f in outgoing(conn)] == [1009]
    assert conn.peer_closed
    assert conn.close_received is None  # our code stays the connection's code
    assert conn.close_code == 1009
    assert conn.data_to_send() == []  # no pong, no echo


@settings(max_examples=200)
@given(cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=30))
def test_peer_close_after_failure_whatever_the_reads(cuts: list[int]) -> None:
    # Headers split anywhere, payloads of every length form: the close frame is found as
    # soon as its header (6 bytes, masked) is all there, never before.
    after = b"".join(
        frame_to(SERVER, BINARY, bytes(n)) for n in (0, 1, 125, 126, 200, 65535, 65536)
    )
    close = frame_to(SERVER, CLOSE, close_payload(1000))
    conn, data = _oversized_then(SERVER, after + close)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in itertools.pairwise(bounds):
        assert not conn.peer_closed
        assert conn.receive_data(data[start:end]) == []
        assert conn.peer_closed == (end >= len(data) - len(close) + 6)
    assert conn.peer_closed
    assert conn.failure is not None


@pytest.mark.parametrize(
    "bad",
    [
        # Reserved opcode, invalid UTF-8 inside a frame, an unmasked frame to a server.
        raw_header(0x83, 10, masked=True) + bytes(10),
        frame_to(SERVER, TEXT, b"ok \xff and more"),
        encode_frame(TEXT, b"unmasked"),
    ],
)
def test_frames_after_any_failure_are_dropped_until_the_close(bad: bytes) -> None:
    conn = Connection(SERVER)
    conn.receive_data(bad + frame_to(SERVER, TEXT, b"dropped"))
    assert conn.failure is not None
    assert not conn.peer_closed
    assert conn.receive_data(frame_to(SERVER, PING, b"x")) == []
    assert not conn.peer_closed
    close = frame_to(SERVER, CLOSE, close_payload(1000))
    for i in range(len(close)):
        assert conn.receive_data(close[i : i + 1]) == []
        # Known once its header, 6 bytes with the mask, is all there.
        assert conn.peer_closed == (i >= 5)
    assert len(outgoing(conn)) == 1  # our close frame only


def test_an_invalid_close_frame_is_the_peers_last() -> None:
    conn = Connection(SERVER)
    conn.receive_data(frame_to(SERVER, CLOSE, close_payload(999)))
    assert isinstance(conn.failure, ProtocolError)
    assert conn.peer_closed
