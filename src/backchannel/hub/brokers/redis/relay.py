"""Long-poll sessions across nodes: the Redis side of
:class:`~backchannel.hub.transports.longpoll.SessionRelay`.

A long poll may land on any node behind a load balancer; the node that holds the
session answers it. Keys (names in :mod:`.keys`):

* ``{prefix}:lp:{sid}`` names the node that holds a session (it expires unless the
  node claims it again);
* ``{prefix}:alive:{node}`` says the node is up, refreshed every third of
  :data:`ALIVE_TTL_MS`, so that requests for a dead node's sessions are not forwarded;
  it is deleted when the node stops cleanly;
* ``{prefix}:n:{node}`` is the node's pub/sub channel: other nodes publish the requests
  they get for its sessions there (``["q", id, reply_to, method, target, body]``), and
  it publishes the answers on the asking node's channel (``["a", id, status, type,
  body]``). Bodies are bytes carried as latin-1 text.

The broker subscribes this node to its channel and hands what arrives on it to
:meth:`RedisRelay.on_message`.

A forwarded request may wait long for its answer (a poll is held up to the poll
timeout), and the node holding it may die meanwhile. So while requests to a node wait,
the asking node checks every ``owner_check`` seconds (:data:`OWNER_CHECK`) that it is
still there: its ``alive`` key exists (gone at once on a clean stop, within
:data:`ALIVE_TTL_MS` for a node that hangs or whose machine vanished) and it is still
subscribed to its channel (Redis drops that subscription as soon as the node's
connection closes, as when its process is killed). If not, the waiting requests get
"no live node holds it" (the client hears 404 and connects again). One check per
node asked, whatever the number of requests waiting on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from ....exceptions import BrokerUnavailable
from ..calls import BrokerCalls
from .codec import dumps, text
from .errors import DOWN, reachable
from .keys import Keys

if TYPE_CHECKING:
    from ...transports.longpoll import Answer
    from .topology import Topology

__all__ = ["ALIVE_TTL_MS", "OWNER_CHECK", "RedisRelay"]

logger = logging.getLogger("backchannel.hub")

#: How long (ms) a node counts as up after its last sign of life (refreshed every third
#: of it): the sessions of a node that hangs, or whose machine vanished with its
#: connections still open, are given up within this long (a killed node's within
#: OWNER_CHECK, since Redis sees its connections close).
ALIVE_TTL_MS = 10_000

#: Seconds between checks that a node still holds the requests forwarded to it: how long
#: a poll relayed to a node that was killed waits at most before its 404 (a node that
#: hangs: up to ALIVE_TTL_MS more).
OWNER_CHECK = 1.0


class RedisRelay:
    """Claims, forwards and serves long-poll sessions for node ``node``."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        node: str,
        calls: BrokerCalls,
        *,
        owner_check: float = OWNER_CHECK,
        pubsub: Topology,
    ) -> None:
        self._redis = client
        #: Publishes and counts subscribers, sharded on a cluster.
        self._pubsub = pubsub
        self._calls = calls
        self._keys = keys
        self.node = node
        self.owner_check = owner_check
        #: This node's pub/sub channel, for the broker to subscribe to.
        self.channel = keys.node(node)
        self._handler: Callable[[str, str, bytes], Awaitable[Answer]] | None = None
        #: Forwarded requests waiting for their answer (None: the node is gone).
        self._forwarded: dict[str, asyncio.Future[Answer | None]] = {}
        #: Per node asked: the requests waiting on it, and the task that checks it is up.
        self._waiting: dict[str, set[asyncio.Future[Answer | None]]] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def mark_alive(self) -> None:
        """Say this node is up (for ALIVE_TTL_MS)."""
        await self._redis.set(self._keys.alive(self.node), 1, px=ALIVE_TTL_MS)

    async def keep_alive(self) -> None:
        """Mark this node alive every third of ALIVE_TTL_MS, until cancelled; a missed
        refresh (Redis down) is tried again at the next one."""
        while True:
            await asyncio.sleep(ALIVE_TTL_MS / 3000)
            with contextlib.suppress(*DOWN):
                await self.mark_alive()

    async def close(self) -> None:
        """Stop answering forwarded requests; say this node is gone."""
        for task in [*self._tasks, *self._watchers.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self._keys.alive(self.node))

    async def claim_session(self, sid: str, ttl: float) -> None:
        async with reachable(self._calls, "claim_session"):
            await self._redis.set(self._keys.session(sid), self.node, px=int(ttl * 1000))

    async def release_session(self, sid: str) -> None:
        with contextlib.suppress(*DOWN):
            await self._redis.delete(self._keys.session(sid))

    def serve_sessions(self, handler: Callable[[str, str, bytes], Awaitable[Answer]]) -> None:
        self._handler = handler

    async def forward_session(
        self, sid: str, method: str, target: str, body: bytes, wait: float
    ) -> Answer | None:
        """Ask the node holding ``sid`` to answer; None when no live node holds it."""
        try:
            async with reachable(self._calls, "forward_session"):
                owner = await self._redis.get(self._keys.session(sid))
                if owner is None:
                    return None
                owner = text(owner)
                if owner == self.node or not await self._redis.exists(self._keys.alive(owner)):
                    return None  # gone from here, or its node died: the client reconnects
                request_id = secrets.token_hex(8)
                answer: asyncio.Future[Answer | None]
                answer = asyncio.get_running_loop().create_future()
                self._forwarded[request_id] = answer
                request = ["q", request_id, self.node, method, target, body.decode("latin-1")]
                receivers = await self._pubsub.publish(self._keys.node(owner), dumps(request))
        except BrokerUnavailable:
            return None
        waiting = self._waiting.setdefault(owner, set())
        waiting.add(answer)
        try:
            if not receivers:
                return None
            if owner not in self._watchers:
                self._watchers[owner] = asyncio.get_running_loop().create_task(self._watch(owner))
            async with asyncio.timeout(wait):
                return await answer
        except TimeoutError:
            return None
        finally:
            self._forwarded.pop(request_id, None)
            waiting.discard(answer)
            if not waiting and self._waiting.get(owner) is waiting:
                del self._waiting[owner]

    async def _watch(self, owner: str) -> None:
        """While requests wait on ``owner``, check every ``owner_check`` seconds that it is
        up; when it is not, they are answered "gone" (None) at once."""
        try:
            while self._waiting.get(owner):
                await asyncio.sleep(self.owner_check)
                if not await self._is_up(owner):
                    logger.info("node %s is gone: its relayed requests get 404", owner)
                    for answer in self._waiting.pop(owner, ()):
                        if not answer.done():
                            answer.set_result(None)
                    return
        finally:
            # No await between the loop's last test and here: a request that comes later
            # finds no watcher and starts one.
            if self._watchers.get(owner) is asyncio.current_task():
                del self._watchers[owner]

    async def _is_up(self, owner: str) -> bool:
        """Whether ``owner`` shows a sign of life: its alive key, and its subscription to
        its own channel. When Redis cannot be asked, it is given the benefit of the doubt
        (the request's own time limit still holds)."""
        try:
            # Two keys of two slots (on a cluster, maybe two shards): two commands.
            alive = await self._redis.exists(self._keys.alive(owner))
            subscribed = await self._pubsub.subscribers(self._keys.node(owner))
        except (RedisError, OSError):
            return True
        return bool(alive) and subscribed > 0

    def on_message(self, data: bytes) -> None:
        """A message on this node's channel: a request to answer, or an answer."""
        try:
            message = json.loads(data)
            if message[0] == "q":
                _, request_id, reply_to, method, target, body = message
                task = asyncio.get_running_loop().create_task(
                    self._answer(request_id, reply_to, method, target, body)
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

    async def _answer(
        self, request_id: str, reply_to: str, method: str, target: str, body: str
    ) -> None:
        handler = self._handler
        if handler is None:
            status, kind, answer = 404, "application/json", b'{"error":"unknown session"}'
        else:
            status, kind, answer = await handler(method, target, body.encode("latin-1"))
        reply = ["a", request_id, status, kind, answer.decode("latin-1")]
        with contextlib.suppress(*DOWN):
            await self._pubsub.publish(self._keys.node(reply_to), dumps(reply))
