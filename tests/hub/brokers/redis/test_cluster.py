"""RedisBroker on a real Redis Cluster (three masters, three replicas) and on a real
Sentinel setup: the broker contract, channels spread over the shards with sharded
pub/sub, and a master killed under load with nothing accepted lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as redis
from helpers.redis_cluster import RedisCluster, RedisSentinels
from helpers.redis_server import require_redis
from hub.brokers.broker_contract import HISTORY, BrokerContract, ManualClock, Recorder

from backchannel.exceptions import BrokerUnavailable
from backchannel.hub.brokers import HistoryOptions
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.wire import ClientInfo


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def broker(
    redis_cluster: RedisCluster, prefix: str, clock: ManualClock, recorder: Recorder
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_cluster.url, prefix=prefix, clock=clock)
    await broker.start(recorder)
    yield broker
    await broker.close()


class TestClusterBroker(BrokerContract):
    @pytest.fixture
    async def cluster(
        self, broker: RedisBroker, redis_cluster: RedisCluster, prefix: str, clock: ManualClock
    ) -> AsyncIterator[list[RedisBroker]]:
        other = RedisBroker(redis_cluster.url, prefix=prefix, clock=clock)
        await other.start(Recorder())
        yield [broker, other]
        await other.close()


async def test_channels_spread_over_the_shards_and_each_is_published_on_its_own(
    redis_cluster: RedisCluster, prefix: str, clock: ManualClock
) -> None:
    seen = [Recorder(), Recorder()]
    nodes = [RedisBroker(redis_cluster.url, prefix=prefix, clock=clock) for _ in seen]
    for node, recorder in zip(nodes, seen, strict=True):
        await node.start(recorder)
    assert nodes[0].describe() == "cluster with 3 masters"
    channels = [f"room{i}" for i in range(12)]
    for channel in channels:
        await nodes[1].subscribe(channel)
    for i in range(48):
        await nodes[i % 2].publish(channels[i % 12], i, history=HISTORY)
    events = await seen[1].wait_for(48)
    for channel in channels:
        offsets = [e[1].offset for e in events if e[1].channel == channel]
        assert offsets == [1, 2, 3, 4]
    # Sharded pub/sub: each channel's subscription is on the master that owns it, and
    # the channels are on all three masters. Publications went only there: a master
    # counts shard channels it serves, none of the others'.
    masters = {redis_cluster.master_of(f"{prefix}:c:{{{c}}}") for c in channels}
    assert len(masters) == 3
    for port in masters:
        client = redis.Redis(port=port)
        try:
            served = {n.decode() for n in await client.pubsub_shardchannels()}
        finally:
            await client.aclose()
        expected = {
            f"{prefix}:c:{{{c}}}"
            for c in channels
            if redis_cluster.master_of(f"{prefix}:c:{{{c}}}") == port
        }
        assert served >= expected and served & {f"{prefix}:c:{{{c}}}" for c in channels} == expected
    for node in nodes:
        await node.close()


#: Publications in a failover test, and when in them the master is killed.
PUBLICATIONS = 120
KILL_AFTER = 40
KEPT = HistoryOptions(size=PUBLICATIONS, ttl=600)


async def publish_through_a_failover(
    publisher: RedisBroker,
    kill: Callable[[], int],
    wait: Callable[[int], None],
    channel: str,
) -> tuple[int, int]:
    """Publish PUBLICATIONS numbers in ``channel``, each retried with its idempotency key
    until accepted (a publish refused while the master is down is retried, as a client
    does). Before publication KILL_AFTER the master is killed (``kill``, which returns
    once the process is gone: the publications after it meet a dead master, however
    slow the machine), and the failover is waited for (``wait``, blocking) in a thread
    while publishing goes on. Returns (refused publish attempts, duplicates reported)."""
    import asyncio

    refused = duplicates = 0
    failover: asyncio.Future[None] | None = None
    async with asyncio.timeout(60):
        for i in range(PUBLICATIONS):
            if i == KILL_AFTER:
                dead = await asyncio.to_thread(kill)
                failover = asyncio.ensure_future(asyncio.to_thread(wait, dead))
            while True:
                try:
                    result = await publisher.publish(
                        channel, i, history=KEPT, idempotency_key=f"k{i}"
                    )
                except BrokerUnavailable:
                    refused += 1
                    await asyncio.sleep(0.02)  # a client's retry pace, not a wait for state
                    continue
                duplicates += result.duplicate
                break
        assert failover is not None
        await failover
    return refused, duplicates


async def test_a_master_killed_under_load_loses_nothing_accepted(tmp_path: object) -> None:
    require_redis()
    from pathlib import Path

    with RedisCluster(Path(str(tmp_path))) as cluster:
        seen = Recorder()
        subscriber = RedisBroker(cluster.url, prefix="f", socket_timeout=2)
        publisher = RedisBroker(cluster.url, prefix="f", socket_timeout=2)
        await subscriber.start(seen)
        await publisher.start(Recorder())
        await subscriber.subscribe("orders")
        await subscriber.add_presence("orders", ClientInfo("c1", "alice"), 600)
        refused, _ = await publish_through_a_failover(
            publisher,
            lambda: cluster.sigkill_master_of("{orders}"),
            cluster.wait_taken_over,
            "orders",
        )
        assert refused > 0  # the master was down for a while: the test did fail over
        events = await seen.wait_for(PUBLICATIONS)
        assert seen.data() == list(range(PUBLICATIONS))
        assert [e[1].offset for e in events] == list(range(1, PUBLICATIONS + 1))
        # The channel's other keys moved with it, to the replica that took over.
        assert (await publisher.presence("orders")).keys() == {"c1"}
        await subscriber.close()
        await publisher.close()


async def test_sentinel_follows_a_failover_and_loses_nothing_accepted(tmp_path: object) -> None:
    require_redis()
    from pathlib import Path

    with RedisSentinels(Path(str(tmp_path))) as setup:
        seen = Recorder()
        subscriber = RedisBroker(setup.url, prefix="f", socket_timeout=2)
        publisher = RedisBroker(setup.url, prefix="f", socket_timeout=2)
        await subscriber.start(seen)
        await publisher.start(Recorder())
        assert subscriber.describe() == f"sentinel master 'mymaster' at 127.0.0.1:{setup.master}"
        await subscriber.subscribe("orders")
        refused, _ = await publish_through_a_failover(
            publisher, setup.sigkill_master, setup.wait_promoted, "orders"
        )
        assert refused > 0
        events = await seen.wait_for(PUBLICATIONS)
        assert seen.data() == list(range(PUBLICATIONS))
        assert [e[1].offset for e in events] == list(range(1, PUBLICATIONS + 1))
        await subscriber.close()
        await publisher.close()


async def test_a_channel_whose_slot_moves_is_followed_to_its_new_shard(
    redis_cluster: RedisCluster, prefix: str
) -> None:
    seen = Recorder()
    subscriber = RedisBroker(redis_cluster.url, prefix=prefix)
    publisher = RedisBroker(redis_cluster.url, prefix=prefix)
    await subscriber.start(seen)
    await publisher.start(Recorder())
    await subscriber.subscribe("moving")
    await publisher.publish("moving", "before", history=HISTORY)
    await seen.wait_for(1)
    source, target = redis_cluster.move_slot_of("{moving}")
    assert source != target
    # Redis dropped the subscription on the old shard; the node subscribes on the new
    # one and reads back what it may have missed. The publisher's client follows MOVED.
    for i in range(5):
        await publisher.publish("moving", i, history=HISTORY)
    events = await seen.wait_for(6)
    assert seen.data() == ["before", 0, 1, 2, 3, 4]
    assert [e[1].offset for e in events] == [1, 2, 3, 4, 5, 6]
    client = redis.Redis(port=target)
    try:
        served = {n.decode() for n in await client.pubsub_shardchannels()}
    finally:
        await client.aclose()
    assert f"{prefix}:c:{{moving}}" in served
    await subscriber.close()
    await publisher.close()


async def test_a_sentinel_broker_closed_leaves_no_connection_open(tmp_path: object) -> None:
    # The Sentinel clients share a pool they did not create, which their own close
    # leaves open: the broker must close it, or its connections linger (and, after a
    # failover, are garbage-collected unclosed in whatever test runs next).
    import asyncio
    from pathlib import Path

    require_redis()
    with RedisSentinels(Path(str(tmp_path))) as setup:
        broker = RedisBroker(setup.url, prefix="f", socket_timeout=2)
        await broker.start(Recorder())
        await broker.subscribe("orders")
        await broker.publish("orders", "hello", history=HISTORY)
        await broker.add_presence("orders", ClientInfo("c1", "alice"), 600)
        client = redis.Redis(port=setup.master)
        try:
            own = int(await client.client_id())

            async def ours() -> list[dict[str, object]]:
                return [
                    c
                    for c in await client.client_list(_type="normal")
                    if int(c["id"]) != own and not str(c["name"]).startswith("sentinel-")
                ]

            assert await ours()  # the broker's pub/sub and command connections
            await broker.close()
            # Redis drops a client when it reads the close, maybe after our next command
            # on another socket: look again (bounded) until the list is empty.
            for _ in range(1000):
                if not await ours():
                    break
                await asyncio.sleep(0.01)
            assert await ours() == []
        finally:
            await client.aclose()
