"""The compiled accelerator agrees with its pure-Python twins on any input.

These tests load ``backchannel.protocol._speedups`` directly, so they run on both passes
of the test command (with and without ``BACKCHANNEL_NO_EXTENSIONS``). Outside CI a
developer without a C compiler may skip them; in CI (``CI=true``) the accelerator must be
there: the install builds it.
"""

from __future__ import annotations

import importlib
import itertools
import os
import struct
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backchannel.exceptions import InvalidPayload
from backchannel.protocol import speedups
from backchannel.protocol.connection import CLIENT, SERVER, Connection, Side
from backchannel.protocol.events import BinaryMessage, Event, TextMessage
from backchannel.protocol.frames import apply_mask_py, encode_frame_py
from backchannel.protocol.limits import Limits
from backchannel.protocol.utf8 import Utf8ValidatorPy

IN_CI = os.environ.get("CI") == "true"


def load_compiled() -> ModuleType:
    try:
        return importlib.import_module("backchannel.protocol._speedups")
    except ImportError:
        if IN_CI:
            raise
        pytest.skip("the C accelerator is not built (no C compiler?)")


@pytest.fixture(scope="module")
def c() -> ModuleType:
    return load_compiled()


def test_selection_follows_the_environment_variable() -> None:
    # The test command runs the suite twice; each pass must be on the path it asked for.
    assert speedups.DISABLED == (os.environ.get("BACKCHANNEL_NO_EXTENSIONS", "") not in ("", "0"))
    if speedups.DISABLED:
        assert not speedups.ACTIVE and speedups.compiled is None
    elif IN_CI:
        assert speedups.ACTIVE, "the accelerator was not built by the install"


def test_environment_variable_selects_the_pure_path_in_a_fresh_process(c: ModuleType) -> None:
    code = (
        "from backchannel.protocol import speedups, frames, connection, utf8;"
        "print(speedups.ACTIVE, frames.apply_mask is frames.apply_mask_py,"
        " connection._scan_frames is None, utf8.Utf8Validator is utf8.Utf8ValidatorPy)"
    )
    for value, expected in (("1", "False True True True"), ("", "True False False False")):
        env = {**os.environ, "BACKCHANNEL_NO_EXTENSIONS": value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == expected.split()


# Masking.


@settings(max_examples=300)
@given(data=st.binary(max_size=100), mask=st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_pure(c: ModuleType, data: bytes, mask: bytes) -> None:
    expected = apply_mask_py(data, mask)
    assert c.apply_mask(data, mask) == expected
    assert c.apply_mask(bytearray(data), mask) == expected
    assert c.apply_mask(memoryview(data), mask) == expected
    # Masking twice gives the data back (XOR, section 5.3).
    assert c.apply_mask(expected, mask) == data


def test_apply_mask_long_and_unaligned(c: ModuleType) -> None:
    data = bytes(range(256)) * 4099
    mask = b"\x01\x80\xfe\x7f"
    for start in range(9):
        view = memoryview(data)[start:]
        assert c.apply_mask(view, mask) == apply_mask_py(view, mask)


def test_apply_mask_refuses_a_bad_key(c: ModuleType) -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        c.apply_mask(b"abc", b"abc")
    with pytest.raises(TypeError):
        c.apply_mask("text", b"abcd")


# Encoding.


@settings(max_examples=300)
@given(
    opcode=st.sampled_from([0, 1, 2, 8, 9, 10]),
    payload=st.one_of(
        st.binary(max_size=130),
        st.sampled_from([b"x" * 125, b"x" * 126, b"y" * 65535, b"z" * 65536]),
    ),
    fin=st.booleans(),
    rsv1=st.booleans(),
    mask=st.none() | st.binary(min_size=4, max_size=4),
)
def test_encode_frame_matches_pure(
    c: ModuleType, opcode: int, payload: bytes, fin: bool, rsv1: bool, mask: bytes | None
) -> None:
    expected = encode_frame_py(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)
    assert c.encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask) == expected
    assert c.encode_frame(opcode, memoryview(payload), rsv1=rsv1, mask=mask, fin=fin) == expected


def test_encode_frame_refuses_misuse(c: ModuleType) -> None:
    with pytest.raises(ValueError, match="opcode"):
        c.encode_frame(16, b"")
    with pytest.raises(ValueError, match="4 bytes"):
        c.encode_frame(1, b"", mask=b"abc")
    with pytest.raises(TypeError, match="unexpected keyword"):
        c.encode_frame(1, b"", fni=True)
    with pytest.raises(TypeError):
        c.encode_frame(1)


# UTF-8 validation.


class CompiledValidator:
    """Drives the compiled state machine the way the protocol core does."""

    def __init__(self, c: ModuleType) -> None:
        self.c = c
        self.state = 0

    def feed(self, data: bytes) -> None:
        self.state = self.c.utf8_feed(self.state, data)
        if self.state < 0:
            raise InvalidPayload("invalid")

    def finish(self) -> None:
        if self.state != 0:
            raise InvalidPayload("truncated")


def outcome(validator: CompiledValidator | Utf8ValidatorPy, chunks: list[bytes]) -> int:
    """The index of the chunk that failed, len(chunks) for a failed finish, -1 if valid."""
    for i, chunk in enumerate(chunks):
        try:
            validator.feed(chunk)
        except InvalidPayload:
            return i
    try:
        validator.finish()
    except InvalidPayload:
        return len(chunks)
    return -1


# Byte soup that is often almost UTF-8: pieces of valid encodings, and the bytes around
# every boundary of the table in RFC 3629 section 4.
utf8_pieces = st.one_of(
    st.text(max_size=8).map(str.encode),
    st.binary(max_size=4),
    st.sampled_from(
        [
            b"\xc2",
            b"\xdf",
            b"\xe0",
            b"\xe0\xa0",
            b"\xe0\x9f",
            b"\xed",
            b"\xed\x9f",
            b"\xed\xa0",
            b"\xee",
            b"\xef\xbf",
            b"\xf0",
            b"\xf0\x90",
            b"\xf0\x8f",
            b"\xf4",
            b"\xf4\x8f",
            b"\xf4\x90",
            b"\xf5",
            b"\xc0\x80",
            b"\x80",
            b"\xbf",
        ]
    ),
)


@settings(max_examples=500)
@given(pieces=st.lists(utf8_pieces, max_size=12), data=st.data())
def test_utf8_validator_matches_pure_and_the_reference(
    c: ModuleType, pieces: list[bytes], data: st.DataObject
) -> None:
    message = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=6)))
    chunks = [message[a:b] for a, b in itertools.pairwise([0, *cuts, len(message)])]
    compiled = outcome(CompiledValidator(c), chunks)
    # Both fail in the same chunk, the one holding the first invalid byte.
    assert compiled == outcome(Utf8ValidatorPy(), chunks)
    try:
        message.decode("utf-8")
    except UnicodeDecodeError:
        assert compiled != -1
    else:
        assert compiled == -1


def test_utf8_fails_on_the_first_impossible_byte_one_byte_at_a_time(c: ModuleType) -> None:
    # Each sequence is a valid prefix up to its last byte, which no continuation can save.
    for bad in (b"\xe0\x80", b"\xed\xa0", b"\xf0\x80", b"\xf4\x90", b"\xc1", b"\xf5", b"\x80"):
        state = 0
        for byte in bad[:-1]:
            state = c.utf8_feed(state, bytes([byte]))
            assert state > 0
        assert c.utf8_feed(state, bad[-1:]) == -1


def test_utf8_ascii_runs_and_long_text(c: ModuleType) -> None:
    text = ("ascii only " * 100 + "ünïcödé € 😀 ") * 50
    data = text.encode()
    for size in (1, 7, 8, 9, 4096):
        state = 0
        for i in range(0, len(data), size):
            state = c.utf8_feed(state, data[i : i + size])
            assert state >= 0
        assert state == 0
    assert c.utf8_feed(0, data + b"\xff") == -1
    # A rejected state stays rejected.
    assert c.utf8_feed(-1, b"abc") == -1
    with pytest.raises(ValueError, match="state"):
        c.utf8_feed(99, b"")


# Frame decoding: a connection with the accelerator's decoder behaves exactly like one
# without, on any byte stream, valid or not.


def raw_frame(
    first: int, payload: bytes, *, masked: bool, form: int, mask: bytes = b"\x5a\x13\xc4\x7e"
) -> bytes:
    length = len(payload)
    bit = 0x80 if masked else 0
    if form == 7 and length < 126:
        header = bytes((first, bit | length))
    elif form == 16 and length < 65536:
        header = bytes((first, bit | 126)) + struct.pack("!H", length)
    else:
        header = bytes((first, bit | 127)) + struct.pack("!Q", length)
    if masked:
        return header + mask + apply_mask_py(payload, mask)
    return header + payload


@st.composite
def frames(draw: st.DrawFn, side: Side) -> bytes:
    # Mostly simple data frames, the accelerator's case, with every kind of exception.
    first = draw(
        st.one_of(
            st.sampled_from([0x81, 0x82]),
            st.sampled_from([0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A, 0xC1, 0xA2, 0x93, 0x83]),
            st.integers(0, 255),
        )
    )
    payload = draw(
        st.one_of(
            st.text(max_size=40).map(str.encode),
            st.binary(max_size=40),
            st.sampled_from([b"a" * 126, "é".encode() * 200, b"\xff" * 3, b"ok\xed\xa0\x80"]),
        )
    )
    form = draw(st.sampled_from([7, 7, 7, 16, 64]))
    expected_mask = side is SERVER
    masked = draw(st.sampled_from([expected_mask, expected_mask, expected_mask, not expected_mask]))
    mask = draw(st.binary(min_size=4, max_size=4))
    return raw_frame(first, payload, masked=masked, form=form, mask=mask)


def unmasked(frame: bytes) -> bytes:
    """A control frame we queued, without its (random) mask: comparable across runs."""
    if not frame[1] & 0x80:
        return frame
    return bytes((frame[0], frame[1] & 0x7F)) + apply_mask_py(frame[6:], frame[2:6])


def run(
    side: Side, chunks: list[bytes], scan: object, max_size: int
) -> tuple[list[Event], list[bytes], tuple[object, ...]]:
    conn = Connection(side, limits=Limits(max_size=max_size))
    conn._scan = scan  # type: ignore[assignment]
    events: list[Event] = []
    for chunk in chunks:
        events += conn.receive_data(chunk)
    failure = conn.failure
    state = (conn.state, conn.close_code, conn.close_reason, type(failure), str(failure))
    return events, [unmasked(frame) for frame in conn.data_to_send()], state


@settings(max_examples=400, deadline=None)
@given(
    side=st.sampled_from([SERVER, CLIENT]),
    data=st.data(),
    max_size=st.sampled_from([50, 300, 1 << 20]),
)
def test_scan_frames_changes_nothing_but_speed(
    c: ModuleType, side: Side, data: st.DataObject, max_size: int
) -> None:
    stream = b"".join(data.draw(st.lists(frames(side), max_size=8)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    with_scan = run(side, chunks, c.scan_frames, max_size)
    assert with_scan == run(side, chunks, None, max_size)


def scan(c: ModuleType, buf: bytes, *, masked: bool = True, limit: int = 1 << 20) -> tuple:
    events: list[Event] = []
    pos = c.scan_frames(buf, 0, events, masked, limit, TextMessage, BinaryMessage)
    return pos, events


def test_scan_frames_decodes_a_run_and_stops_where_the_general_parser_takes_over(
    c: ModuleType,
) -> None:
    text = raw_frame(0x81, "héllo".encode(), masked=True, form=7)
    binary = raw_frame(0x82, b"\x00\x01", masked=True, form=7)
    big = raw_frame(0x82, b"b" * 70000, masked=True, form=64)
    ping = raw_frame(0x89, b"p", masked=True, form=7)
    pos, events = scan(c, text + binary + big + ping + text)
    assert pos == len(text + binary + big)
    assert events == [TextMessage("héllo"), BinaryMessage(b"\x00\x01"), BinaryMessage(b"b" * 70000)]
    stoppers = {
        "control": ping,
        "fragment": raw_frame(0x01, b"x", masked=True, form=7),
        "continuation": raw_frame(0x80, b"x", masked=True, form=7),
        "rsv1": raw_frame(0xC1, b"x", masked=True, form=7),
        "rsv2": raw_frame(0xA2, b"x", masked=True, form=7),
        "unmasked": raw_frame(0x82, b"x", masked=False, form=7),
        "non-minimal-16": raw_frame(0x82, b"x", masked=True, form=16),
        "non-minimal-64": raw_frame(0x82, b"x" * 200, masked=True, form=64),
        "bad-utf8": raw_frame(0x81, b"\xc3\x28", masked=True, form=7),
        "incomplete": raw_frame(0x82, b"xyz", masked=True, form=7)[:-1],
        "one-byte": b"\x82",
        "top-bit": b"\x82\xff\x80" + bytes(7) + bytes(4),
    }
    for name, frame in stoppers.items():
        assert scan(c, text + frame) == (len(text), [TextMessage("héllo")]), name
    # Over the limit: left to the general parser, which answers 1009.
    assert scan(c, text + binary, limit=4) == (0, [])
    # A client's view: unmasked frames decode, masked ones stop.
    plain = raw_frame(0x81, b"hi", masked=False, form=7)
    assert scan(c, plain + text, masked=False) == (len(plain), [TextMessage("hi")])


def test_scan_frames_refuses_misuse(c: ModuleType) -> None:
    with pytest.raises(TypeError):
        c.scan_frames(b"", 0, (), True, 10, TextMessage, BinaryMessage)
    with pytest.raises(ValueError, match="pos"):
        c.scan_frames(b"", 5, [], True, 10, TextMessage, BinaryMessage)
    with pytest.raises(TypeError):
        c.scan_frames(b"")
