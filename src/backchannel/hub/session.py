"""A session: one client's state in the hub, whatever transport carries it.

A session reads commands (:meth:`Session.handle`), answers each with a reply, and holds
the client's subscriptions. It writes to a :class:`Transport`, which never makes it wait:
a transport that cannot keep up is the slow-consumer policy's business, in the hub's
fan-out. Sessions do not know whether they are behind a WebSocket or long polling.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..exceptions import BrokerUnavailable
from . import codes, wire
from .codes import Disconnect, Error
from .options import ChannelOptions
from .token import TokenError, TokenExpired
from .wire import ClientInfo, Position

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["CommandError", "Session", "Transport"]

logger = logging.getLogger("backchannel.hub")

T = TypeVar("T", bound="Transport")


class Transport(Protocol):
    """Where a session's replies and pushes go. Nothing here waits."""

    def write(self, text: str) -> None:
        """Queue one frame of wire text for the client."""

    def close(self, disconnect: Disconnect) -> None:
        """End the connection with this code and reason."""

    @classmethod
    def fan_out(cls: type[T], transports: Sequence[T], text: str) -> list[T]:
        """Write the same text to many transports, encoding it once; return those that
        could not take it now (slow consumers)."""


class CommandError(Exception):
    """Answer the command with this error (the connection stays)."""

    def __init__(self, error: Error) -> None:
        super().__init__(error.message)
        self.error = error


class DisconnectRequest(Exception):
    """End the connection with this disconnect."""

    def __init__(self, disconnect: Disconnect) -> None:
        super().__init__(disconnect.reason)
        self.disconnect = disconnect


@dataclass(slots=True)
class Subscription:
    """One channel a session is subscribed to. While ``live`` is false (a subscribe with
    recovery is reading history), publications wait in ``pending``."""

    channel: str
    options: ChannelOptions
    live: bool = False
    pending: list[tuple[int, str]] = field(default_factory=list)
    #: The offset of the last publication sent, to skip one seen twice during recovery.
    offset: int = 0

    def advance(self, offset: int) -> bool:
        """Whether a publication at ``offset`` is new to this subscriber (0: a channel
        without history, or a join/leave: always); moves the position on."""
        if offset:
            if offset <= self.offset:
                return False
            self.offset = offset
        return True


class Session:
    """One connected client (see the module docstring)."""

    def __init__(self, hub: Hub, transport: Transport) -> None:
        self.hub = hub
        self.transport = transport
        #: Unguessable: a client id is also what a channel token is bound to.
        self.client = secrets.token_hex(16)
        self.user = ""
        self.info: Any = None
        self.connected = False
        self.closed = False
        self.expires: int | None = None
        self.subscriptions: dict[str, Subscription] = {}
        # Publish rate limit: a token bucket.
        self._tokens = float(hub.options.publish_burst)
        self._refilled = time.monotonic()

    @property
    def who(self) -> ClientInfo:
        return ClientInfo(self.client, self.user, self.info)

    # Reading commands.

    async def handle(self, text: str | bytes) -> None:
        """Run the commands in one frame; every command gets a reply, in order."""
        if self.closed:
            return
        try:
            commands = wire.decode_commands(text)
        except wire.InvalidMessage as exc:
            logger.info("closing session %s: %s", self.client, exc)
            self.disconnect(codes.BAD_PROTOCOL)
            return
        for command in commands:
            if self.closed:
                return
            await self._run(command)

    async def _run(self, command: wire.Command) -> None:
        if command.error is not None:
            self.transport.write(wire.encode_error(command.id, command.error))
            return
        if not self.connected and command.method != "connect":
            self.transport.write(wire.encode_error(command.id, codes.NOT_CONNECTED))
            return
        method = getattr(self, "_cmd_" + command.method)
        try:
            result = await method(command.params)
        except CommandError as exc:
            self.transport.write(wire.encode_error(command.id, exc.error))
            return
        except DisconnectRequest as exc:
            self.disconnect(exc.disconnect)
            return
        except BrokerUnavailable:
            # Nothing was done; the client may retry later (116 is temporary).
            self.transport.write(wire.encode_error(command.id, codes.UNAVAILABLE))
            return
        except Exception:
            logger.exception("error in %s command", command.method)
            self.transport.write(wire.encode_error(command.id, codes.INTERNAL))
            return
        if self.closed:
            return
        self.transport.write(wire.encode_result(command.id, result))
        if command.method == "subscribe":
            self._go_live(command.params["channel"])

    def disconnect(self, disconnect: Disconnect) -> None:
        """Tell the client why, and end the connection."""
        if self.closed:
            return
        self.closed = True
        self.transport.write(wire.encode_disconnect(disconnect))
        self.transport.close(disconnect)

    # Commands. Each returns the result object or raises CommandError.

    async def _cmd_connect(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.connected:
            raise CommandError(codes.ALREADY_CONNECTED)
        if params.get("v", wire.PROTOCOL_VERSION) != wire.PROTOCOL_VERSION:
            raise DisconnectRequest(codes.UNSUPPORTED_VERSION)
        token = params.get("token")
        hub = self.hub
        if token is not None and hub.tokens is not None:
            claims = self._verify(token)
            self.user, self.expires, self.info = claims.user, claims.expires, claims.info
        elif not hub.options.anonymous:
            raise DisconnectRequest(codes.INVALID_TOKEN)
        hub._register(self)
        self.connected = True
        result: dict[str, Any] = {
            "client": self.client,
            "user": self.user,
            "v": wire.PROTOCOL_VERSION,
        }
        if self.expires is not None:
            result.update(self._expiry())
        return result

    def _expiry(self) -> dict[str, int]:
        """When the token expires: absolute (``expires``), and in seconds from now
        (``ttl``), which a client with a wrong clock can still use."""
        assert self.expires is not None
        return {"expires": self.expires, "ttl": max(0, self.expires - int(time.time()))}

    def _verify(self, token: str) -> Any:
        tokens = self.hub.tokens
        assert tokens is not None
        try:
            return tokens.verify(token)
        except TokenExpired as exc:
            if not self.connected:
                self.hub._arm_connect_timeout(self)
            raise CommandError(codes.TOKEN_EXPIRED) from exc
        except TokenError as exc:
            raise DisconnectRequest(codes.INVALID_TOKEN) from exc

    async def _cmd_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.hub.tokens is None:
            raise CommandError(codes.NOT_AVAILABLE)
        claims = self._verify(params["token"])
        if claims.user != self.user:
            raise DisconnectRequest(codes.INVALID_TOKEN)
        self.expires = claims.expires
        self.hub._schedule_expiry(self)
        return {} if self.expires is None else self._expiry()

    async def _cmd_subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel: str = params["channel"]
        hub = self.hub
        if channel in self.subscriptions:
            raise CommandError(codes.ALREADY_SUBSCRIBED)
        if len(self.subscriptions) >= hub.options.max_channels:
            raise CommandError(codes.LIMIT_EXCEEDED.with_message("too many channels"))
        options = self.hub.channel_options(channel)
        self._authorize(channel, params.get("token"))
        since = None
        if params.get("recover") and options.history_size:
            epoch, offset = params.get("epoch"), params.get("offset")
            if not isinstance(epoch, str) or not isinstance(offset, int):
                raise CommandError(codes.BAD_REQUEST.with_message("recover needs epoch and offset"))
            since = Position(epoch, offset)
        sub = Subscription(channel, options)
        self.subscriptions[channel] = sub
        try:
            await hub._subscribe(self, sub)
            result: dict[str, Any] = {}
            if options.history_size:
                history = await hub.broker.history(
                    channel, since=since, limit=None if since is not None else 0
                )
                result["epoch"] = history.position.epoch
                result["offset"] = history.position.offset
                sub.offset = history.position.offset
                if since is not None:
                    result["recovered"] = history.recovered
                    result["publications"] = [p.to_json() for p in history.publications]
            return result
        except BaseException:
            self.subscriptions.pop(channel, None)
            await hub._unsubscribe(self, sub)
            raise

    def _go_live(self, channel: str) -> None:
        sub = self.subscriptions.get(channel)
        if sub is None or sub.live:
            return
        sub.live = True
        pending, sub.pending = sub.pending, []
        for offset, text in pending:
            if sub.advance(offset):
                self.transport.write(text)

    async def _cmd_unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        sub = self.subscriptions.pop(params["channel"], None)
        if sub is None:
            raise CommandError(codes.NOT_SUBSCRIBED)
        await self.hub._unsubscribe(self, sub)
        return {}

    async def _cmd_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        channel: str = params["channel"]
        options = self.hub.channel_options(channel)
        if options.publish != "clients" or channel not in self.subscriptions:
            raise CommandError(codes.PERMISSION_DENIED)
        self._take_publish_token()
        data = params["data"]
        self.hub.check_data(data, from_wire=True)
        result = await self.hub._publish(
            channel, data, options, publisher=self.who, key=params.get("idempotency_key")
        )
        out: dict[str, Any] = {"offset": result.publication.offset}
        if result.publication.offset:
            out["epoch"] = result.publication.epoch
        if result.duplicate:
            out["duplicate"] = True
        return out

    def _take_publish_token(self) -> None:
        options = self.hub.options
        now = time.monotonic()
        self._tokens = min(
            float(options.publish_burst),
            self._tokens + (now - self._refilled) * options.publish_rate,
        )
        self._refilled = now
        if self._tokens < 1:
            raise CommandError(codes.TOO_MANY_REQUESTS)
        self._tokens -= 1

    def _subscribed(self, channel: str, feature: str) -> ChannelOptions:
        """The options of a channel this session is subscribed to, whose namespace has
        ``feature`` ("presence" or "history") on."""
        options = self.hub.channel_options(channel)
        enabled = options.presence if feature == "presence" else options.history_size > 0
        if not enabled:
            raise CommandError(codes.NOT_AVAILABLE)
        if channel not in self.subscriptions:
            raise CommandError(codes.PERMISSION_DENIED)
        return options

    async def _cmd_presence(self, params: dict[str, Any]) -> dict[str, Any]:
        channel: str = params["channel"]
        options = self._subscribed(channel, "presence")
        if options.presence_count_only:
            clients, users = await self.hub.broker.presence_count(channel)
            return {"count": clients, "users": users}
        present = await self.hub.broker.presence(channel)
        return {"clients": {client: who.to_json() for client, who in present.items()}}

    async def _cmd_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel: str = params["channel"]
        self._subscribed(channel, "history")
        since = Position.from_params(params)
        history = await self.hub.broker.history(channel, since=since, limit=params.get("limit"))
        return history.to_json()

    async def _cmd_rpc(self, params: dict[str, Any]) -> dict[str, Any]:
        handler = self.hub.rpc
        if handler is None:
            raise CommandError(codes.METHOD_NOT_FOUND)
        return {"data": await handler(self, params["method"], params.get("data"))}

    async def _cmd_send(self, params: dict[str, Any]) -> dict[str, Any]:
        handler = self.hub.on_send
        if handler is None:
            raise CommandError(codes.NOT_AVAILABLE)
        await handler(self, params["data"])
        return {}

    async def _cmd_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {}

    # Authorization.

    def _authorize(self, channel: str, token: str | None) -> None:
        # User-limited channels: "chat#alice,bob" admits only those users.
        _, sep, users = channel.partition("#")
        if sep and self.user not in users.split(","):
            raise CommandError(codes.PERMISSION_DENIED)
        # Private channels ("$name") need a channel token for this client.
        if channel.startswith("$"):
            if token is None or self.hub.tokens is None:
                raise CommandError(codes.PERMISSION_DENIED)
            try:
                claims = self.hub.tokens.verify(token)
            except TokenExpired as exc:
                raise CommandError(codes.TOKEN_EXPIRED) from exc
            except TokenError as exc:
                raise CommandError(codes.PERMISSION_DENIED) from exc
            if claims.channel != channel or claims.client not in (None, self.client):
                raise CommandError(codes.PERMISSION_DENIED)
            if claims.user != self.user:
                raise CommandError(codes.PERMISSION_DENIED)
