"""End-to-end: several ``backchannel serve`` processes on one real redis-server act as
one hub (docs/howto/cluster.md). Nodes are killed, Redis restarts under load, and
``--workers`` shares a port; clients reconnect and recover as real ones do.

Run with ``-s`` to see the figures the failover tests print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster import (
    Balancer,
    Cluster,
    Publisher,
    Subscriber,
    api,
    healthz,
    node_env,
    token,
)
from helpers.http import Http, Reply
from helpers.hub_client import HubClient, SseClient
from helpers.redis_server import RedisServer, require_redis

#: For the load tests: a history that holds every message of a run, no join and leave
#: pushes (300 clients would get 90 000 of them), published by the server only. A file
#: with [channels] replaces the default namespaces, so chat is given again.
CONFIG = """\
[channels.chat]
history_size = 100
history_ttl = 3600.0
presence = true
join_leave = true

[channels.feed]
history_size = 1000
history_ttl = 600.0
presence = false
join_leave = false
publish = "server"
"""


def redis_in(tmp_path: Path, *, persistent: bool) -> RedisServer:
    require_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    return RedisServer(folder, persistent=persistent)


@asynccontextmanager
async def cluster_on(tmp_path: Path, redis: RedisServer) -> AsyncIterator[Cluster]:
    """A cluster (no node yet) on ``redis``; its clients are closed and its nodes killed
    at the end, whatever happened."""
    cluster = Cluster(tmp_path, redis.url, config=CONFIG)
    try:
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_in(tmp_path, persistent=False) as server:
        yield server


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Append-only with fsync always: what Redis acknowledged survives its restart."""
    with redis_in(tmp_path, persistent=True) as server:
        yield server


@pytest.fixture
async def cluster(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    async with cluster_on(tmp_path, redis_server) as cluster:
        yield cluster


@pytest.fixture
async def persistent_cluster(
    tmp_path: Path, persistent_redis: RedisServer
) -> AsyncIterator[Cluster]:
    async with cluster_on(tmp_path, persistent_redis) as cluster:
        yield cluster


async def finish(task: asyncio.Task[None], seconds: float) -> None:
    """Wait for ``task`` (TimeoutError after ``seconds``); cancelled if it is not done."""
    try:
        async with asyncio.timeout(seconds):
            await asyncio.shield(task)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def subscribe_all(subscribers: list[Subscriber]) -> None:
    """Start every subscriber at once (a hundred subscribes reach each node together,
    more than its Redis connections: they wait for one, none is refused) and wait until
    all are subscribed."""
    async with asyncio.timeout(60):
        for subscriber in subscribers:
            subscriber.start()
        await asyncio.gather(*(s.wait_subscribed() for s in subscribers))


async def wait_all(subscribers: list[Subscriber], offset: int, seconds: float) -> None:
    """Until every subscriber has applied ``offset``; name the laggards on timeout."""
    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(s.wait_offset(offset) for s in subscribers))
    except TimeoutError:
        behind = [
            (s.user, s.position, s.problems)
            for s in subscribers
            if s.position is None or s.position[1] < offset
        ]
        raise AssertionError(
            f"{len(behind)} clients short of offset {offset}: {behind[:5]}"
        ) from None


def check_delivery(subscribers: list[Subscriber], published: list[tuple[int, Any]]) -> None:
    """Every subscriber got exactly ``published`` ((offset, data)), in order, each once."""
    for subscriber in subscribers:
        assert subscriber.problems == [], (subscriber.user, subscriber.problems)
        assert subscriber.received == published, subscriber.user


async def test_clients_on_three_nodes_chat_see_everyone_and_the_same_history(
    cluster: Cluster,
) -> None:
    nodes = await cluster.start(3)
    users = ["alice", "bob", "carol"]
    clients = []
    for user, node in zip(users, nodes, strict=True):
        client = cluster.track(await HubClient.open(node.port, path="/ws", token=token(user)))
        assert client.info["user"] == user
        subscribed = await client.call("subscribe", channel="chat:room")
        assert subscribed["offset"] == 0
        clients.append(client)

    # Everyone publishes at once: Redis orders them; every node delivers that order.
    replies = await asyncio.gather(
        *(
            client.call("publish", channel="chat:room", data={"text": f"hi from {user}"})
            for user, client in zip(users, clients, strict=True)
        )
    )
    assert sorted(reply["offset"] for reply in replies) == [1, 2, 3]
    assert len({reply["epoch"] for reply in replies}) == 1
    seen = []
    for client in clients:
        publications = await client.publications(3)
        seen.append([(p["offset"], p["info"]["user"], p["data"]["text"]) for p in publications])
    assert [offset for offset, _, _ in seen[0]] == [1, 2, 3]
    assert seen[0] == seen[1] == seen[2]
    assert sorted(user for _, user, _ in seen[0]) == sorted(users)
    assert all(text == f"hi from {user}" for _, user, text in seen[0])

    # Presence: the same three users from a client of every node, and the API of every
    # node.
    for client in clients:
        present = (await client.call("presence", channel="chat:room"))["clients"]
        assert sorted(who["user"] for who in present.values()) == sorted(users)
    for node in nodes:
        reply = await api(node.port, "presence", {"channel": "chat:room"})
        assert reply.status == 200, reply.text
        assert sorted(who["user"] for who in reply.json()["clients"].values()) == sorted(users)

    # History: one stream, read the same through every node.
    histories = [await client.call("history", channel="chat:room") for client in clients]
    assert histories[0] == histories[1] == histories[2]
    assert [p["offset"] for p in histories[0]["publications"]] == [1, 2, 3]
    assert [
        (p["offset"], p["info"]["user"], p["data"]["text"]) for p in histories[0]["publications"]
    ] == seen[0]
    for node in nodes:
        reply = await api(node.port, "history", {"channel": "chat:room"})
        assert reply.status == 200, reply.text
        assert reply.json() == histories[0]

    # The API of one node acts on every node: bob (node 1) loses the room, carol (node 2)
    # is disconnected, both through node 0.
    reply = await api(nodes[0].port, "unsubscribe", {"channel": "chat:room", "user": "bob"})
    assert reply.status == 200, reply.text
    push = await clients[1].push()
    while push["push"] != "unsubscribe":
        push = await clients[1].push()
    assert (push["channel"], push["code"]) == ("chat:room", 117)
    reply = await api(nodes[0].port, "disconnect", {"user": "carol", "code": 4002, "reason": "bye"})
    assert reply.status == 200, reply.text
    assert await clients[2].closed() == (4002, "bye")
    assert await clients[0].call("ping") == {}


async def test_a_killed_node_loses_nothing(cluster: Cluster) -> None:
    nodes = await cluster.start(3)
    ports = [node.port for node in nodes]
    balancer = Balancer(ports)
    channel = "feed:failover"
    # 100 clients on each node, each its own user (max_connections_per_user is 100).
    subscribers = [
        cluster.track(Subscriber(f"u{i}", channel, balancer, port=ports[i % 3])) for i in range(300)
    ]
    await subscribe_all(subscribers)
    assert all(s.position is not None and s.position[1] == 0 for s in subscribers)
    doomed = [s for s in subscribers if s.port == ports[2]]
    assert len(doomed) == 100

    publisher = Publisher(ports[0], channel, interval=0.02)
    publishing = asyncio.create_task(publisher.run(80))
    try:
        async with asyncio.timeout(30):
            await publisher.wait(lambda p: p.sent >= 27)
        killed_at = time.monotonic()
        await nodes[2].kill()
    finally:
        await finish(publishing, 30)
    assert publisher.refused == []
    assert [offset for offset, _ in publisher.accepted] == list(range(1, 81))
    await wait_all(subscribers, 80, seconds=30)

    check_delivery(subscribers, publisher.accepted)
    moved = [s for s in subscribers if len(s.subscriptions) > 1]
    assert set(moved) == set(doomed)
    for subscriber in moved:
        assert subscriber.subscriptions[0][0] == ports[2]
        assert subscriber.port in ports[:2]
    # They missed publications while away, and got them back in their subscribe replies.
    recovered = [s.recovered for s in moved]
    assert sum(recovered) > 0
    last_back = max(s.subscriptions[-1][1] for s in moved) - killed_at
    refused = sum(len(s.failed_attempts) for s in subscribers)
    print(
        f"\nkilled node: {len(publisher.accepted)} messages to {len(subscribers)} clients, "
        f"{len(moved)} moved ({sum(s.port == ports[0] for s in moved)} to node 0, "
        f"{sum(s.port == ports[1] for s in moved)} to node 1), "
        f"{refused} connection attempts refused on the way; last moved client "
        f"resubscribed {last_back:.2f} s after the kill; {sum(recovered)} publications "
        f"recovered in subscribe replies (up to {max(recovered)} by one client); "
        f"{sum(s.skipped for s in subscribers)} publications skipped as seen before"
    )


async def test_redis_restarted_mid_run_nodes_and_clients_recover(
    persistent_cluster: Cluster, persistent_redis: RedisServer
) -> None:
    cluster, redis = persistent_cluster, persistent_redis
    nodes = await cluster.start(2)
    ports = [node.port for node in nodes]
    balancer = Balancer(ports)
    channel = "feed:restart"
    subscribers = [
        cluster.track(Subscriber(f"u{i}", channel, balancer, port=ports[i % 2])) for i in range(20)
    ]
    await subscribe_all(subscribers)

    publisher = Publisher(ports[0], channel, interval=0.02)
    publishing = asyncio.create_task(publisher.run(1000))
    try:
        async with asyncio.timeout(30):
            await publisher.wait(lambda p: len(p.accepted) >= 40)
        # A restart (redis.restart()) is over in about 0.1 s, in which the publisher may
        # get no refusal at all: stop, keep Redis down until 5 publishes were refused,
        # then start it again.
        restart_began = time.monotonic()
        await asyncio.to_thread(redis.stop)
        async with asyncio.timeout(30):
            await publisher.wait(lambda p: len(p.refused) >= 5)
        await asyncio.to_thread(redis.start)
        restarted = time.monotonic()
        accepted_then = len(publisher.accepted)
        # Nodes reconnect with backoff (up to 5 s): go on until 40 more were accepted.
        async with asyncio.timeout(30):
            await publisher.wait(lambda p: len(p.accepted) >= accepted_then + 40)
    finally:
        publisher.stop()
        await finish(publishing, 10)
    accepted, refused = publisher.accepted, publisher.refused
    offsets = [offset for offset, _ in accepted]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    # docs/api.md: 503 (116) means not accepted. The one publish in flight when Redis
    # stopped may still have been stored (Redis ran it, then went away before answering):
    # then it is in the stream like any other, and every client has it once, in order.
    # Nothing else that was refused may reach anyone, and nothing accepted may be missing.
    stream = (await api(ports[1], "history", {"channel": channel})).json()["publications"]
    stored = [(p["offset"], p["data"]) for p in stream]
    assert [offset for offset, _ in stored] == list(range(1, len(stored) + 1))
    assert all(entry in stored for entry in accepted)
    stored_anyway = [entry for entry in stored if entry not in accepted]
    assert all(data in refused for _, data in stored_anyway), stored_anyway
    assert len(stored_anyway) <= 1, stored_anyway  # one publish in flight at a time
    await wait_all(subscribers, stored[-1][0], seconds=30)
    check_delivery(subscribers, stored)
    reconnected = [s for s in subscribers if len(s.subscriptions) > 1]
    codes = sorted({str(code) for s in subscribers for code in s.close_codes})
    # How long after Redis was back the first publication accepted then reached everyone
    # (through the node that took it, and the other, which catches up from history).
    first_after = stored.index(accepted[accepted_then])  # its index in every client's list
    delivered = max(s.arrivals[first_after] for s in subscribers) - restarted
    print(
        f"\nRedis restart: {publisher.sent} publishes, {len(accepted)} accepted, "
        f"{len(refused)} refused (503, 116), {len(stored_anyway)} of them stored anyway; "
        f"Redis down for {restarted - restart_began:.2f} s; "
        f"{len(subscribers)} clients, {len(reconnected)} reconnected (close codes {codes}); "
        f"the first publication accepted after the restart reached every client "
        f"{delivered:.2f} s after Redis was back; "
        f"{sum(s.skipped for s in subscribers)} publications skipped as seen before"
    )


async def test_workers_share_a_port_through_redis(cluster: Cluster) -> None:
    parent = cluster.spawn("--workers", "2")
    # The parent prints the banner, once, when both workers listen.
    port = await parent.ready("2 workers")

    # One new connection per request: the kernel spreads them over the workers.
    nodes: set[str] = set()
    for _ in range(40):
        answer = await healthz(port)
        assert answer["status"] == "ok"
        nodes.add(answer["node"])
        if len(nodes) == 2:
            break
    assert len(nodes) == 2, nodes

    # 16 clients: both workers have some, but for a chance of 2 in 65 536.
    users = [f"w{i}" for i in range(16)]
    clients = [
        cluster.track(await HubClient.open(port, path="/ws", token=token(user))) for user in users
    ]
    for client in clients:
        await client.call("subscribe", channel="chat:workers")
    reply = await api(port, "presence", {"channel": "chat:workers"})
    assert reply.status == 200, reply.text
    assert sorted(who["user"] for who in reply.json()["clients"].values()) == sorted(users)
    present = (await clients[-1].call("presence", channel="chat:workers"))["clients"]
    assert sorted(who["user"] for who in present.values()) == sorted(users)
    published = await clients[0].call("publish", channel="chat:workers", data="to all")
    for client in clients:
        [publication] = await client.publications(1)
        assert (publication["data"], publication["offset"]) == ("to all", published["offset"])
        assert publication["info"]["user"] == "w0"

    assert await parent.stop() == 0
    for client in clients:
        assert await client.closed() == (3000, "server shutting down")
    assert parent.output().count("shutting down") == 3  # the parent and both workers


async def test_workers_need_a_broker(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "backchannel", "serve", "--workers", "2", "--port", "0"]
    result = await asyncio.to_thread(
        subprocess.run,
        command,
        env=node_env(None, ""),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "BACKCHANNEL_BROKER_URL" in result.stderr
    assert result.stdout == ""


# Shutdown with a crowd: a thousand WebSocket clients that reconnect at once when cut.

#: The handshake every light client sends (no extension offered: frames stay plain).
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame, masked with a zero key (RFC 6455 section 5.3: the key is for
    proxies, a zero one is valid)."""
    if len(payload) < 126:
        header = bytes([0x80 | opcode, 0x80 | len(payload)])
    else:
        header = bytes([0x80 | opcode, 0x80 | 126]) + len(payload).to_bytes(2, "big")
    return header + bytes(4) + payload


class LightClient(asyncio.Protocol):
    """A hub client on a bare asyncio protocol (a thousand fit in one test process): it
    connects and subscribes in its first frame, and when cut, connects again at once,
    at most ``RECONNECTS`` times. It records what each connection ended with."""

    RECONNECTS = 5

    def __init__(self, port: int, user: str, channel: str) -> None:
        self.port = port
        commands = [
            {"id": 1, "method": "connect", "params": {"token": token(user)}},
            {"id": 2, "method": "subscribe", "params": {"channel": channel}},
        ]
        text = "\n".join(json.dumps(command) for command in commands).encode()
        self.hello = UPGRADE + client_frame(0x1, text)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        #: Set once a connection got its subscribe answered.
        self.subscribed = asyncio.Event()
        #: Per connection: the close code received (None: cut without one), or the
        #: HTTP status of a refused upgrade.
        self.ends: list[int | None] = []
        #: Replies to the subscribe (results or errors), every connection's.
        self.subscribes: list[dict[str, Any]] = []
        #: Connections refused by the kernel (nobody listening).
        self.refused = 0
        self.attempts = 0
        self.stopped = False
        self.done = asyncio.Event()
        self._code: int | None = None

    def start(self) -> None:
        self.attempts += 1
        task = self.loop.create_task(self._connect())
        task.add_done_callback(lambda t: t.exception())

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: self, "127.0.0.1", self.port)
        except OSError:
            self.refused += 1
            self.done.set()  # nobody listens: a real client would back off here

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer, self.upgraded, self._code = b"", False, None
        transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            status = int(head.split(b" ", 2)[1])
            if status != 101:
                self._code = status
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded, self.buffer = True, rest
        while len(self.buffer) >= 2:
            opcode, length, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < start + length:
                return
            payload = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            if opcode == 0x1:
                for line in payload.decode().split("\n"):
                    message = json.loads(line)
                    if message.get("id") == 2:
                        self.subscribes.append(message)
                        self.subscribed.set()
            elif opcode == 0x8:
                self._code = int.from_bytes(payload[:2], "big") if payload else 1005
                assert self.transport is not None
                self.transport.write(client_frame(0x8, payload[:2]))

    def connection_lost(self, exc: Exception | None) -> None:
        self.ends.append(self._code)
        self.transport = None
        if self.stopped or self.attempts > self.RECONNECTS:
            self.done.set()
        else:
            self.start()  # at once, as the clients did

    def stop(self) -> None:
        self.stopped = True
        if self.transport is not None:
            self.transport.abort()


async def test_sigterm_with_a_thousand_reconnecting_clients_stops_at_once(
    cluster: Cluster,
) -> None:
    node = cluster.spawn()
    port = await node.ready()
    # A channel each: every subscribe, a reconnected client's too, waits on Redis.
    clients = [LightClient(port, f"u{i}", f"feed:crowd{i}") for i in range(1000)]
    # And a late wave, still connecting and subscribing when the signal comes.
    late = [LightClient(port, f"late{i}", f"feed:late{i}") for i in range(50)]
    try:
        async with asyncio.timeout(90):
            for i, client in enumerate(clients):
                client.start()
                if i % 100 == 99:  # in waves, as a crowd arrives through a balancer
                    await asyncio.gather(*(c.subscribed.wait() for c in clients[: i + 1]))
        assert all("result" in c.subscribes[0] for c in clients)

        for client in late:
            client.start()
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        # Repeated during the shutdown, as orchestrators do: the same request, not an
        # error (two signals sent together would be one for the kernel).
        async with asyncio.timeout(20):
            while True:  # the node's output is a file: read it until the line is there
                if "shutting down" in node.output():
                    break
                await asyncio.sleep(0.01)
        node.process.send_signal(signal.SIGTERM)
        assert await node.exited() == 0
        took = time.monotonic() - started
        print(f"\nSIGTERM with 1 000 clients connected: the node exited in {took:.2f} s")
        async with asyncio.timeout(30):
            await asyncio.gather(*(c.done.wait() for c in clients + late))

        assert "Traceback" not in node.errors(), node.errors()
        # The port is free at once: a replacement binds it.
        replacement = cluster.spawn("--port", str(port))
        assert await replacement.ready() == port
        for client in clients + late:
            # Whoever got in was told to come back later (3000); whoever came during
            # the shutdown was told so (503) or refused. A connection still in the
            # listener's queue when it closed is reset (None): nothing waited there.
            # Never a bare 1001 after a wait, as when newcomers got in and their
            # subscribes waited on a closed broker.
            assert set(client.ends) <= {3000, 503, None}, (client.ends, client.subscribes)
            assert client.refused <= 1
        for client in clients:
            assert client.ends[0] == 3000, (client.ends, client.subscribes)
        # A subscribe in flight at the signal is answered: a result, or the temporary
        # 116, never left without a word.
        for reply in (r for c in late for r in c.subscribes):
            assert "result" in reply or reply["error"]["code"] == 116, reply
    finally:
        for client in clients + late:
            client.stop()


# A long poll relayed to a node that dies.


async def held_relayed_poll(
    sid: str, owner: int, other: int, ack: int
) -> tuple[Http, asyncio.Task[Reply]]:
    """A poll sent through ``other`` and held by ``owner``, the session's node. Known
    held without a clock: a newer poll of a session answers the one held before it, so
    of a poll on each node, the one answered first came first and the other is held."""
    relayed_http = await Http.open(other)
    direct_http = await Http.open(owner)
    target = f"/lp?sid={sid}&ack={ack}"
    relayed = asyncio.create_task(relayed_http.exchange("GET", target, wait=None))
    direct = asyncio.create_task(direct_http.exchange("GET", target, wait=None))
    async with asyncio.timeout(20):
        done, _ = await asyncio.wait([relayed, direct], return_when=asyncio.FIRST_COMPLETED)
        if relayed in done:
            # The relayed poll came first: send another through ``other``; the direct
            # one's answer says it has arrived.
            assert (await relayed).status == 200
            relayed_http2 = await Http.open(other)
            relayed = asyncio.create_task(relayed_http2.exchange("GET", target, wait=None))
            await relayed_http.close()
            relayed_http = relayed_http2
        assert (await direct).status == 200
    await direct_http.close()
    return relayed_http, relayed


@pytest.mark.parametrize("how", ["killed", "frozen"])
async def test_a_poll_relayed_to_a_node_that_dies_gets_404_long_before_the_poll_timeout(
    cluster: Cluster, how: str
) -> None:
    # Polls held a minute: a relayed poll that waited for its timeout could not pass.
    env = cluster.env(BACKCHANNEL_LONGPOLL_POLL_TIMEOUT="60")
    owner, other = cluster.spawn(env=env), cluster.spawn(env=env)
    owner_port, other_port = await owner.ready(), await other.ready()
    http = await Http.open(owner_port)
    connect = json.dumps({"id": 1, "method": "connect", "params": {"token": token("lp")}})
    reply = await http.exchange("POST", "/lp", connect)
    sid = reply.json()["sid"]
    assert (await http.exchange("GET", f"/lp?sid={sid}&ack=0")).status == 200  # connect's
    await http.close()

    relayed_http, relayed = await held_relayed_poll(sid, owner_port, other_port, ack=1)
    started = time.monotonic()
    if how == "killed":
        await owner.kill()  # Redis sees its connections close at once
    else:
        # A machine that vanished: its connections stay open, it stops refreshing its
        # sign of life (the alive key lives 10 s).
        owner.process.send_signal(signal.SIGSTOP)
    try:
        # The test's own bound, far under the poll timeout of 60 s.
        async with asyncio.timeout(20):
            answer = await relayed
        took = time.monotonic() - started
        print(f"\nthe poll relayed to a {how} node was answered {answer.status} in {took:.2f} s")
        assert answer.status == 404, answer.text
        assert answer.json()["reconnect"] is True
        # A send relayed to the dead node is told the same, without waiting.
        send = await Http.open(other_port)
        ping = json.dumps({"id": 2, "method": "ping", "params": {}})
        async with asyncio.timeout(20):
            answer = await send.exchange("POST", f"/lp?sid={sid}", ping)
        assert answer.status == 404, answer.text
        assert answer.json()["reconnect"] is True
        await send.close()
    finally:
        if how == "frozen":
            owner.process.send_signal(signal.SIGCONT)
        await relayed_http.close()


# SSE on two nodes without sticky sessions.


async def test_sse_across_nodes_stream_on_one_commands_through_the_other(
    cluster: Cluster,
) -> None:
    # A load balancer without sticky sessions: the stream is held by node A, and every
    # command is POSTed to node B, which relays it to A (as long polling's are).
    node_a, node_b = await cluster.start(2)
    alice = cluster.track(SseClient(node_a.port, post_port=node_b.port))
    alice.info = await alice.call("connect", token=token("alice"))
    assert alice.info["user"] == "alice"
    bob = cluster.track(await HubClient.open(node_b.port, path="/ws", token=token("bob")))
    assert (await alice.call("subscribe", channel="chat:sse"))["offset"] == 0
    await bob.call("subscribe", channel="chat:sse")
    for n, sender in enumerate([alice, bob, alice]):
        await sender.call("publish", channel="chat:sse", data=n)
    for client in (alice, bob):
        publications = await client.publications(3)
        assert [p["data"] for p in publications] == [0, 1, 2]
    present = (await alice.call("presence", channel="chat:sse"))["clients"]
    assert sorted(who["user"] for who in present.values()) == ["alice", "bob"]
    # The API of node B ends alice's session, held by node A: the stream's last event.
    reply = await api(node_b.port, "disconnect", {"user": "alice", "code": 4003, "reason": "x"})
    assert reply.status == 200, reply.text
    assert await alice.closed() == (4003, "x")

    # A session whose node was killed: a command sent through B hears 404, at once.
    carol = cluster.track(SseClient(node_a.port, post_port=node_b.port))
    await carol.call("connect", token=token("carol"))
    assert carol.transport is not None
    sid = carol.transport.sid
    await node_a.kill()
    send = await Http.open(node_b.port)
    ping = json.dumps({"id": 9, "method": "ping", "params": {}})
    async with asyncio.timeout(20):
        answer = await send.exchange("POST", f"/sse?sid={sid}", ping)
    assert answer.status == 404 and answer.json()["reconnect"] is True
    await send.close()
