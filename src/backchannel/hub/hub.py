"""The hub: who is connected to this node, who is subscribed to what, and the fan-out.

A publication reaches this node through the broker (:meth:`Hub.on_publication`, also for
publications made here), is encoded once, and the same text goes to every local
subscriber through its transport's ``fan_out`` (for WebSocket: one frame, written to
every connection). Fan-out never waits: a subscriber whose transport cannot take more
gets its channel's slow-consumer policy. The node subscribes to a channel on the broker
while it has local subscribers, and only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from ..exceptions import BrokerUnavailable
from . import codes, wire
from .brokers import Broker, HistoryOptions, HistoryResult, MemoryBroker, PublishResult
from .codes import Disconnect
from .options import ChannelOptions, HubOptions
from .session import CommandError, DisconnectRequest, Session, Subscription, Transport
from .token import TokenVerifier
from .wire import ClientInfo, Position, Publication

__all__ = ["Hub"]

logger = logging.getLogger("backchannel.hub")

#: Publications held for a subscriber while its subscribe reads history.
MAX_PENDING = 1000

Rpc = Callable[[Session, str, Any], Awaitable[Any]]
OnSend = Callable[[Session, Any], Awaitable[None]]


class Hub:
    """Channels on this node; ``async with Hub(...)`` starts and stops it."""

    def __init__(
        self,
        options: HubOptions | None = None,
        *,
        broker: Broker | None = None,
        tokens: TokenVerifier | None = None,
        rpc: Rpc | None = None,
        on_send: OnSend | None = None,
    ) -> None:
        self.options = options or HubOptions()
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.tokens = tokens
        self.rpc = rpc
        self.on_send = on_send
        #: Sessions subscribed to each channel on this node (insertion-ordered).
        self.channels: dict[str, dict[Session, Subscription]] = {}
        #: Connected sessions by user.
        self.users: dict[str, set[Session]] = {}
        self.sessions: set[Session] = set()
        self._timers: dict[Session, asyncio.TimerHandle] = {}
        self._presence_task: asyncio.Task[None] | None = None
        #: Per channel: done once this node is subscribed on the broker.
        self._on_broker: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Hub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        await self.broker.start(self)
        self._presence_task = asyncio.get_running_loop().create_task(self._refresh_presence())

    async def close(self) -> None:
        """Disconnect every session (3000, reconnect) and stop."""
        for session in list(self.sessions):
            session.disconnect(codes.SHUTDOWN)
            await self.close_session(session)
        if self._presence_task is not None:
            self._presence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._presence_task
        for task in list(self._tasks):
            task.cancel()
        await self.broker.close()

    # Sessions.

    def open_session(self, transport: Transport) -> Session:
        """A new session for a connection; it must send connect within connect_timeout."""
        session = Session(self, transport)
        self.sessions.add(session)
        self._arm_connect_timeout(session)
        return session

    def _arm_connect_timeout(self, session: Session) -> None:
        """(Re)start the time the session has to connect: again after a connect refused
        with an expired token, so a client has time to fetch a new one."""
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        self._timers[session] = asyncio.get_running_loop().call_later(
            self.options.connect_timeout, self._connect_timeout, session
        )

    def _connect_timeout(self, session: Session) -> None:
        self._timers.pop(session, None)
        if not session.connected:
            session.disconnect(codes.CONNECT_TIMEOUT)

    async def close_session(self, session: Session) -> None:
        """The connection is gone: forget the session and its subscriptions."""
        session.closed = True
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        users = self.users.get(session.user)
        if users is not None:
            users.discard(session)
            if not users:
                del self.users[session.user]
        subscriptions, session.subscriptions = session.subscriptions, {}
        for sub in subscriptions.values():
            await self._unsubscribe(session, sub)

    def _register(self, session: Session) -> None:
        """Connect succeeded: count it against the user's limit, arm token expiry."""
        users = self.users.setdefault(session.user, set())
        if session.user and len(users) >= self.options.max_connections_per_user:
            raise DisconnectRequest(codes.CONNECTION_LIMIT)
        users.add(session)
        self._schedule_expiry(session)

    def _schedule_expiry(self, session: Session) -> None:
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        if session.expires is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, session.expires - time.time())
        self._timers[session] = loop.call_later(delay, self._expired, session)

    def _expired(self, session: Session) -> None:
        self._timers.pop(session, None)
        session.disconnect(codes.TOKEN_EXPIRED_DISCONNECT)

    # Subscriptions.

    async def _subscribe(self, session: Session, sub: Subscription) -> None:
        channel = sub.channel
        self.channels.setdefault(channel, {})[session] = sub
        # Every subscriber waits until the node is subscribed on the broker: answered
        # earlier, it could miss a publication made meanwhile. The first one subscribes;
        # if that fails, every waiter gets the error (and is removed by its session).
        ready = self._on_broker.get(channel)
        if ready is None:
            ready = self._on_broker[channel] = asyncio.get_running_loop().create_future()
            try:
                await self.broker.subscribe(channel)
            except BaseException as exc:
                self._on_broker.pop(channel, None)
                # The first subscriber's own cancellation (its client left) must not
                # cancel the others: they get a temporary error and may try again.
                if not isinstance(exc, Exception):
                    exc = BrokerUnavailable("the channel's subscription was interrupted")
                ready.set_exception(exc)
                ready.exception()  # retrieved here; waiters still get it
                raise
            ready.set_result(None)
        else:
            await asyncio.shield(ready)
        if sub.options.presence:
            await self.broker.add_presence(channel, session.who, self.options.presence_ttl)
        if sub.options.join_leave:
            await self.broker.publish_join(channel, session.who)

    async def _unsubscribe(self, session: Session, sub: Subscription) -> None:
        channel = sub.channel
        local = self.channels.get(channel)
        if local is None or local.pop(session, None) is None:
            return
        # The client is gone whatever the broker says: a broker that cannot be reached
        # must not stop a disconnect (presence entries expire by themselves).
        try:
            if not local:
                del self.channels[channel]
                ready = self._on_broker.pop(channel, None)
                if ready is not None and ready.done() and ready.exception() is None:
                    await self.broker.unsubscribe(channel)
            if sub.options.presence:
                await self.broker.remove_presence(channel, session.client)
            if sub.options.join_leave:
                await self.broker.publish_leave(channel, session.who)
        except BrokerUnavailable as exc:
            logger.warning("leaving %r while the broker is unreachable: %s", channel, exc)

    async def _refresh_presence(self) -> None:
        """Re-add this node's presence entries before they expire; a broker that cannot
        be reached now is tried again next time."""
        interval = self.options.presence_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                for channel, local in list(self.channels.items()):
                    for session, sub in list(local.items()):
                        if sub.options.presence:
                            await self.broker.add_presence(
                                channel, session.who, self.options.presence_ttl
                            )
            except BrokerUnavailable as exc:
                logger.warning("presence not refreshed: %s", exc)

    # Publishing.

    def channel_options(self, channel: str) -> ChannelOptions:
        """The options of a channel; CommandError for a bad name or an unknown namespace."""
        if not channel or len(channel) > self.options.max_channel_length:
            raise CommandError(codes.BAD_REQUEST.with_message("invalid channel name"))
        options = self.options.channel(channel.lstrip("$"))
        if options is None:
            raise CommandError(codes.UNKNOWN_CHANNEL)
        return options

    def check_data(self, data: Any, *, from_wire: bool = False) -> None:
        """CommandError unless ``data`` can be published: JSON that can be sent on (no
        NaN, no lone surrogate, not too deep; a command's params were checked when
        decoded, ``from_wire``) and no larger than ``max_data_size``."""
        problem = "" if from_wire else wire.check_value(data)
        if problem:
            raise CommandError(codes.BAD_REQUEST.with_message(problem))
        size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.options.max_data_size:
            raise CommandError(codes.MESSAGE_TOO_LARGE)

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> PublishResult:
        """Publish from the server (the HTTP API, application code), with the checks a
        client's publish gets; CommandError when refused."""
        options = self.channel_options(channel)
        self.check_data(data)
        return await self._publish(channel, data, options, key=idempotency_key)

    async def broadcast(
        self, channels: Sequence[str], data: Any
    ) -> list[PublishResult | CommandError]:
        """Publish the same data to many channels: the data is checked once (a bad one
        raises), then each channel gives its result or its own CommandError."""
        self.check_data(data)
        results: list[PublishResult | CommandError] = []
        for channel in channels:
            try:
                options = self.channel_options(channel)
                results.append(await self._publish(channel, data, options))
            except CommandError as exc:
                results.append(exc)
        return results

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to a channel with presence, on every node."""
        if not self.channel_options(channel).presence:
            raise CommandError(codes.NOT_AVAILABLE)
        return await self.broker.presence(channel)

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        """A channel's kept publications (after ``since``, at most ``limit``)."""
        if not self.channel_options(channel).history_size:
            raise CommandError(codes.NOT_AVAILABLE)
        return await self.broker.history(channel, since=since, limit=limit)

    async def _publish(
        self,
        channel: str,
        data: Any,
        options: ChannelOptions,
        *,
        publisher: ClientInfo | None = None,
        key: str | None = None,
    ) -> PublishResult:
        history = None
        if options.history_size:
            history = HistoryOptions(options.history_size, options.history_ttl)
        return await self.broker.publish(
            channel,
            data,
            history=history,
            publisher=publisher,
            idempotency_key=key,
            idempotency_window=self.options.idempotency_window,
        )

    # BrokerHandler: events for channels this node subscribed to.

    def on_publication(self, publication: Publication) -> None:
        local = self.channels.get(publication.channel)
        if not local:
            return
        self._fan_out(local, wire.encode_publication(publication), publication.offset)

    def on_join(self, channel: str, who: ClientInfo) -> None:
        local = self.channels.get(channel)
        if local:
            self._fan_out(local, wire.encode_join(channel, who), 0)

    def on_leave(self, channel: str, who: ClientInfo) -> None:
        local = self.channels.get(channel)
        if local:
            self._fan_out(local, wire.encode_leave(channel, who), 0)

    def on_lost(self, channel: str) -> None:
        # Reconnecting makes each client resubscribe with recovery: it gets what history
        # still has, or learns (recovered: false) that it must reload.
        for session in list(self.channels.get(channel, ())):
            session.disconnect(codes.FORCE_RECONNECT)

    def _fan_out(self, local: dict[Session, Subscription], text: str, offset: int) -> None:
        """The same text to every live subscriber, by transport kind, without waiting."""
        groups: dict[type[Transport], list[Transport]] = {}
        owners: dict[int, tuple[Session, Subscription]] = {}
        for session, sub in local.items():
            if session.closed:
                continue
            if not sub.live:
                # Subscribing: delivered once the reply is out. Bounded like a write
                # buffer: a subscribe whose history read stalls must not grow memory.
                if len(sub.pending) >= MAX_PENDING:
                    self._slow_consumer(session, sub)
                else:
                    sub.pending.append((offset, text))
                continue
            if not sub.advance(offset):
                continue  # already sent with the recovered publications
            transport = session.transport
            groups.setdefault(type(transport), []).append(transport)
            owners[id(transport)] = (session, sub)
        for kind, transports in groups.items():
            for slow in kind.fan_out(transports, text):
                session, sub = owners[id(slow)]
                self._slow_consumer(session, sub)

    def _slow_consumer(self, session: Session, sub: Subscription) -> None:
        if sub.options.slow_consumer == "disconnect":
            logger.info("disconnecting slow consumer %s", session.client)
            session.disconnect(codes.SLOW_CONSUMER)
        # "drop": the publication is not sent; the client sees the gap in offsets and
        # reads it from history.

    async def unsubscribe(self, channel: str, *, user: str | None = None) -> int:
        """End this node's subscriptions to a channel (of one user, or all); each client
        gets an ``unsubscribe`` push (117). Return how many."""
        local = self.channels.get(channel)
        if not local:
            return 0
        targets = [(s, sub) for s, sub in local.items() if user is None or s.user == user]
        text = wire.encode_unsubscribe(channel, codes.UNSUBSCRIBED)
        for session, sub in targets:
            session.subscriptions.pop(channel, None)
            session.transport.write(text)
            await self._unsubscribe(session, sub)
        return len(targets)

    async def disconnect_everywhere(
        self, user: str, disconnect: Disconnect = codes.FORCE_DISCONNECT
    ) -> None:
        """Disconnect every connection of a user, on every node (through the broker)."""
        await self.broker.publish_control(
            {"op": "disconnect", "user": user, "code": disconnect.code, "reason": disconnect.reason}
        )

    async def unsubscribe_everywhere(self, channel: str, *, user: str | None = None) -> None:
        """End a channel's subscriptions (of one user, or all) on every node."""
        await self.broker.publish_control({"op": "unsubscribe", "channel": channel, "user": user})

    def on_control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "disconnect" and isinstance(message.get("user"), str):
            code, reason = message.get("code"), message.get("reason")
            if isinstance(code, int) and isinstance(reason, str):
                self.disconnect_user(message["user"], Disconnect(code, reason))
        elif op == "unsubscribe" and isinstance(message.get("channel"), str):
            user = message.get("user")
            if user is None or isinstance(user, str):
                task = asyncio.get_running_loop().create_task(
                    self.unsubscribe(message["channel"], user=user)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        else:
            logger.warning("ignoring an unknown control message %r", op)

    def disconnect_user(self, user: str, disconnect: Disconnect = codes.FORCE_DISCONNECT) -> int:
        """Disconnect every connection of a user on this node; return how many."""
        sessions = list(self.users.get(user, ()))
        for session in sessions:
            session.disconnect(disconnect)
        return len(sessions)
