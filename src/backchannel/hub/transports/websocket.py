"""The WebSocket transport: binds a ``backchannel.asyncio`` connection to a session.

Each wire frame is one WebSocket text message. The fast path: while a session's outbox
is empty and its connection is writable, fan-out writes straight through
(:func:`backchannel.asyncio.broadcast` frames a publication once for every subscriber).
A connection over its write buffer's high water mark takes nothing more: what comes
next waits in the session's outbox, and a drain task writes it once the socket drains,
several texts joined into one frame (the wire format allows newline-separated messages
in a frame), up to :data:`MAX_FRAME` bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

from ...asyncio import ServerConnection, broadcast
from ...asyncio.connection import Connection
from ...exceptions import ConnectionClosed
from .. import codes
from ..codes import Disconnect
from ..commands import Commands
from ..hub import Hub
from ..outbox import Outbox

__all__ = ["MAX_FRAME", "WebSocketTransport", "websocket_handler"]

logger = logging.getLogger("backchannel.hub")

#: Bytes of queued texts joined into one frame when the outbox drains: large enough that
#: a backlog costs few system calls, small enough for a client's default message limit
#: (1 MiB in most libraries) with room to spare.
MAX_FRAME = 64 * 1024


class WebSocketTransport:
    """A session's transport over one WebSocket connection."""

    name: ClassVar[str] = "websocket"

    __slots__ = ("_drainer", "connection", "outbox")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.outbox: Outbox | None = None
        self._drainer: asyncio.Task[None] | None = None

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def deliver(self, text: str) -> bool:
        connection = self.connection
        if not connection.writable:
            return False
        try:
            connection.send_nowait(text)
        except ConnectionClosed:
            pass  # the handler's loop ends and closes the session
        return True

    def wake(self) -> None:
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        outbox = self.outbox
        assert outbox is not None
        connection = self.connection
        try:
            while outbox:
                await connection.drain()
                if not connection.writable:
                    # Closed or lost: nobody will read it (the handler ends the session).
                    # The hub never sends fragmented messages, the other unwritable case.
                    outbox.clear()
                    return
                connection.send_nowait("\n".join(outbox.take(MAX_FRAME)))
        except ConnectionClosed:
            outbox.clear()
        finally:
            self._drainer = None

    def close(self, disconnect: Disconnect) -> None:
        # The disconnect push is the outbox's last text: write what is queued (bounded
        # by the outbox) without waiting, then the close frame with the same code.
        outbox = self.outbox
        if outbox:
            assert outbox is not None
            text = "\n".join(outbox.take(outbox.size))
            try:
                self.connection.send_nowait(text)
            except ConnectionClosed:
                pass
        self.connection.close_nowait(disconnect.code, disconnect.reason)

    @classmethod
    def deliver_many(
        cls, transports: Sequence[WebSocketTransport], text: str
    ) -> list[WebSocketTransport]:
        skipped = broadcast([t.connection for t in transports], text)
        if not skipped:
            return []
        slow = {id(conn) for conn in skipped}
        return [t for t in transports if id(t.connection) in slow]


def websocket_handler(hub: Hub) -> Callable[[ServerConnection], Awaitable[None]]:
    """A handler for :func:`backchannel.asyncio.serve` that speaks the hub's protocol."""
    commands = Commands(hub)

    async def handler(connection: ServerConnection) -> None:
        session = hub.open_session(WebSocketTransport(connection))
        try:
            async for message in connection:
                if isinstance(message, bytes):
                    # Version 1 is text only.
                    session.disconnect(codes.BAD_PROTOCOL)
                    break
                await commands.handle(session, message)
        except ConnectionClosed:
            pass
        finally:
            await hub.close_session(session)

    return handler
