"""Send one message to many connections, encoding it once.

``broadcast`` is what the hub's fan-out is built on. It never waits: each connection gets
the frame at once or is skipped, so one slow reader cannot hold up the others, and the
caller decides what a skipped connection means (drop it, close it, let it recover).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol import connection as sansio
from .connection import Connection

__all__ = ["broadcast"]


def broadcast(
    connections: Iterable[Connection],
    message: str | bytes | bytearray | memoryview,
) -> list[Connection]:
    """Write ``message`` to every connection that can take it now; return the others.

    ``str`` is sent as text, bytes-like objects as binary. The frame is built once and the
    same bytes are written to every connection that would encode it the same way (server
    connections without compression, or compressing without context takeover with the
    same settings); the others encode their own.

    A connection is skipped, and returned, when it is not open, is in the middle of
    sending a fragmented message (a frame cannot be inserted into it), or has more than
    its high water mark of bytes waiting to be written: that peer is not keeping up, and
    writing more would grow its buffer without bound.
    """
    if isinstance(message, str):
        payload: bytes | bytearray | memoryview = message.encode()
        text = True
    elif isinstance(message, bytes | bytearray | memoryview):
        payload = message
        text = False
    else:
        raise TypeError(f"cannot broadcast {type(message).__name__}")
    size = len(payload)
    frames: dict[object, bytes] = {}
    plain: bytes | None = None
    skipped: list[Connection] = []
    open_ = sansio.OPEN
    server = sansio.SERVER
    # This loop runs once per subscriber per message: the checks read the connection's
    # attributes directly rather than through methods. A connection is skipped when it
    # is not open (a lost connection's transport is closing), is mid-way through a
    # fragmented message, or is over its high water mark (the transport paused writing).
    for conn in connections:
        proto = conn.protocol
        transport = conn.transport
        lock = conn._send_lock
        if (
            proto is None
            or proto.state is not open_
            or conn._writing_paused
            or transport is None
            or transport.is_closing()
            or (lock is not None and lock.locked())
        ):
            skipped.append(conn)
            continue
        if proto.deflate is None and proto.side is server:
            # The common case, a server connection without compression: one frame.
            if plain is None:
                plain = _encode(proto, payload, text)
            frame = plain
        else:
            key = proto.shared_encoding(size)
            cached = None if key is None else frames.get(key)
            if cached is None:
                cached = _encode(proto, payload, text)
                if key is not None:
                    frames[key] = cached
            frame = cached
        if conn._pending is None:
            transport.write(frame)
        else:
            conn._write(frame)  # after the frames it holds back
    return skipped


def _encode(proto: sansio.Connection, payload: bytes | bytearray | memoryview, text: bool) -> bytes:
    if text:
        # The payload came from str.encode(): valid UTF-8, which send_text takes as is.
        return proto.send_text(bytes(payload))
    return proto.send_binary(payload)
