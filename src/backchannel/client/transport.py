"""The small interface behind which the client's transports sit.

A transport carries wire frames (docs/protocol.md, "Transport framing") both ways, and
says once how it ended. :mod:`.websocket`, :mod:`.sse` and :mod:`.longpoll` implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "CONNECTION_LOST",
    "NORMAL_CLOSURE",
    "TRANSPORTS",
    "Ending",
    "Transport",
    "TransportName",
]

TransportName = Literal["websocket", "sse", "longpoll"]
#: Every transport's name.
TRANSPORTS: tuple[TransportName, ...] = ("websocket", "sse", "longpoll")

#: The code of an ending that is not the hub's: the network failed, a long-poll session
#: was lost. It is WebSocket's "abnormal closure"; the client reconnects.
CONNECTION_LOST = 1006
#: The code of an ending the client asked for itself.
NORMAL_CLOSURE = 1000


def should_reconnect(code: int) -> bool:
    """Whether an ending with this code calls for a new connection: not for the hub's
    and the application's do-not-reconnect ranges (3500-3999, 4500-4999), yes for
    anything else, network failures included."""
    return not (3500 <= code < 4000 or 4500 <= code < 5000)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a transport ended: a disconnect code, a reason, whether to reconnect."""

    code: int
    reason: str
    reconnect: bool


class Transport(Protocol):
    """One connection to the hub, already opened with a first frame (the connect
    command)."""

    @property
    def name(self) -> TransportName: ...

    async def send(self, frame: str) -> None:
        """Send a frame. After the end, frames are dropped: :meth:`receive` says why."""

    async def receive(self) -> str | Ending:
        """The next frame from the server, or, once everything was read, the ending
        (every later call returns it again)."""

    async def close(self) -> None:
        """End the connection from this side and release its sockets."""
