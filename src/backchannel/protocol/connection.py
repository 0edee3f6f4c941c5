"""The WebSocket connection state machine (RFC 6455), without I/O and without a clock.

Theory of operation
-------------------
A :class:`Connection` is created once the opening handshake succeeded (see
:mod:`backchannel.protocol.handshake`), in state OPEN. The I/O layer then:

* feeds every received chunk to :meth:`Connection.receive_data`, which returns the
  events it completed (messages, pings, pongs, the peer's close) and queues automatic
  replies (pongs, the close echo, a close for a protocol violation), which the I/O layer
  collects with :meth:`Connection.data_to_send` and writes;
* calls :meth:`send_text`, :meth:`send_binary`, :meth:`send_ping`, :meth:`send_pong` and
  :meth:`send_close`, each of which returns the bytes to write;
* calls :meth:`receive_eof` when the peer closed TCP;
* closes the transport once :attr:`state` is CLOSED (a server at once; a client after
  giving the server ``close_timeout`` to close first, RFC 6455 section 7.1.1), and at
  once after a failure.

Frames are parsed incrementally. A frame's payload is processed as it arrives, chunk by
chunk, rather than once the frame is complete: text is validated as it comes, so invalid
UTF-8 fails the connection on the first bad byte (section 8.1), and compressed data is
inflated as it comes with a bound, so a message past the size limit is refused before it
is buffered. A whole unfragmented frame that arrives in one chunk takes a short path.

A peer's fault never raises out of :meth:`receive_data`: the connection is failed
(section 7.1.7) with the close code the fault maps to (1002, 1007, 1009, or 1011 for a bug
of ours), :attr:`failure` keeps the cause, and every later frame is dropped unread: only
frame headers are looked at, to see the peer's close frame (:attr:`peer_closed`), after
which the I/O layer may close TCP without waiting (section 7.1.1). Misuse by the
caller raises :class:`~backchannel.exceptions.InvalidState` or
:class:`~backchannel.exceptions.InvalidArgument` at once.
"""

from __future__ import annotations

import enum
import logging

from ..exceptions import (
    InvalidArgument,
    InvalidPayload,
    InvalidState,
    PayloadTooBig,
    PeerError,
    ProtocolError,
)
from .deflate import PerMessageDeflate
from .events import BinaryMessage, CloseReceived, Event, Ping, Pong, TextMessage
from .frames import (
    CloseCode,
    Opcode,
    apply_mask,
    encode_close,
    encode_frame,
    encode_header,
    new_mask,
    parse_close,
)
from .limits import Limits
from .speedups import compiled
from .utf8 import TextValidator, Utf8Validator

__all__ = [
    "CLIENT",
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "SERVER",
    "Connection",
    "Side",
    "State",
]

logger = logging.getLogger(__name__)


class Side(enum.Enum):
    """Which end of the connection we are."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """Connection states (RFC 6455 section 4 and 7)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


SERVER = Side.SERVER
CLIENT = Side.CLIENT
CONNECTING = State.CONNECTING
OPEN = State.OPEN
CLOSING = State.CLOSING
CLOSED = State.CLOSED

_TEXT = Opcode.TEXT.value
_BINARY = Opcode.BINARY.value
_CONTINUATION = Opcode.CONTINUATION.value
_CLOSE = Opcode.CLOSE.value
_PING = Opcode.PING.value
_PONG = Opcode.PONG.value
_DATA_OPCODES = frozenset({_CONTINUATION, _TEXT, _BINARY})
_CONTROL_OPCODES = frozenset({_CLOSE, _PING, _PONG})
_NO_LIMIT = 2**63
# Outgoing payloads from this size on are returned apart from their header by
# send_message_parts: copying them behind the header costs more than a second buffer.
_VECTOR_FROM = 16384
# Received chunks shorter than this are merged into one buffer rather than kept apart.
_MERGE_BELOW = 4096
# The accelerator's decoder for runs of simple data frames, or None (see _parse).
_scan_frames = None if compiled is None else compiled.scan_frames


def _frame_header(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, int] | None:
    """The header size, payload length and opcode of the frame at ``pos`` (section 5.2),
    or None when the header is not all there; nothing is checked."""
    if len(data) - pos < 2:
        return None
    b1 = data[pos + 1]
    length = b1 & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if b1 & 0x80 else 0)
    if len(data) - pos < size:
        return None
    if length == 126:
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    elif length == 127:
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
    return size, length, data[pos] & 0x0F


class Connection:
    """One WebSocket connection after the opening handshake."""

    # Slots: a server holds one of these per client, most of them idle.
    __slots__ = (
        "_buffer",
        "_client",
        "_discard",
        "_events",
        "_failure_code",
        "_frame_fin",
        "_frame_first",
        "_frame_mask",
        "_frame_offset",
        "_frame_opcode",
        "_frame_remaining",
        "_in_frame",
        "_max_frame",
        "_max_size",
        "_msg_compressed",
        "_msg_opcode",
        "_msg_parts",
        "_msg_size",
        "_msg_validator",
        "_outgoing",
        "_scan",
        "_scan_limit",
        "_send_opcode",
        "_skip_head",
        "_skip_left",
        "close_received",
        "close_sent",
        "compress_threshold",
        "deflate",
        "failure",
        "failure_pending",
        "lazy_failure",
        "limits",
        "peer_closed",
        "side",
        "state",
        "subprotocol",
    )

    def __init__(
        self,
        side: Side,
        *,
        limits: Limits | None = None,
        deflate: PerMessageDeflate | None = None,
        compress_threshold: int = 128,
        lazy_failure: bool = False,
    ) -> None:
        self.side = side
        self.limits = limits = limits or Limits()
        #: Compression state, when permessage-deflate was negotiated.
        self.deflate = deflate
        #: Messages shorter than this are sent uncompressed even when compression was
        #: negotiated: under 128 bytes deflate's framing costs about what it saves.
        self.compress_threshold = compress_threshold
        self.state = OPEN
        #: The subprotocol agreed in the handshake, if any.
        self.subprotocol: str | None = None
        #: Why we failed the connection, when the peer broke a rule.
        self.failure: PeerError | None = None
        #: With ``lazy_failure``, a peer fault stops reading but leaves sending open until
        #: the caller calls :meth:`fail`: messages that arrived before the fault can still
        #: be answered (Autobahn cases 3.x, 4.x and 5.15 expect that echo before the
        #: close). Without it the close frame is queued at once.
        self.lazy_failure = lazy_failure
        self.failure_pending = False
        self._failure_code = 0
        #: The peer's close frame (code, reason), once received.
        self.close_received: tuple[int, str] | None = None
        #: Our close frame (code, reason), once sent.
        self.close_sent: tuple[int, str] | None = None

        self._client = side is CLIENT
        self._max_size = _NO_LIMIT if limits.max_size is None else limits.max_size
        frame_limit = limits.frame_limit
        self._max_frame = _NO_LIMIT if frame_limit is None else frame_limit
        # The accelerator decodes frames up to this size; larger ones go to the general
        # parser, which refuses them with the right error.
        self._scan_limit = min(self._max_frame, self._max_size)
        self._scan = _scan_frames

        self._outgoing: list[bytes] = []
        self._events: list[Event] = []
        self._buffer = b""
        self._discard = False
        #: After a failure, whether the peer's close frame has been seen: it sends nothing
        #: more, and the I/O layer can close TCP without waiting for it (section 7.1.1).
        self.peer_closed = False
        # After a failure, frames are dropped unread (see _skip): the bytes of the current
        # frame still to drop, or the start of a frame header split across reads.
        self._skip_left = 0
        self._skip_head = b""

        # The frame being received, once its header is parsed.
        self._in_frame = False
        self._frame_opcode = 0
        self._frame_fin = False
        self._frame_first = False
        self._frame_mask: bytes | None = None
        self._frame_remaining = 0
        self._frame_offset = 0

        # The message being received, across fragments.
        self._msg_opcode = 0  # 0: no message in progress
        self._msg_compressed = False
        self._msg_size = 0
        # The message's payload so far: large chunks kept as they came (no copy until
        # the message is joined), small ones merged into a bytearray, so the number of
        # parts grows with bytes (at most two per _MERGE_BELOW bytes), not fragments.
        self._msg_parts: list[bytes | bytearray] = []
        self._msg_validator: TextValidator | None = None

        # The message being sent in fragments (0: none).
        self._send_opcode = 0

    # Public methods for receiving data.

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Process received bytes; return the events they complete."""
        if self._discard:
            if self.failure is not None and not self.peer_closed and self.state is CLOSED:
                self._skip(data)
            return []
        if self._buffer:
            buf = self._buffer + bytes(data)
        else:
            buf = bytes(data)
        events: list[Event] = []
        self._events = events
        try:
            pos = self._parse(buf)
        except PeerError as exc:
            self._fail(exc)
            # _parse left where the failing frame ends in _skip_left: what follows is
            # dropped frame by frame, watching for the peer's close.
            resume, self._skip_left = self._skip_left, 0
            if resume > len(buf):
                self._skip_left = resume - len(buf)
            elif not self.peer_closed:
                self._skip(memoryview(buf)[resume:])
            pos = len(buf)
        except Exception as exc:  # a bug of ours must not take the server down
            logger.exception("internal error while parsing WebSocket data")
            failure = PeerError("internal error")
            failure.__cause__ = exc
            # Section 7.4.1: 1011, and no details, which may be security-sensitive.
            self._fail(failure, CloseCode.INTERNAL_ERROR)
            pos = len(buf)
        self._buffer = buf[pos:] if pos < len(buf) else b""
        self._events = []
        return events

    def receive_eof(self) -> None:
        """The peer closed the TCP connection."""
        self.failure_pending = False
        self.state = CLOSED
        self._discard = True
        self._buffer = b""

    def data_to_send(self) -> list[bytes]:
        """Bytes the core queued on its own (pongs, close frames); empties the queue."""
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def close_code(self) -> int:
        """The close code: the peer's, else the one we failed with, else 1006 (abnormal)."""
        if self.close_received is not None:
            return self.close_received[0]
        if self.failure is not None and self.close_sent is not None:
            return self.close_sent[0]
        return CloseCode.ABNORMAL

    @property
    def close_reason(self) -> str:
        """The close reason that goes with :attr:`close_code`."""
        if self.close_received is not None:
            return self.close_received[1]
        if self.failure is not None and self.close_sent is not None:
            return self.close_sent[1]
        return ""

    # Public methods for sending.

    def send_text(
        self, data: str | bytes, *, fin: bool = True, compress: bool | None = None
    ) -> bytes:
        """A text message, or the first fragment of one when ``fin`` is false.

        ``bytes`` are sent as they are and must be UTF-8. Fragmented messages are sent
        uncompressed (RFC 7692 allows any message to be sent so).
        """
        payload = data.encode() if isinstance(data, str) else data
        return self._send_data(_TEXT, payload, fin, compress)

    def send_binary(
        self,
        data: bytes | bytearray | memoryview,
        *,
        fin: bool = True,
        compress: bool | None = None,
    ) -> bytes:
        """A binary message, or the first fragment of one when ``fin`` is false."""
        return self._send_data(_BINARY, data, fin, compress)

    def send_message_parts(
        self, data: str | bytes | bytearray | memoryview
    ) -> list[bytes | bytearray | memoryview]:
        """A whole message as :meth:`send_text` (for ``str``) or :meth:`send_binary` make
        it, in pieces to write in order (e.g. with ``transport.writelines``). A server's
        large uncompressed payload is one of the pieces as it was given, not copied behind
        its header; the caller must not change it until it is written."""
        if isinstance(data, str):
            opcode = _TEXT
            payload: bytes | bytearray | memoryview = data.encode()
        else:
            opcode = _BINARY
            payload = data
        size = len(payload)
        if (
            self._client
            or size < _VECTOR_FROM
            or (self.deflate is not None and size >= self.compress_threshold)
        ):
            return [self._send_data(opcode, payload, True, None)]
        self._check_open()
        if self._send_opcode:
            raise InvalidState("a fragmented message is in progress")
        return [encode_header(opcode, size), payload]

    def send_continuation(self, data: str | bytes | bytearray | memoryview, *, fin: bool) -> bytes:
        """The next fragment of the message started by ``send_text`` / ``send_binary``."""
        if self._send_opcode == 0:
            raise InvalidState("no fragmented message in progress")
        self._check_open()
        payload = data.encode() if isinstance(data, str) else data
        if fin:
            self._send_opcode = 0
        return self._frame(_CONTINUATION, payload, fin=fin)

    def send_ping(self, data: bytes = b"") -> bytes:
        """A ping (at most 125 bytes, section 5.5)."""
        self._check_open()
        self._check_control(data)
        return self._frame(_PING, data)

    def send_pong(self, data: bytes = b"") -> bytes:
        """An unsolicited pong, e.g. a unidirectional heartbeat (section 5.5.3)."""
        self._check_open()
        self._check_control(data)
        return self._frame(_PONG, data)

    def send_close(self, code: int | None = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake; ``code=None`` sends a close frame without a code."""
        self._check_open()
        payload = encode_close(code, reason)
        self.state = CLOSING
        self.close_sent = (CloseCode.NO_STATUS if code is None else code, reason)
        return self._frame(_CLOSE, payload)

    def shared_encoding(self, size: int) -> object | None:
        """A key for the frame :meth:`send_text` / :meth:`send_binary` make of a whole
        message of ``size`` bytes: connections that give equal keys make equal bytes of
        equal messages, so a broadcast encodes each message once per key. ``None`` when the
        frame depends on this connection's state: a client's fresh mask, or compression
        with context takeover."""
        if self._client:
            return None
        deflate = self.deflate
        if deflate is None or size < self.compress_threshold:
            return "plain"
        return deflate.shared_key

    # Private methods for sending.

    def _check_open(self) -> None:
        if self.state is not OPEN:
            raise InvalidState(f"cannot send: connection is {self.state.name}")

    @staticmethod
    def _check_control(data: bytes) -> None:
        if len(data) > 125:
            raise InvalidArgument("control frame payloads are at most 125 bytes")

    def _send_data(
        self,
        opcode: int,
        payload: bytes | bytearray | memoryview,
        fin: bool,
        compress: bool | None,
    ) -> bytes:
        self._check_open()
        if self._send_opcode:
            raise InvalidState("a fragmented message is in progress")
        deflate = self.deflate
        if deflate is not None and fin:
            if compress is None:
                compress = len(payload) >= self.compress_threshold
            if compress:
                return self._frame(opcode, deflate.compress(payload), rsv1=True)
        if not fin:
            self._send_opcode = opcode
        return self._frame(opcode, payload, fin=fin)

    def _frame(
        self,
        opcode: int,
        payload: bytes | bytearray | memoryview,
        *,
        fin: bool = True,
        rsv1: bool = False,
    ) -> bytes:
        # Section 5.3: a client masks every frame with a fresh, unpredictable key.
        mask = new_mask() if self._client else None
        return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask)

    # Private methods for receiving.

    def fail(self) -> None:
        """Send the close frame of a failure held back by ``lazy_failure``."""
        if not self.failure_pending:
            return
        self.failure_pending = False
        self._send_failure()

    def _fail(self, exc: PeerError, code: int | None = None) -> None:
        """Fail the connection (section 7.1.7) and ignore whatever follows."""
        if code is None:
            code = getattr(exc, "close_code", CloseCode.PROTOCOL_ERROR)
        self.failure = exc
        self._failure_code = code
        self._discard = True
        if self.lazy_failure and self.state is OPEN:
            self.failure_pending = True
            return
        self._send_failure()

    def _send_failure(self) -> None:
        exc = self.failure
        code = self._failure_code
        if self.state is OPEN:
            reason = str(exc) if code != CloseCode.INTERNAL_ERROR else ""
            reason = reason.encode()[:123].decode(errors="ignore")
            self.close_sent = (code, reason)
            self._outgoing.append(self._frame(_CLOSE, encode_close(code, reason)))
        self.state = CLOSED

    def _parse(self, buf: bytes) -> int:
        """Consume what it can of ``buf``; return how many bytes were used."""
        end = len(buf)
        pos = 0
        scan = self._scan
        # Where the frame being parsed ends in buf, and its opcode: kept in locals (the
        # hot path pays nothing), read only when the peer broke a rule (see receive_data).
        frame_end = 0
        frame_op = 0
        try:
            while not self._discard:
                if not self._in_frame:
                    if scan is not None and not self._msg_opcode:
                        # The accelerator decodes whole unfragmented uncompressed data frames
                        # and stops at anything else (a control frame, a fragment, an error),
                        # which this parser handles: every rule is enforced here.
                        pos = scan(
                            buf,
                            pos,
                            self._events,
                            not self._client,
                            self._scan_limit,
                            TextMessage,
                            BinaryMessage,
                        )
                    if end - pos < 2:
                        break
                    b0 = buf[pos]
                    b1 = buf[pos + 1]
                    length = b1 & 0x7F
                    masked = b1 & 0x80
                    header = 2
                    if length == 126:
                        header = 4
                    elif length == 127:
                        header = 10
                    if masked:
                        header += 4
                    if end - pos < header:
                        break
                    frame_op = b0 & 0x0F
                    if length == 126:
                        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                        frame_end = pos + header + length
                        # Section 5.2: "the minimal number of bytes MUST be used".
                        if length < 126:
                            raise ProtocolError("frame length not minimally encoded")
                    elif length == 127:
                        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                        frame_end = pos + header + length
                        # Section 5.2: "the most significant bit MUST be 0".
                        if length >> 63:
                            raise ProtocolError("64-bit frame length with its top bit set")
                        if length < 65536:
                            raise ProtocolError("frame length not minimally encoded")
                    mask = buf[pos + header - 4 : pos + header] if masked else None
                    frame_end = pos + header + length
                    self._start_frame(b0, bool(masked), length, mask)
                    pos += header
                    # The short path: a whole, unfragmented, uncompressed data message.
                    if (
                        self._frame_first
                        and self._frame_fin
                        and not self._msg_compressed
                        and end - pos >= length
                    ):
                        self._short_message(buf[pos : pos + length])
                        pos += length
                        continue
                    if length == 0:
                        self._end_frame(b"")
                        continue
                remaining = self._frame_remaining
                frame_end = pos + remaining
                frame_op = self._frame_opcode
                available = end - pos
                if available == 0:
                    break
                if self._frame_opcode in _CONTROL_OPCODES:
                    # Control payloads are at most 125 bytes: wait for all of it.
                    if available < remaining:
                        break
                    self._end_frame(buf[pos : pos + remaining])
                    pos += remaining
                    continue
                take = remaining if available >= remaining else available
                self._data_chunk(buf[pos : pos + take])
                pos += take
        except PeerError:
            self._skip_left = frame_end
            # A broken close frame is still the peer's last frame.
            self.peer_closed = frame_op == _CLOSE
            raise
        return pos

    def _skip(self, data: bytes | bytearray | memoryview) -> None:
        """After a failure: drop the peer's frames unread, watching only for its close.

        Section 7.1.1: the peer answers our close frame with its own and then sends
        nothing more; seeing it lets the I/O layer close TCP at once instead of waiting
        for the peer to (a TLS peer cannot tell it is done otherwise). Payloads are
        neither kept, unmasked, validated nor inflated: only headers are read, and at
        most one split header (under 14 bytes) is kept between reads. After a framing
        error the headers may be garbage; a "close" found in it only closes early.
        """
        pos = self._skip_left
        end = len(data)
        head = self._skip_head
        if head:
            self._skip_head = b""
            joined = head + bytes(data[:14])
            parsed = _frame_header(joined, 0)
            if parsed is None:
                self._skip_head = joined
                return
            size, length, opcode = parsed
            if opcode == _CLOSE:
                self.peer_closed = True
                return
            pos = size - len(head) + length
        while pos < end:
            parsed = _frame_header(data, pos)
            if parsed is None:
                self._skip_head = bytes(data[pos:])
                self._skip_left = 0
                return
            size, length, opcode = parsed
            if opcode == _CLOSE:
                self.peer_closed = True
                self._skip_left = 0
                return
            pos += size + length
        self._skip_left = pos - end

    def _start_frame(self, b0: int, masked: bool, length: int, mask: bytes | None) -> None:
        """Validate a frame header (section 5.2) and make it the current frame."""
        fin = bool(b0 & 0x80)
        opcode = b0 & 0x0F
        rsv1 = b0 & 0x40
        if b0 & 0x30:
            raise ProtocolError("reserved bits RSV2/RSV3 set without an extension")
        # Section 5.1: client-to-server frames are masked, server-to-client ones are not.
        if masked == self._client:
            raise ProtocolError(
                "masked frame from server" if masked else "unmasked frame from client"
            )
        if opcode in _CONTROL_OPCODES:
            # Section 5.5: control frames are never fragmented and carry <= 125 bytes.
            if not fin:
                raise ProtocolError("fragmented control frame")
            if length > 125:
                raise ProtocolError("control frame payload longer than 125 bytes")
            if rsv1:
                raise ProtocolError("RSV1 set on a control frame")
        elif opcode == _CONTINUATION:
            if not self._msg_opcode:
                raise ProtocolError("continuation frame without a message in progress")
            # RFC 7692 section 6: RSV1 is set on the first frame of a message only.
            if rsv1:
                raise ProtocolError("RSV1 set on a continuation frame")
        elif opcode == _TEXT or opcode == _BINARY:
            if self._msg_opcode:
                raise ProtocolError("new data frame while a fragmented message is in progress")
            if rsv1 and self.deflate is None:
                raise ProtocolError("RSV1 set without a negotiated extension")
            self._msg_opcode = opcode
            self._msg_compressed = bool(rsv1)
            self._msg_size = 0
        else:
            raise ProtocolError(f"reserved opcode {opcode}")
        if length > self._max_frame:
            raise PayloadTooBig(f"frame of {length} bytes exceeds the limit")
        if opcode in _DATA_OPCODES and not self._msg_compressed:
            # Refuse before buffering anything: the message cannot fit.
            if self._msg_size + length > self._max_size:
                raise PayloadTooBig("message exceeds the size limit")
        self._in_frame = True
        self._frame_opcode = opcode if opcode != _CONTINUATION else self._msg_opcode
        self._frame_fin = fin
        self._frame_first = opcode == _TEXT or opcode == _BINARY
        self._frame_mask = mask
        self._frame_remaining = length
        self._frame_offset = 0

    def _unmask(self, data: bytes) -> bytes:
        mask = self._frame_mask
        if mask is None:
            return data
        offset = self._frame_offset % 4
        if offset:
            mask = mask[offset:] + mask[:offset]
        self._frame_offset += len(data)
        return apply_mask(data, mask)

    def _short_message(self, payload: bytes) -> None:
        """A complete unfragmented uncompressed message, all in the buffer."""
        data = self._unmask(payload)
        self._in_frame = False
        self._msg_opcode = 0
        if self._frame_opcode == _TEXT:
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                # Section 8.1: invalid UTF-8 fails the connection with 1007.
                raise InvalidPayload("invalid UTF-8 in text message") from exc
            self._events.append(TextMessage(text))
        else:
            self._events.append(BinaryMessage(data))

    def _data_chunk(self, payload: bytes) -> None:
        """Part (or all) of a data frame's payload."""
        data = self._unmask(payload)
        self._frame_remaining -= len(payload)
        if self._msg_compressed:
            deflate = self.deflate
            assert deflate is not None
            data = deflate.decompress(data, self._max_size)
        # No size check here: uncompressed sizes are checked at the frame header, and
        # inflation raises PayloadTooBig itself past the limit.
        self._msg_size += len(data)
        if self._msg_opcode == _TEXT:
            validator = self._msg_validator
            if validator is None:
                validator = self._msg_validator = Utf8Validator()
            validator.feed(data)
        if data:
            parts = self._msg_parts
            if len(data) >= _MERGE_BELOW:
                parts.append(data)
            elif parts and type(parts[-1]) is bytearray:
                parts[-1] += data
            else:
                parts.append(bytearray(data))
        if self._frame_remaining == 0:
            self._in_frame = False
            if self._frame_fin:
                self._end_message()

    def _end_message(self) -> None:
        parts = self._msg_parts
        if self._msg_compressed:
            deflate = self.deflate
            assert deflate is not None
            tail = deflate.finish(self._max_size)
            if self._msg_opcode == _TEXT and tail:
                validator = self._msg_validator
                if validator is None:
                    validator = self._msg_validator = Utf8Validator()
                validator.feed(tail)
            parts.append(tail)
        # One copy at most: joining a single bytes part returns it as it is.
        data = b"".join(parts)
        opcode = self._msg_opcode
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg_parts = []
        if opcode == _TEXT:
            validator = self._msg_validator
            self._msg_validator = None
            if validator is not None:
                validator.finish()
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                # Section 8.1: invalid UTF-8 fails the connection with 1007.
                raise InvalidPayload("invalid UTF-8 in text message") from exc
            self._events.append(TextMessage(text))
        else:
            self._events.append(BinaryMessage(data))

    def _end_frame(self, payload: bytes) -> None:
        """A complete control frame, or an empty data frame."""
        self._in_frame = False
        opcode = self._frame_opcode
        if opcode in _DATA_OPCODES:
            if self._frame_fin:
                self._end_message()
            return
        data = self._unmask(payload)
        if opcode == _PING:
            # Section 5.5.2: a pong with the same payload, "as soon as is practical".
            self._events.append(Ping(data))
            if self.state is OPEN:
                self._outgoing.append(self._frame(_PONG, data))
        elif opcode == _PONG:
            self._events.append(Pong(data))
        else:
            self._receive_close(data)

    def _receive_close(self, payload: bytes) -> None:
        code, reason = parse_close(payload)
        self.close_received = (code, reason)
        if self.state is OPEN:
            # Section 5.5.1: answer with a close frame, typically echoing the code. The
            # reason is echoed too, so both ends report the same (code, reason).
            if code == CloseCode.NO_STATUS:
                self.close_sent = (code, "")
                self._outgoing.append(self._frame(_CLOSE, b""))
            else:
                self.close_sent = (code, reason)
                self._outgoing.append(self._frame(_CLOSE, encode_close(code, reason)))
        self.state = CLOSED
        # Section 5.5.1: nothing may follow a close frame.
        self._discard = True
        self._events.append(CloseReceived(code, reason))
