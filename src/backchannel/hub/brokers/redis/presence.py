"""Channel presence in Redis, with expiry.

Keys (names in :mod:`.keys`): ``{prefix}:p:{channel}`` (sorted set, client id scored by
its expiry in ms), ``{prefix}:q:{channel}`` (hash, client id -> who, as JSON) and
``{prefix}:m:{channel}`` (sorted set, every client id scored 0: the stable order of the
pages, walked with ZRANGEBYLEX; the expiry scores change with every refresh, so they
cannot order pages). Entries expire by score, so a dead node's clients disappear after
the presence TTL without anyone removing them; whoever reads presence next drops them.

A channel with tens of thousands of clients is read a page at a time
(:meth:`RedisPresence.page`) or counted in Redis (:meth:`RedisPresence.count`); a node
refreshes all its entries in one round trip (:meth:`RedisPresence.refresh`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import redis.asyncio as redis
from redis.exceptions import NoScriptError

from ...wire import ClientInfo
from ..base import PresencePage
from ..calls import BrokerCalls
from .codec import client_info, dumps, text
from .errors import reachable
from .keys import GC_SLACK_MS, Keys

__all__ = ["REFRESH_BATCH", "RedisPresence"]

#: Entries refreshed per pipeline. A node refreshes all its entries in one round trip
#: (one pipeline: every command written, then every reply read); past this many
#: entries it takes one more round trip per batch, so that the replies redis-py holds
#: at once stay bounded (a batch is a few hundred KB of commands).
REFRESH_BATCH = 10_000

# Every script's KEYS: presence zset, presence hash, presence order; ARGV[1]: now (ms).
# Drops the expired entries from all three, in chunks: Lua's unpack() takes a few
# thousand values at most, and a channel may have tens of thousands.
_PURGE = """
local function purge()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
  for i = 1, #expired, 1000 do
    local chunk = {unpack(expired, i, math.min(i + 999, #expired))}
    redis.call('HDEL', KEYS[2], unpack(chunk))
    redis.call('ZREM', KEYS[3], unpack(chunk))
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1]) end
end
"""

# The live entries, as HGETALL gives them (what is left in the hash after the purge).
_MEMBERS = (
    _PURGE
    + """
purge()
return redis.call('HGETALL', KEYS[2])
"""
)

# ARGV: now, cursor ('' for the first page), limit. A page: {more (0 or 1), then the id
# and JSON (false if gone) of each live entry after the cursor in client id order, at
# most limit}.
_PAGE = (
    _PURGE
    + """
purge()
local from = '-'
if ARGV[2] ~= '' then from = '(' .. ARGV[2] end
local limit = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYLEX', KEYS[3], from, '+', 'LIMIT', 0, limit + 1)
local out = {0}
if #ids > limit then
  out[1] = 1
  ids[#ids] = nil
end
for i = 1, #ids, 1000 do
  local chunk = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  for j, entry in ipairs(chunk) do
    out[#out + 1] = ids[i + j - 1]
    out[#out + 1] = entry
  end
end
return out
"""
)

# KEYS: presence zset, hash, order. ARGV: expiry (ms, absolute), key TTL (ms), then each
# entry's client id and JSON. One channel's part of a refresh, as one command: a node
# holding tens of thousands of personal channels sends one EVALSHA per channel rather
# than six commands, and reads one small reply.
_REFRESH = """
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[3], 0, ARGV[i])
end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[2]) end
return 0
"""

# {clients, distinct users}: counted in Redis, so only two numbers cross the network.
_COUNT = (
    _PURGE
    + """
purge()
local users, distinct = {}, 0
for _, entry in ipairs(redis.call('HVALS', KEYS[2])) do
  local user = cjson.decode(entry)['user']
  if not users[user] then
    users[user] = true
    distinct = distinct + 1
  end
end
return {redis.call('ZCARD', KEYS[1]), distinct}
"""
)


class RedisPresence:
    """Who is in each channel (see the module docstring); ``now_ms`` is the clock."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        now_ms: Callable[[], int],
        calls: BrokerCalls,
        *,
        sharded: bool = False,
    ) -> None:
        self._redis = client
        self._calls = calls
        self._keys = keys
        self._now_ms = now_ms
        self._members_script = client.register_script(_MEMBERS)
        self._page_script = client.register_script(_PAGE)
        self._count_script = client.register_script(_COUNT)
        #: The refresh script's SHA once loaded: it is sent by EVALSHA in a pipeline,
        #: where redis-py's Script objects would first ask SCRIPT EXISTS (a second round
        #: trip per refresh).
        self._refresh_sha: str | None = None
        #: On a Redis Cluster client (redis-py's cluster pipeline refuses EVALSHA), the
        #: refresh sends the script's text with EVAL: Redis hashes it and runs the
        #: cached script, for a few hundred more bytes per channel.
        self._sharded = sharded

    async def add(self, channel: str, who: ClientInfo, ttl: float) -> None:
        """Record (or refresh) ``who``; it expires after ``ttl`` seconds."""
        expires = self._now_ms() + int(ttl * 1000)
        zset, table, order = self._names(channel)
        async with reachable(self._calls, "presence_add"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(zset, {who.client: expires})
            pipe.hset(table, who.client, dumps(who.to_json()))
            pipe.zadd(order, {who.client: 0})
            for key in (zset, table, order):
                pipe.pexpire(key, int(ttl * 1000) + GC_SLACK_MS)
            await pipe.execute()

    async def refresh(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> None:
        """Record (or refresh) every ``(channel, who)`` in ``entries``, each expiring
        after ``ttl`` seconds: one pipeline per :data:`REFRESH_BATCH` entries, holding
        one EVALSHA per channel whatever its number of entries.

        Not a transaction: each channel's script stands alone (what :meth:`add` does
        for one entry), and a Redis Cluster client splits the pipeline by slot (a
        channel's keys share one)."""
        ttl_ms = int(ttl * 1000)
        for start in range(0, len(entries), REFRESH_BATCH):
            by_channel: dict[str, list[str]] = {}
            for channel, who in entries[start : start + REFRESH_BATCH]:
                by_channel.setdefault(channel, []).extend((who.client, dumps(who.to_json())))
            head = [self._now_ms() + ttl_ms, ttl_ms + GC_SLACK_MS]
            async with reachable(self._calls, "presence_refresh"):
                if self._sharded:
                    pipe = self._redis.pipeline(transaction=False)
                    for channel, args in by_channel.items():
                        pipe.eval(_REFRESH, 3, *self._names(channel), *head, *args)
                    await pipe.execute()
                    continue
                if self._refresh_sha is None:
                    self._refresh_sha = await self._redis.script_load(_REFRESH)
                pipe = self._redis.pipeline(transaction=False)
                for channel, args in by_channel.items():
                    pipe.evalsha(self._refresh_sha, 3, *self._names(channel), *head, *args)
                replies = await pipe.execute(raise_on_error=False)
                if any(isinstance(r, NoScriptError) for r in replies):
                    # Redis restarted (or its scripts were flushed) since the script was
                    # loaded: load it again and send the batch once more (it only sets).
                    self._refresh_sha = await self._redis.script_load(_REFRESH)
                    pipe = self._redis.pipeline(transaction=False)
                    for channel, args in by_channel.items():
                        pipe.evalsha(self._refresh_sha, 3, *self._names(channel), *head, *args)
                    replies = await pipe.execute(raise_on_error=False)
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply

    async def remove(self, channel: str, client: str) -> None:
        async with reachable(self._calls, "presence_remove"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._keys.presence(channel), client)
            pipe.hdel(self._keys.presence_info(channel), client)
            pipe.zrem(self._keys.presence_order(channel), client)
            await pipe.execute()

    async def members(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in the channel, by client id (expired entries dropped). Every entry
        in one answer: for a large channel, :meth:`page`."""
        async with reachable(self._calls, "presence"):
            flat = await self._members_script(
                keys=list(self._names(channel)), args=[self._now_ms()]
            )
        present: dict[str, ClientInfo] = {}
        for entry in flat[1::2]:
            who = client_info(json.loads(entry))
            present[who.client] = who
        return present

    async def page(self, channel: str, cursor: str | None, limit: int) -> PresencePage:
        """At most ``limit`` clients after ``cursor``, in client id order (see
        :class:`~backchannel.hub.brokers.base.PresencePage`)."""
        async with reachable(self._calls, "presence_page"):
            reply = await self._page_script(
                keys=list(self._names(channel)), args=[self._now_ms(), cursor or "", limit]
            )
        present: dict[str, ClientInfo] = {}
        ids = reply[1::2]
        for entry in reply[2::2]:
            if entry is None:
                continue  # in the order but not the table: not a live entry
            who = client_info(json.loads(entry))
            present[who.client] = who
        # The cursor is the last id read, even when its entry was not there.
        return PresencePage(present, text(ids[-1]) if reply[0] and ids else None)

    async def count(self, channel: str) -> tuple[int, int]:
        """How many clients and how many distinct users are in the channel (counted in
        Redis: two numbers come back, however large the channel)."""
        async with reachable(self._calls, "presence_count"):
            clients, users = await self._count_script(
                keys=list(self._names(channel)), args=[self._now_ms()]
            )
        return int(clients), int(users)

    def _names(self, channel: str) -> tuple[str, str, str]:
        keys = self._keys
        return keys.presence(channel), keys.presence_info(channel), keys.presence_order(channel)
