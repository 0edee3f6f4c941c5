"""Tests of frame encoding, masking and close payloads (RFC 6455 sections 5 and 7.4)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backchannel.exceptions import InvalidArgument, InvalidPayload, ProtocolError
from backchannel.protocol.frames import (
    CLOSE_CODES_RECEIVABLE,
    CloseCode,
    Opcode,
    apply_mask,
    encode_close,
    encode_frame,
    new_mask,
    parse_close,
)

MASK = b"\x37\xfa\x21\x3d"

# RFC 6455 section 7.4: the codes an endpoint may put in a close frame, written out here
# independently of the library's own table.
VALID_CODES = [1000, 1001, 1002, 1003, *range(1007, 1015), 3000, 3999, 4000, 4999]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
VALID_CODE_SET = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)})


def naive_mask(data: bytes, mask: bytes) -> bytes:
    """The section 5.3 definition, one octet at a time."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def decode_frame(frame: bytes) -> tuple[int, int, bytes | None, bytes, int]:
    """Split one encoded frame into (first byte, header length, mask, payload, length form)."""
    first, second = frame[0], frame[1]
    length = second & 0x7F
    pos = 2
    form = 7
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        pos, form = 4, 16
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        pos, form = 10, 64
    mask = None
    if second & 0x80:
        mask = frame[pos : pos + 4]
        pos += 4
    payload = frame[pos:]
    assert len(payload) == length
    if mask is not None:
        payload = naive_mask(payload, mask)
    return first, pos, mask, payload, form


# encode_frame


@pytest.mark.parametrize(
    ("length", "form", "header"),
    [(0, 7, 2), (1, 7, 2), (125, 7, 2), (126, 16, 4), (65535, 16, 4), (65536, 64, 10)],
)
def test_encode_frame_uses_minimal_length_form(length: int, form: int, header: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    frame = encode_frame(Opcode.BINARY, payload)
    assert len(frame) == header + length
    first, pos, mask, decoded, got_form = decode_frame(frame)
    assert first == 0x80 | Opcode.BINARY
    assert frame[1] & 0x80 == 0
    assert mask is None
    assert pos == header
    assert got_form == form
    assert decoded == payload
    if form == 7:
        assert frame[1] == length
    elif form == 16:
        assert frame[1] == 126
        assert frame[2:4] == length.to_bytes(2, "big")
    else:
        assert frame[1] == 127
        assert frame[2:10] == length.to_bytes(8, "big")


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_encode_frame_masked_round_trip(length: int) -> None:
    payload = bytes(i * 7 % 251 for i in range(length))
    frame = encode_frame(Opcode.TEXT, payload, mask=MASK)
    _, pos, mask, decoded, _ = decode_frame(frame)
    assert frame[1] & 0x80
    assert mask == MASK
    assert pos == {0: 6, 125: 6, 126: 8, 65535: 8, 65536: 14}[length]
    assert decoded == payload
    # On the wire the payload is XORed with the key.
    assert frame[pos:] == naive_mask(payload, MASK)


@pytest.mark.parametrize(
    ("fin", "rsv1", "opcode", "first"),
    [
        (True, False, Opcode.TEXT, 0x81),
        (False, False, Opcode.TEXT, 0x01),
        (False, False, Opcode.CONTINUATION, 0x00),
        (True, False, Opcode.CONTINUATION, 0x80),
        (True, True, Opcode.BINARY, 0xC2),
        (True, False, Opcode.CLOSE, 0x88),
        (True, False, Opcode.PING, 0x89),
        (True, False, Opcode.PONG, 0x8A),
    ],
)
def test_encode_frame_first_byte(fin: bool, rsv1: bool, opcode: int, first: int) -> None:
    assert encode_frame(opcode, b"x", fin=fin, rsv1=rsv1)[0] == first


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_encode_frame_accepts_buffers(kind: type) -> None:
    data = b"payload"
    assert encode_frame(Opcode.BINARY, kind(data)) == b"\x82\x07payload"
    masked = encode_frame(Opcode.BINARY, kind(data), mask=MASK)
    assert masked == b"\x82\x87" + MASK + naive_mask(data, MASK)


@given(
    opcode=st.sampled_from(list(Opcode)),
    payload=st.binary(max_size=300),
    fin=st.booleans(),
    rsv1=st.booleans(),
    mask=st.none() | st.binary(min_size=4, max_size=4),
)
def test_encode_frame_round_trip(
    opcode: int, payload: bytes, fin: bool, rsv1: bool, mask: bytes | None
) -> None:
    frame = encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)
    first, _, got_mask, decoded, _ = decode_frame(frame)
    assert first == (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    assert got_mask == mask
    assert decoded == payload


# apply_mask


@given(data=st.binary(max_size=2000), mask=st.binary(min_size=4, max_size=4))
def test_apply_mask_matches_naive_reference(data: bytes, mask: bytes) -> None:
    assert apply_mask(data, mask) == naive_mask(data, mask)
    assert apply_mask(bytearray(data), mask) == naive_mask(data, mask)
    assert apply_mask(memoryview(data), mask) == naive_mask(data, mask)


@given(data=st.binary(max_size=500), mask=st.binary(min_size=4, max_size=4))
def test_apply_mask_is_an_involution(data: bytes, mask: bytes) -> None:
    masked = apply_mask(data, mask)
    assert len(masked) == len(data)
    assert apply_mask(masked, mask) == data


def test_apply_mask_keeps_leading_and_trailing_zero_bytes() -> None:
    # Integer-based XOR must not drop zero octets at either end.
    data = b"\x00\x00abc\x00\x00"
    mask = b"\x00\x00\x00\x00"
    assert apply_mask(data, mask) == data
    assert apply_mask(b"\x01\x02\x03\x04", b"\x01\x02\x03\x04") == b"\x00\x00\x00\x00"
    assert apply_mask(b"", MASK) == b""


# new_mask


def test_new_mask_is_four_fresh_bytes() -> None:
    masks = [new_mask() for _ in range(64)]
    for mask in masks:
        assert isinstance(mask, bytes)
        assert len(mask) == 4
    # 64 draws from 2**32 values: a repeat has a probability of about 5e-7.
    assert len(set(masks)) >= 63


# encode_close / parse_close


@pytest.mark.parametrize("code", VALID_CODES)
def test_valid_close_codes_round_trip(code: int) -> None:
    payload = encode_close(code, "going")
    assert payload == code.to_bytes(2, "big") + b"going"
    assert parse_close(payload) == (code, "going")
    assert parse_close(code.to_bytes(2, "big")) == (code, "")


@pytest.mark.parametrize("code", INVALID_CODES)
def test_invalid_close_codes_refused_both_ways(code: int) -> None:
    with pytest.raises(InvalidArgument):
        encode_close(code, "")
    with pytest.raises(ProtocolError):
        parse_close(code.to_bytes(2, "big"))
    with pytest.raises(ProtocolError):
        parse_close(code.to_bytes(2, "big") + b"reason")


@given(code=st.integers(min_value=0, max_value=65535))
def test_close_code_validity_matches_rfc(code: int) -> None:
    valid = code in VALID_CODE_SET
    assert (code in CLOSE_CODES_RECEIVABLE) == valid
    raw = code.to_bytes(2, "big")
    if valid:
        assert parse_close(raw) == (code, "")
        assert encode_close(code) == raw
    else:
        with pytest.raises(ProtocolError):
            parse_close(raw)
        with pytest.raises(InvalidArgument):
            encode_close(code)


def test_empty_close_payload_means_no_status() -> None:
    assert parse_close(b"") == (CloseCode.NO_STATUS, "")
    assert parse_close(b"") == (1005, "")
    assert encode_close(None) == b""


def test_close_reason_without_code_refused() -> None:
    with pytest.raises(InvalidArgument):
        encode_close(None, "why")


@pytest.mark.parametrize("payload", [b"\x03", b"\xe8", b"\x00"])
def test_one_byte_close_payload_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_close(payload)


@pytest.mark.parametrize("reason", [b"\xff", b"ok\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82"])
def test_close_reason_invalid_utf8_is_invalid_payload(reason: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse_close(b"\x03\xe8" + reason)


def test_close_reason_utf8_decoded() -> None:
    assert parse_close(b"\x03\xe8" + "héllo €".encode()) == (1000, "héllo €")
    assert encode_close(1000, "héllo €") == b"\x03\xe8" + "héllo €".encode()


def test_close_reason_length_limit_is_in_utf8_bytes() -> None:
    assert len(encode_close(1000, "a" * 123)) == 125
    with pytest.raises(InvalidArgument):
        encode_close(1000, "a" * 124)
    # 61 two-byte characters and one ASCII: 123 bytes.
    assert len(encode_close(1000, "é" * 61 + "a")) == 125
    # 62 two-byte characters: 124 bytes although only 62 characters.
    with pytest.raises(InvalidArgument):
        encode_close(1000, "é" * 62)


def test_close_code_enum_values() -> None:
    values = {code.name: code.value for code in CloseCode}
    assert values["NORMAL"] == 1000
    assert values["PROTOCOL_ERROR"] == 1002
    assert values["NO_STATUS"] == 1005
    assert values["ABNORMAL"] == 1006
    assert values["INVALID_DATA"] == 1007
    assert values["MESSAGE_TOO_BIG"] == 1009
    assert values["INTERNAL_ERROR"] == 1011
    assert {op.value for op in Opcode} == {0, 1, 2, 8, 9, 10}
