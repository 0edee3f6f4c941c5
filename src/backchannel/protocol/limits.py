"""Limits that keep a connection's memory and work bounded.

Every limit has a default that is safe for a server facing the public Internet, and every
one can be changed through :class:`Limits` (or the keyword arguments of ``serve`` and
``connect``, which build one).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits for one connection. ``None`` disables a limit."""

    #: Largest message, after decompression: 1 MiB. Big enough for any chat or dashboard
    #: payload, small enough that a thousand hostile peers cannot exhaust a server.
    max_size: int | None = 2**20
    #: Largest single frame (payload length): by default the message limit, since a frame
    #: larger than the largest message can never be accepted anyway.
    max_frame_size: int | None = None
    #: Messages received but not yet read by the application before the I/O layer stops
    #: reading from the socket: 16. With the size limit this caps buffered input at 16 MiB
    #: per connection while keeping a fast reader busy.
    max_queue: int = 16
    #: Longest line in the HTTP handshake (request line or one header): 8 KiB, as most
    #: HTTP servers; real browsers' cookies fit well within it.
    max_line: int = 8192
    #: Most header fields in the handshake: 128. Browsers send about 20.
    max_headers: int = 128
    #: Total size of the handshake head (request or status line and headers): 64 KiB.
    max_head_size: int = 65536
    #: Largest body of a plain HTTP request handled on the WebSocket port: 1 MiB.
    max_body_size: int = 2**20

    @property
    def frame_limit(self) -> int | None:
        """The effective frame size limit."""
        return self.max_size if self.max_frame_size is None else self.max_frame_size
