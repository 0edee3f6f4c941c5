"""RFC 7692 permessage-deflate: extension negotiation and the per-message codec.

Pure computation: no I/O and no clock. :func:`negotiate_server` and :func:`accept_client`
turn ``Sec-WebSocket-Extensions`` values into agreed :class:`DeflateParams`;
:class:`PerMessageDeflate` compresses and inflates messages under those parameters.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from ..exceptions import (
    InvalidArgument,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
)

__all__ = [
    "EXTENSION_NAME",
    "DeflateConfig",
    "DeflateOffer",
    "DeflateParams",
    "PerMessageDeflate",
    "accept_client",
    "format_offers",
    "negotiate_server",
    "parse_extension_header",
]

#: The extension token registered by RFC 7692 §8.1.
EXTENSION_NAME = "permessage-deflate"

_SERVER_NO_CONTEXT_TAKEOVER = "server_no_context_takeover"
_CLIENT_NO_CONTEXT_TAKEOVER = "client_no_context_takeover"
_SERVER_MAX_WINDOW_BITS = "server_max_window_bits"
_CLIENT_MAX_WINDOW_BITS = "client_max_window_bits"

_MIN_BITS = 8
_MAX_BITS = 15

# §7.1.2.1 / §7.1.2.2: a window size is a decimal integer 8..15 without leading zeroes, so
# the exact spellings are the only ones accepted ("08", "+8" and " 8" are invalid values).
_BITS_BY_TEXT = {str(bits): bits for bits in range(_MIN_BITS, _MAX_BITS + 1)}

# §7.2.1 / §7.2.2: the tail of an empty stored block, removed by the sender of every message
# and appended again by its receiver.
_TAIL = b"\x00\x00\xff\xff"

# RFC 7230 §3.2.6 token and quoted-string, as used by the RFC 6455 §9.1 grammar.
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_QUOTED_RE = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_OWS = " \t"


def _is_bits(value: object) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and _MIN_BITS <= value <= _MAX_BITS
    )


def _check_levels(compress_level: int, mem_level: int) -> None:
    if not -1 <= compress_level <= 9:
        raise InvalidArgument(f"compress_level must be -1..9, not {compress_level!r}")
    if not 1 <= mem_level <= 9:
        raise InvalidArgument(f"mem_level must be 1..9, not {mem_level!r}")


@dataclass(frozen=True)
class DeflateOffer:
    """One permessage-deflate offer a client sends.

    ``client_max_window_bits`` is ``True`` for the parameter without a value (the client
    supports it), ``False`` to leave it out, or a window size 8..15.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | bool = True

    def __post_init__(self) -> None:
        if self.server_max_window_bits is not None and not _is_bits(self.server_max_window_bits):
            raise InvalidArgument(
                f"server_max_window_bits must be None or 8..15, not {self.server_max_window_bits!r}"
            )
        bits = self.client_max_window_bits
        if not isinstance(bits, bool) and not _is_bits(bits):
            raise InvalidArgument(f"client_max_window_bits must be a bool or 8..15, not {bits!r}")


@dataclass(frozen=True)
class DeflateConfig:
    """What a server accepts and how it compresses.

    ``server_max_window_bits`` caps our own window; a smaller value asked for by the client
    wins. ``client_no_context_takeover`` makes every client compress each message alone.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    compress_level: int = 6
    mem_level: int = 8

    def __post_init__(self) -> None:
        if self.server_max_window_bits is not None and not _is_bits(self.server_max_window_bits):
            raise InvalidArgument(
                f"server_max_window_bits must be None or 8..15, not {self.server_max_window_bits!r}"
            )
        _check_levels(self.compress_level, self.mem_level)


@dataclass(frozen=True)
class DeflateParams:
    """The agreed parameters (both windows as ints 8..15)."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int

    def __post_init__(self) -> None:
        for name in (_SERVER_MAX_WINDOW_BITS, _CLIENT_MAX_WINDOW_BITS):
            value = getattr(self, name)
            if not _is_bits(value):
                raise InvalidArgument(f"{name} must be 8..15, not {value!r}")


# ---------------------------------------------------------------------------------------
# Sec-WebSocket-Extensions syntax (RFC 6455 §9.1)


def _syntax_error(text: str, pos: int, what: str) -> NegotiationError:
    return NegotiationError(
        f"invalid Sec-WebSocket-Extensions value {text!r}: {what} at position {pos}"
    )


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos


def _read_token(text: str, pos: int, what: str) -> tuple[str, int]:
    match = _TOKEN_RE.match(text, pos)
    if match is None:
        raise _syntax_error(text, pos, f"expected {what}")
    return match.group(), match.end()


def _read_param_value(text: str, pos: int) -> tuple[str, int]:
    if not text.startswith('"', pos):
        return _read_token(text, pos, "parameter value")
    match = _QUOTED_RE.match(text, pos)
    if match is None:
        raise _syntax_error(text, pos, "invalid quoted string")
    value = _QUOTED_PAIR_RE.sub(r"\1", match.group(1))
    # RFC 6455 §9.1: once unescaped, a quoted value must still be a token.
    if _TOKEN_RE.fullmatch(value) is None:
        raise _syntax_error(text, pos, "quoted value is not a token")
    return value, match.end()


def _parse_one_value(text: str, elements: list[tuple[str, list[tuple[str, str | None]]]]) -> None:
    end = len(text)
    pos = 0
    while True:
        pos = _skip_ows(text, pos)
        if pos == end:
            return
        if text[pos] == ",":
            # An empty list element, which RFC 7230 §7 tells recipients to ignore.
            pos += 1
            continue
        name, pos = _read_token(text, pos, "extension name")
        params: list[tuple[str, str | None]] = []
        pos = _skip_ows(text, pos)
        while pos < end and text[pos] == ";":
            pos = _skip_ows(text, pos + 1)
            param, pos = _read_token(text, pos, "parameter name")
            pos = _skip_ows(text, pos)
            value: str | None = None
            if pos < end and text[pos] == "=":
                pos = _skip_ows(text, pos + 1)
                value, pos = _read_param_value(text, pos)
                pos = _skip_ows(text, pos)
            params.append((param, value))
        elements.append((name, params))
        if pos < end:
            if text[pos] != ",":
                raise _syntax_error(text, pos, "expected ',' or ';'")
            pos += 1


def parse_extension_header(values: Sequence[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse ``Sec-WebSocket-Extensions`` values into ``(name, [(param, value), ...])``.

    Names keep their spelling; a parameter without ``=`` has the value ``None`` and a quoted
    value is returned unescaped. Empty list elements are skipped. Raises
    :class:`NegotiationError` if a value does not follow the RFC 6455 §9.1 grammar.
    """
    elements: list[tuple[str, list[tuple[str, str | None]]]] = []
    for value in values:
        _parse_one_value(value, elements)
    return elements


def _format_element(
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: int | None,
    client_max_window_bits: int | bool,
) -> str:
    parts = [EXTENSION_NAME]
    if server_no_context_takeover:
        parts.append(_SERVER_NO_CONTEXT_TAKEOVER)
    if client_no_context_takeover:
        parts.append(_CLIENT_NO_CONTEXT_TAKEOVER)
    if server_max_window_bits is not None:
        parts.append(f"{_SERVER_MAX_WINDOW_BITS}={server_max_window_bits}")
    if client_max_window_bits is True:
        parts.append(_CLIENT_MAX_WINDOW_BITS)
    elif client_max_window_bits is not False:
        parts.append(f"{_CLIENT_MAX_WINDOW_BITS}={client_max_window_bits}")
    return "; ".join(parts)


def format_offers(offers: Sequence[DeflateOffer]) -> str:
    """Return the ``Sec-WebSocket-Extensions`` value offering ``offers``, in order.

    RFC 7692 §5 lets a client send several offers, most preferred first. Raises
    :class:`InvalidArgument` if ``offers`` is empty.
    """
    if not offers:
        raise InvalidArgument("format_offers needs at least one offer")
    return ", ".join(
        _format_element(
            offer.server_no_context_takeover,
            offer.client_no_context_takeover,
            offer.server_max_window_bits,
            offer.client_max_window_bits,
        )
        for offer in offers
    )


# ---------------------------------------------------------------------------------------
# Negotiation (RFC 7692 §7.1)


class _Unacceptable(Exception):
    """Parameters that must be declined (by a server) or refused (by a client)."""


def _read_bits(name: str, value: str | None) -> int:
    if value is None:
        raise _Unacceptable(f"{name} needs a value")
    bits = _BITS_BY_TEXT.get(value)
    if bits is None:
        raise _Unacceptable(f"{name}={value} is not a window size 8..15")
    return bits


def _read_params(params: Sequence[tuple[str, str | None]], *, response: bool) -> DeflateOffer:
    """Check the parameters of one element; the result describes an offer or a response.

    Raises :class:`_Unacceptable` for what RFC 7692 §7 makes a server decline and a client
    fail on: an unknown parameter, a duplicated one, or an invalid value.
    """
    seen: set[str] = set()
    server_no_context_takeover = False
    client_no_context_takeover = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | bool = False
    for raw_name, value in params:
        name = raw_name.lower()
        if name in seen:
            raise _Unacceptable(f"duplicate parameter {raw_name}")
        seen.add(name)
        if name in (_SERVER_NO_CONTEXT_TAKEOVER, _CLIENT_NO_CONTEXT_TAKEOVER):
            # §7.1.1.1 / §7.1.1.2: these parameters have no value.
            if value is not None:
                raise _Unacceptable(f"{raw_name} takes no value")
            if name == _SERVER_NO_CONTEXT_TAKEOVER:
                server_no_context_takeover = True
            else:
                client_no_context_takeover = True
        elif name == _SERVER_MAX_WINDOW_BITS:
            # §7.1.2.1: always with a value, in an offer as in a response.
            server_max_window_bits = _read_bits(raw_name, value)
        elif name == _CLIENT_MAX_WINDOW_BITS:
            # §7.1.2.2: an offer may leave the value out; a response must give one.
            if value is None and not response:
                client_max_window_bits = True
            else:
                client_max_window_bits = _read_bits(raw_name, value)
        else:
            raise _Unacceptable(f"unknown parameter {raw_name}")
    return DeflateOffer(
        server_no_context_takeover,
        client_no_context_takeover,
        server_max_window_bits,
        client_max_window_bits,
    )


def _accept_offer(offer: DeflateOffer, config: DeflateConfig) -> tuple[DeflateParams, str]:
    # §7.1.1.1: an offered server_no_context_takeover is accepted by echoing it, and the
    # server may add it on its own.
    server_no_context_takeover = (
        offer.server_no_context_takeover or config.server_no_context_takeover
    )
    # §7.1.1.2: the server may include client_no_context_takeover in any response. An
    # offered one is only a hint; echoing it costs the client nothing (it said it will not
    # take over context) and lets us drop our inflater between messages.
    client_no_context_takeover = (
        offer.client_no_context_takeover or config.client_no_context_takeover
    )
    # §7.1.2.1: an offered value caps our window and is accepted by answering with the
    # same or a smaller value; without an offered value the server may still announce one.
    cap = config.server_max_window_bits
    response_server_bits: int | None
    if offer.server_max_window_bits is not None:
        response_server_bits = offer.server_max_window_bits
        if cap is not None:
            response_server_bits = min(cap, response_server_bits)
    else:
        response_server_bits = cap
    # §7.1.2.2: client_max_window_bits may appear in the response only if the offer had
    # it, and then with at most the offered value. We have no wish to shrink the client's
    # window ourselves, so we answer only an offered value, by echoing it.
    response_client_bits: int | bool = False
    if not isinstance(offer.client_max_window_bits, bool):
        response_client_bits = offer.client_max_window_bits
    params = DeflateParams(
        server_no_context_takeover=server_no_context_takeover,
        client_no_context_takeover=client_no_context_takeover,
        server_max_window_bits=_MAX_BITS if response_server_bits is None else response_server_bits,
        client_max_window_bits=(
            _MAX_BITS if isinstance(response_client_bits, bool) else response_client_bits
        ),
    )
    header = _format_element(
        server_no_context_takeover,
        client_no_context_takeover,
        response_server_bits,
        response_client_bits,
    )
    return params, header


def negotiate_server(
    values: Sequence[str], config: DeflateConfig
) -> tuple[DeflateParams, str] | None:
    """Accept the first acceptable permessage-deflate offer of a request.

    ``values`` are the request's ``Sec-WebSocket-Extensions`` values. Returns the agreed
    parameters and the response's header value, or ``None`` if no offer can be accepted.
    Other extensions are ignored, and an offer with an unknown, duplicated or invalid
    parameter is declined (RFC 7692 §7). Raises :class:`NegotiationError` if the header
    itself is malformed.
    """
    for name, params in parse_extension_header(values):
        if name.lower() != EXTENSION_NAME:
            continue
        try:
            offer = _read_params(params, response=False)
        except _Unacceptable:
            # §7: the server MUST decline this offer; a later one may still do.
            continue
        # Every valid offer is one we support: each window size 8..15 can be honoured.
        return _accept_offer(offer, config)
    return None


def _mismatch(response: DeflateOffer, offer: DeflateOffer) -> str | None:
    """Why ``response`` does not accept ``offer``, or ``None`` if it does."""
    # §7.1.1.1: a requested server_no_context_takeover is accepted only by echoing it.
    if offer.server_no_context_takeover and not response.server_no_context_takeover:
        return f"{_SERVER_NO_CONTEXT_TAKEOVER} was requested but is missing"
    # §7.1.2.1: a requested server_max_window_bits is accepted with the same or a smaller
    # value; unrequested, the server may still send one.
    if offer.server_max_window_bits is not None:
        if response.server_max_window_bits is None:
            return f"{_SERVER_MAX_WINDOW_BITS} was requested but is missing"
        if response.server_max_window_bits > offer.server_max_window_bits:
            return (
                f"{_SERVER_MAX_WINDOW_BITS}={response.server_max_window_bits} is larger than "
                f"the requested {offer.server_max_window_bits}"
            )
    # §7.1.2.2: client_max_window_bits only if offered, and at most the offered value.
    if response.client_max_window_bits is not False:
        if offer.client_max_window_bits is False:
            return f"{_CLIENT_MAX_WINDOW_BITS} was not offered"
        if (
            offer.client_max_window_bits is not True
            and response.client_max_window_bits > offer.client_max_window_bits
        ):
            return (
                f"{_CLIENT_MAX_WINDOW_BITS}={response.client_max_window_bits} is larger than "
                f"the offered {offer.client_max_window_bits}"
            )
    return None


def accept_client(value: str, offers: Sequence[DeflateOffer]) -> DeflateParams:
    """Check the server's ``Sec-WebSocket-Extensions`` value against our ``offers``.

    The value must hold exactly one permessage-deflate element, nothing else, that
    accepts one of the offers under RFC 7692 §7.1. Returns the agreed parameters; raises
    :class:`NegotiationError` otherwise.
    """
    elements = parse_extension_header([value])
    if not elements:
        raise NegotiationError("the Sec-WebSocket-Extensions response is empty")
    for name, _ in elements:
        # RFC 6455 §9.1: a server may only accept extensions the client offered.
        if name.lower() != EXTENSION_NAME:
            raise NegotiationError(f"the server accepted extension {name!r}, which was not offered")
    if not offers:
        raise NegotiationError(f"the server accepted {EXTENSION_NAME}, which was not offered")
    if len(elements) > 1:
        # RFC 7692 §5: two permessage-deflate elements would both claim the RSV1 bit.
        raise NegotiationError(f"the server accepted {EXTENSION_NAME} more than once")
    try:
        # §7: a client MUST fail the connection on an unknown, duplicated or invalid
        # parameter in the response.
        response = _read_params(elements[0][1], response=True)
    except _Unacceptable as exc:
        raise NegotiationError(f"invalid {EXTENSION_NAME} response: {exc}") from None
    # The first offer the response can be an acceptance of is the one it accepted.
    offer: DeflateOffer | None = None
    reasons: list[str] = []
    for candidate in offers:
        reason = _mismatch(response, candidate)
        if reason is None:
            offer = candidate
            break
        reasons.append(reason)
    if offer is None:
        raise NegotiationError(
            f"the {EXTENSION_NAME} response matches none of our offers: " + "; ".join(reasons)
        )
    if response.client_max_window_bits is not False:
        client_bits = int(response.client_max_window_bits)
    elif not isinstance(offer.client_max_window_bits, bool):
        # The server ignored our value (§7.1.2.2 lets it); compressing with the smaller
        # window we offered is still within the agreed 15 bits.
        client_bits = offer.client_max_window_bits
    else:
        client_bits = _MAX_BITS
    return DeflateParams(
        server_no_context_takeover=response.server_no_context_takeover,
        # §7.1.1.2: offering client_no_context_takeover tells the server we will not take
        # over context even if the response leaves it out; keep that promise.
        client_no_context_takeover=(
            response.client_no_context_takeover or offer.client_no_context_takeover
        ),
        server_max_window_bits=(
            _MAX_BITS
            if response.server_max_window_bits is None
            else response.server_max_window_bits
        ),
        client_max_window_bits=client_bits,
    )


# ---------------------------------------------------------------------------------------
# The codec (RFC 7692 §7.2)


def _mem_level_for(window_bits: int, mem_level: int) -> int:
    """The memory level to compress with under a ``window_bits`` window.

    zlib's hash table has ``2 ** (mem_level + 7)`` entries and is rescanned every time the
    window slides, which happens every ``2 ** window_bits`` input bytes: with a small
    agreed window (RFC 7692 §7.1.2.1 lets the peer ask for as little as 256 bytes) and the
    default level 8, a 128 KiB message slides 256 times over a 32 768-entry table, and
    compressing it took twice as long as with a table of 8 times the window. A table no
    bigger than that costs next to nothing in ratio, since it only indexes the window.
    """
    return max(1, min(mem_level, window_bits - 4))


class PerMessageDeflate:
    """Compression state of one connection (one side).

    ``compress`` takes whole outgoing messages. Incoming messages are fed to ``decompress``
    chunk by chunk and closed by ``finish``. zlib objects are created on first use and
    dropped after each message whose side has no context takeover.
    """

    def __init__(
        self,
        params: DeflateParams,
        *,
        is_client: bool,
        compress_level: int = 6,
        mem_level: int = 8,
    ) -> None:
        _check_levels(compress_level, mem_level)
        self.params = params
        self.is_client = is_client
        self._compress_level = compress_level
        self._mem_level = mem_level
        if is_client:
            self._own_bits = params.client_max_window_bits
            self._own_no_takeover = params.client_no_context_takeover
            self._peer_bits = params.server_max_window_bits
            self._peer_no_takeover = params.server_no_context_takeover
        else:
            self._own_bits = params.server_max_window_bits
            self._own_no_takeover = params.server_no_context_takeover
            self._peer_bits = params.client_max_window_bits
            self._peer_no_takeover = params.client_no_context_takeover
        self._deflater: zlib._Compress | None = None
        self._inflater: zlib._Decompress | None = None
        # Inflated size of the incoming message so far.
        self._inflated = 0
        # Whether the current inflater has been fed bytes of this message that did not end
        # its deflate stream; if not, finish() has no block to complete.
        self._fed = False

    def _new_deflater(self) -> zlib._Compress:
        if self._own_bits == 8:
            # zlib (since 1.2.9) refuses a 256-byte window for raw deflate: wbits=-8 raises
            # "Invalid initialization option". So we take a 512-byte window with the Z_RLE
            # strategy: RLE only ever emits matches at distance 1, so the output never
            # refers further back than 256 bytes and stays valid for a peer that inflates
            # with the 8-bit window we agreed to (§7.1.2.1 / §7.1.2.2).
            return zlib.compressobj(
                self._compress_level,
                zlib.DEFLATED,
                -9,
                _mem_level_for(9, self._mem_level),
                zlib.Z_RLE,
            )
        bits = self._own_bits
        return zlib.compressobj(
            self._compress_level, zlib.DEFLATED, -bits, _mem_level_for(bits, self._mem_level)
        )

    def _new_inflater(self) -> zlib._Decompress:
        # We inflate with the peer's agreed window rather than always 32 KiB: a peer that
        # keeps to the agreement never refers further back (§7.1.2), and a small window is
        # what a small agreed size is for, the receiver's memory. zlib accepts 8 bits for
        # raw inflate.
        return zlib.decompressobj(-self._peer_bits)

    @property
    def shared_key(self) -> tuple[int, int, int] | None:
        """What determines :meth:`compress`'s output besides the data, when nothing else
        does: without context takeover each message is compressed from an empty window, so
        connections with equal keys produce equal bytes and a broadcast compresses once.
        ``None`` with context takeover, where the output depends on earlier messages."""
        if not self._own_no_takeover:
            return None
        return (self._own_bits, self._compress_level, self._mem_level)

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        """Compress one whole message; the result is the payload to send with RSV1 set."""
        deflater = self._deflater
        if deflater is None:
            deflater = self._deflater = self._new_deflater()
        out = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        if self._own_no_takeover:
            # §7.1.1.1 / §7.1.1.2: each message starts with an empty window. A new
            # deflater is created on the next message, so none is held in between.
            self._deflater = None
        # §7.2.1: the sync flush ends the data with an empty stored block; its last four
        # octets 00 00 FF FF are removed.
        if out.endswith(_TAIL):
            return out[: -len(_TAIL)]
        if not out:
            # zlib answers a flush that repeats the previous one with no input in between
            # by producing nothing. compress() runs first, so this is not expected, but an
            # empty message must still be sent as the first octet of an empty stored
            # block, which the receiver completes with the tail (as in §7.2.3.6).
            return b"\x00"
        raise AssertionError("zlib sync flush did not end with an empty stored block")

    def decompress(self, data: bytes | bytearray | memoryview, limit: int) -> bytes:
        """Inflate a chunk of the incoming compressed message and return its output.

        Raises :class:`PayloadTooBig` as soon as the message would inflate to more than
        ``limit`` bytes (at most ``limit + 1`` bytes of it are ever inflated), and
        :class:`ProtocolError` if the data is not valid DEFLATE. After either, the partial
        message and the inflate window are forgotten.
        """
        if limit < 0:
            raise InvalidArgument(f"limit must not be negative, not {limit!r}")
        if not data:
            return b""
        return self._inflate(data, limit)

    def finish(self, limit: int) -> bytes:
        """End the incoming message: complete its last block and return the rest of it.

        ``limit`` applies to the whole message, as in :meth:`decompress`.
        """
        if limit < 0:
            raise InvalidArgument(f"limit must not be negative, not {limit!r}")
        out = b""
        if self._fed:
            # §7.2.2: append 00 00 FF FF to the payload before inflating its end.
            out = self._inflate(_TAIL, limit)
        # Otherwise the payload was empty, or ended with a final deflate block (§7.2.3.4
        # without its trailing empty block): there is nothing to complete, and a tail fed
        # there would open a stored block and swallow the next message.
        self._inflated = 0
        self._fed = False
        if self._peer_no_takeover:
            # §7.2.2: the peer starts each message with an empty window, so ours need not
            # survive the message; drop it and hold no zlib state between messages.
            self._inflater = None
        return out

    def reset_message(self) -> None:
        """Forget a partly received message, and the inflate window with it."""
        self._inflater = None
        self._inflated = 0
        self._fed = False

    def _inflate(self, data: bytes | bytearray | memoryview, limit: int) -> bytes:
        parts: list[bytes] = []
        pending = data
        try:
            while pending:
                inflater = self._inflater
                if inflater is None:
                    inflater = self._inflater = self._new_inflater()
                # Ask for one byte more than the limit allows: getting it proves the
                # message too big while never inflating more than limit + 1 bytes of it.
                budget = min(limit - self._inflated + 1, sys.maxsize)
                out = inflater.decompress(pending, budget)
                self._inflated += len(out)
                if self._inflated > limit:
                    raise PayloadTooBig(f"compressed message inflates to more than {limit} bytes")
                if out:
                    parts.append(out)
                if inflater.eof:
                    # The peer ended a deflate stream with a BFINAL block (§7.2.3.4).
                    # zlib cannot go on after it, so whatever follows starts over in a new
                    # inflater. That one lacks the old window: data referring back into
                    # it fails loudly with "invalid distance too far back" rather than
                    # inflating wrong.
                    self._inflater = None
                    pending = inflater.unused_data
                    self._fed = False
                else:
                    # The unconsumed tail is empty unless the output limit stopped zlib,
                    # and then the check above has raised.
                    pending = inflater.unconsumed_tail
                    self._fed = True
        except zlib.error as exc:
            self.reset_message()
            # §7.2.2 and RFC 6455 §7.1.7: corrupt data fails the connection (1002).
            raise ProtocolError(f"invalid compressed data: {exc}") from exc
        except PayloadTooBig:
            self.reset_message()
            raise
        return b"".join(parts)
