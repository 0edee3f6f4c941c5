"""Channel presence in Redis, with expiry.

Keys (names in :mod:`.keys`): ``{prefix}:p:{channel}`` (sorted set, client id scored by
its expiry in ms) and ``{prefix}:q:{channel}`` (hash, client id -> who, as JSON).
Entries expire by score, so a dead node's clients disappear after the presence TTL
without anyone removing them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import redis.asyncio as redis

from ...wire import ClientInfo
from ..calls import BrokerCalls
from .codec import client_info, dumps
from .errors import reachable
from .keys import GC_SLACK_MS, Keys

__all__ = ["REFRESH_BATCH", "RedisPresence"]

#: Entries refreshed per pipeline. A node refreshes all its entries in one round trip
#: (one pipeline: every command written, then every reply read); past this many
#: entries it takes one more round trip per batch, so that the replies redis-py holds
#: at once stay bounded (a batch is a few hundred KB of commands).
REFRESH_BATCH = 10_000

# KEYS: presence zset, presence hash. ARGV: now (ms). Drops expired entries, returns the
# live ones' JSON.
_PRESENCE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if #live == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(live))
"""


class RedisPresence:
    """Who is in each channel (see the module docstring); ``now_ms`` is the clock."""

    def __init__(
        self, client: redis.Redis, keys: Keys, now_ms: Callable[[], int], calls: BrokerCalls
    ) -> None:
        self._redis = client
        self._calls = calls
        self._keys = keys
        self._now_ms = now_ms
        self._presence_script = client.register_script(_PRESENCE)

    async def add(self, channel: str, who: ClientInfo, ttl: float) -> None:
        """Record (or refresh) ``who``; it expires after ``ttl`` seconds."""
        expires = self._now_ms() + int(ttl * 1000)
        zset, table = self._keys.presence(channel), self._keys.presence_info(channel)
        async with reachable(self._calls, "presence_add"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(zset, {who.client: expires})
            pipe.hset(table, who.client, dumps(who.to_json()))
            pipe.pexpire(zset, int(ttl * 1000) + GC_SLACK_MS)
            pipe.pexpire(table, int(ttl * 1000) + GC_SLACK_MS)
            await pipe.execute()

    async def refresh(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> None:
        """Record (or refresh) every ``(channel, who)`` in ``entries``, each expiring
        after ``ttl`` seconds: one pipeline per :data:`REFRESH_BATCH` entries, with one
        ZADD, one HSET and two PEXPIREs per channel whatever its number of entries.

        Not a transaction: each channel's commands stand alone (what :meth:`add` does
        for one entry), and a Redis Cluster client splits the pipeline by slot."""
        ttl_ms = int(ttl * 1000)
        for start in range(0, len(entries), REFRESH_BATCH):
            by_channel: dict[str, list[ClientInfo]] = {}
            for channel, who in entries[start : start + REFRESH_BATCH]:
                by_channel.setdefault(channel, []).append(who)
            expires = self._now_ms() + ttl_ms
            async with reachable(self._calls, "presence_refresh"):
                pipe = self._redis.pipeline(transaction=False)
                for channel, present in by_channel.items():
                    zset, table = self._keys.presence(channel), self._keys.presence_info(channel)
                    pipe.zadd(zset, dict.fromkeys((who.client for who in present), expires))
                    pipe.hset(table, mapping={who.client: dumps(who.to_json()) for who in present})
                    pipe.pexpire(zset, ttl_ms + GC_SLACK_MS)
                    pipe.pexpire(table, ttl_ms + GC_SLACK_MS)
                await pipe.execute()

    async def remove(self, channel: str, client: str) -> None:
        async with reachable(self._calls, "presence_remove"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._keys.presence(channel), client)
            pipe.hdel(self._keys.presence_info(channel), client)
            await pipe.execute()

    async def members(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in the channel, by client id (expired entries dropped)."""
        async with reachable(self._calls, "presence"):
            entries = await self._presence_script(
                keys=[self._keys.presence(channel), self._keys.presence_info(channel)],
                args=[self._now_ms()],
            )
        present: dict[str, ClientInfo] = {}
        for entry in entries:
            if entry is None:
                continue  # removed between the two reads of the script: gone
            who = client_info(json.loads(entry))
            present[who.client] = who
        return present

    async def count(self, channel: str) -> tuple[int, int]:
        """How many clients and how many distinct users are in the channel."""
        present = await self.members(channel)
        return len(present), len({who.user for who in present.values()})
