"""The hub: the application's one door to channels, and the sessions' one door too.

:class:`Hub` is the facade (docs/design.md, "The hub"). It owns the node's
:class:`~.registry.Registry` (sessions, users, channels), its broker, its timers and the
application's :class:`~.hooks.Hooks`. Everything that reaches the hub comes through its
public methods: the application (``publish``, ``presence``, ``subscribe`` a user, ...),
the HTTP API, and the client commands of :mod:`.commands` (``connect_session``,
``subscribe_session``, ``publish(..., session=...)``, ...). A client's publish and the
server's go through the same checks in :meth:`Hub.publish` and give the same
:class:`~.brokers.PublishResult`.

A publication reaches this node through the broker (:meth:`Hub.on_publication`, also
for publications made here), is encoded once, and the registry puts the same text in
every local subscriber's transport or outbox. Fan-out never waits: a subscriber whose
outbox is full gets its channel's slow-consumer policy. The node subscribes to a channel
on the broker while it has local subscribers, and only then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

from .. import __version__
from ..exceptions import (
    BrokerUnavailable,
    CommandError,
    DisconnectRequest,
    TokenError,
    TokenExpired,
)
from . import codes, wire
from .brokers import (
    Broker,
    HistoryOptions,
    HistoryResult,
    MemoryBroker,
    PresencePage,
    PublishResult,
)
from .codes import Disconnect
from .hooks import Connected, ConnectRequest, Hooks, Observers, RpcHandler
from .latency import Histogram
from .options import ChannelOptions, HubOptions
from .outbox import Outbox
from .registry import Registry, Slow
from .session import NO_HEADERS, Session
from .subscription import Subscription
from .token import Claims, TokenVerifier
from .transports.base import Transport
from .wire import ClientInfo, Position, Publication

__all__ = ["Hub", "NodeInfo", "PresenceStats", "Statistics", "SubscribeResult"]

logger = logging.getLogger("backchannel.hub")


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """A subscribe's answer: the channel's position (None without history) and, for a
    subscribe with recovery, whether the gap was filled and the publications that fill it."""

    position: Position | None
    recovered: bool | None = None
    publications: list[Publication] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result of a subscribe command (docs/protocol.md, "subscribe")."""
        out: dict[str, Any] = {}
        if self.position is not None:
            out["epoch"] = self.position.epoch
            out["offset"] = self.position.offset
        if self.recovered is not None:
            out["recovered"] = self.recovered
            out["publications"] = [p.to_json() for p in self.publications]
        return out


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """How many clients and distinct users are in a channel, on every node."""

    clients: int
    users: int


@dataclass(frozen=True, slots=True)
class Statistics:
    """Counts of this node, for metrics and the dashboard. Gauges are read now;
    counters count since the hub started."""

    sessions: int
    sessions_by_transport: dict[str, int]
    users: int
    subscriptions: int
    channels: int
    #: Publications accepted on this node (by a client or the server).
    publications_in: int
    #: Publications this node fanned out to its subscribers (from any node).
    publications_out: int
    #: Publications, joins and leaves given to local subscribers.
    deliveries: int
    slow_consumers: int
    recoveries_succeeded: int
    recoveries_failed: int
    #: Observer events dropped because the application's hooks could not keep up.
    hook_events_dropped: int
    #: Publishes refused (by the hub's checks, the application, or a broker down).
    publications_refused: int = 0
    #: Slow-consumer events by the policy applied ("disconnect", "drop").
    slow_consumers_by_policy: dict[str, int] = field(default_factory=dict)
    #: Client commands answered, by method and result code (0: success; a method the
    #: hub does not know counts as "other").
    commands: dict[str, dict[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """Who this node is."""

    name: str
    version: str
    started: float
    broker: str


class Hub:
    """Channels on this node; ``async with Hub(...)`` starts and stops it."""

    def __init__(
        self,
        options: HubOptions | None = None,
        *,
        broker: Broker | None = None,
        tokens: TokenVerifier | None = None,
        hooks: Hooks | None = None,
        observers: Sequence[Hooks] = (),
        rpc: Mapping[str, RpcHandler] | None = None,
        name: str | None = None,
    ) -> None:
        self.options = options or HubOptions()
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.tokens = tokens
        self.hooks = hooks if hooks is not None else Hooks()
        #: RPC handlers by method name (``rpc`` command); add more with :meth:`add_rpc`.
        self.rpc_handlers: dict[str, RpcHandler] = dict(rpc or {})
        #: This node's name: in logs, statistics and ``info()``.
        self.name = name or secrets.token_hex(4)
        self.registry = Registry()
        #: Hooks that only watch (webhooks, metrics of the application's own): their
        #: observers run after the events, with ``hooks``' own, in one queue.
        self.observers: tuple[Hooks, ...] = tuple(observers)
        self._observers = Observers((self.hooks, *self.observers))
        self._sends = type(self.hooks).on_send is not Hooks.on_send
        self._refreshes = type(self.hooks).authorize_refresh is not Hooks.authorize_refresh
        #: Request headers kept on sessions: only those the hooks read.
        self._headers = frozenset(name.lower() for name in self.hooks.request_headers)
        self._timers: dict[Session, asyncio.TimerHandle] = {}
        #: Who sessions opened by an authenticated request are (the host application
        #: said so, ``open_session(connected=...)``), until they connect.
        self._identified: dict[Session, Connected] = {}
        self._presence_task: asyncio.Task[None] | None = None
        #: Per channel: done once this node is subscribed on the broker.
        self._on_broker: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.time()
        self._publications_in = 0
        self._publications_out = 0
        #: Seconds from a publication reaching this node (accepted here, or from the
        #: broker) to every local subscriber's copy written or queued.
        self.fanout_latency = Histogram()
        self._slow_consumers = 0
        self._slow_by_policy: Counter[str] = Counter()
        self._publications_refused = 0
        self._commands: dict[str, Counter[int]] = {}
        self._recovered = [0, 0]  # failed, succeeded

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
        self._started = time.time()
        await self.broker.start(self)
        self._observers.start()
        self._presence_task = asyncio.get_running_loop().create_task(self._refresh_presence())

    async def close(self) -> None:
        """Disconnect every session (3000, reconnect) and stop."""
        sessions = list(self.registry.sessions)
        # Every client hears 3000 at once; then what each held on the broker is undone
        # for all together, not one session's round trips after another's (a thousand
        # sessions in turn kept a node from exiting for seconds).
        for session in sessions:
            session.disconnect(codes.SHUTDOWN)
        await asyncio.gather(*(self.close_session(session) for session in sessions))
        if self._presence_task is not None:
            self._presence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._presence_task
        for task in list(self._tasks):
            task.cancel()
        await self._observers.close()
        await self.broker.close()

    def add_rpc(self, method: str, handler: RpcHandler) -> None:
        """Answer the ``rpc`` command for ``method`` with ``await handler(session, data)``."""
        self.rpc_handlers[method] = handler

    # What the node holds.

    @property
    def sessions(self) -> set[Session]:
        """This node's sessions (read only: the registry owns them)."""
        return self.registry.sessions

    def channels(self) -> dict[str, int]:
        """Channels with subscribers on this node, and how many each."""
        return self.registry.channel_counts()

    def info(self) -> NodeInfo:
        return NodeInfo(self.name, __version__, self._started, type(self.broker).__name__)

    def statistics(self) -> Statistics:
        registry = self.registry
        return Statistics(
            sessions=len(registry.sessions),
            sessions_by_transport=registry.by_transport(),
            users=sum(1 for user in registry.users if user),
            subscriptions=registry.subscription_count(),
            channels=len(registry.channels),
            publications_in=self._publications_in,
            publications_out=self._publications_out,
            deliveries=registry.deliveries,
            slow_consumers=self._slow_consumers,
            slow_consumers_by_policy=dict(self._slow_by_policy),
            publications_refused=self._publications_refused,
            commands={method: dict(counts) for method, counts in self._commands.items()},
            recoveries_succeeded=self._recovered[1],
            recoveries_failed=self._recovered[0],
            hook_events_dropped=self._observers.dropped,
        )

    # Sessions: the transports' door.

    def open_session(
        self,
        transport: Transport,
        headers: Iterable[tuple[str, str]] = (),
        *,
        connected: Connected | None = None,
    ) -> Session:
        """A new session for a connection; it must send connect within connect_timeout.
        ``headers``: its HTTP request's, of which the session keeps those the hooks
        name in ``request_headers``. ``connected``: who the connection is, when the
        server that took it already knows (the host application authenticated the
        request, ``backchannel.asgi``): its connect then makes it that user, without a
        token and without ``authorize_connect``."""
        options = self.options
        session = Session(
            transport,
            Outbox(options.outbox_max_bytes, options.outbox_max_messages),
            publish_burst=options.publish_burst,
            command_burst=options.command_burst,
            headers=self._kept_headers(headers),
        )
        self.registry.add_session(session)
        if connected is not None:
            self._identified[session] = connected
        self._arm_connect_timeout(session)
        return session

    def _kept_headers(self, headers: Iterable[tuple[str, str]]) -> Mapping[str, str]:
        wanted = self._headers
        if not wanted:
            return NO_HEADERS
        kept: dict[str, str] = {}
        for name, value in headers:
            lower = name.lower()
            if lower in wanted:
                # Repeated fields are joined as RFC 9110 5.3 says (RFC 6265: "; " for Cookie).
                joiner = "; " if lower == "cookie" else ", "
                kept[lower] = f"{kept[lower]}{joiner}{value}" if lower in kept else value
        return MappingProxyType(kept)

    async def close_session(self, session: Session) -> None:
        """The connection is gone: forget the session and its subscriptions."""
        session.closed = True
        self._identified.pop(session, None)
        if session not in self.registry.sessions:
            return
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        for sub in self.registry.remove_session(session):
            await self._left(session, sub)
        if session.connected:
            self._observers.emit("on_disconnect", session, session.ended)

    def _arm_connect_timeout(self, session: Session) -> None:
        """(Re)start the time the session has to connect: again after a connect refused
        with an expired token, so a client has time to fetch a new one."""
        self._set_timer(session, self.options.connect_timeout, self._connect_timeout)

    def _set_timer(self, session: Session, delay: float, callback: Any) -> None:
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        self._timers[session] = asyncio.get_running_loop().call_later(delay, callback, session)

    def _connect_timeout(self, session: Session) -> None:
        self._timers.pop(session, None)
        if not session.connected:
            session.disconnect(codes.CONNECT_TIMEOUT)

    def _schedule_expiry(self, session: Session) -> None:
        timer = self._timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        if session.expires is not None:
            delay = max(0.0, session.expires - time.time())
            self._set_timer(session, delay, self._expired)

    def _expired(self, session: Session) -> None:
        self._timers.pop(session, None)
        if self._refreshes:
            self._spawn(self._extend(session))
        else:
            session.disconnect(codes.TOKEN_EXPIRED_DISCONNECT)

    async def _extend(self, session: Session) -> None:
        """Ask the application's ``authorize_refresh`` whether an expired session lives
        on. An expiry that has passed already ends it too: asking again at once would
        loop."""
        try:
            expires = await self.hooks.authorize_refresh(session)
        except DisconnectRequest as exc:
            session.disconnect(Disconnect(exc.code, exc.reason))
            return
        except CommandError as exc:
            logger.info("session %s not refreshed: %s %s", session.client, exc.code, exc)
            expires = 0
        except Exception:
            logger.exception("hook authorize_refresh failed")
            expires = 0
        if session.closed:
            return
        if expires is not None and expires <= time.time():
            session.disconnect(codes.TOKEN_EXPIRED_DISCONNECT)
            return
        session.expires = expires
        self._schedule_expiry(session)

    def slow_consumer(
        self, session: Session, channel: str | None, dropped: Position | None = None
    ) -> None:
        """A session's outbox was full: for a publication (at ``dropped``, None without
        history), its channel's policy; for a reply or an unsubscribe push (``channel``
        None), disconnect (3002)."""
        self._slow_consumers += 1
        policy = "disconnect"
        sub = None
        if channel is not None:
            sub = session.subscriptions.get(channel)
            if sub is not None:
                policy = sub.options.slow_consumer
        self._slow_by_policy[policy] += 1
        if policy == "disconnect":
            if not session.closed:
                logger.info("disconnecting slow consumer %s", session.client)
                session.disconnect(codes.SLOW_CONSUMER)
        elif channel is not None and sub is not None:
            # "drop": the publication is not sent. The client is told so once its outbox
            # has room, not only by the gap a later publication shows (there may be none):
            # it reads the missing ones from history at once.
            session.note_dropped(channel, wire.encode_dropped(channel, dropped))
        self._observers.emit("on_slow_consumer", session, channel)

    def count_command(self, method: str, code: int) -> None:
        """A client command was answered with ``code`` (0: success): for statistics."""
        by_code = self._commands.get(method)
        if by_code is None:
            by_code = self._commands[method] = Counter()
        by_code[code] += 1

    def send(self, session: Session, text: str) -> None:
        """Send a reply or a push to one session; a full outbox disconnects it."""
        if not session.send(text):
            self.slow_consumer(session, None)

    # Client commands: the sessions' door.

    async def connect_session(
        self,
        session: Session,
        *,
        token: str | None = None,
        data: Any = None,
        name: str | None = None,
    ) -> None:
        """Authenticate a session: its token and the application's ``authorize_connect``
        decide who it is (or the server, ``open_session(connected=...)``). Raise
        CommandError or DisconnectRequest to refuse."""
        if session.connected:
            raise CommandError(codes.ALREADY_CONNECTED)
        claims: Claims | None = None
        # The host application's say (open_session) is final: its own login decided.
        decided = self._identified.pop(session, None)
        if decided is None and token is not None and self.tokens is not None:
            claims = self._verify(session, token)
        if decided is None:
            decided = await self.hooks.authorize_connect(
                ConnectRequest(
                    session,
                    token,
                    claims.user if claims else None,
                    claims.info if claims else None,
                    claims.expires if claims else None,
                    data,
                    name,
                    session.headers,
                )
            )
        if decided is not None:
            user, info, expires = decided.user, decided.info, decided.expires
        elif claims is not None:
            user, info, expires = claims.user, claims.info, claims.expires
        elif self.options.anonymous:
            user, info, expires = "", None, None
        else:
            raise DisconnectRequest(codes.INVALID_TOKEN)
        if session.closed:
            return
        session.user, session.info, session.expires = user, info, expires
        if not self.registry.add_user(session, self.options.max_connections_per_user):
            raise DisconnectRequest(codes.CONNECTION_LIMIT)
        session.connected = True
        self._schedule_expiry(session)
        self._observers.emit("on_connect", session)

    def refresh_session(self, session: Session, token: str) -> None:
        """A new token for a connected session: same user, new expiry."""
        if self.tokens is None:
            raise CommandError(codes.NOT_AVAILABLE)
        claims = self._verify(session, token)
        if claims.user != session.user:
            raise DisconnectRequest(codes.INVALID_TOKEN)
        session.expires = claims.expires
        self._schedule_expiry(session)

    def _verify(self, session: Session, token: str) -> Claims:
        assert self.tokens is not None
        try:
            return self.tokens.verify(token)
        except TokenExpired as exc:
            if not session.connected:
                self._arm_connect_timeout(session)
            raise CommandError(codes.TOKEN_EXPIRED) from exc
        except TokenError as exc:
            raise DisconnectRequest(codes.INVALID_TOKEN) from exc

    async def subscribe_session(
        self,
        session: Session,
        channel: str,
        *,
        token: str | None = None,
        since: Position | None = None,
        server: bool = False,
    ) -> SubscribeResult:
        """Subscribe a session (``server``: by the server, without the client's
        authorization checks). The subscription goes live, and what waited for it is
        sent, at :meth:`go_live`, once the answer is out."""
        if channel in session.subscriptions:
            raise CommandError(codes.ALREADY_SUBSCRIBED)
        if len(session.subscriptions) >= self.options.max_channels:
            raise CommandError(codes.LIMIT_EXCEEDED.with_message("too many channels"))
        options = self.channel_options(channel)
        if not server:
            self._authorize(session, channel, token)
            await self.hooks.authorize_subscribe(session, channel)
        if not options.history_size:
            since = None
        sub = Subscription(channel, options)
        self.registry.add_subscription(session, sub)
        try:
            await self._joined(session, sub)
            if not options.history_size:
                result = SubscribeResult(None)
            else:
                history = await self.broker.history(
                    channel, since=since, limit=None if since is not None else 0
                )
                sub.offset = history.position.offset
                if since is None:
                    result = SubscribeResult(history.position)
                else:
                    self._recovered[history.recovered] += 1
                    result = SubscribeResult(
                        history.position, history.recovered, history.publications
                    )
        except BaseException:
            if self.registry.remove_subscription(session, channel) is not None:
                await self._left(session, sub, observe=False)
            raise
        self._observers.emit("on_subscribe", session, channel)
        return result

    def go_live(self, session: Session, channel: str) -> None:
        """The subscribe's answer is out: send what waited for it, in order."""
        sub = session.subscriptions.get(channel)
        if sub is None or sub.live:
            return
        sub.live = True
        pending, sub.pending = sub.pending, []
        for offset, text in pending:
            if sub.advance(offset) and not session.send(text):
                self.slow_consumer(session, channel, _position(text) if offset else None)
                if session.closed:
                    return

    async def unsubscribe_session(self, session: Session, channel: str) -> None:
        sub = self.registry.remove_subscription(session, channel)
        if sub is None:
            raise CommandError(codes.NOT_SUBSCRIBED)
        await self._left(session, sub)

    async def _joined(self, session: Session, sub: Subscription) -> None:
        channel = sub.channel
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
            if await self.broker.occupy(channel):
                self._observers.emit("on_channel_occupied", channel)
        else:
            await asyncio.shield(ready)
        if sub.options.presence:
            await self.broker.add_presence(channel, session.who, self.options.presence_ttl)
        if sub.options.join_leave:
            await self.broker.publish_join(channel, session.who)

    async def _left(self, session: Session, sub: Subscription, *, observe: bool = True) -> None:
        """A subscription was removed from the registry: leave the channel on the broker
        when it was this node's last subscriber, and end presence."""
        channel = sub.channel
        if observe:
            self._observers.emit("on_unsubscribe", session, channel)
        # The client is gone whatever the broker says: a broker that cannot be reached
        # must not stop a disconnect (presence entries expire by themselves).
        try:
            if not self.registry.has_subscribers(channel):
                ready = self._on_broker.pop(channel, None)
                if ready is not None and ready.done() and ready.exception() is None:
                    await self.broker.unsubscribe(channel)
                    if await self.broker.vacate(channel):
                        self._observers.emit("on_channel_vacated", channel)
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
            # All of them at once: one round trip to the broker per period, however
            # many entries this node has.
            entries = [
                (channel, session.who)
                for channel, local in list(self.registry.channels.items())
                for session, sub in list(local.items())
                if sub.options.presence
            ]
            try:
                if entries:
                    await self.broker.refresh_presence(entries, self.options.presence_ttl)
            except BrokerUnavailable as exc:
                logger.warning("presence not refreshed: %s", exc)

    async def rpc(self, session: Session, method: str, data: Any) -> Any:
        """Answer a client's ``rpc`` with the application's handler for ``method``, or
        without one, its ``Hooks.rpc``."""
        handler = self.rpc_handlers.get(method)
        if handler is None:
            return await self.hooks.rpc(session, method, data)
        return await handler(session, data)

    async def message(self, session: Session, data: Any) -> None:
        """A client's ``send``: the application's ``on_send`` hook."""
        if not self._sends:
            raise CommandError(codes.NOT_AVAILABLE)
        await self.hooks.on_send(session, data)

    # Channels: the application's door (and the commands').

    def channel_options(self, channel: str) -> ChannelOptions:
        """The options of a channel; CommandError for a bad name or an unknown namespace."""
        if not channel or len(channel) > self.options.max_channel_length:
            raise CommandError(codes.BAD_REQUEST.with_message("invalid channel name"))
        options = self.options.channel(channel.lstrip("$"))
        if options is None:
            raise CommandError(codes.UNKNOWN_CHANNEL)
        return options

    def check_data(self, data: Any, *, from_wire: bool = False) -> str:
        """``data`` as wire JSON; CommandError unless it can be published: JSON that can
        be sent on (no NaN, no lone surrogate, not too deep; a command's params were
        checked when decoded, ``from_wire``) and no larger than ``max_data_size``."""
        problem = "" if from_wire else wire.check_value(data)
        if problem:
            raise CommandError(codes.BAD_REQUEST.with_message(problem))
        # Encoded once: its size is measured on these characters, and the broker and
        # every subscriber's push reuse them.
        encoded = wire.dumps(data)
        # An ASCII text has one byte per character: no need to encode it to count.
        size = len(encoded) if encoded.isascii() else len(encoded.encode())
        if size > self.options.max_data_size:
            raise CommandError(codes.MESSAGE_TOO_LARGE)
        return encoded

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        idempotency_key: str | None = None,
        session: Session | None = None,
    ) -> PublishResult:
        """Publish in a channel, from the server or (``session``) from a client: the
        same checks and the same result for both; CommandError when refused. A client
        must be subscribed to a channel whose namespace lets clients publish, within its
        rate, and the application's ``authorize_publish`` may refuse or change the data."""
        try:
            options = self.channel_options(channel)
            from_wire = False
            if session is not None:
                if options.publish != "clients" or channel not in session.subscriptions:
                    raise CommandError(codes.PERMISSION_DENIED)
                if not session.take_publish_token(
                    self.options.publish_rate, self.options.publish_burst
                ):
                    raise CommandError(codes.TOO_MANY_REQUESTS)
                changed = await self.hooks.authorize_publish(session, channel, data)
                # Params were checked when decoded; data the application changed is not.
                from_wire = changed is data
                data = changed
            encoded = self.check_data(data, from_wire=from_wire)
            return await self._publish(channel, data, options, session, idempotency_key, encoded)
        except (CommandError, DisconnectRequest, BrokerUnavailable):
            self._publications_refused += 1
            raise

    async def _publish(
        self,
        channel: str,
        data: Any,
        options: ChannelOptions,
        session: Session | None,
        key: str | None,
        encoded: str | None = None,
    ) -> PublishResult:
        history = None
        if options.history_size:
            history = HistoryOptions(options.history_size, options.history_ttl)
        result = await self.broker.publish(
            channel,
            data,
            history=history,
            publisher=session.who if session is not None else None,
            idempotency_key=key,
            idempotency_window=self.options.idempotency_window,
            encoded=encoded,
        )
        if not result.duplicate:
            self._publications_in += 1
            self._observers.emit("on_publish", result.publication, session)
        return result

    async def broadcast(
        self, channels: Sequence[str], data: Any
    ) -> list[PublishResult | CommandError]:
        """Publish the same data to many channels: the data is checked once (a bad one
        raises), then each channel gives its result or its own CommandError."""
        encoded = self.check_data(data)
        results: list[PublishResult | CommandError] = []
        for channel in channels:
            try:
                options = self.channel_options(channel)
                results.append(await self._publish(channel, data, options, None, None, encoded))
            except CommandError as exc:
                results.append(exc)
        return results

    def _readable(self, channel: str, feature: str, session: Session | None) -> ChannelOptions:
        """The options of a channel whose namespace has ``feature`` ("presence" or
        "history"); a client must also be subscribed to it."""
        options = self.channel_options(channel)
        enabled = options.presence if feature == "presence" else options.history_size > 0
        if not enabled:
            raise CommandError(codes.NOT_AVAILABLE)
        if session is not None and channel not in session.subscriptions:
            raise CommandError(codes.PERMISSION_DENIED)
        return options

    async def presence(
        self, channel: str, *, session: Session | None = None
    ) -> dict[str, ClientInfo]:
        """Who is subscribed to a channel with presence, on every node."""
        self._readable(channel, "presence", session)
        return await self.broker.presence(channel)

    async def presence_page(
        self,
        channel: str,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        session: Session | None = None,
    ) -> PresencePage:
        """A page of who is subscribed to a channel with presence, on every node: at
        most ``limit`` clients (``presence_page_size`` when None; 1 to
        ``presence_page_max``) after ``cursor``, in client id order; the page's
        ``next_cursor`` asks for the next one."""
        self._readable(channel, "presence", session)
        most = self.options.presence_page_max
        if limit is None:
            limit = max(1, min(self.options.presence_page_size, most))
        elif not 1 <= limit <= most:
            raise CommandError(codes.BAD_REQUEST.with_message(f"limit: 1 to {most}"))
        return await self.broker.presence_page(channel, cursor=cursor, limit=limit)

    async def presence_stats(
        self, channel: str, *, session: Session | None = None
    ) -> PresenceStats:
        """How many clients and users are in a channel with presence, on every node."""
        self._readable(channel, "presence", session)
        clients, users = await self.broker.presence_count(channel)
        return PresenceStats(clients, users)

    def counts_only(self, channel: str) -> bool:
        """Whether presence of ``channel`` is answered with counts only."""
        return self.channel_options(channel).presence_count_only

    async def history(
        self,
        channel: str,
        *,
        since: Position | None = None,
        limit: int | None = None,
        session: Session | None = None,
    ) -> HistoryResult:
        """A channel's kept publications (after ``since``, at most ``limit``)."""
        self._readable(channel, "history", session)
        return await self.broker.history(channel, since=since, limit=limit)

    async def remove_history(self, channel: str) -> None:
        """Forget a channel's history (the next publication starts a new epoch)."""
        self._readable(channel, "history", None)
        await self.broker.remove_history(channel)

    # Users, on every node (through the broker's control messages).

    async def subscribe(self, user: str, channel: str) -> None:
        """Subscribe every connection of a user to a channel, on every node; each client
        gets a ``subscribe`` push."""
        self.channel_options(channel)
        await self.broker.publish_control({"op": "subscribe", "user": user, "channel": channel})

    async def unsubscribe(self, channel: str, *, user: str | None = None) -> None:
        """End a channel's subscriptions (of one user, or all) on every node; each
        client gets an ``unsubscribe`` push (117)."""
        self.channel_options(channel)
        await self.broker.publish_control({"op": "unsubscribe", "channel": channel, "user": user})

    async def disconnect(self, user: str, disconnect: Disconnect = codes.FORCE_DISCONNECT) -> None:
        """Disconnect every connection of a user, on every node."""
        await self.broker.publish_control(
            {"op": "disconnect", "user": user, "code": disconnect.code, "reason": disconnect.reason}
        )

    async def refresh(self, user: str, *, expires: int | None) -> None:
        """Set when every connection of a user expires (Unix time; None: never), on
        every node: for applications that keep sessions alive without new tokens."""
        await self.broker.publish_control({"op": "refresh", "user": user, "expires": expires})

    def on_control(self, message: dict[str, Any]) -> None:
        op, user = message.get("op"), message.get("user")
        if op == "disconnect" and isinstance(user, str):
            code, reason = message.get("code"), message.get("reason")
            if isinstance(code, int) and isinstance(reason, str):
                for session in self.registry.sessions_of(user):
                    session.disconnect(Disconnect(code, reason))
        elif op == "unsubscribe" and isinstance(message.get("channel"), str):
            if user is None or isinstance(user, str):
                self._spawn(self._unsubscribe_here(message["channel"], user))
        elif op == "subscribe" and isinstance(message.get("channel"), str):
            if isinstance(user, str):
                self._spawn(self._subscribe_here(message["channel"], user))
        elif op == "refresh" and isinstance(user, str):
            expires = message.get("expires")
            if expires is None or isinstance(expires, int):
                for session in self.registry.sessions_of(user):
                    session.expires = expires
                    self._schedule_expiry(session)
        else:
            logger.warning("ignoring an unknown control message %r", op)

    async def _unsubscribe_here(self, channel: str, user: str | None) -> None:
        text = wire.encode_unsubscribe(channel, codes.UNSUBSCRIBED)
        for session, _ in self.registry.subscribers(channel, user):
            sub = self.registry.remove_subscription(session, channel)
            if sub is not None:
                self.send(session, text)
                await self._left(session, sub)

    async def _subscribe_here(self, channel: str, user: str) -> None:
        for session in self.registry.sessions_of(user):
            if session.closed or channel in session.subscriptions:
                continue
            try:
                result = await self.subscribe_session(session, channel, server=True)
            except (CommandError, BrokerUnavailable) as exc:
                logger.warning("server-side subscribe of %s to %r failed: %s", user, channel, exc)
                continue
            self.send(session, wire.encode_subscribe(channel, result.to_json()))
            self.go_live(session, channel)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # BrokerHandler: events for channels this node subscribed to.

    def on_publication(self, publication: Publication) -> None:
        if not self.registry.has_subscribers(publication.channel):
            return
        started = time.perf_counter()
        self._publications_out += 1
        text = wire.encode_publication(publication)
        slow = self.registry.fan_out(publication.channel, text, publication.offset)
        if slow:
            position = None
            if publication.offset:
                position = Position(publication.epoch, publication.offset)
            self._slow(slow, position)
        # Once per publication, not per delivery: two clock reads and a bisect.
        self.fanout_latency.observe(time.perf_counter() - started)

    def on_join(self, channel: str, who: ClientInfo) -> None:
        if self.registry.has_subscribers(channel):
            self._slow(self.registry.fan_out(channel, wire.encode_join(channel, who), 0))

    def on_leave(self, channel: str, who: ClientInfo) -> None:
        if self.registry.has_subscribers(channel):
            self._slow(self.registry.fan_out(channel, wire.encode_leave(channel, who), 0))

    def on_lost(self, channel: str) -> None:
        # Reconnecting makes each client resubscribe with recovery: it gets what history
        # still has, or learns (recovered: false) that it must reload.
        for session, _ in self.registry.subscribers(channel):
            session.disconnect(codes.FORCE_RECONNECT)

    def _slow(self, slow: list[Slow], dropped: Position | None = None) -> None:
        for item in slow:
            self.slow_consumer(item.session, item.subscription.channel, dropped)

    # Authorization.

    def _authorize(self, session: Session, channel: str, token: str | None) -> None:
        # User-limited channels: "chat#alice,bob" admits only those users. The
        # anonymous user "" is never one of them, whatever empty entries the name has
        # ("chat#alice," or "chat#").
        _, sep, users = channel.partition("#")
        if sep and (not session.user or session.user not in users.split(",")):
            raise CommandError(codes.PERMISSION_DENIED)
        # Private channels ("$name") need a channel token for this client.
        if channel.startswith("$"):
            if token is None or self.tokens is None:
                raise CommandError(codes.PERMISSION_DENIED)
            try:
                claims = self.tokens.verify_channel(token)
            except TokenExpired as exc:
                raise CommandError(codes.TOKEN_EXPIRED) from exc
            except TokenError as exc:
                raise CommandError(codes.PERMISSION_DENIED) from exc
            if claims.channel != channel or claims.client not in (None, session.client):
                raise CommandError(codes.PERMISSION_DENIED)
            if claims.user != session.user:
                raise CommandError(codes.PERMISSION_DENIED)


def _position(text: str) -> Position:
    """The position of an encoded publication with history (read back only for one
    dropped while its subscriber was still subscribing: a rare path)."""
    obj = json.loads(text)
    return Position(obj["epoch"], obj["offset"])
