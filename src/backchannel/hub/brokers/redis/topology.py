"""The Redis the broker talks to: one server, a Redis Cluster or a master watched by
Redis Sentinel, made from ``[broker] url`` (forms in :mod:`..redis_url`).

Each topology gives the broker the same things: a client for reads and writes that may
be repeated (``reader``: one quick retry on a broken connection), one for publishes
(``writer``: no retry, a publish must not run twice), a pub/sub object, and how to
publish on a pub/sub channel. With one server and with Sentinel, pub/sub is classic
(``PUBLISH``/``SUBSCRIBE``); on a cluster it is sharded (``SPUBLISH``/``SSUBSCRIBE``,
Redis 7): a message goes only to the shard that owns its channel's slot, not over the
cluster bus to every node (:mod:`.shards`).

redis-py does the routing: its cluster client follows MOVED and ASK, and refreshes its
slot map after a failover or a resharding; its Sentinel connection pool asks the
sentinels for the master's address at each new connection, so after a failover the
broker's next connections (and its pub/sub reconnect) reach the new master.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ....exceptions import BrokerUnavailable
from ..redis_url import RedisTarget, parse_redis_url
from .shards import ShardedPubSub

__all__ = ["Topology"]

#: Connections to Redis per node (per shard on a cluster): the pub/sub one, plus
#: commands in flight at once (more wait for one).
MAX_CONNECTIONS = 64


class Topology:
    """The clients for ``url``; ``socket_timeout`` bounds every command."""

    def __init__(self, url: str, *, socket_timeout: float) -> None:
        self.target: RedisTarget = parse_redis_url(url)
        self.kind = self.target.kind
        #: Whether pub/sub is sharded (SPUBLISH/SSUBSCRIBE): on a cluster.
        self.sharded = self.kind == "cluster"
        timeouts: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
        }
        self._sentinel: Sentinel | None = None
        self.reader: Any
        self.writer: Any
        if self.kind == "cluster":
            auth: dict[str, Any] = {
                "username": self.target.username,
                "password": self.target.password,
            }
            tls: dict[str, Any] = {"ssl": True} if self.target.tls else {}

            def cluster(retries: int) -> RedisCluster:
                nodes = [ClusterNode(host, port) for host, port in self.target.hosts]
                return RedisCluster(
                    startup_nodes=nodes,
                    max_connections=MAX_CONNECTIONS,
                    retry=Retry(NoBackoff(), retries),
                    **auth,
                    **tls,
                    **timeouts,
                )

            self.reader = cluster(1)
            self.writer = cluster(0)
            self._shard_kwargs = {**auth, **tls, **timeouts}
        elif self.kind == "sentinel":
            target = self.target
            sentinel_kwargs = dict(timeouts)
            if target.sentinel_password is not None:
                sentinel_kwargs["password"] = target.sentinel_password
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(target.hosts),
                sentinel_kwargs=sentinel_kwargs,
                username=target.username,
                password=target.password,
                db=target.db,
                ssl=target.tls,
                **timeouts,
            )
            watched = SentinelConnectionPool(  # type: ignore[no-untyped-call]
                target.service,
                self._sentinel,
                is_master=True,
                username=target.username,
                password=target.password,
                db=target.db,
                ssl=target.tls,
                health_check_interval=30,
                **timeouts,
            )
            self.reader = redis.Redis(
                connection_pool=watched,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
            self.writer = redis.Redis(connection_pool=watched, retry=Retry(NoBackoff(), 0))
        else:
            # A blocking pool: a burst of commands (a thousand clients subscribing at
            # once) waits for a connection instead of failing as if Redis were down.
            pool = redis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=socket_timeout,
                health_check_interval=30,
                **timeouts,
            )
            self.reader = redis.Redis(
                connection_pool=pool,
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[RedisConnectionError],
            )
            self.writer = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))

    async def connect(self) -> None:
        """On a cluster, read its slot map (the pub/sub looks owners up in it); with
        Sentinel, ask for the master. Either failing is BrokerUnavailable in a few words:
        redis-py's own message spells out every connection setting, and a cluster with
        no reachable node raises an exception that is not a RedisError at all."""
        where = ",".join(f"{host}:{port}" for host, port in self.target.hosts)
        try:
            if self.kind == "cluster":
                await self.reader.initialize()
            elif self._sentinel is not None:
                await self._sentinel.discover_master(self.target.service)
        except (RedisClusterException, RedisError, OSError) as exc:
            if self.kind == "cluster":
                problem = f"no node of the Redis Cluster at {where} answers"
            else:
                problem = f"no sentinel at {where} names a master {self.target.service!r}"
            raise BrokerUnavailable(f"Redis is unreachable: {problem}") from exc

    def pubsub(self) -> Any:
        """A fresh pub/sub object: redis-py's on one server or Sentinel, a
        :class:`.shards.ShardedPubSub` on a cluster."""
        if self.kind == "cluster":
            return ShardedPubSub(self.reader, self._shard_kwargs)
        return self.reader.pubsub()

    async def publish(self, channel: str, message: str | bytes) -> int:
        """Publish on a pub/sub channel; how many subscribers got it (on a cluster: of
        the shard that owns the channel, which is all of them with sharded pub/sub)."""
        if self.sharded:
            return int(await self.reader.spublish(channel, message))
        return int(await self.reader.publish(channel, message))

    async def subscribers(self, channel: str) -> int:
        """How many connections are subscribed to ``channel``."""
        if self.sharded:
            node = self.reader.get_node_from_key(channel)
            reply = await self.reader.execute_command(
                "PUBSUB SHARDNUMSUB", channel, target_nodes=node
            )
        else:
            reply = await self.reader.pubsub_numsub(channel)
        return int(reply[0][1]) if reply else 0

    async def describe(self) -> str:
        """What was found, for the banner: ``single server``, ``cluster with N masters`` or
        ``sentinel master NAME at HOST:PORT``."""
        if self.kind == "cluster":
            await self.reader.initialize()
            masters = len(self.reader.get_primaries())
            return f"cluster with {masters} master{'s' if masters != 1 else ''}"
        if self._sentinel is not None:
            host, port = await self._sentinel.discover_master(self.target.service)
            return f"sentinel master {self.target.service!r} at {host}:{port}"
        return "single server"

    async def close(self) -> None:
        """Close every connection, whatever happened to the servers. The clients share
        a pool they did not create (so ``aclose`` leaves it open): it is closed here,
        with the connections it still holds to a master that has since failed over.
        Each step runs even if one before it failed (a dead server's socket may error
        on close); the first error is raised at the end."""
        steps = [self.reader.aclose, self.writer.aclose]
        if self.kind != "cluster":
            steps.append(self.reader.connection_pool.disconnect)
        if self._sentinel is not None:
            steps.extend(client.aclose for client in self._sentinel.sentinels)
        failure: BaseException | None = None
        for step in steps:
            try:
                await step()
            except Exception as exc:  # closing the rest comes first
                failure = failure or exc
        if failure is not None:
            raise failure
