"""The WebSocket transport: one wire frame per text message, on :mod:`backchannel.asyncio`."""

from __future__ import annotations

from ..asyncio import ClientConnection, connect
from ..exceptions import ConnectionClosed
from .transport import Ending, TransportName, should_reconnect

__all__ = ["WebSocketTransport"]

#: The largest message accepted from the hub: 16 MiB. A server frame may join many
#: replies and pushes, so this is well above one publication's size, yet it bounds what
#: a broken server can make the client buffer.
MAX_MESSAGE = 16 * 2**20


class WebSocketTransport:
    """The hub over WebSocket. Keepalive is the WebSocket's own pings (the asyncio
    connection closes itself when a pong is late), so no ``ping`` commands are sent."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ending: Ending | None = None

    @property
    def name(self) -> TransportName:
        return "websocket"

    @classmethod
    async def open(cls, url: str, first_frame: str, *, open_timeout: float) -> WebSocketTransport:
        """Open the connection and send the first frame. Raise what ``connect`` raises
        (``InvalidStatus`` when the upgrade is refused, ``OSError``, ``HandshakeTimeout``)."""
        # proxy=True: HTTPS_PROXY and friends apply, as for any WebSocket client here.
        ws = await connect(url, open_timeout=open_timeout, max_size=MAX_MESSAGE)
        transport = cls(ws)
        await transport.send(first_frame)
        return transport

    async def send(self, frame: str) -> None:
        try:
            await self._ws.send(frame)
        except ConnectionClosed:
            pass  # receive() reports the ending

    async def receive(self) -> str | Ending:
        if self._ending is not None:
            return self._ending
        while True:
            try:
                message = await self._ws.recv()
            except ConnectionClosed as exc:
                reason = exc.reason or ("connection lost" if not exc.received else "closed")
                self._ending = Ending(exc.code, reason, should_reconnect(exc.code))
                return self._ending
            if isinstance(message, str):
                return message
            # Version 1 is text only; the hub never sends binary. Ignore it.

    async def close(self) -> None:
        await self._ws.close()

    def abort(self) -> None:
        """Cut the TCP connection at once, without a closing handshake, as a network
        failure would (for tests of how the hub handles a lost client). :meth:`receive`
        then reports an abnormal closure (1006); :meth:`close` is still safe to call."""
        if self._ws.transport is not None:
            self._ws.transport.abort()
