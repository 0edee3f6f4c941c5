"""Tests of permessage-deflate (RFC 7692): header syntax, negotiation and the codec."""

from __future__ import annotations

import itertools
import random
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backchannel.exceptions import (
    InvalidArgument,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
)
from backchannel.protocol.deflate import (
    EXTENSION_NAME,
    DeflateConfig,
    DeflateOffer,
    DeflateParams,
    PerMessageDeflate,
    accept_client,
    format_offers,
    negotiate_server,
    parse_extension_header,
)

TAIL = b"\x00\x00\xff\xff"
LIMIT = 2**20
DEFAULT_PARAMS = DeflateParams(False, False, 15, 15)

_rng = random.Random(7692)
TEXT = b"The quick brown fox jumps over the lazy dog. " * 60
NOISE = _rng.randbytes(3000)
# Repeats at a distance of 300 bytes: just out of reach of an 8-bit (256-byte) window.
PERIODIC = _rng.randbytes(300) * 8
MESSAGES = [b"Hello", TEXT, b"", NOISE, PERIODIC, TEXT, b"Hello", bytes(20_000), b""]


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def receive(
    receiver: PerMessageDeflate, payload: bytes, limit: int = LIMIT, chunk: int | None = None
) -> bytes:
    parts = [payload] if chunk is None else chunks_of(payload, chunk)
    out = b"".join(receiver.decompress(part, limit) for part in parts)
    return out + receiver.finish(limit)


def pair(params: DeflateParams) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """A (server, client) pair sharing ``params``."""
    return PerMessageDeflate(params, is_client=False), PerMessageDeflate(params, is_client=True)


# ---------------------------------------------------------------------------------------
# The examples of RFC 7692 §7.2.3


HELLO = bytes.fromhex("f248cdc9c90700")


def test_rfc_example_hello_compresses_as_in_section_7_2_3_1() -> None:
    server, _ = pair(DEFAULT_PARAMS)
    assert server.compress(b"Hello") == HELLO


def test_rfc_example_shared_window_section_7_2_3_2() -> None:
    server, client = pair(DEFAULT_PARAMS)
    assert server.compress(b"Hello") == HELLO
    second = server.compress(b"Hello")
    assert second == bytes.fromhex("f200110000")
    assert receive(client, HELLO) == b"Hello"
    assert receive(client, second) == b"Hello"


def test_no_context_takeover_compresses_each_message_alone() -> None:
    server, client = pair(DeflateParams(True, False, 15, 15))
    assert server.compress(b"Hello") == HELLO
    assert server.compress(b"Hello") == HELLO
    # The client (whose side takes over context) still shares its window.
    assert client.compress(b"Hello") == HELLO
    assert client.compress(b"Hello") != HELLO


@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        pytest.param(HELLO, [HELLO], id="7.2.3.1-one-frame"),
        pytest.param(HELLO, [HELLO[:3], HELLO[3:]], id="7.2.3.1-fragmented"),
        pytest.param(bytes.fromhex("000500faff48656c6c6f00"), None, id="7.2.3.3-stored"),
        pytest.param(bytes.fromhex("f348cdc9c9070000"), None, id="7.2.3.4-bfinal"),
        pytest.param(bytes.fromhex("f248050000 00ffff cac9c90700"), None, id="7.2.3.5-two-blocks"),
    ],
)
def test_rfc_examples_decompress_to_hello(payload: bytes, fragments: list[bytes] | None) -> None:
    _, client = pair(DEFAULT_PARAMS)
    out = b"".join(client.decompress(part, LIMIT) for part in fragments or [payload])
    assert out + client.finish(LIMIT) == b"Hello"


def test_rfc_example_empty_fragment_section_7_2_3_6() -> None:
    # "Hello" flushed in a first frame, then a last frame holding only 0x00.
    _, client = pair(DEFAULT_PARAMS)
    parts = [client.decompress(HELLO + TAIL, LIMIT), client.decompress(b"\x00", LIMIT)]
    assert b"".join(parts) + client.finish(LIMIT) == b"Hello"


# ---------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("client_bits", range(8, 16))
@pytest.mark.parametrize("server_bits", range(8, 16))
@pytest.mark.parametrize("client_no_takeover", [False, True])
@pytest.mark.parametrize("server_no_takeover", [False, True])
def test_round_trip_for_every_parameter_combination(
    server_no_takeover: bool, client_no_takeover: bool, server_bits: int, client_bits: int
) -> None:
    params = DeflateParams(server_no_takeover, client_no_takeover, server_bits, client_bits)
    server, client = pair(params)
    for sender, receiver in ((server, client), (client, server)):
        for message in MESSAGES:
            payload = sender.compress(message)
            assert receive(receiver, payload, chunk=61) == message


@pytest.mark.parametrize("is_client", [False, True])
@pytest.mark.parametrize("no_takeover", [False, True])
@pytest.mark.parametrize("bits", range(8, 16))
def test_output_fits_the_agreed_window(is_client: bool, no_takeover: bool, bits: int) -> None:
    """What we send inflates with a window of exactly the agreed size, fed a few bytes at a
    time so that zlib can only look back into that window."""
    params = DeflateParams(no_takeover, no_takeover, bits, bits)
    sender = PerMessageDeflate(params, is_client=is_client)
    inflater = zlib.decompressobj(-bits)
    for message in MESSAGES:
        payload = sender.compress(message) + TAIL
        out = b"".join(inflater.decompress(part) for part in chunks_of(payload, 3))
        assert out == message
        if no_takeover:
            inflater = zlib.decompressobj(-bits)


def test_window_8_uses_only_runs() -> None:
    """zlib has no 256-byte window, so 8 bits means its 512-byte one with run-length
    matches only: a pattern repeating every 200 bytes does not shrink, a run does."""
    pattern = random.Random(8).randbytes(200) * 20
    server = PerMessageDeflate(DeflateParams(False, False, 8, 15), is_client=False)
    assert len(server.compress(pattern)) > len(pattern) // 2
    assert len(server.compress(bytes(10_000))) < 100
    # With 9 bits the same pattern is matched.
    server = PerMessageDeflate(DeflateParams(False, False, 9, 15), is_client=False)
    assert len(server.compress(pattern)) < len(pattern) // 4


@pytest.mark.parametrize(
    ("bits", "mem_level", "expected"),
    [(15, 8, 8), (15, 9, 9), (12, 8, 8), (12, 9, 8), (10, 8, 6), (9, 8, 5), (8, 8, 5), (9, 3, 3)],
)
def test_hash_table_is_sized_to_a_small_window(bits: int, mem_level: int, expected: int) -> None:
    """Under a small agreed window the deflater's hash table (2 ** (mem_level + 7)
    entries, rescanned each time the window slides) is at most 8 windows: the output is
    byte for byte what zlib makes at the smaller memory level."""
    message = TEXT + NOISE + TEXT
    params = DeflateParams(True, True, bits, bits)
    sender = PerMessageDeflate(params, is_client=False, compress_level=1, mem_level=mem_level)
    strategy = zlib.Z_RLE if bits == 8 else zlib.Z_DEFAULT_STRATEGY
    reference = zlib.compressobj(1, zlib.DEFLATED, -max(bits, 9), expected, strategy)
    wanted = reference.compress(message) + reference.flush(zlib.Z_SYNC_FLUSH)
    assert sender.compress(message) + TAIL == wanted


def test_context_takeover_shrinks_a_repeated_message() -> None:
    server, client = pair(DEFAULT_PARAMS)
    first = server.compress(NOISE)
    second = server.compress(NOISE)
    assert len(second) < len(first) // 10
    assert receive(client, first) == NOISE
    assert receive(client, second) == NOISE


def test_accepts_bytearray_and_memoryview() -> None:
    server, client = pair(DEFAULT_PARAMS)
    payload = server.compress(bytearray(TEXT))
    assert server.compress(memoryview(TEXT)) != payload  # the window is shared
    assert client.decompress(memoryview(payload), LIMIT) + client.finish(LIMIT) == TEXT


def test_empty_message() -> None:
    server, client = pair(DEFAULT_PARAMS)
    assert server.compress(b"") == b"\x00"
    assert server.compress(b"") == b"\x00"
    assert receive(client, b"\x00") == b""
    assert receive(client, server.compress(b"Hello")) == b"Hello"


def test_empty_flush_output_still_makes_a_valid_empty_message() -> None:
    class SilentDeflater:
        def compress(self, data: bytes) -> bytes:
            return b""

        def flush(self, mode: int) -> bytes:
            return b""

    server, client = pair(DEFAULT_PARAMS)
    assert receive(client, server.compress(b"Hello")) == b"Hello"
    server._deflater = SilentDeflater()  # type: ignore[assignment]
    assert server.compress(b"") == b"\x00"
    assert receive(client, b"\x00") == b""


def test_empty_payload_leaves_the_window_alone() -> None:
    # A compressed message with no payload at all is not what §7.2.1 produces, but it is
    # read as empty, and the shared window survives it.
    server, client = pair(DEFAULT_PARAMS)
    assert receive(client, server.compress(b"Hello")) == b"Hello"
    assert receive(client, b"") == b""
    assert receive(client, server.compress(b"Hello")) == b"Hello"


compressible = st.lists(
    st.sampled_from([b"a", b"hello ", b"world", b"\x00" * 40, b"\xff\xfe", b"{}"]), max_size=400
).map(b"".join)
messages = st.lists(st.binary(max_size=3000) | compressible, min_size=1, max_size=6)
window_bits = st.integers(8, 15)


@settings(max_examples=150, deadline=None)
@given(
    messages=messages,
    data=st.data(),
    is_client=st.booleans(),
    no_takeover=st.booleans(),
    own_bits=window_bits,
    peer_bits=window_bits,
)
def test_chunked_decompress_equals_whole(
    messages: list[bytes],
    data: st.DataObject,
    is_client: bool,
    no_takeover: bool,
    own_bits: int,
    peer_bits: int,
) -> None:
    params = DeflateParams(no_takeover, no_takeover, own_bits, peer_bits)
    sender = PerMessageDeflate(params, is_client=is_client)
    whole = PerMessageDeflate(params, is_client=not is_client)
    chunked = PerMessageDeflate(params, is_client=not is_client)
    for message in messages:
        payload = sender.compress(message)
        assert receive(whole, payload) == message
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=8)))
        bounds = [0, *cuts, len(payload)]
        parts = [payload[a:b] for a, b in itertools.pairwise(bounds)]
        out = b"".join(chunked.decompress(part, len(message)) for part in parts)
        assert out + chunked.finish(len(message)) == message


# ---------------------------------------------------------------------------------------
# Limits and deflate bombs


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """About 100 KB of compressed data that inflates to 100 MiB of zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(2**20)
    parts = [compressor.compress(block) for _ in range(100)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    payload = b"".join(parts)
    assert payload.endswith(TAIL)
    return payload[: -len(TAIL)]


@pytest.mark.parametrize("chunk", [None, 4096])
def test_deflate_bomb_is_refused_with_bounded_memory(bomb: bytes, chunk: int | None) -> None:
    receiver = PerMessageDeflate(DEFAULT_PARAMS, is_client=False)
    parts = [bomb] if chunk is None else chunks_of(bomb, chunk)
    inflated = 0
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig):
            for part in parts:
                inflated += len(receiver.decompress(part, LIMIT))
            receiver.finish(LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert inflated <= LIMIT
    assert peak < 5 * 2**20


def test_limit_is_inclusive() -> None:
    server, client = pair(DEFAULT_PARAMS)
    payload = server.compress(TEXT)
    assert receive(client, payload, limit=len(TEXT), chunk=5) == TEXT
    server, client = pair(DEFAULT_PARAMS)
    payload = server.compress(TEXT)
    with pytest.raises(PayloadTooBig):
        receive(client, payload, limit=len(TEXT) - 1, chunk=5)


def test_limit_counts_the_whole_message_not_each_chunk() -> None:
    server, client = pair(DEFAULT_PARAMS)
    payload = server.compress(bytes(1000))
    with pytest.raises(PayloadTooBig):
        receive(client, payload, limit=999, chunk=1)


def test_limit_applies_to_finish() -> None:
    # A stored block announcing four bytes: the tail appended by finish() is its content.
    _, client = pair(DEFAULT_PARAMS)
    assert client.decompress(bytes.fromhex("000400fbff"), 3) == b""
    with pytest.raises(PayloadTooBig):
        client.finish(3)


def test_limit_restarts_with_each_message() -> None:
    server, client = pair(DEFAULT_PARAMS)
    for _ in range(5):
        assert receive(client, server.compress(TEXT), limit=len(TEXT)) == TEXT


def test_negative_limit_is_refused() -> None:
    _, client = pair(DEFAULT_PARAMS)
    with pytest.raises(InvalidArgument):
        client.decompress(HELLO, -1)
    with pytest.raises(InvalidArgument):
        client.finish(-1)


def test_state_is_reset_after_payload_too_big() -> None:
    server, client = pair(DeflateParams(True, True, 15, 15))
    with pytest.raises(PayloadTooBig):
        receive(client, server.compress(TEXT), limit=10)
    assert receive(client, server.compress(b"Hello")) == b"Hello"


# ---------------------------------------------------------------------------------------
# Corrupt data


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"\xff", id="reserved-block-type"),
        pytest.param(bytes.fromhex("000500000048656c6c6f"), id="bad-stored-length"),
        pytest.param(bytes.fromhex("f200110000"), id="distance-before-start"),
    ],
)
def test_corrupt_data_is_a_protocol_error(payload: bytes) -> None:
    _, client = pair(DEFAULT_PARAMS)
    with pytest.raises(ProtocolError):
        receive(client, payload)


def test_corruption_found_by_finish_is_a_protocol_error() -> None:
    _, client = pair(DEFAULT_PARAMS)
    # A stored block header whose NLEN only arrives with the tail, and does not match.
    assert client.decompress(bytes.fromhex("000500"), LIMIT) == b""
    with pytest.raises(ProtocolError):
        client.finish(LIMIT)


def test_state_is_reset_after_corrupt_data() -> None:
    _, client = pair(DEFAULT_PARAMS)
    with pytest.raises(ProtocolError):
        client.decompress(b"\xff", LIMIT)
    assert receive(client, HELLO) == b"Hello"


def test_reset_message_forgets_a_partial_message() -> None:
    _, client = pair(DEFAULT_PARAMS)
    client.decompress(HELLO[:3], LIMIT)
    client.reset_message()
    assert receive(client, HELLO) == b"Hello"


# ---------------------------------------------------------------------------------------
# Final blocks (BFINAL, §7.2.3.4)

FINAL_HELLO = bytes.fromhex("f348cdc9c90700")  # "Hello" in a final block, ending the stream


def test_final_block_without_trailing_empty_block() -> None:
    _, client = pair(DEFAULT_PARAMS)
    assert receive(client, FINAL_HELLO) == b"Hello"
    assert receive(client, HELLO) == b"Hello"


def test_data_after_a_final_block_starts_a_new_stream() -> None:
    _, client = pair(DEFAULT_PARAMS)
    assert receive(client, FINAL_HELLO + HELLO, chunk=3) == b"HelloHello"
    assert receive(client, HELLO) == b"Hello"


def test_window_before_a_final_block_is_lost_loudly() -> None:
    # After a stream ends, a message referring back to it cannot be inflated: it fails
    # instead of producing wrong data.
    _, client = pair(DEFAULT_PARAMS)
    assert receive(client, FINAL_HELLO) == b"Hello"
    with pytest.raises(ProtocolError):
        receive(client, bytes.fromhex("f200110000"))


# ---------------------------------------------------------------------------------------
# Lazy zlib state


def test_zlib_objects_are_created_lazily() -> None:
    server, client = pair(DEFAULT_PARAMS)
    assert server._deflater is None and server._inflater is None
    assert client.decompress(b"", LIMIT) == b""
    assert client._inflater is None
    server.compress(b"Hello")
    assert server._deflater is not None and server._inflater is None


def test_no_context_takeover_holds_no_zlib_state_between_messages() -> None:
    server, client = pair(DeflateParams(True, True, 15, 15))
    assert receive(client, server.compress(TEXT)) == TEXT
    assert receive(server, client.compress(TEXT)) == TEXT
    for side in (server, client):
        assert side._deflater is None and side._inflater is None


def test_context_takeover_keeps_zlib_state_between_messages() -> None:
    server, client = pair(DEFAULT_PARAMS)
    assert receive(client, server.compress(TEXT)) == TEXT
    assert server._deflater is not None and client._inflater is not None


# ---------------------------------------------------------------------------------------
# Argument validation


@pytest.mark.parametrize(
    "make",
    [
        lambda: DeflateOffer(server_max_window_bits=7),
        lambda: DeflateOffer(server_max_window_bits=16),
        lambda: DeflateOffer(server_max_window_bits=True),
        lambda: DeflateOffer(client_max_window_bits=16),
        lambda: DeflateOffer(client_max_window_bits=0),
        lambda: DeflateConfig(server_max_window_bits=7),
        lambda: DeflateConfig(compress_level=10),
        lambda: DeflateConfig(mem_level=0),
        lambda: DeflateParams(False, False, 7, 15),
        lambda: DeflateParams(False, False, 15, 16),
        lambda: PerMessageDeflate(DEFAULT_PARAMS, is_client=True, compress_level=-2),
        lambda: PerMessageDeflate(DEFAULT_PARAMS, is_client=True, mem_level=10),
        lambda: format_offers([]),
    ],
)
def test_invalid_arguments(make: object) -> None:
    with pytest.raises(InvalidArgument):
        make()  # type: ignore[operator]


# ---------------------------------------------------------------------------------------
# Header syntax (RFC 6455 §9.1)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        ([""], []),
        (["permessage-deflate"], [("permessage-deflate", [])]),
        (
            ["permessage-deflate; client_max_window_bits"],
            [("permessage-deflate", [("client_max_window_bits", None)])],
        ),
        (
            ['a ;b = 1 ; c="x\\yz"\t, d'],
            [("a", [("b", "1"), ("c", "xyz")]), ("d", [])],
        ),
        (["a, , b,", ", c"], [("a", []), ("b", []), ("c", [])]),
        (["Permessage-Deflate; Foo"], [("Permessage-Deflate", [("Foo", None)])]),
    ],
)
def test_parse_extension_header(
    values: list[str], expected: list[tuple[str, list[tuple[str, str | None]]]]
) -> None:
    assert parse_extension_header(values) == expected


@pytest.mark.parametrize(
    "value",
    [
        "permessage-deflate;",
        "permessage-deflate; ;a",
        "permessage-deflate; a=",
        "permessage-deflate; a=b=c",
        "permessage-deflate a",
        'permessage-deflate; a="unterminated',
        'permessage-deflate; a="two words"',
        'permessage-deflate; a=""',
        "permessage-deflate; a=(b)",
        "; a",
        "=a",
        "permessage-deflate\x00",
        "permessage-déflate",
    ],
)
def test_parse_extension_header_rejects_malformed_values(value: str) -> None:
    with pytest.raises(NegotiationError):
        parse_extension_header([value])


@given(st.text(alphabet=st.sampled_from(list('ab =;,"\\\t\x01é-_8'))))
def test_parse_extension_header_only_raises_negotiation_error(value: str) -> None:
    try:
        elements = parse_extension_header([value])
    except NegotiationError:
        return
    for name, params in elements:
        assert name
        for param, param_value in params:
            assert param and param_value != ""


# ---------------------------------------------------------------------------------------
# Offers


@pytest.mark.parametrize(
    ("offers", "expected"),
    [
        ([DeflateOffer()], "permessage-deflate; client_max_window_bits"),
        ([DeflateOffer(client_max_window_bits=False)], "permessage-deflate"),
        (
            [DeflateOffer(True, True, 10, 12)],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
            "server_max_window_bits=10; client_max_window_bits=12",
        ),
        (
            [DeflateOffer(server_max_window_bits=8), DeflateOffer()],
            "permessage-deflate; server_max_window_bits=8; client_max_window_bits, "
            "permessage-deflate; client_max_window_bits",
        ),
    ],
)
def test_format_offers(offers: list[DeflateOffer], expected: str) -> None:
    assert format_offers(offers) == expected


# ---------------------------------------------------------------------------------------
# Server negotiation


def params(
    snct: bool = False, cnct: bool = False, sbits: int = 15, cbits: int = 15
) -> DeflateParams:
    return DeflateParams(snct, cnct, sbits, cbits)


@pytest.mark.parametrize(
    ("values", "config", "expected"),
    [
        pytest.param(
            ["permessage-deflate"],
            DeflateConfig(),
            (params(), "permessage-deflate"),
            id="plain",
        ),
        pytest.param(
            ["permessage-deflate; client_max_window_bits"],
            DeflateConfig(),
            (params(), "permessage-deflate"),
            id="bare-client-bits-not-answered",
        ),
        pytest.param(
            ["permessage-deflate; client_max_window_bits=10"],
            DeflateConfig(),
            (params(cbits=10), "permessage-deflate; client_max_window_bits=10"),
            id="client-bits-value-echoed",
        ),
        pytest.param(
            ['permessage-deflate; client_max_window_bits="9"'],
            DeflateConfig(),
            (params(cbits=9), "permessage-deflate; client_max_window_bits=9"),
            id="quoted-value",
        ),
        pytest.param(
            ["permessage-deflate; server_no_context_takeover"],
            DeflateConfig(),
            (params(snct=True), "permessage-deflate; server_no_context_takeover"),
            id="server-no-takeover-honoured",
        ),
        pytest.param(
            ["permessage-deflate"],
            DeflateConfig(server_no_context_takeover=True),
            (params(snct=True), "permessage-deflate; server_no_context_takeover"),
            id="server-no-takeover-from-config",
        ),
        pytest.param(
            ["permessage-deflate"],
            DeflateConfig(client_no_context_takeover=True),
            (params(cnct=True), "permessage-deflate; client_no_context_takeover"),
            id="client-no-takeover-from-config-unoffered",
        ),
        pytest.param(
            ["permessage-deflate; client_no_context_takeover"],
            DeflateConfig(),
            (params(cnct=True), "permessage-deflate; client_no_context_takeover"),
            id="client-no-takeover-hint-echoed",
        ),
        pytest.param(
            ["permessage-deflate"],
            DeflateConfig(server_max_window_bits=11),
            (params(sbits=11), "permessage-deflate; server_max_window_bits=11"),
            id="own-cap-announced",
        ),
        pytest.param(
            ["permessage-deflate; server_max_window_bits=12"],
            DeflateConfig(server_max_window_bits=10),
            (params(sbits=10), "permessage-deflate; server_max_window_bits=10"),
            id="own-cap-below-request",
        ),
        pytest.param(
            ["permessage-deflate; server_max_window_bits=9"],
            DeflateConfig(server_max_window_bits=10),
            (params(sbits=9), "permessage-deflate; server_max_window_bits=9"),
            id="request-below-own-cap",
        ),
        pytest.param(
            ["x-webkit-deflate-frame", "foo; bar=1, permessage-deflate"],
            DeflateConfig(),
            (params(), "permessage-deflate"),
            id="other-extensions-ignored",
        ),
        pytest.param(
            [
                "permessage-deflate; foo, permessage-deflate; server_max_window_bits=16",
                "permessage-deflate; server_max_window_bits=10, permessage-deflate",
            ],
            DeflateConfig(),
            (params(sbits=10), "permessage-deflate; server_max_window_bits=10"),
            id="first-acceptable-of-several",
        ),
        pytest.param(
            ["PerMessage-Deflate; Server_No_Context_Takeover"],
            DeflateConfig(),
            (params(snct=True), "permessage-deflate; server_no_context_takeover"),
            id="case-insensitive",
        ),
        pytest.param([], DeflateConfig(), None, id="no-header"),
        pytest.param(["x-webkit-deflate-frame"], DeflateConfig(), None, id="no-offer"),
    ],
)
def test_negotiate_server(
    values: list[str], config: DeflateConfig, expected: tuple[DeflateParams, str] | None
) -> None:
    assert negotiate_server(values, config) == expected


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; Server_Max_Window_Bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=+9",
        "permessage-deflate; server_max_window_bits=ten",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=100",
        'permessage-deflate; client_max_window_bits="016"',
    ],
)
def test_negotiate_server_declines_invalid_offers(offer: str) -> None:
    assert negotiate_server([offer], DeflateConfig()) is None
    # A valid offer after the declined one is accepted.
    result = negotiate_server([offer, "permessage-deflate"], DeflateConfig())
    assert result == (params(), "permessage-deflate")


@pytest.mark.parametrize("bits", range(8, 16))
def test_negotiate_server_honours_server_max_window_bits(bits: int) -> None:
    result = negotiate_server(
        [f"permessage-deflate; server_max_window_bits={bits}"], DeflateConfig()
    )
    assert result == (params(sbits=bits), f"permessage-deflate; server_max_window_bits={bits}")
    agreed, _ = result
    # And we really compress within it.
    server = PerMessageDeflate(agreed, is_client=False)
    inflater = zlib.decompressobj(-bits)
    for message in (TEXT, PERIODIC, NOISE):
        payload = server.compress(message) + TAIL
        assert b"".join(inflater.decompress(part) for part in chunks_of(payload, 2)) == message


def test_negotiate_server_rejects_a_malformed_header() -> None:
    with pytest.raises(NegotiationError):
        negotiate_server(["permessage-deflate; ="], DeflateConfig())


# ---------------------------------------------------------------------------------------
# Client validation of the response


@pytest.mark.parametrize(
    ("value", "offers", "expected"),
    [
        pytest.param("permessage-deflate", [DeflateOffer()], params(), id="plain"),
        pytest.param(
            "permessage-deflate; server_no_context_takeover",
            [DeflateOffer()],
            params(snct=True),
            id="server-adds-server-no-takeover",
        ),
        pytest.param(
            "permessage-deflate; client_no_context_takeover",
            [DeflateOffer()],
            params(cnct=True),
            id="server-adds-client-no-takeover",
        ),
        pytest.param(
            "permessage-deflate",
            [DeflateOffer(client_no_context_takeover=True)],
            params(cnct=True),
            id="our-no-takeover-hint-kept",
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=10",
            [DeflateOffer()],
            params(sbits=10),
            id="server-announces-its-window",
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=8",
            [DeflateOffer(server_max_window_bits=10)],
            params(sbits=8),
            id="smaller-server-window-than-asked",
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=10",
            [DeflateOffer(server_max_window_bits=10)],
            params(sbits=10),
            id="server-window-as-asked",
        ),
        pytest.param(
            "permessage-deflate; client_max_window_bits=9",
            [DeflateOffer()],
            params(cbits=9),
            id="client-window-limited",
        ),
        pytest.param(
            "permessage-deflate; client_max_window_bits=9",
            [DeflateOffer(client_max_window_bits=12)],
            params(cbits=9),
            id="client-window-below-offer",
        ),
        pytest.param(
            "permessage-deflate",
            [DeflateOffer(client_max_window_bits=12)],
            params(cbits=12),
            id="client-window-value-ignored-by-server",
        ),
        pytest.param(
            'permessage-deflate; server_max_window_bits="12"',
            [DeflateOffer()],
            params(sbits=12),
            id="quoted-value",
        ),
        pytest.param(
            "permessage-deflate",
            [DeflateOffer(server_no_context_takeover=True), DeflateOffer()],
            params(),
            id="matches-second-offer",
        ),
        pytest.param(
            "permessage-deflate; server_no_context_takeover",
            [DeflateOffer(server_no_context_takeover=True), DeflateOffer()],
            params(snct=True),
            id="matches-first-offer",
        ),
        pytest.param(
            " Permessage-Deflate ;Server_Max_Window_Bits=9 ",
            [DeflateOffer()],
            params(sbits=9),
            id="case-and-whitespace",
        ),
    ],
)
def test_accept_client(value: str, offers: list[DeflateOffer], expected: DeflateParams) -> None:
    assert accept_client(value, offers) == expected


@pytest.mark.parametrize(
    ("value", "offers"),
    [
        pytest.param("", [DeflateOffer()], id="empty"),
        pytest.param("permessage-deflate, permessage-deflate", [DeflateOffer()], id="two"),
        pytest.param("x-webkit-deflate-frame", [DeflateOffer()], id="other-extension"),
        pytest.param("permessage-deflate, foo", [DeflateOffer()], id="with-other-extension"),
        pytest.param("permessage-deflate", [], id="nothing-offered"),
        pytest.param("permessage-deflate; foo", [DeflateOffer()], id="unknown-param"),
        pytest.param(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            [DeflateOffer()],
            id="duplicate-param",
        ),
        pytest.param(
            "permessage-deflate; client_max_window_bits",
            [DeflateOffer()],
            id="client-bits-without-value",
        ),
        pytest.param(
            "permessage-deflate; client_max_window_bits=10",
            [DeflateOffer(client_max_window_bits=False)],
            id="client-bits-not-offered",
        ),
        pytest.param(
            "permessage-deflate; client_max_window_bits=12",
            [DeflateOffer(client_max_window_bits=10)],
            id="client-bits-above-offer",
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=12",
            [DeflateOffer(server_max_window_bits=10)],
            id="server-bits-above-request",
        ),
        pytest.param(
            "permessage-deflate",
            [DeflateOffer(server_max_window_bits=10)],
            id="server-bits-request-ignored",
        ),
        pytest.param(
            "permessage-deflate",
            [DeflateOffer(server_no_context_takeover=True)],
            id="server-no-takeover-request-ignored",
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=16", [DeflateOffer()], id="bits-too-big"
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=7", [DeflateOffer()], id="bits-too-small"
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits", [DeflateOffer()], id="bits-without-value"
        ),
        pytest.param(
            "permessage-deflate; server_no_context_takeover=yes",
            [DeflateOffer()],
            id="value-on-flag",
        ),
        pytest.param(
            "permessage-deflate; server_max_window_bits=12",
            [DeflateOffer(server_max_window_bits=10), DeflateOffer(server_max_window_bits=11)],
            id="matches-no-offer",
        ),
        pytest.param("permessage-deflate;", [DeflateOffer()], id="malformed"),
    ],
)
def test_accept_client_rejects(value: str, offers: list[DeflateOffer]) -> None:
    with pytest.raises(NegotiationError):
        accept_client(value, offers)


offers_strategy = st.builds(
    DeflateOffer,
    st.booleans(),
    st.booleans(),
    st.none() | window_bits,
    st.booleans() | window_bits,
)
configs_strategy = st.builds(DeflateConfig, st.booleans(), st.booleans(), st.none() | window_bits)


@settings(max_examples=300)
@given(offers=st.lists(offers_strategy, min_size=1, max_size=4), config=configs_strategy)
def test_negotiation_round_trip(offers: list[DeflateOffer], config: DeflateConfig) -> None:
    result = negotiate_server([format_offers(offers)], config)
    assert result is not None
    agreed, response = result
    assert response.startswith(EXTENSION_NAME)
    # Both ends agree on the parameters.
    assert accept_client(response, offers) == agreed
    # The first offer was accepted and its requests honoured (§7.1).
    offer = offers[0]
    if offer.server_no_context_takeover:
        assert agreed.server_no_context_takeover
    if offer.server_max_window_bits is not None:
        assert agreed.server_max_window_bits <= offer.server_max_window_bits
    if config.server_max_window_bits is not None:
        assert agreed.server_max_window_bits <= config.server_max_window_bits
    if offer.client_max_window_bits is False:
        assert "client_max_window_bits" not in response
    if config.client_no_context_takeover:
        assert agreed.client_no_context_takeover


@given(st.text(alphabet=st.sampled_from(list('permsag-dflt_ovwinbcxk =;,"0189'))))
def test_negotiate_server_never_fails_otherwise(value: str) -> None:
    try:
        result = negotiate_server([value], DeflateConfig())
    except NegotiationError:
        return
    if result is not None:
        agreed, response = result
        assert parse_extension_header([response])[0][0] == EXTENSION_NAME
        assert isinstance(agreed, DeflateParams)
