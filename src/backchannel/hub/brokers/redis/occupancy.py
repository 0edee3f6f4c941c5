"""Which nodes have local subscribers of a channel: "occupied" and "vacated" once in the
cluster.

Key (name in :mod:`.keys`): ``{prefix}:o:{channel}``, a sorted set of the node ids that
hold the channel (have local subscribers), each scored by when its entry expires (ms).
:meth:`RedisOccupancy.occupy` and :meth:`RedisOccupancy.vacate` are Lua scripts, so
that of two nodes occupying (or vacating) a channel at once exactly one is told it was
the first (the last). A node refreshes the entries of the channels it holds every
third of the occupancy TTL, so a dead node's entries expire by themselves.

A dead node's channels are not reported vacated. Nothing runs when an entry expires:
Redis does not tell anyone (keyspace notifications are off by default, fire-and-forget,
and would reach every node, not one), and a sweep by the surviving nodes would have to
scan every channel and agree on which of them reports it. So a channel whose only
holder died simply stops being occupied once the entry expires, silently; the next
first subscriber anywhere is reported as occupying it again. Until the entry expires
the dead node still counts: a first subscriber elsewhere in that time is not reported
as occupying, and that node's last subscriber leaving is reported as vacating only if
the dead entry has expired by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import redis.asyncio as redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from ..calls import BrokerCalls
from .errors import DOWN, reachable
from .keys import GC_SLACK_MS, Keys

__all__ = ["OCCUPANCY_TTL_MS", "REFRESH_BATCH", "RedisOccupancy"]

logger = logging.getLogger("backchannel.hub")

#: How long (ms) a node's entry in a channel's occupancy lasts unless refreshed (every
#: third of it, so two refreshes may be missed, to a slow Redis or a paused process,
#: before a live node's entry lapses). It bounds how long a dead node's channels still
#: count as occupied.
OCCUPANCY_TTL_MS = 15_000

#: Channels refreshed per script call: a Lua script blocks Redis while it runs, and a
#: few hundred ZADDs take well under a millisecond, so other clients are not held up.
REFRESH_BATCH = 500

# KEYS: the occupancy zset. ARGV: now (ms), node, ttl (ms), GC slack (ms). Drops expired
# entries, adds or refreshes this node's; 1 when no other node holds the channel.
_OCCUPY = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
local others = redis.call('ZCARD', KEYS[1])
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then others = others - 1 end
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
local keep = ttl + tonumber(ARGV[4])
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
if others == 0 then return 1 end
return 0
"""

# KEYS: the occupancy zset. ARGV: now (ms), node. Removes this node's entry and expired
# ones; 1 when no node holds the channel any more (an empty zset is deleted by Redis).
_VACATE = """
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then return 1 end
return 0
"""

# KEYS: occupancy zsets of channels this node holds. ARGV: now (ms), node, ttl (ms),
# GC slack (ms). Refreshes this node's entry where it is still there and never adds
# one (a vacate racing with the refresh must not be undone); returns the 1-based
# indexes of the keys where it was gone.
_REFRESH = """
local expires = tonumber(ARGV[1]) + tonumber(ARGV[3])
local keep = tonumber(ARGV[3]) + tonumber(ARGV[4])
local missing = {}
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[2]) then
    redis.call('ZADD', key, expires, ARGV[2])
    if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
  else
    missing[#missing + 1] = i
  end
end
return missing
"""


class _Gate:
    """A lock for one channel, with how many tasks use it (dropped at zero)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class RedisOccupancy:
    """This node's side of channel occupancy (see the module docstring).

    ``now_ms`` is the clock (shared by the nodes: entries are scored with it)."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        node: str,
        now_ms: Callable[[], int],
        calls: BrokerCalls,
        *,
        ttl_ms: int = OCCUPANCY_TTL_MS,
        one_slot_per_script: bool = False,
    ) -> None:
        self._redis = client
        self._calls = calls
        self._keys = keys
        self._node = node
        self._now_ms = now_ms
        self.ttl_ms = ttl_ms
        #: On a cluster a script's keys must share a slot: refreshes go slot by slot.
        self._one_slot = one_slot_per_script
        #: Channels this node holds, as far as it knows.
        self._held: set[str] = set()
        # Putting a lapsed entry back must not interleave with a vacate of the same
        # channel (it would leave an entry for a channel this node no longer holds):
        # occupy, vacate and the put-back of one channel take turns.
        self._gates: dict[str, _Gate] = {}
        self._occupy = client.register_script(_OCCUPY)
        self._vacate = client.register_script(_VACATE)
        self._refresh = client.register_script(_REFRESH)

    @property
    def held(self) -> frozenset[str]:
        """The channels this node holds."""
        return frozenset(self._held)

    async def occupy(self, channel: str) -> bool:
        """See :meth:`Broker.occupy`."""
        async with self._turn(channel), reachable(self._calls, "occupy"):
            first = await self._occupy(
                keys=[self._keys.occupancy(channel)],
                args=[self._now_ms(), self._node, self.ttl_ms, GC_SLACK_MS],
            )
            self._held.add(channel)
        return bool(first)

    async def vacate(self, channel: str) -> bool:
        """See :meth:`Broker.vacate`."""
        async with self._turn(channel), reachable(self._calls, "vacate"):
            # Forgotten first: if Redis cannot be reached, the entry expires by itself
            # rather than being refreshed for a channel this node no longer holds.
            self._held.discard(channel)
            last = await self._vacate(
                keys=[self._keys.occupancy(channel)], args=[self._now_ms(), self._node]
            )
        return bool(last)

    async def refresh(self) -> None:
        """Extend this node's entries for the channels it holds, and put back those that
        lapsed (the node stalled past the TTL, or Redis restarted and lost them)."""
        channels = sorted(self._held)
        lapsed: list[str] = []
        for start in range(0, len(channels), REFRESH_BATCH):
            for batch in self._by_slot(channels[start : start + REFRESH_BATCH]):
                missing = await self._refresh(
                    keys=[self._keys.occupancy(c) for c in batch],
                    args=[self._now_ms(), self._node, self.ttl_ms, GC_SLACK_MS],
                )
                lapsed.extend(batch[int(i) - 1] for i in missing)
        if lapsed:
            logger.warning("occupancy of %d channels had lapsed; putting it back", len(lapsed))
        for channel in lapsed:
            async with self._turn(channel):
                if channel in self._held:  # not vacated meanwhile
                    await self._occupy(
                        keys=[self._keys.occupancy(channel)],
                        args=[self._now_ms(), self._node, self.ttl_ms, GC_SLACK_MS],
                    )

    async def keep_fresh(self) -> None:
        """:meth:`refresh` every third of the TTL, until cancelled; a refresh that fails
        (Redis down) is tried again at the next one."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                await self.refresh()
            except DOWN as exc:
                logger.info("could not refresh channel occupancy (%s)", exc)

    async def close(self) -> None:
        """Remove this node's entries (best effort): a node that stops is not reported
        as vacating its channels either, but other nodes stop counting it at once."""
        channels, self._held = self._held, set()
        with contextlib.suppress(RedisError, OSError):
            pipe = self._redis.pipeline(transaction=False)
            for channel in channels:
                pipe.zrem(self._keys.occupancy(channel), self._node)
            await pipe.execute()

    def _by_slot(self, channels: list[str]) -> list[list[str]]:
        if not self._one_slot:
            return [channels] if channels else []
        slots: dict[int, list[str]] = {}
        for channel in channels:
            slot = key_slot(self._keys.occupancy(channel).encode())
            slots.setdefault(slot, []).append(channel)
        return list(slots.values())

    @contextlib.asynccontextmanager
    async def _turn(self, channel: str) -> AsyncIterator[None]:
        gate = self._gates.get(channel)
        if gate is None:
            gate = self._gates[channel] = _Gate()
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[channel]
