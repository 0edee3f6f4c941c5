"""Three ``backchannel serve`` nodes on a real Redis Cluster (three masters, three
replicas) and on a real Sentinel setup: publications across nodes in order, presence,
the banner, and a Redis master killed while 300 WebSocket clients receive: every
accepted publication arrives once, in order, at every client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from app.test_cluster import held_relayed_poll
from helpers.cluster import AUTH, Balancer, Cluster, Node, Subscriber, api, token
from helpers.http import Http
from helpers.hub_client import HubClient
from helpers.redis_cluster import RedisCluster, RedisSentinels
from helpers.redis_server import require_redis

CONFIG = """\
[channels.chat]
history_size = 100
history_ttl = 3600.0
presence = true
join_leave = false

[channels.feed]
history_size = 1000
history_ttl = 600.0
presence = false
join_leave = false
publish = "server"
"""

#: Publications in a failover run, and after how many the Redis master is killed.
PUBLICATIONS = 60
KILL_AFTER = 20


async def publish_retrying(
    port: int, channel: str, count: int, kill_at: Callable[[int], None]
) -> tuple[list[tuple[int, Any]], int]:
    """Publish ``{"n": i}`` for i < ``count`` through the HTTP API, each retried with its
    idempotency key while refused with 116 (Redis failing over), as docs/api.md tells a
    backend to. ``kill_at(i)`` runs before each. Returns (offset, data) accepted, and
    how many attempts were refused."""
    http = await Http.open(port)
    accepted: list[tuple[int, Any]] = []
    refused = 0
    try:
        async with asyncio.timeout(90):
            for n in range(count):
                kill_at(n)
                data = {"n": n}
                body = json.dumps({"channel": channel, "data": data, "idempotency_key": f"k{n}"})
                while True:
                    reply = await http.exchange("POST", "/api/publish", body, AUTH)
                    if reply.status == 200:
                        accepted.append((reply.json()["offset"], data))
                        break
                    refused += 1
                    assert reply.status == 503 and reply.json()["error"]["code"] == 116, reply.text
                    await asyncio.sleep(0.05)  # a backend's retry pace, not a wait for state
    finally:
        await http.close()
    return accepted, refused


async def serve_on(tmp_path: Path, url: str) -> tuple[Cluster, list[Node]]:
    cluster = Cluster(tmp_path, url, config=CONFIG)
    return cluster, await cluster.start(3)


@pytest.fixture
async def redis_cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    require_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    with RedisCluster(folder) as cluster:
        yield cluster


async def test_three_nodes_on_a_redis_cluster_act_as_one_hub(
    tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    cluster, nodes = await serve_on(tmp_path, redis_cluster.url)
    try:
        for node in nodes:
            assert "(cluster with 3 masters)" in node.output()
        users = ["alice", "bob", "carol"]
        clients = []
        for user, node in zip(users, nodes, strict=True):
            client = cluster.track(await HubClient.open(node.port, path="/ws", token=token(user)))
            for room in ("chat:a", "chat:b", "chat:c"):
                await client.call("subscribe", channel=room)
            clients.append(client)
        # Three channels (on different shards, most likely), nine publications from
        # three nodes: each channel's order is the same at every client.
        for i in range(9):
            await clients[i % 3].call("publish", channel=f"chat:{'abc'[i % 3]}", data=i)
        seen = []
        for client in clients:
            publications = await client.publications(9)
            seen.append(sorted((p["channel"], p["offset"], p["data"]) for p in publications))
        assert seen[0] == seen[1] == seen[2]
        assert [(c, o) for c, o, _ in seen[0] if c == "chat:a"] == [
            ("chat:a", n) for n in (1, 2, 3)
        ]
        for node in nodes:
            reply = await api(node.port, "presence", {"channel": "chat:b"})
            assert sorted(w["user"] for w in reply.json()["clients"].values()) == sorted(users)
            reply = await api(node.port, "history", {"channel": "chat:c"})
            assert [p["data"] for p in reply.json()["publications"]] == [2, 5, 8]
    finally:
        await cluster.close()


async def failover_run(
    tmp_path: Path, url: str, kill: Callable[[], int], wait: Callable[[int], None]
) -> None:
    """300 WebSocket clients on three nodes, a publisher through node 0, ``kill`` (a
    Redis master; it returns once the process is gone, so the publications after it
    meet a dead master however slow the machine) before publication KILL_AFTER, and
    ``wait`` for the failover in a thread meanwhile: every accepted one reaches every
    client once, in order."""
    cluster, nodes = await serve_on(tmp_path, url)
    try:
        ports = [node.port for node in nodes]
        balancer = Balancer(ports)
        channel = "feed:failover"
        subscribers = [
            cluster.track(Subscriber(f"u{i}", channel, balancer, port=ports[i % 3]))
            for i in range(300)
        ]
        async with asyncio.timeout(60):
            for subscriber in subscribers:
                subscriber.start()
            await asyncio.gather(*(s.wait_subscribed() for s in subscribers))
        killing: list[asyncio.Future[None]] = []

        def kill_at(n: int) -> None:
            if n == KILL_AFTER:
                # SIGKILL and reap: milliseconds, so it may hold the loop.
                dead = kill()
                killing.append(asyncio.ensure_future(asyncio.to_thread(wait, dead)))

        accepted, refused = await publish_retrying(ports[0], channel, PUBLICATIONS, kill_at)
        # Publishing went on while the master was down: the failover happened mid-run.
        assert refused > 0
        await asyncio.wait_for(killing[0], 60)
        assert [offset for offset, _ in accepted] == list(range(1, PUBLICATIONS + 1))
        async with asyncio.timeout(60):
            await asyncio.gather(*(s.wait_offset(PUBLICATIONS) for s in subscribers))
        for subscriber in subscribers:
            assert subscriber.problems == [], (subscriber.user, subscriber.problems)
            assert subscriber.received == accepted, subscriber.user
    finally:
        await cluster.close()


async def test_a_cluster_master_killed_under_300_clients_loses_nothing_accepted(
    tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    await failover_run(
        tmp_path,
        redis_cluster.url,
        lambda: redis_cluster.sigkill_master_of("{feed:failover}"),
        redis_cluster.wait_taken_over,
    )


async def test_a_sentinel_failover_under_300_clients_loses_nothing_accepted(
    tmp_path: Path,
) -> None:
    require_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    with RedisSentinels(folder) as setup:
        await failover_run(tmp_path, setup.url, setup.sigkill_master, setup.wait_promoted)


async def test_long_polls_are_relayed_across_nodes_on_a_redis_cluster(
    tmp_path: Path, redis_cluster: RedisCluster
) -> None:
    cluster = Cluster(tmp_path, redis_cluster.url, config=CONFIG)
    try:
        # Polls held a minute: a relayed poll answered only by its timeout could not pass.
        env = cluster.env(BACKCHANNEL_LONGPOLL_POLL_TIMEOUT="60")
        owner, other = cluster.spawn(env=env), cluster.spawn(env=env)
        owner_port, other_port = await owner.ready(), await other.ready()
        http = await Http.open(owner_port)
        connect = json.dumps({"id": 1, "method": "connect", "params": {"token": token("lp")}})
        sid = (await http.exchange("POST", "/lp", connect)).json()["sid"]
        assert (await http.exchange("GET", f"/lp?sid={sid}&ack=0")).status == 200
        await http.close()
        # A send through the other node reaches the session's node (over the owner's
        # node channel, on whichever shard owns it) and its answer comes back.
        send = await Http.open(other_port)
        ping = json.dumps({"id": 2, "method": "ping", "params": {}})
        async with asyncio.timeout(20):
            assert (await send.exchange("POST", f"/lp?sid={sid}", ping)).status == 200
        # The ping's answer comes in a poll, relayed too.
        async with asyncio.timeout(20):
            reply = await send.exchange("GET", f"/lp?sid={sid}&ack=1")
        assert reply.status == 200 and '"id":2' in reply.text, reply.text
        await send.close()
        relayed_http, relayed = await held_relayed_poll(sid, owner_port, other_port, ack=2)
        # The owner dies: the relayed poll learns it from the shard that holds the
        # owner's channel (its subscription is gone), long before the poll timeout.
        await owner.kill()
        async with asyncio.timeout(20):
            answer = await relayed
        assert answer.status == 404, answer.text
        assert answer.json()["reconnect"] is True
        await relayed_http.close()
    finally:
        await cluster.close()
