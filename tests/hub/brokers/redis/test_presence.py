"""Presence in Redis: what the contract cannot show, on a real redis-server (what a
refresh costs in round trips and commands)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from helpers.redis_server import RedisServer
from hub.brokers.broker_contract import ManualClock

from backchannel.hub.brokers.calls import BrokerCalls
from backchannel.hub.brokers.redis.keys import Keys
from backchannel.hub.brokers.redis.presence import RedisPresence
from backchannel.hub.wire import ClientInfo

TTL = 60.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def calls() -> BrokerCalls:
    return BrokerCalls()


@pytest.fixture
def presence(
    client: redis.Redis, prefix: str, clock: ManualClock, calls: BrokerCalls
) -> RedisPresence:
    return RedisPresence(client, Keys(prefix), lambda: int(clock() * 1000), calls)


async def commands(client: redis.Redis) -> dict[str, int]:
    """Commands Redis ran so far, by name (INFO commandstats)."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


async def test_refreshing_many_entries_is_one_round_trip_and_keeps_them(
    presence: RedisPresence, client: redis.Redis, clock: ManualClock, calls: BrokerCalls
) -> None:
    # 600 entries in 3 channels, as a node's periodic refresh would send them.
    entries = [(f"room{i % 3}", ClientInfo(f"c{i}", f"u{i % 50}")) for i in range(600)]
    before = await commands(client)
    await presence.refresh(entries, TTL)
    after = await commands(client)
    assert calls.count["presence_refresh"] == 1
    # Per channel, not per entry: one script for each of the 3 channels (loaded once
    # before the first refresh).
    assert after["evalsha"] - before.get("evalsha", 0) == 3
    assert after["script|load"] - before.get("script|load", 0) == 1
    # Alive past the first TTL only because a second refresh extended them.
    clock.advance(TTL * 2 / 3)
    before = await commands(client)
    await presence.refresh(entries, TTL)
    assert calls.count["presence_refresh"] == 2
    # Only the 3 scripts this time: no SCRIPT LOAD or EXISTS round trip.
    ran = {k: v - before.get(k, 0) for k, v in (await commands(client)).items()}
    assert {k: v for k, v in ran.items() if v and k != "info"} == {
        "evalsha": 3,
        "zadd": 1200,
        "hset": 600,
        "pexpire": 9,
    }
    clock.advance(TTL * 2 / 3)
    for channel in ("room0", "room1", "room2"):
        assert await presence.count(channel) == (200, 50)
    clock.advance(TTL)
    assert await presence.count("room0") == (0, 0)


async def test_a_refresh_after_redis_lost_its_scripts_loads_it_again(
    presence: RedisPresence, client: redis.Redis
) -> None:
    who = ClientInfo("c1", "u1")
    await presence.refresh([("room", who)], TTL)
    await client.script_flush()  # as a restarted Redis would have none
    await presence.refresh([("room", who), ("hall", who)], TTL)
    assert await presence.members("hall") == {"c1": who}
