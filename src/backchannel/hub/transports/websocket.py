"""The WebSocket transport: binds a ``backchannel.asyncio`` connection to a session.

Each wire frame is one WebSocket text message. The fast path: while a session's outbox
is empty and its connection is writable, fan-out writes straight through
(:func:`backchannel.asyncio.broadcast` frames a publication once for every subscriber).
What cannot go straight through waits in the session's outbox, and a drain task writes
it several texts to a frame (the wire format allows newline-separated messages in a
frame), up to :data:`MAX_FRAME` bytes. Two things make text wait:

* the connection is over its write buffer's high water mark (the client is slow): the
  drain task writes once the socket drains;
* a burst: a fan-out already wrote in this turn of the event loop (many publications
  handled in one turn), or, for a reply or a push to one session, that connection was
  already written to in this turn: the rest goes out joined on the next turn, one
  system call per subscriber instead of one per publication. A lone publication or
  reply is still written at once.

Ending a session whose client does not read (a slow consumer, cut with 3002) must not
lose the reason: the disconnect push and the close frame go after what the socket
already holds, which is bounded (the write buffer's high water mark plus the last frame
written), and the close handshake's timeout only starts once the client has read that
far. Until then the connection is kept for at most ``linger`` seconds
(``HubOptions.close_linger``), after which the client is given ``close_timeout`` more and
then dropped.
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

__all__ = ["MAX_FRAME", "Turns", "WebSocketTransport", "websocket_handler"]

logger = logging.getLogger("backchannel.hub")

#: Bytes of queued texts joined into one frame when the outbox drains: large enough that
#: a backlog costs few system calls, small enough for a client's default message limit
#: (1 MiB in most libraries) with room to spare.
MAX_FRAME = 64 * 1024


class Turns:
    """Counts the turns of the event loop in which its transports wrote (one per server:
    a server runs on one loop), so that a connection is written straight through at
    most once per turn. Costs one callback per turn with writes, nothing per
    connection: a fan-out marks the turn as a whole."""

    __slots__ = ("_fanned_out", "_scheduled", "now")

    def __init__(self) -> None:
        self.now = 1
        self._scheduled = False
        self._fanned_out = False

    def current(self) -> int:
        """This turn's number; the next turn gets another."""
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._advance)
        return self.now

    def fan_out(self) -> bool:
        """Whether a fan-out already wrote in this turn; marks this turn as having one."""
        self.current()
        fanned_out, self._fanned_out = self._fanned_out, True
        return fanned_out

    def _advance(self) -> None:
        self.now += 1
        self._scheduled = False
        self._fanned_out = False


class WebSocketTransport:
    """A session's transport over one WebSocket connection."""

    name: ClassVar[str] = "websocket"

    __slots__ = ("_closer", "_drainer", "_written", "connection", "linger", "outbox", "turns")

    def __init__(
        self, connection: Connection, turns: Turns | None = None, *, linger: float = 30.0
    ) -> None:
        self.connection = connection
        self.turns = turns if turns is not None else Turns()
        #: Seconds the connection is kept, when closing, for a client that does not read
        #: what the socket already holds.
        self.linger = linger
        self.outbox: Outbox | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        #: The turn in which this connection was last written straight through.
        self._written = 0

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def deliver(self, text: str) -> bool:
        connection = self.connection
        turn = self.turns.current()
        if self._written == turn or not connection.writable:
            return False
        self._written = turn
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
        if self._closer is not None:
            return
        if self.connection.writable or self.linger <= 0:
            self._close_now(disconnect)
            return
        # The client does not read what the socket holds. A close frame written now
        # would sit behind it, and the close timeout (counted from when it is written)
        # would drop the connection, and the frame with it, before the client read so
        # far: wait until it does, for at most ``linger``.
        self._closer = asyncio.get_running_loop().create_task(self._close_when_read(disconnect))

    async def _close_when_read(self, disconnect: Disconnect) -> None:
        try:
            async with asyncio.timeout(self.linger):
                # Returns once the buffer is below its low water mark, or the connection
                # is lost.
                await self.connection.drain()
        except TimeoutError:
            logger.info("closing a connection whose client read nothing for %s s", self.linger)
        self._close_now(disconnect)

    def _close_now(self, disconnect: Disconnect) -> None:
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
        if not transports:
            return []
        if transports[0].turns.fan_out():
            # A burst: a fan-out already wrote in this turn. This one waits and goes out
            # joined with what follows, on the next turn (whoever it reaches: checking
            # each connection would cost the single publication a loop).
            return list(transports)
        skipped = broadcast([t.connection for t in transports], text)
        if not skipped:
            return []
        slow = {id(conn) for conn in skipped}
        return [t for t in transports if id(t.connection) in slow]


def websocket_handler(hub: Hub) -> Callable[[ServerConnection], Awaitable[None]]:
    """A handler for :func:`backchannel.asyncio.serve` that speaks the hub's protocol."""
    commands = Commands(hub)
    turns = Turns()

    async def handler(connection: ServerConnection) -> None:
        transport = WebSocketTransport(connection, turns, linger=hub.options.close_linger)
        request = connection.request
        session = hub.open_session(transport, request.headers if request else ())
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
