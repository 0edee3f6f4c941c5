"""Tests of incremental UTF-8 validation (RFC 6455 section 8.1, RFC 3629 section 4)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backchannel.exceptions import InvalidPayload
from backchannel.protocol.utf8 import Utf8Validator

SAMPLE = "ASCII, é ü ß, € 中文, 😀🎉 and U+10FFFF \U0010ffff, U+FFFD \ufffd, NUL \x00."


def reference_first_error(data: bytes) -> int | None:
    """Index of the first byte after which no valid continuation exists (RFC 3629 grammar).

    Returns ``None`` when every prefix of ``data`` can still be completed into valid UTF-8.
    Written from the ABNF of RFC 3629 section 4, independently of the code under test.
    """
    i = 0
    n = len(data)
    while i < n:
        b = data[i]
        if b <= 0x7F:
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            ranges = [(0x80, 0xBF)]
        elif b == 0xE0:
            ranges = [(0xA0, 0xBF), (0x80, 0xBF)]
        elif 0xE1 <= b <= 0xEC or 0xEE <= b <= 0xEF:
            ranges = [(0x80, 0xBF), (0x80, 0xBF)]
        elif b == 0xED:
            ranges = [(0x80, 0x9F), (0x80, 0xBF)]
        elif b == 0xF0:
            ranges = [(0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]
        elif 0xF1 <= b <= 0xF3:
            ranges = [(0x80, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]
        elif b == 0xF4:
            ranges = [(0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF)]
        else:
            return i
        for k, (low, high) in enumerate(ranges, start=1):
            if i + k >= n:
                return None  # truncated, but still a viable prefix
            if not low <= data[i + k] <= high:
                return i + k
        i += 1 + len(ranges)
    return None


def feed_bytewise(data: bytes) -> int | None:
    """Feed one byte at a time; return the index at which ``feed`` raised, if it did."""
    validator = Utf8Validator()
    for i in range(len(data)):
        try:
            validator.feed(data[i : i + 1])
        except InvalidPayload:
            return i
    return None


def test_reference_agrees_with_python_on_samples() -> None:
    # A sanity check of the test's own reference.
    assert reference_first_error(SAMPLE.encode()) is None
    assert reference_first_error(b"\xed\xa0\x80") == 1
    assert reference_first_error(b"\xe2\x82") is None


def test_valid_text_split_at_every_position() -> None:
    data = SAMPLE.encode()
    for i in range(len(data) + 1):
        validator = Utf8Validator()
        validator.feed(data[:i])
        validator.feed(data[i:])
        validator.finish()


def test_valid_text_split_at_every_pair_of_positions() -> None:
    data = "a€😀é\U0010ffffz".encode()
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            validator = Utf8Validator()
            for part in (data[:i], data[i:j], data[j:]):
                validator.feed(part)
            validator.finish()


def test_valid_text_byte_by_byte_and_buffer_types() -> None:
    data = SAMPLE.encode()
    for kind in (bytes, bytearray, memoryview):
        validator = Utf8Validator()
        for i in range(len(data)):
            validator.feed(kind(data[i : i + 1]))
        validator.finish()


def test_empty_input_is_valid() -> None:
    validator = Utf8Validator()
    validator.feed(b"")
    validator.finish()


@pytest.mark.parametrize(
    ("data", "bad_index"),
    [
        pytest.param(b"\xc0\x80", 0, id="overlong-2-byte-C0"),
        pytest.param(b"\xc1\xbf", 0, id="overlong-2-byte-C1"),
        pytest.param(b"\xe0\x80\x80", 1, id="overlong-3-byte"),
        pytest.param(b"\xe0\x9f\xbf", 1, id="overlong-3-byte-max"),
        pytest.param(b"\xf0\x80\x80\x80", 1, id="overlong-4-byte"),
        pytest.param(b"\xf0\x8f\xbf\xbf", 1, id="overlong-4-byte-max"),
        pytest.param(b"\xed\xa0\x80", 1, id="surrogate-high-first"),
        pytest.param(b"\xed\xbf\xbf", 1, id="surrogate-low-last"),
        pytest.param(b"\xf4\x90\x80\x80", 1, id="above-U+10FFFF"),
        pytest.param(b"\xf5\x80\x80\x80", 0, id="F5"),
        pytest.param(b"\xf8\x88\x80\x80\x80", 0, id="F8"),
        pytest.param(b"\xfe", 0, id="FE"),
        pytest.param(b"\xff", 0, id="FF"),
        pytest.param(b"\x80", 0, id="stray-continuation-80"),
        pytest.param(b"\xbf", 0, id="stray-continuation-BF"),
        pytest.param(b"\xe2\x82\x41", 2, id="ASCII-inside-sequence"),
        pytest.param(b"\xc3\xc3", 1, id="lead-after-lead"),
        pytest.param(b"\xf0\x9f\x98\x00", 3, id="NUL-inside-4-byte"),
    ],
)
@pytest.mark.parametrize("prefix", [b"", b"valid \xc3\xa9 "])
def test_fails_on_first_invalid_byte(data: bytes, bad_index: int, prefix: bytes) -> None:
    stream = prefix + data
    expected = len(prefix) + bad_index
    assert reference_first_error(stream) == expected
    assert feed_bytewise(stream) == expected
    # Fed whole, the failure comes from feed(), not from finish().
    with pytest.raises(InvalidPayload):
        Utf8Validator().feed(stream)
    # Fed as two chunks ending right at the bad byte, the second feed() fails.
    validator = Utf8Validator()
    validator.feed(stream[:expected])
    with pytest.raises(InvalidPayload):
        validator.feed(stream[expected : expected + 1])


def test_surrogate_fails_before_the_third_byte() -> None:
    validator = Utf8Validator()
    validator.feed(b"\xed")  # could still be U+D000..U+D7FF
    with pytest.raises(InvalidPayload):
        validator.feed(b"\xa0")
    validator = Utf8Validator()
    validator.feed(b"ok\xed")
    with pytest.raises(InvalidPayload):
        validator.feed(b"\xbf")
    # ED 9F is the last valid prefix: U+D7FF.
    validator = Utf8Validator()
    validator.feed(b"\xed\x9f")
    validator.feed(b"\xbf")
    validator.finish()


@pytest.mark.parametrize(
    "data", [b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"abc\xf4\x8f\xbf", b"\xed"]
)
def test_truncated_sequence_fails_at_finish(data: bytes) -> None:
    validator = Utf8Validator()
    validator.feed(data)
    with pytest.raises(InvalidPayload):
        validator.finish()


def test_validator_is_reusable_after_finish() -> None:
    validator = Utf8Validator()
    validator.feed(b"\xe2\x82")
    with pytest.raises(InvalidPayload):
        validator.finish()
    # A new message after a good finish starts clean too.
    validator = Utf8Validator()
    validator.feed(b"\xe2\x82\xac")
    validator.finish()
    validator.feed("é".encode())
    validator.finish()


def test_validator_reset_after_failed_finish_accepts_fresh_text() -> None:
    validator = Utf8Validator()
    validator.feed(b"\xf0\x9f")
    with pytest.raises(InvalidPayload):
        validator.finish()
    validator.feed(b"fresh")
    validator.finish()


def test_continuation_alone_after_truncated_finish_is_invalid() -> None:
    validator = Utf8Validator()
    validator.feed(b"\xe2\x82")
    with pytest.raises(InvalidPayload):
        validator.finish()
    with pytest.raises(InvalidPayload):
        validator.feed(b"\xac")


@st.composite
def split_bytes(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(st.data())
def test_any_valid_text_in_any_chunks_validates(data: st.DataObject) -> None:
    text = data.draw(st.text(max_size=200))
    parts = data.draw(split_bytes(text.encode()))
    validator = Utf8Validator()
    for part in parts:
        validator.feed(part)
    validator.finish()


def _invalid_candidates() -> st.SearchStrategy[bytes]:
    """Bytes that are mostly valid UTF-8 with a corruption, and raw random bytes."""
    corrupted = st.builds(
        lambda text, pos, junk: text.encode()[:pos] + junk + text.encode()[pos:],
        st.text(max_size=30),
        st.integers(0, 120),
        st.binary(min_size=1, max_size=4),
    )
    truncated = st.text(min_size=1, max_size=20).map(lambda t: t.encode()[:-1])
    return st.one_of(st.binary(max_size=40), corrupted, truncated)


@given(st.data())
def test_bytes_decode_rejects_implies_validator_rejects(data: st.DataObject) -> None:
    raw = data.draw(_invalid_candidates())
    parts = data.draw(split_bytes(raw))
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
    else:
        valid = True
    validator = Utf8Validator()
    try:
        for part in parts:
            validator.feed(part)
        validator.finish()
    except InvalidPayload:
        assert not valid
    else:
        assert valid


@given(st.data())
def test_failure_is_at_the_first_impossible_byte(data: st.DataObject) -> None:
    raw = data.draw(_invalid_candidates())
    first_error = reference_first_error(raw)
    assert feed_bytewise(raw) == first_error
    # In chunks: the chunk holding the first bad byte is the one whose feed() raises.
    parts = data.draw(split_bytes(raw))
    validator = Utf8Validator()
    consumed = 0
    raised_at: int | None = None
    for index, part in enumerate(parts):
        try:
            validator.feed(part)
        except InvalidPayload:
            raised_at = index
            break
        consumed += len(part)
    if first_error is None:
        assert raised_at is None
    else:
        assert raised_at is not None
        assert consumed <= first_error < consumed + len(parts[raised_at])
