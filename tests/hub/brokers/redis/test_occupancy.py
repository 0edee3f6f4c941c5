"""Channel occupancy in Redis: what the contract cannot show with live nodes (entries
of a node that stopped refreshing expire, refreshes keep them, lapsed ones are put
back), on two RedisOccupancy instances standing for two nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from helpers.redis_server import RedisServer
from hub.brokers.broker_contract import ManualClock

from backchannel.exceptions import BrokerUnavailable
from backchannel.hub.brokers.calls import BrokerCalls
from backchannel.hub.brokers.redis.keys import Keys
from backchannel.hub.brokers.redis.occupancy import REFRESH_BATCH, RedisOccupancy

TTL = 15.0  # seconds, as OCCUPANCY_TTL_MS


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def keys(prefix: str) -> Keys:
    return Keys(prefix)


def node(client: redis.Redis, keys: Keys, name: str, clock: ManualClock) -> RedisOccupancy:
    return RedisOccupancy(
        client, keys, name, lambda: int(clock() * 1000), BrokerCalls(), ttl_ms=int(TTL * 1000)
    )


async def test_a_node_that_stops_refreshing_stops_counting_after_the_ttl(
    client: redis.Redis, keys: Keys, clock: ManualClock
) -> None:
    dead, live = node(client, keys, "dead", clock), node(client, keys, "live", clock)
    assert await dead.occupy("room")
    # Until its entry expires, the dead node still holds the channel (documented).
    clock.advance(TTL - 1)
    assert not await live.occupy("room")
    assert not await live.vacate("room")
    clock.advance(2)
    # Expired: nobody was told "vacated"; the next first subscriber occupies it.
    assert await live.occupy("room")
    assert await live.vacate("room")
    assert await client.exists(keys.occupancy("room")) == 0


async def test_refresh_keeps_a_live_node_counted(
    client: redis.Redis, keys: Keys, clock: ManualClock
) -> None:
    first, second = node(client, keys, "a", clock), node(client, keys, "b", clock)
    assert await first.occupy("room")
    for _ in range(3):
        clock.advance(TTL * 2 / 3)
        await first.refresh()
    assert not await second.occupy("room")
    assert not await first.vacate("room")
    assert await second.vacate("room")


async def test_refresh_does_not_bring_back_a_vacated_channel(
    client: redis.Redis, keys: Keys, clock: ManualClock
) -> None:
    first, second = node(client, keys, "a", clock), node(client, keys, "b", clock)
    await first.occupy("room")
    await first.vacate("room")
    await first.refresh()
    assert first.held == frozenset()
    assert await second.occupy("room")


async def test_lapsed_entries_are_put_back_by_the_refresh(
    client: redis.Redis, keys: Keys, clock: ManualClock
) -> None:
    first, second = node(client, keys, "a", clock), node(client, keys, "b", clock)
    channels = [f"c{i}" for i in range(REFRESH_BATCH + 2)]  # more than one batch
    for channel in channels:
        await first.occupy(channel)
    # As after a Redis restart without persistence: the entries are gone.
    await client.delete(keys.occupancy("c1"), keys.occupancy(channels[-1]))
    await first.refresh()
    assert not await second.occupy("c1")
    assert not await second.occupy(channels[-1])


async def test_nodes_occupying_at_once_make_exactly_one_first(
    client: redis.Redis, keys: Keys, clock: ManualClock
) -> None:
    nodes = [node(client, keys, str(i), clock) for i in range(10)]
    occupied = await asyncio.gather(*(n.occupy("room") for n in nodes))
    assert sorted(occupied) == [False] * 9 + [True]
    vacated = await asyncio.gather(*(n.vacate("room") for n in nodes))
    assert sorted(vacated) == [False] * 9 + [True]


async def test_close_removes_the_node_at_once(
    client: redis.Redis, keys: Keys, clock: ManualClock
) -> None:
    first, second = node(client, keys, "a", clock), node(client, keys, "b", clock)
    await first.occupy("room")
    await first.close()
    assert await second.occupy("room")


async def test_unreachable_redis_is_a_temporary_error(keys: Keys, clock: ManualClock) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    client = redis.Redis.from_url("redis://127.0.0.1:1/0")
    occupancy = node(client, keys, "a", clock)
    with pytest.raises(BrokerUnavailable):
        await occupancy.occupy("room")
    assert occupancy.held == frozenset()
    await client.aclose()
