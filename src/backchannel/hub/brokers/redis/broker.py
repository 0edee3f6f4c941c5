"""The Redis broker: several nodes (processes, machines) act as one hub through one Redis.

Install with ``pip install backchannel[redis]``. Keys, all under ``prefix`` so several
deployments can share one Redis (docs/howto/cluster.md):

* ``{prefix}:s:{channel}``: the channel's stream metadata, a hash of ``epoch``, ``top``
  (the last offset given out) and ``expires`` (ms). Publications are kept in
  ``{prefix}:l:{channel}``, a list trimmed to the history size. A Lua script assigns the
  offset, appends, trims and PUBLISHes in one atomic step, so the offset a client sees
  is the same on every node and every node receives a channel's publications in offset
  order.
* ``{prefix}:c:{channel}``: the pub/sub channel that carries publications, joins and
  leaves to the nodes subscribed to it. A node subscribes only while it has local
  subscribers.
* ``{prefix}:p:{channel}`` (sorted set, score = expiry in ms) and ``{prefix}:q:{channel}``
  (hash, client id -> who): presence. Entries expire by score, so a dead node's clients
  disappear after the presence TTL.
* ``{prefix}:i:{channel}:{key}``: an idempotency key and the result it gave.
* ``{prefix}:ctl``: commands for every node (disconnect a user, end subscriptions).
* Long polling across nodes (the broker is also a
  :class:`~backchannel.hub.transports.longpoll.SessionRelay`): ``{prefix}:lp:{sid}`` names the node
  that holds a session, ``{prefix}:alive:{node}`` says the node is up (refreshed every
  few seconds), and ``{prefix}:n:{node}`` is the node's pub/sub channel, on which other
  nodes forward the requests they get for its sessions and it sends the answers back.

Expiry is decided by timestamps stored in the data, read against ``clock`` (wall-clock
time by default, shared by the nodes); Redis TTLs only collect what nobody reads any more.

When Redis cannot be reached, commands raise :class:`BrokerUnavailable` (clients get the
temporary error 116; nothing is published). The node reconnects with backoff; for each
channel it is subscribed to it then reads the publications it missed from history and
delivers them (the hub skips offsets it already sent), or, when they are gone, tells
the hub (``on_lost``) so its subscribers resubscribe and recover themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ....exceptions import BrokerUnavailable
from ...wire import ClientInfo, Position, Publication
from ..base import BrokerHandler, HistoryOptions, HistoryResult, PublishResult, select_history

if TYPE_CHECKING:
    from ...transports.longpoll import Answer

__all__ = ["RedisBroker"]

logger = logging.getLogger("backchannel.hub")

# Redis errors that mean "not reachable now" rather than a bug.
_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

#: Connections to Redis per node: the pub/sub one, plus commands in flight at once
#: (more wait for one).
MAX_CONNECTIONS = 64

#: How long (ms) a node counts as up after its last sign of life (refreshed every third
#: of it): a killed node's long-poll sessions are given up within this long.
ALIVE_TTL_MS = 10_000

#: Extra time (ms) Redis keeps a key after its logical expiry: the data says when it
#: expires; the Redis TTL only frees keys nobody touches again.
GC_SLACK_MS = 60_000

# KEYS: stream meta, list, idempotency key. ARGV: now (ms), payload (JSON data and
# publisher, comma-separated), history size (-1: no history), history ttl (ms), a fresh
# epoch for a new stream, idempotency key ("" for none), its window (ms), the pub/sub
# channel, GC slack (ms).
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
redis.call('PUBLISH', ARGV[8], message)
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


class RedisBroker:
    """A :class:`~backchannel.hub.broker.Broker` on Redis (see the module docstring)."""

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
    ) -> None:
        self.url = url
        self.prefix = prefix
        self._clock = clock
        #: Commands time out after ``socket_timeout`` seconds: a Redis that hangs must give
        #: a clear temporary error, not a publish that never returns.
        # A blocking pool: a burst of commands (a thousand clients subscribing at once)
        # waits for a connection instead of failing as if Redis were down.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            health_check_interval=30,
        )
        #: For reads and writes that may be repeated: one quick retry on a broken
        #: connection (after Redis restarts, a pooled connection is dead).
        self._redis = redis.Redis(
            connection_pool=pool,
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[RedisConnectionError],
        )
        #: For publishes: no retry. A connection that breaks after Redis ran the script
        #: must not publish twice; the caller gets error 116 and retries with its
        #: idempotency key.
        self._writer = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        self._publish_script = self._writer.register_script(_PUBLISH)
        self._history_script = self._redis.register_script(_HISTORY)
        self._presence_script = self._redis.register_script(_PRESENCE)
        self._handler: BrokerHandler | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: Channels this node is subscribed to, with the last position delivered (for the
        #: catch-up after a reconnect).
        self._channels: dict[str, Position | None] = {}
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._channel_prefix = f"{prefix}:c:"
        #: This node, for long-poll sessions: unique per process.
        self.node = secrets.token_hex(8)
        self._node_channel = self._key("n", self.node)
        self._control_channel = f"{prefix}:ctl"
        self._session_handler: Callable[[str, str, bytes], Awaitable[Answer]] | None = None
        self._forwarded: dict[str, asyncio.Future[Answer]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._alive: asyncio.Task[None] | None = None

    # Lifecycle.

    async def start(self, handler: BrokerHandler) -> None:
        """Connect and begin delivering; BrokerUnavailable when Redis cannot be reached."""
        self._handler = handler
        self._pubsub = self._redis.pubsub()
        async with _reachable():
            await self._pubsub.subscribe(self._node_channel, self._control_channel)
            await self._redis.set(self._key("alive", self.node), 1, px=ALIVE_TTL_MS)
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._alive = loop.create_task(self._keep_alive())

    async def close(self) -> None:
        self._handler = None
        for task in (self._reader, self._alive, *self._tasks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._key("alive", self.node))
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
            await self._writer.aclose()
            await self._redis.connection_pool.disconnect()

    # Node subscriptions.

    async def subscribe(self, channel: str) -> None:
        """Subscribe this node; returns once Redis confirmed it, so a publication made
        after this returns is delivered."""
        if channel in self._channels:
            return
        self._channels[channel] = None
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel] = confirmed
        try:
            async with _reachable():
                await self._pubsub.subscribe(self._key("c", channel))
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
        with contextlib.suppress(*_DOWN):
            await self._pubsub.unsubscribe(self._key("c", channel))

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
    ) -> PublishResult:
        if history is not None and (history.size < 0 or history.ttl < 0):
            raise ValueError("history size and ttl must not be negative")
        info = "null" if publisher is None else _dumps(publisher.to_json())
        key = idempotency_key or ""
        async with _reachable():
            duplicate, message = await self._publish_script(
                keys=[
                    self._key("s", channel),
                    self._key("l", channel),
                    self._key("i", f"{channel}:{key}"),
                ],
                args=[
                    self._now_ms(),
                    f"{_dumps(data)},{info}",
                    -1 if history is None else history.size,
                    0 if history is None else int(history.ttl * 1000),
                    secrets.token_hex(8),
                    key,
                    int(idempotency_window * 1000),
                    self._key("c", channel),
                    GC_SLACK_MS,
                ],
            )
        return PublishResult(_publication(channel, message), duplicate=bool(duplicate))

    async def publish_control(self, message: dict[str, Any]) -> None:
        async with _reachable():
            await self._redis.publish(self._control_channel, _dumps(message))

    async def publish_join(self, channel: str, who: ClientInfo) -> None:
        async with _reachable():
            await self._redis.publish(self._key("c", channel), _dumps(["j", who.to_json()]))

    async def publish_leave(self, channel: str, who: ClientInfo) -> None:
        async with _reachable():
            await self._redis.publish(self._key("c", channel), _dumps(["l", who.to_json()]))

    # History.

    async def occupy(self, channel: str) -> bool:
        # Per node until occupancy is shared through Redis.
        return True

    async def vacate(self, channel: str) -> bool:
        return True

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        async with _reachable():
            epoch, top, entries = await self._history_script(
                keys=[self._key("s", channel), self._key("l", channel)],
                args=[
                    self._now_ms(),
                    secrets.token_hex(8),
                    int(self.EMPTY_STREAM_TTL * 1000),
                    GC_SLACK_MS,
                ],
            )
        kept = [_publication(channel, entry) for entry in entries]
        return select_history(kept, _text(epoch), int(top), since, limit)

    async def remove_history(self, channel: str) -> None:
        async with _reachable():
            await self._redis.delete(self._key("s", channel), self._key("l", channel))

    # Presence.

    async def add_presence(self, channel: str, who: ClientInfo, ttl: float) -> None:
        expires = self._now_ms() + int(ttl * 1000)
        zset, table = self._key("p", channel), self._key("q", channel)
        async with _reachable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zadd(zset, {who.client: expires})
            pipe.hset(table, who.client, _dumps(who.to_json()))
            pipe.pexpire(zset, int(ttl * 1000) + GC_SLACK_MS)
            pipe.pexpire(table, int(ttl * 1000) + GC_SLACK_MS)
            await pipe.execute()

    async def remove_presence(self, channel: str, client: str) -> None:
        async with _reachable():
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._key("p", channel), client)
            pipe.hdel(self._key("q", channel), client)
            await pipe.execute()

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        async with _reachable():
            entries = await self._presence_script(
                keys=[self._key("p", channel), self._key("q", channel)],
                args=[self._now_ms()],
            )
        present: dict[str, ClientInfo] = {}
        for entry in entries:
            if entry is None:
                continue  # removed between the two reads of the script: gone
            who = _who(json.loads(entry))
            present[who.client] = who
        return present

    async def presence_count(self, channel: str) -> tuple[int, int]:
        present = await self.presence(channel)
        return len(present), len({who.user for who in present.values()})

    # Delivery.

    async def _read(self) -> None:
        """Deliver what Redis pub/sub brings; on a lost connection, reconnect with
        backoff, subscribe again, and catch up from history."""
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except _DOWN as exc:
                logger.warning("Redis pub/sub connection lost (%s); reconnecting", exc)
                await self._reconnect()
                continue
            except Exception:
                logger.exception("error reading Redis pub/sub")
                await asyncio.sleep(self.RECONNECT_MIN)
                continue
            if message is not None:
                self._dispatch(message)

    async def _reconnect(self) -> None:
        """Until it works: a fresh pub/sub connection with every channel, then the
        catch-up. Backoff doubles from RECONNECT_MIN to RECONNECT_MAX."""
        delay = self.RECONNECT_MIN
        while True:
            await asyncio.sleep(delay)
            delay = min(self.RECONNECT_MAX, delay * 2)
            old, self._pubsub = self._pubsub, self._redis.pubsub()
            with contextlib.suppress(RedisError, OSError):
                await old.aclose()
            channels = list(self._channels)
            try:
                names = [self._key("c", c) for c in channels]
                await self._pubsub.subscribe(self._node_channel, self._control_channel, *names)
                for channel in channels:
                    await self._catch_up(channel)
            except (*_DOWN, BrokerUnavailable) as exc:
                logger.info("Redis still unreachable (%s)", exc)
                continue
            logger.warning("Redis pub/sub reconnected (%d channels)", len(channels))
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
        for publication in result.publications:
            self._deliver(handler, publication)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        name = _text(message.get("channel", b""))
        if name == self._node_channel:
            if kind == "message":
                self._on_node_message(message["data"])
            return
        if name == self._control_channel:
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
        channel = name[len(self._channel_prefix) :]
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
                self._deliver(handler, _publication(channel, data))
                return
            event = json.loads(data)
            who = _who(event[1])
        except (ValueError, KeyError, IndexError, TypeError):
            logger.warning("ignoring a malformed message on %r", name)
            return
        if event[0] == "j":
            _call(handler.on_join, channel, who)
        elif event[0] == "l":
            _call(handler.on_leave, channel, who)

    def _deliver(self, handler: BrokerHandler, publication: Publication) -> None:
        if publication.offset:
            last = self._channels.get(publication.channel)
            if last is not None and last.epoch == publication.epoch:
                if publication.offset <= last.offset:
                    return  # delivered before (a catch-up overlapping live messages)
            self._channels[publication.channel] = Position(publication.epoch, publication.offset)
        _call(handler.on_publication, publication)

    # Long-poll sessions across nodes (SessionRelay).

    async def claim_session(self, sid: str, ttl: float) -> None:
        async with _reachable():
            await self._redis.set(self._key("lp", sid), self.node, px=int(ttl * 1000))

    async def release_session(self, sid: str) -> None:
        with contextlib.suppress(*_DOWN):
            await self._redis.delete(self._key("lp", sid))

    def serve_sessions(self, handler: Callable[[str, str, bytes], Awaitable[Answer]]) -> None:
        self._session_handler = handler

    async def forward_session(
        self, sid: str, method: str, target: str, body: bytes, wait: float
    ) -> Answer | None:
        """Ask the node holding ``sid`` to answer; None when no live node holds it."""
        try:
            async with _reachable():
                owner = await self._redis.get(self._key("lp", sid))
                if owner is None:
                    return None
                owner = _text(owner)
                if owner == self.node or not await self._redis.exists(self._key("alive", owner)):
                    return None  # gone from here, or its node died: the client reconnects
                request_id = secrets.token_hex(8)
                answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
                self._forwarded[request_id] = answer
                request = ["q", request_id, self.node, method, target, body.decode("latin-1")]
                receivers = await self._redis.publish(self._key("n", owner), _dumps(request))
        except BrokerUnavailable:
            return None
        try:
            if not receivers:
                return None
            async with asyncio.timeout(wait):
                return await answer
        except TimeoutError:
            return None
        finally:
            self._forwarded.pop(request_id, None)

    def _on_node_message(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            if message[0] == "q":
                _, request_id, reply_to, method, target, body = message
                task = asyncio.get_running_loop().create_task(
                    self._answer_forwarded(request_id, reply_to, method, target, body)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif message[0] == "a":
                _, request_id, status, kind, body = message
                answer = self._forwarded.get(request_id)
                if answer is not None and not answer.done():
                    answer.set_result((status, kind, body.encode("latin-1")))
        except (ValueError, TypeError, IndexError):
            logger.warning("ignoring a malformed node message")

    async def _answer_forwarded(
        self, request_id: str, reply_to: str, method: str, target: str, body: str
    ) -> None:
        handler = self._session_handler
        if handler is None:
            status, kind, answer = 404, "application/json", b'{"error":"unknown session"}'
        else:
            status, kind, answer = await handler(method, target, body.encode("latin-1"))
        reply = ["a", request_id, status, kind, answer.decode("latin-1")]
        with contextlib.suppress(*_DOWN):
            await self._redis.publish(self._key("n", reply_to), _dumps(reply))

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(ALIVE_TTL_MS / 3000)
            with contextlib.suppress(*_DOWN):
                await self._redis.set(self._key("alive", self.node), 1, px=ALIVE_TTL_MS)

    # Helpers.

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


class _reachable(contextlib.AbstractAsyncContextManager[None]):
    """Turn "Redis cannot be reached" into BrokerUnavailable."""

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None and isinstance(exc, _DOWN):
            raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc


def _call(method: Callable[..., None], *args: Any) -> None:
    try:
        method(*args)
    except Exception:
        logger.exception("broker handler failed")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _who(obj: dict[str, Any]) -> ClientInfo:
    return ClientInfo(obj["client"], obj["user"], obj.get("info"))


def _publication(channel: str, message: Any) -> Publication:
    """A publication from its stored form: ``["p", offset, epoch, data, publisher]``."""
    _, offset, epoch, data, info = json.loads(message)
    return Publication(channel, data, offset, epoch, None if info is None else _who(info))
