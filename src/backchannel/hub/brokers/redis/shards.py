"""Sharded pub/sub on a Redis Cluster (``SSUBSCRIBE``, Redis 7): one pub/sub connection
per master that owns a subscribed channel's slot, found from redis-py's slot map.

redis-py 8's asyncio ``ClusterPubSub`` can ``SSUBSCRIBE`` too, but it reads its
per-shard connections in turn, each with a timeout (``get_sharded_message``), which
means polling; and it reconciles subscriptions after a slot change in the background
without saying which channels moved, while the broker must catch those channels up
from history. So this holds one redis-py ``PubSub`` per shard itself, each read by a
task of its own into one queue, and looks owners up in the cluster client's slot map
(``get_node_from_key``), which redis-py keeps current (MOVED, failovers).

:meth:`ShardedPubSub.get_message` looks like redis-py's: ``ssubscribe`` and
``smessage`` messages, from every shard. When a shard's connection breaks (its master
died) or the shard drops a subscription itself (its slot moved away: Redis sends an
``sunsubscribe`` nobody asked for), its channels are subscribed again where the slot
map now puts them, with backoff until that works (during a failover, until a replica
has taken over), and then a message ``{"type": "resubscribed", "channels": [...]}``
says which channels may have missed publications meanwhile: the broker reads those
from history. Channels on the other shards are not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, SlotNotCoveredError

from .codec import text

__all__ = ["ShardedPubSub"]

logger = logging.getLogger("backchannel.hub")

#: Seconds between tries to subscribe a shard's channels again, doubling up to the
#: maximum (as the broker's reconnect).
RETRY_MIN = 0.1
RETRY_MAX = 5.0


class _Shard:
    """One master's pub/sub connection and the task reading it."""

    def __init__(self, name: str, host: str, port: int, kwargs: dict[str, Any]) -> None:
        self.name = name
        # No retry: a broken connection is reported at once, and its channels move.
        self.client = redis.Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **kwargs)
        self.pubsub = self.client.pubsub()
        self.channels: set[str] = set()
        self.reader: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.reader is not None and self.reader is not asyncio.current_task():
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


class ShardedPubSub:
    """Sharded pub/sub over ``cluster`` (see the module docstring); ``kwargs`` are the
    connection settings for each shard (password, TLS, timeouts)."""

    def __init__(self, cluster: RedisCluster, kwargs: dict[str, Any]) -> None:
        self._cluster = cluster
        self._kwargs = kwargs
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._shards: dict[str, _Shard] = {}
        #: Channel -> the shard it is subscribed on (None while it is being moved).
        self._where: dict[str, str | None] = {}
        self._orphans: set[str] = set()
        self._mover: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def subscribe(self, *channels: str) -> None:
        """SSUBSCRIBE on the shards owning ``channels``; confirmations come through
        :meth:`get_message`. A shard that cannot be reached raises (as redis-py)."""
        async with self._lock:
            for channel in channels:
                if channel in self._where:
                    continue
                shard = await self._shard_for(channel)
                self._where[channel] = shard.name
                shard.channels.add(channel)
                try:
                    # One channel a command: channels of one shard may be in several
                    # slots, and SSUBSCRIBE takes channels of one slot only.
                    await shard.pubsub.ssubscribe(channel)
                except BaseException:
                    self._where.pop(channel, None)
                    shard.channels.discard(channel)
                    await self._drop_if_idle(shard)
                    raise
                self._read(shard)

    async def unsubscribe(self, *channels: str) -> None:
        async with self._lock:
            for channel in channels:
                name = self._where.pop(channel, None)
                self._orphans.discard(channel)
                shard = self._shards.get(name) if name is not None else None
                if shard is None:
                    continue
                shard.channels.discard(channel)
                await shard.pubsub.sunsubscribe(channel)

    async def get_message(self, **options: Any) -> dict[str, Any]:
        """The next message of any shard; waits for one (the broker calls redis-py's
        ``get_message(timeout=None)``, the only use of ``options``)."""
        return await self._queue.get()

    async def aclose(self) -> None:
        self._closed = True
        if self._mover is not None:
            self._mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mover
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close()

    @property
    def shards(self) -> dict[str, frozenset[str]]:
        """Per shard (``host:port``), the channels subscribed there."""
        return {name: frozenset(shard.channels) for name, shard in self._shards.items()}

    # Inside.

    async def _shard_for(self, channel: str) -> _Shard:
        node = self._cluster.get_node_from_key(channel)
        if node is None:
            raise SlotNotCoveredError(f"no shard serves {channel!r} now")
        shard = self._shards.get(node.name)
        if shard is None:
            shard = _Shard(node.name, node.host, int(node.port), self._kwargs)
            self._shards[node.name] = shard
        return shard

    async def _drop_if_idle(self, shard: _Shard) -> None:
        """Close a shard that never got a subscription (it could not be reached)."""
        if not shard.channels and shard.reader is None:
            if self._shards.get(shard.name) is shard:
                del self._shards[shard.name]
            await shard.close()

    def _read(self, shard: _Shard) -> None:
        if shard.reader is None:
            shard.reader = asyncio.get_running_loop().create_task(self._reader(shard))

    async def _reader(self, shard: _Shard) -> None:
        """Pass on what ``shard`` brings; on a broken connection, move its channels."""
        while True:
            try:
                message = await shard.pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broken connection, or a shard that went away
                logger.warning("Redis shard %s lost (%s); moving its channels", shard.name, exc)
                self._lose(shard)
                return
            if message is None:
                continue
            kind = message.get("type")
            if kind == "sunsubscribe":
                channel = text(message.get("channel", b""))
                if self._where.get(channel) == shard.name:
                    # Not asked for: the slot moved to another shard (resharding).
                    shard.channels.discard(channel)
                    self._orphan([channel])
                continue
            self._queue.put_nowait(message)

    def _lose(self, shard: _Shard) -> None:
        if self._shards.get(shard.name) is shard:
            del self._shards[shard.name]
        channels = [c for c in shard.channels if self._where.get(c) == shard.name]
        shard.reader = None  # this task; close() must not cancel itself
        task = asyncio.get_running_loop().create_task(shard.close())
        task.add_done_callback(lambda _: None)
        self._orphan(channels)

    def _orphan(self, channels: list[str]) -> None:
        for channel in channels:
            self._where[channel] = None
        self._orphans.update(channels)
        if not self._closed and (self._mover is None or self._mover.done()):
            self._mover = asyncio.get_running_loop().create_task(self._move())

    async def _move(self) -> None:
        """Subscribe the orphaned channels where the slot map now puts them, refreshing
        the map first; with backoff until every one is placed."""
        delay = RETRY_MIN
        while self._orphans:
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
            try:
                # Ask the cluster for its slots now: after a failover the map still
                # names the dead master until someone asks.
                await self._cluster.nodes_manager.initialize()
            except Exception as exc:
                logger.info("Redis Cluster slot map not refreshed (%s)", exc)
                continue
            moved: list[str] = []
            async with self._lock:
                for channel in sorted(self._orphans):
                    if channel not in self._where:  # unsubscribed meanwhile
                        self._orphans.discard(channel)
                        continue
                    shard = None
                    try:
                        shard = await self._shard_for(channel)
                        await shard.pubsub.ssubscribe(channel)
                    except Exception as exc:
                        logger.info("cannot subscribe %r yet (%s)", channel, exc)
                        if shard is not None:
                            await self._drop_if_idle(shard)
                        continue
                    shard.channels.add(channel)
                    self._where[channel] = shard.name
                    self._orphans.discard(channel)
                    self._read(shard)
                    moved.append(channel)
            if moved:
                logger.warning("Redis shard channels moved (%d)", len(moved))
                self._queue.put_nowait({"type": "resubscribed", "channels": moved})
