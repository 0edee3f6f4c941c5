"""Channel streams in Redis: offsets, kept publications and idempotency keys.

Keys (names in :mod:`.keys`):

* ``{prefix}:s:{channel}``: the channel's stream metadata, a hash of ``epoch``, ``top``
  (the last offset given out) and ``expires`` (ms). Publications are kept in
  ``{prefix}:l:{channel}``, a list trimmed to the history size. A Lua script assigns the
  offset, appends, trims and PUBLISHes (SPUBLISH on a cluster) in one atomic
  step, so the offset a client sees is the same on every node and every node receives
  a channel's publications in offset order.
* ``{prefix}:i:{channel}:{key}``: an idempotency key and the result it gave, checked
  and set by the same script.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis

from ...wire import ClientInfo, Position
from ..base import HistoryOptions, HistoryResult, PublishResult, select_history
from ..calls import BrokerCalls
from .codec import dumps, publication, text
from .errors import reachable
from .keys import GC_SLACK_MS, Keys

__all__ = ["RedisHistory"]

# KEYS: stream meta, list, idempotency key. ARGV: now (ms), payload (JSON data and
# publisher, comma-separated), history size (-1: no history), history ttl (ms), a fresh
# epoch for a new stream, idempotency key ("" for none), its window (ms), the pub/sub
# channel, GC slack (ms), the publish command (PUBLISH, or SPUBLISH on a cluster: the
# pub/sub channel is in the keys' slot, see :mod:`.keys`).
_PUBLISH = """
local now = tonumber(ARGV[1])
local slack = tonumber(ARGV[9])
if ARGV[6] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local bar = string.find(seen, '|', 1, true)
    if tonumber(string.sub(seen, 1, bar - 1)) >= now then
      return {1, string.sub(seen, bar + 1)}
    end
  end
end
local size = tonumber(ARGV[3])
local message
if size >= 0 then
  local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'expires')
  local epoch, top
  if meta[1] and tonumber(meta[3]) >= now then
    epoch, top = meta[1], tonumber(meta[2])
  else
    epoch, top = ARGV[5], 0
    redis.call('DEL', KEYS[2])
  end
  top = top + 1
  message = '["p",' .. top .. ',"' .. epoch .. '",' .. ARGV[2] .. ']'
  if size > 0 then
    redis.call('RPUSH', KEYS[2], message)
    redis.call('LTRIM', KEYS[2], -size, -1)
  else
    redis.call('DEL', KEYS[2])
  end
  local ttl = tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'top', top, 'expires', now + ttl)
  redis.call('PEXPIRE', KEYS[1], ttl + slack)
  redis.call('PEXPIRE', KEYS[2], ttl + slack)
else
  message = '["p",0,"",' .. ARGV[2] .. ']'
end
if ARGV[6] ~= '' then
  local window = tonumber(ARGV[7])
  redis.call('SET', KEYS[3], (now + window) .. '|' .. message, 'PX', window + slack)
end
redis.call(ARGV[10], ARGV[8], message)
return {0, message}
"""

# KEYS: stream meta, list. ARGV: now (ms), a fresh epoch, empty stream ttl (ms), slack.
# A channel without a stream gets an empty one, so that its position (offset 0) keeps
# its epoch through the first publication.
_HISTORY = """
local now = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'top', 'expires')
if meta[1] and tonumber(meta[3]) >= now then
  return {meta[1], tonumber(meta[2]), redis.call('LRANGE', KEYS[2], 0, -1)}
end
redis.call('DEL', KEYS[2])
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'top', 0, 'expires', now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[4]))
return {ARGV[2], 0, {}}
"""


class RedisHistory:
    """Publishing into and reading from channel streams (see the module docstring).

    ``reader`` may retry a command on a broken connection; ``writer`` must not (a
    publish that ran before the connection broke must not run twice: the caller gets
    BrokerUnavailable and retries with its idempotency key). ``now_ms`` is the clock.
    """

    def __init__(
        self,
        reader: redis.Redis,
        writer: redis.Redis,
        keys: Keys,
        now_ms: Callable[[], int],
        calls: BrokerCalls,
        *,
        empty_stream_ttl: float,
        sharded: bool = False,
    ) -> None:
        self._redis = reader
        self._calls = calls
        self._keys = keys
        self._now_ms = now_ms
        self._empty_stream_ttl_ms = int(empty_stream_ttl * 1000)
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._publish_script = writer.register_script(_PUBLISH)
        self._history_script = reader.register_script(_HISTORY)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        history: HistoryOptions | None,
        publisher: ClientInfo | None,
        idempotency_key: str | None,
        idempotency_window: float,
        encoded: str | None = None,
    ) -> PublishResult:
        """See :meth:`Broker.publish`; the script also PUBLISHes to every node."""
        if history is not None and (history.size < 0 or history.ttl < 0):
            raise ValueError("history size and ttl must not be negative")
        info = "null" if publisher is None else dumps(publisher.to_json())
        key = idempotency_key or ""
        keys = self._keys
        async with reachable(self._calls, "publish"):
            duplicate, message = await self._publish_script(
                keys=[keys.stream(channel), keys.log(channel), keys.idempotency(channel, key)],
                args=[
                    self._now_ms(),
                    f"{dumps(data) if encoded is None else encoded},{info}",
                    -1 if history is None else history.size,
                    0 if history is None else int(history.ttl * 1000),
                    secrets.token_hex(8),
                    key,
                    int(idempotency_window * 1000),
                    keys.channel(channel),
                    GC_SLACK_MS,
                    self._publish_command,
                ],
            )
        return PublishResult(publication(channel, message), duplicate=bool(duplicate))

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        """See :meth:`Broker.history`."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        async with reachable(self._calls, "history"):
            epoch, top, entries = await self._history_script(
                keys=[self._keys.stream(channel), self._keys.log(channel)],
                args=[
                    self._now_ms(),
                    secrets.token_hex(8),
                    self._empty_stream_ttl_ms,
                    GC_SLACK_MS,
                ],
            )
        kept = [publication(channel, entry) for entry in entries]
        return select_history(kept, text(epoch), int(top), since, limit)

    async def remove(self, channel: str) -> None:
        """Drop the channel's stream; the next publication starts a new epoch."""
        async with reachable(self._calls, "remove_history"):
            await self._redis.delete(self._keys.stream(channel), self._keys.log(channel))
