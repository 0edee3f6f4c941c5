"""The Redis broker: several nodes (processes, machines) act as one hub through one Redis,
a Redis Cluster or a Redis watched by Sentinel (:mod:`.topology`).

Install with ``pip install -e '.[redis]'`` from a checkout. :class:`RedisBroker` is the facade that
implements :class:`~backchannel.hub.brokers.base.Broker`; it owns the connections and the
pub/sub reader and delegates the rest, one concept per module: :mod:`.history` (streams,
offsets, idempotency keys), :mod:`.presence`, :mod:`.occupancy` (which nodes have local
subscribers of a channel) and :mod:`.relay` (long-poll sessions across nodes). Key names
are in :mod:`.keys`.

This module's keys: ``{prefix}:c:{{channel}}`` is the pub/sub channel that carries
publications, joins and leaves to the nodes subscribed to it (a node subscribes only
while it has local subscribers), and ``{prefix}:ctl`` carries commands for every node
(disconnect a user, end subscriptions).

When Redis cannot be reached, commands raise :class:`BrokerUnavailable` (clients get the
temporary error 116; nothing is published). The node reconnects with backoff; for each
channel it is subscribed to it then reads the publications it missed from history and
delivers them (the hub skips offsets it already sent), or, when they are gone, tells
the hub (``on_lost``) so its subscribers resubscribe and recover themselves; it also
puts back its channel occupancy, which a Redis that restarted has lost. On a Redis
Cluster the same happens per shard: only the channels of a shard that failed over (or
whose slots moved) are subscribed again and caught up (:mod:`.shards`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from ....exceptions import BrokerUnavailable
from ...wire import ClientInfo, Position, Publication
from ..base import BrokerHandler, HistoryOptions, HistoryResult, PresencePage, PublishResult
from ..calls import BrokerCalls
from .codec import client_info, dumps, publication, text
from .errors import DOWN, reachable
from .history import RedisHistory
from .keys import Keys
from .occupancy import RedisOccupancy
from .presence import RedisPresence
from .relay import OWNER_CHECK, RedisRelay
from .topology import Topology

if TYPE_CHECKING:
    from ...transports.http import Answer

__all__ = ["RedisBroker"]

logger = logging.getLogger("backchannel.hub")


class RedisBroker:
    """A :class:`~backchannel.hub.brokers.base.Broker` on Redis (see the module docstring).

    It is also a :class:`~backchannel.hub.transports.longpoll.SessionRelay`."""

    #: Seconds an empty stream lives (one made by reading a channel's position before any
    #: publication), as in MemoryBroker.
    EMPTY_STREAM_TTL = 300.0
    #: Seconds between tries to reach Redis again, doubling up to the maximum: quick after
    #: a blip, gentle on a Redis that is restarting.
    RECONNECT_MIN = 0.1
    RECONNECT_MAX = 5.0

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "backchannel",
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 5.0,
        owner_check: float = OWNER_CHECK,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._clock = clock
        #: Commands time out after ``socket_timeout`` seconds: a Redis that hangs must give
        #: a clear temporary error, not a publish that never returns.
        self._topology = Topology(url, socket_timeout=socket_timeout)
        #: For reads and writes that may be repeated: one quick retry on a broken
        #: connection (after Redis restarts, a pooled connection is dead).
        self._redis = self._topology.reader
        #: For publishes: no retry. A connection that breaks after Redis ran the script
        #: must not publish twice; the caller gets error 116 and retries with its
        #: idempotency key.
        self._writer = self._topology.writer
        #: The topology found at start, for the banner: "single server", "cluster with 3
        #: masters", "sentinel master 'mymaster' at 10.0.0.5:6379".
        self.topology = self._topology.kind
        self._keys = Keys(prefix)
        #: Each round trip to Redis, by operation (metrics).
        self.calls = BrokerCalls()
        self._history = RedisHistory(
            self._redis,
            self._writer,
            self._keys,
            self._now_ms,
            self.calls,
            empty_stream_ttl=self.EMPTY_STREAM_TTL,
            sharded=self._topology.sharded,
        )
        self._presence = RedisPresence(
            self._redis, self._keys, self._now_ms, self.calls, sharded=self._topology.sharded
        )
        #: This node, for long-poll sessions: unique per process.
        self.node = secrets.token_hex(8)
        #: ``owner_check``: seconds between checks, while a long-poll request relayed to
        #: another node waits, that the node is still up (see :mod:`.relay`).
        self._relay = RedisRelay(
            self._redis,
            self._keys,
            self.node,
            self.calls,
            owner_check=owner_check,
            pubsub=self._topology,
        )
        self._occupancy = RedisOccupancy(
            self._redis,
            self._keys,
            self.node,
            self._now_ms,
            self.calls,
            one_slot_per_script=self._topology.sharded,
        )
        self._handler: BrokerHandler | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: Channels this node is subscribed to, with the last position delivered (for the
        #: catch-up after a reconnect).
        self._channels: dict[str, Position | None] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._alive: asyncio.Task[None] | None = None
        self._fresh: asyncio.Task[None] | None = None
        self._closed = False

    # Lifecycle.

    async def start(self, handler: BrokerHandler) -> None:
        """Connect and begin delivering; BrokerUnavailable when Redis cannot be reached."""
        self._handler = handler
        self._pubsub = self._topology.pubsub()
        async with reachable(self.calls, "start"):
            await self._topology.connect()
            await self._pubsub.subscribe(self._relay.channel, self._keys.control)
            await self._relay.mark_alive()
            self.topology = await self._topology.describe()
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._alive = loop.create_task(self._relay.keep_alive())
        self._fresh = loop.create_task(self._occupancy.keep_fresh())

    async def close(self) -> None:
        # A subscribe still waiting for Redis's confirmation would wait for a reader
        # that is about to stop: it fails now (BrokerUnavailable: the client gets the
        # temporary 116, or has already been disconnected), and so does any later one.
        self._closed = True
        for confirmed in self._confirmations.values():
            if not confirmed.done():
                confirmed.set_exception(BrokerUnavailable("the node is shutting down"))
                confirmed.exception()  # retrieved here; the waiter still gets it
        self._handler = None
        for task in (self._reader, self._alive, self._fresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._relay.close()
        await self._occupancy.close()
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self._topology.close()

    # Node subscriptions.

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node; returns once Redis confirmed it, so a publication made
        after this returns is delivered."""
        if self._closed:
            raise BrokerUnavailable("the node is shutting down")
        if channel in self._channels:
            return
        self._channels[channel] = None
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            async with reachable(self.calls, "subscribe"):
                await self._pubsub.subscribe(self._keys.channel(channel))
                await asyncio.wait_for(asyncio.shield(confirmed), 10)
                # Where the stream is now: after an outage, what came later is caught up.
                result = await self.history(channel, limit=0)
        except BaseException:
            self._channels.pop(channel, None)
            raise
        finally:
            self._confirmations.pop(channel, None)
        if channel in self._channels and self._channels[channel] is None:
            self._channels[channel] = result.position

    async def unsubscribe(self, channel: str) -> None:
        if channel not in self._channels:
            return
        del self._channels[channel]
        with contextlib.suppress(*DOWN):
            await self._pubsub.unsubscribe(self._keys.channel(channel))

    # Occupancy.

    async def occupy(self, channel: str) -> bool:
        return await self._occupancy.occupy(channel)

    async def vacate(self, channel: str) -> bool:
        return await self._occupancy.vacate(channel)

    # Publishing.

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        history: HistoryOptions | None = None,
        publisher: ClientInfo | None = None,
        idempotency_key: str | None = None,
        idempotency_window: float = 120.0,
        encoded: str | None = None,
    ) -> PublishResult:
        return await self._history.publish(
            channel,
            data,
            history=history,
            publisher=publisher,
            idempotency_key=idempotency_key,
            idempotency_window=idempotency_window,
            encoded=encoded,
        )

    async def publish_control(self, message: dict[str, Any]) -> None:
        async with reachable(self.calls, "publish_control"):
            await self._topology.publish(self._keys.control, dumps(message))

    async def publish_join(self, channel: str, who: ClientInfo) -> None:
        async with reachable(self.calls, "publish_join"):
            await self._topology.publish(self._keys.channel(channel), dumps(["j", who.to_json()]))

    async def publish_leave(self, channel: str, who: ClientInfo) -> None:
        async with reachable(self.calls, "publish_leave"):
            await self._topology.publish(self._keys.channel(channel), dumps(["l", who.to_json()]))

    # History.

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        return await self._history.history(channel, since=since, limit=limit)

    async def remove_history(self, channel: str) -> None:
        await self._history.remove(channel)

    def describe(self) -> str | None:
        return self.topology

    async def ping(self) -> None:
        # With the one quick retry: a pooled connection that died with a restarted Redis
        # does not make a node look unready.
        async with reachable(self.calls, "ping"):
            await self._redis.ping()

    # Presence.

    async def add_presence(self, channel: str, who: ClientInfo, ttl: float) -> None:
        await self._presence.add(channel, who, ttl)

    async def refresh_presence(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> None:
        await self._presence.refresh(entries, ttl)

    async def remove_presence(self, channel: str, client: str) -> None:
        await self._presence.remove(channel, client)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self._presence.members(channel)

    async def presence_page(
        self, channel: str, *, cursor: str | None = None, limit: int
    ) -> PresencePage:
        return await self._presence.page(channel, cursor, limit)

    async def presence_count(self, channel: str) -> tuple[int, int]:
        return await self._presence.count(channel)

    # Long-poll sessions across nodes (SessionRelay), kept by the relay.

    async def claim_session(self, sid: str, ttl: float) -> None:
        await self._relay.claim_session(sid, ttl)

    async def release_session(self, sid: str) -> None:
        await self._relay.release_session(sid)

    def serve_sessions(self, handler: Callable[[str, str, bytes], Awaitable[Answer]]) -> None:
        self._relay.serve_sessions(handler)

    async def forward_session(
        self, sid: str, method: str, target: str, body: bytes, wait: float
    ) -> Answer | None:
        """Ask the node holding ``sid`` to answer; None when no live node holds it."""
        return await self._relay.forward_session(sid, method, target, body, wait)

    # Delivery.

    async def _read(self) -> None:
        """Deliver what Redis pub/sub brings; on a lost connection, reconnect with
        backoff, subscribe again, and catch up from history."""
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except DOWN as exc:
                logger.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
                await self._reconnect()
                continue
            except Exception:
                logger.exception("error reading Redis pub/sub")
                await asyncio.sleep(self.RECONNECT_MIN)
                continue
            if message is None:
                continue
            if message.get("type") == "resubscribed":
                # A shard of a cluster failed over or its slots moved: its channels are
                # subscribed again on their new shard; read what they missed.
                await self._caught_up(message["channels"])
                continue
            self._dispatch(message)

    async def _reconnect(self) -> None:
        """Until it works: a fresh pub/sub connection with every channel, then the
        catch-up. Backoff doubles from RECONNECT_MIN to RECONNECT_MAX."""
        delay = self.RECONNECT_MIN
        while True:
            await asyncio.sleep(delay)
            delay = min(self.RECONNECT_MAX, delay * 2)
            old, self._pubsub = self._pubsub, self._topology.pubsub()
            with contextlib.suppress(RedisError, OSError):
                await old.aclose()
            channels = list(self._channels)
            try:
                names = [self._keys.channel(c) for c in channels]
                await self._pubsub.subscribe(self._relay.channel, self._keys.control, *names)
                for channel in channels:
                    await self._catch_up(channel)
                await self._occupancy.refresh()
            except (*DOWN, BrokerUnavailable) as exc:
                logger.info("Redis still unreachable (%s)", exc)
                continue
            logger.warning("Redis pub/sub reconnected (%d channels)", len(channels))
            return

    async def _caught_up(self, names: list[str]) -> None:
        """Catch up the channels whose pub/sub channels are ``names``, until Redis
        answers (they are on a shard that just came back)."""
        channels = [c for c in map(self._keys.channel_of, names) if c is not None]
        delay = self.RECONNECT_MIN
        while True:
            try:
                for channel in channels:
                    await self._catch_up(channel)
                await self._occupancy.refresh()
            except (*DOWN, BrokerUnavailable) as exc:
                logger.info("Redis still unreachable (%s)", exc)
                await asyncio.sleep(delay)
                delay = min(self.RECONNECT_MAX, delay * 2)
                continue
            return

    async def _catch_up(self, channel: str) -> None:
        """Deliver what was published in ``channel`` since the last publication seen."""
        since = self._channels.get(channel)
        handler = self._handler
        if since is None or handler is None:
            return
        result = await self.history(channel, since=since)
        if not result.recovered:
            logger.warning("publications in %r may be lost: subscribers must recover", channel)
            self._channels[channel] = result.position
            _call(handler.on_lost, channel)
            return
        for pub in result.publications:
            self._deliver(handler, pub)

    def _dispatch(self, message: dict[str, Any]) -> None:
        # Sharded pub/sub (a cluster) names its messages with an "s" in front.
        kind = str(message.get("type"))
        kind = _KINDS.get(kind, kind)
        name = text(message.get("channel", b""))
        if name == self._relay.channel:
            if kind == "message":
                self._relay.on_message(message["data"])
            return
        if name == self._keys.control:
            handler = self._handler
            if kind == "message" and handler is not None:
                try:
                    control = json.loads(message["data"])
                except ValueError:
                    logger.warning("ignoring a malformed control message")
                    return
                if isinstance(control, dict):
                    _call(handler.on_control, control)
            return
        channel = self._keys.channel_of(name)
        if channel is None:
            return
        if kind == "subscribe":
            confirmed = self._confirmations.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message" or channel not in self._channels:
            return
        handler = self._handler
        if handler is None:
            return
        data = message["data"]
        try:
            if data[:4] == b'["p"':
                self._deliver(handler, publication(channel, data))
                return
            event = json.loads(data)
            who = client_info(event[1])
        except (ValueError, KeyError, IndexError, TypeError):
            logger.warning("ignoring a malformed message on %r", name)
            return
        if event[0] == "j":
            _call(handler.on_join, channel, who)
        elif event[0] == "l":
            _call(handler.on_leave, channel, who)

    def _deliver(self, handler: BrokerHandler, pub: Publication) -> None:
        if pub.offset:
            last = self._channels.get(pub.channel)
            if last is not None and last.epoch == pub.epoch:
                if pub.offset <= last.offset:
                    return  # delivered before (a catch-up overlapping live messages)
            self._channels[pub.channel] = Position(pub.epoch, pub.offset)
        _call(handler.on_publication, pub)

    # Helpers.

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


_KINDS = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


def _call(method: Callable[..., None], *args: Any) -> None:
    try:
        method(*args)
    except Exception:
        logger.exception("broker handler failed")
