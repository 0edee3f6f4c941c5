"""Sharded pub/sub on a real Redis Cluster: one connection per shard, messages from
every shard through one queue, and a shard whose connection breaks subscribed again
with only its own channels named for catching up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers.redis_cluster import RedisCluster
from redis.asyncio.cluster import RedisCluster as ClusterClient

from backchannel.hub.brokers.redis.shards import ShardedPubSub

CHANNELS = [f"t:{{c{i}}}" for i in range(12)]
#: A generous bound against a hang, not a timing assertion.
WAIT = 30.0


@pytest.fixture
async def client(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    host, port = (
        redis_cluster.url.removeprefix("redis+cluster://").rstrip("/").split(",")[0].split(":")
    )
    client = ClusterClient(host=host, port=int(port))
    await client.initialize()
    yield client
    await client.aclose()


async def next_of(pubsub: ShardedPubSub, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT):
        while True:
            message = await pubsub.get_message(timeout=None)
            if message["type"] == kind:
                return message


async def test_each_channel_is_subscribed_on_the_shard_owning_its_slot(
    client: ClusterClient,
) -> None:
    pubsub = ShardedPubSub(client, {})
    try:
        await pubsub.subscribe(*CHANNELS)
        owners = {c: client.get_node_from_key(c).name for c in CHANNELS}
        assert {name: set(chans) for name, chans in pubsub.shards.items()} == {
            name: {c for c in CHANNELS if owners[c] == name} for name in set(owners.values())
        }
        assert len(pubsub.shards) == 3  # twelve channels land on all three masters
        for i, channel in enumerate(CHANNELS):
            assert await client.spublish(channel, str(i)) == 1
        got = {}
        for _ in CHANNELS:
            message = await next_of(pubsub, "smessage")
            got[message["channel"].decode()] = message["data"].decode()
        assert got == {c: str(i) for i, c in enumerate(CHANNELS)}
    finally:
        await pubsub.aclose()


async def test_a_broken_shard_connection_resubscribes_and_names_only_its_channels(
    client: ClusterClient,
) -> None:
    pubsub = ShardedPubSub(client, {})
    try:
        await pubsub.subscribe(*CHANNELS)
        victim = sorted(pubsub.shards)[0]
        lost = sorted(pubsub.shards[victim])
        node = client.get_node(node_name=victim)
        assert node is not None
        # Redis itself closes the shard's pub/sub connection (as when its master dies).
        killed = await client.execute_command("CLIENT KILL", "TYPE", "pubsub", target_nodes=node)
        assert killed >= 1
        message = await next_of(pubsub, "resubscribed")
        assert sorted(message["channels"]) == lost
        # Subscribed again: a publication on a moved channel arrives.
        assert await client.spublish(lost[0], "after") == 1
        arrived = await next_of(pubsub, "smessage")
        assert (arrived["channel"].decode(), arrived["data"].decode()) == (lost[0], "after")
    finally:
        await pubsub.aclose()
