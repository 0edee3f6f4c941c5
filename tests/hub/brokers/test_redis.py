"""RedisBroker on a real redis-server: the broker contract, then what only a networked
broker has to get right (several nodes, losing Redis and getting it back)."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers.redis_server import RedisServer, require_redis
from hub.brokers.broker_contract import HISTORY, BrokerContract, ManualClock, Recorder

from backchannel.exceptions import BrokerUnavailable
from backchannel.hub.brokers import HistoryOptions
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.wire import ClientInfo

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    # Each test has keys of its own in the shared server.
    return f"t{next(_prefixes)}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def broker(
    redis_server: RedisServer, prefix: str, clock: ManualClock, recorder: Recorder
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_server.url, prefix=prefix, clock=clock)
    await broker.start(recorder)
    yield broker
    await broker.close()


class TestRedisBroker(BrokerContract):
    @pytest.fixture
    async def cluster(
        self, broker: RedisBroker, redis_server: RedisServer, prefix: str, clock: ManualClock
    ) -> AsyncIterator[list[RedisBroker]]:
        # A second node on the same Redis and prefix: the two act as one hub.
        other = RedisBroker(redis_server.url, prefix=prefix, clock=clock)
        await other.start(Recorder())
        yield [broker, other]
        await other.close()

    async def test_describe_names_a_single_server(self, broker: RedisBroker) -> None:
        assert broker.describe() == "single server"


async def test_two_nodes_see_one_stream_in_one_order(
    redis_server: RedisServer, prefix: str, clock: ManualClock
) -> None:
    seen = [Recorder(), Recorder()]
    nodes = [RedisBroker(redis_server.url, prefix=prefix, clock=clock) for _ in seen]
    for node, recorder in zip(nodes, seen, strict=True):
        await node.start(recorder)
        await node.subscribe("room")
    for i in range(20):
        await nodes[i % 2].publish("room", i, history=HISTORY, publisher=ClientInfo("c", "u"))
    for recorder in seen:
        events = await recorder.wait_for(20)
        assert [e[1].offset for e in events] == list(range(1, 21))
        assert recorder.data() == list(range(20))
    # History and presence are the same from either node.
    await nodes[0].add_presence("room", ClientInfo("c1", "alice"), 60)
    assert (await nodes[1].presence("room")).keys() == {"c1"}
    first, second = [await n.history("room", limit=5) for n in nodes]
    assert first == second and [p.data for p in first.publications] == [15, 16, 17, 18, 19]
    for node in nodes:
        await node.close()


async def test_redis_going_away_is_a_temporary_error_and_delivery_resumes_after(
    tmp_path: Path, recorder: Recorder
) -> None:
    require_redis()
    # Kept on the real clock for longer than the restart takes.
    KEPT = HistoryOptions(size=10, ttl=60)
    with RedisServer(tmp_path, persistent=True) as server:
        node = RedisBroker(server.url, prefix="x", socket_timeout=2)
        other = RedisBroker(server.url, prefix="x", socket_timeout=2)
        await node.start(recorder)
        await other.start(Recorder())
        await node.subscribe("orders")
        await other.publish("orders", "before", history=KEPT)
        await recorder.wait_for(1)

        server.stop()
        with pytest.raises(BrokerUnavailable):
            await other.publish("orders", "refused", history=KEPT)
        server.start()
        # Published while the node's pub/sub connection is still down: it reads it back
        # from history when it reconnects.
        await other.publish("orders", "during", history=KEPT)
        await other.publish("orders", "after", history=KEPT)
        await recorder.wait_for(3)
        assert recorder.data() == ["before", "during", "after"]
        assert [e[1].offset for e in recorder.events] == [1, 2, 3]
        await node.close()
        await other.close()


async def test_closing_answers_a_subscribe_still_waiting_for_redis(tmp_path: Path) -> None:
    require_redis()
    with RedisServer(tmp_path) as server:
        node = RedisBroker(server.url, prefix="x", socket_timeout=2)
        await node.start(Recorder())
        assert server.process is not None
        # Redis hangs: a SUBSCRIBE goes out and is never confirmed.
        server.process.send_signal(signal.SIGSTOP)
        try:
            waiting = asyncio.create_task(node.subscribe("orders"))
            closing = asyncio.create_task(node.close())
            # Answered by the close (a temporary error), not after the 10 s a subscribe
            # waits for its confirmation: a node's shutdown does not wait for it.
            async with asyncio.timeout(5):
                with pytest.raises(BrokerUnavailable):
                    await waiting
        finally:
            server.process.send_signal(signal.SIGCONT)
        await closing
        # Nor does a subscribe that comes after the close wait for a reader that is gone.
        async with asyncio.timeout(5):
            with pytest.raises(BrokerUnavailable):
                await node.subscribe("later")
