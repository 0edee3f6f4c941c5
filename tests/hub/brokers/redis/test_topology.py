"""What the broker talks to: the clients made from a URL, what connecting finds, and a
topology nobody answers for, told in one line. The cluster and Sentinel behaviour under
load is in test_cluster.py."""

from __future__ import annotations

import socket

import pytest
from helpers.redis_server import RedisServer

from backchannel.exceptions import BrokerUnavailable
from backchannel.hub.brokers.redis.topology import Topology


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_one_server_is_found_and_its_pubsub_counted(redis_server: RedisServer) -> None:
    topology = Topology(redis_server.url, socket_timeout=5.0)
    try:
        await topology.connect()
        assert topology.kind == "single"
        assert not topology.sharded
        assert await topology.describe() == "single server"
        pubsub = topology.pubsub()
        await pubsub.subscribe("t:news")
        assert await topology.subscribers("t:news") == 1
        assert await topology.publish("t:news", "hello") == 1
        await pubsub.aclose()
    finally:
        await topology.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+cluster://127.0.0.1:{port}/", "no node of the Redis Cluster at 127.0.0.1:{port}"),
        (
            "redis+sentinel://127.0.0.1:{port}/mymaster",
            "no sentinel at 127.0.0.1:{port} names a master 'mymaster'",
        ),
    ],
)
async def test_a_topology_nobody_answers_for_is_one_line(url: str, problem: str) -> None:
    port = closed_port()
    topology = Topology(url.format(port=port), socket_timeout=2.0)
    try:
        with pytest.raises(BrokerUnavailable) as raised:
            await topology.connect()
    finally:
        await topology.close()
    message = str(raised.value)
    assert problem.format(port=port) in message
    assert "\n" not in message
