"""WebSocket frames: opcodes, close codes, masking and encoding (RFC 6455 section 5).

Parsing lives in :mod:`backchannel.protocol.connection`, which reads headers and payloads
incrementally; this module holds what both directions share.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum

from ..exceptions import InvalidArgument, InvalidPayload, ProtocolError
from .speedups import compiled

__all__ = [
    "CLOSE_CODES_RECEIVABLE",
    "CloseCode",
    "Opcode",
    "apply_mask",
    "apply_mask_py",
    "encode_close",
    "encode_frame",
    "encode_frame_py",
    "encode_header",
    "new_mask",
    "parse_close",
]


class Opcode(IntEnum):
    """Frame opcodes (section 5.2); 3-7 and 11-15 are reserved."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    """Close codes registered by IANA (section 7.4.1 and the registry of section 11.7)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    ABNORMAL = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


#: Codes that may appear in a close frame (section 7.4.1 and 7.4.2): the registered codes
#: except 1004 (reserved), 1005, 1006 and 1015 (which "MUST NOT be set as a status code in
#: a Close control frame"), plus 3000-4999 for libraries and applications.
CLOSE_CODES_RECEIVABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)}) | frozenset(
    range(3000, 5000)
)

_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack


def new_mask() -> bytes:
    """A fresh masking key from the OS's CSPRNG (section 5.3: "unpredictable")."""
    return os.urandom(4)


def apply_mask_py(data: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (section 5.3)."""
    n = len(data)
    if n == 0:
        return b""
    # One big-integer XOR instead of a per-byte loop: linear time in C.
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def encode_frame_py(
    opcode: int,
    payload: bytes | bytearray | memoryview,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """Serialize one frame; ``mask`` is the key for a client frame, ``None`` for a server's."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    # Section 5.2: the minimal number of bytes MUST be used to encode the length.
    if length < 126:
        header = bytes((first, mask_bit | length))
    elif length < 65536:
        header = _PACK_16(first, mask_bit | 126, length)
    else:
        header = _PACK_64(first, mask_bit | 127, length)
    if mask is None:
        return header + payload
    return header + mask + apply_mask_py(payload, mask)


def encode_header(opcode: int, length: int, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """The header of an unmasked (server) frame of ``length`` payload bytes, for writing
    the payload after it as it is, without copying it into one buffer."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _PACK_16(first, 126, length)
    return _PACK_64(first, 127, length)


# The compiled twins, when the accelerator is in use (see .speedups).
apply_mask = apply_mask_py if compiled is None else compiled.apply_mask
encode_frame = encode_frame_py if compiled is None else compiled.encode_frame


def encode_close(code: int | None, reason: str = "") -> bytes:
    """The payload of a close frame we send; refuse what the peer would have to reject."""
    if code is None:
        if reason:
            raise InvalidArgument("a close reason needs a close code")
        return b""
    if code not in CLOSE_CODES_RECEIVABLE:
        raise InvalidArgument(f"close code {code} may not be sent (RFC 6455 section 7.4)")
    data = code.to_bytes(2, "big") + reason.encode()
    # Section 5.5: control frame payloads are at most 125 bytes.
    if len(data) > 125:
        raise InvalidArgument("close reason is longer than 123 bytes in UTF-8")
    return data


def parse_close(payload: bytes) -> tuple[int, str]:
    """Validate a received close payload (section 5.5.1, 7.4); return (code, reason)."""
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if code not in CLOSE_CODES_RECEIVABLE:
        raise ProtocolError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError as exc:
        raise InvalidPayload("close reason is not valid UTF-8") from exc
    return code, reason
