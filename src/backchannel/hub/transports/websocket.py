"""The WebSocket transport: binds a ``backchannel.asyncio`` connection to a session.

Each wire frame is one WebSocket text message. Fan-out goes through
:func:`backchannel.asyncio.broadcast`, so a publication is framed once for every
subscriber on this node; a connection over its write buffer's high water mark is
reported slow instead of buffered without bound.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from ...asyncio import ServerConnection, broadcast
from ...asyncio.connection import Connection
from ...exceptions import ConnectionClosed
from .. import codes
from ..codes import Disconnect
from ..hub import Hub

__all__ = ["WebSocketTransport", "websocket_handler"]

logger = logging.getLogger("backchannel.hub")


class WebSocketTransport:
    """A session's transport over one WebSocket connection."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def write(self, text: str) -> None:
        try:
            self.connection.send_nowait(text)
        except ConnectionClosed:
            pass  # the handler's loop ends and closes the session

    def close(self, disconnect: Disconnect) -> None:
        self.connection.close_nowait(disconnect.code, disconnect.reason)

    @classmethod
    def fan_out(
        cls, transports: Sequence[WebSocketTransport], text: str
    ) -> list[WebSocketTransport]:
        skipped = broadcast([t.connection for t in transports], text)
        if not skipped:
            return []
        slow = {id(conn) for conn in skipped}
        return [t for t in transports if id(t.connection) in slow]


def websocket_handler(hub: Hub) -> Callable[[ServerConnection], Awaitable[None]]:
    """A handler for :func:`backchannel.asyncio.serve` that speaks the hub's protocol."""

    async def handler(connection: ServerConnection) -> None:
        session = hub.open_session(WebSocketTransport(connection))
        try:
            async for message in connection:
                if isinstance(message, bytes):
                    # Version 1 is text only.
                    session.disconnect(codes.BAD_PROTOCOL)
                    break
                await session.handle(message)
        except ConnectionClosed:
            pass
        finally:
            await hub.close_session(session)

    return handler
