"""A session: one client's state in the hub, whatever transport carries it.

A session holds who the client is, what it is subscribed to (written only by the hub's
:class:`~.registry.Registry`), and its bounded :class:`~.outbox.Outbox`. Everything the
session sends goes through :meth:`Session.send`: straight to the transport when nothing
waits and the transport can take it, else into the outbox, in order. Sessions do not know
whether they are behind a WebSocket or long polling, and they never reach the hub:
commands are run by :mod:`.commands`, through the hub's public methods.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from . import codes, wire
from .codes import Disconnect
from .outbox import Outbox, text_size
from .subscription import Subscription
from .transports.base import Transport
from .wire import ClientInfo

__all__ = ["NO_HEADERS", "Session", "TokenBucket"]

#: The headers of a session whose hooks asked for none: one shared empty view.
NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class TokenBucket:
    """A rate limit: full at start, refilled at ``rate`` per second up to ``burst``."""

    __slots__ = ("_refilled", "_tokens")

    def __init__(self, burst: int) -> None:
        self._tokens = float(burst)
        self._refilled = time.monotonic()

    def take(self, rate: float, burst: int) -> bool:
        """Take one token; False (and none taken) when the bucket is empty."""
        now = time.monotonic()
        tokens = min(float(burst), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if tokens < 1:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1
        return True


class Session:
    """One connected client (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_commands",
        "_publishes",
        "client",
        "closed",
        "connected",
        "ended",
        "expires",
        "headers",
        "info",
        "outbox",
        "subscriptions",
        "transport",
        "user",
    )

    def __init__(
        self,
        transport: Transport,
        outbox: Outbox,
        *,
        publish_burst: int,
        command_burst: int,
        headers: Mapping[str, str] = NO_HEADERS,
    ) -> None:
        self.transport = transport
        self.outbox = outbox
        transport.attach(outbox)
        #: Unguessable: a client id is also what a channel token is bound to.
        self.client = secrets.token_hex(16)
        self.user = ""
        self.info: Any = None
        self.connected = False
        #: Set once the session ends; nothing is sent after.
        self.closed = False
        #: Why the server ended it (None: the client left, or the connection was lost).
        self.ended: Disconnect | None = None
        self.expires: int | None = None
        #: The HTTP request's headers that the hooks asked for (read only; lowercase
        #: names, repeated fields joined), from the WebSocket upgrade or long-poll open.
        self.headers = headers
        #: Channel -> subscription; written only by the hub's registry.
        self.subscriptions: dict[str, Subscription] = {}
        # Rate limits: every command, and within them, publishes.
        self._commands = TokenBucket(command_burst)
        self._publishes = TokenBucket(publish_burst)

    @property
    def who(self) -> ClientInfo:
        return ClientInfo(self.client, self.user, self.info)

    @property
    def transport_name(self) -> str:
        return self.transport.name

    def send(self, text: str) -> bool:
        """Send one frame of wire text after what waits; False when the outbox is full
        (nothing was queued: the caller applies the slow-consumer policy)."""
        if self.closed:
            return True
        outbox = self.outbox
        if not outbox and self.transport.deliver(text):
            return True
        return self.queue(text, text_size(text))

    def queue(self, text: str, size: int) -> bool:
        """Put ``text`` into the outbox (fan-out's path: the transport could not take it
        now); False when it does not fit."""
        outbox = self.outbox
        empty = not outbox
        if not outbox.put(text, size):
            return False
        if empty:
            self.transport.wake()
        return True

    def note_dropped(self, channel: str, text: str) -> None:
        """Tell the client (``text``: a ``dropped`` push) that publications of
        ``channel`` were not queued for it, as soon as its outbox has room."""
        if self.closed:
            return
        outbox = self.outbox
        empty = not outbox
        outbox.note(channel, text)
        if empty and outbox:
            self.transport.wake()

    def disconnect(self, disconnect: Disconnect) -> None:
        """Tell the client why, and end the connection: what the outbox holds goes first,
        except for a slow consumer, whose backlog is dropped (it recovers from history)."""
        if self.closed:
            return
        self.closed = True
        self.ended = disconnect
        if disconnect.code == codes.SLOW_CONSUMER.code:
            self.outbox.clear()
        empty = not self.outbox
        self.outbox.force(wire.encode_disconnect(disconnect))
        if empty:
            self.transport.wake()
        self.transport.close(disconnect)

    def take_publish_token(self, rate: float, burst: int) -> bool:
        """Take one token from the session's publish bucket, refilled at ``rate`` per
        second up to ``burst``; False when it is empty."""
        return self._publishes.take(rate, burst)

    def take_command_token(self, rate: float, burst: int) -> bool:
        """Take one token from the bucket of all the session's commands; False when it
        is empty (the session floods: it is disconnected with 3505)."""
        return self._commands.take(rate, burst)
