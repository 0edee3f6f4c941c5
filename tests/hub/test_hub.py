"""The hub end to end over real sockets: channels, recovery, presence, tokens, limits."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import jwt
import pytest
from helpers.asgi_server import uvicorn_server
from helpers.hub_client import HubClient, LongPollClient, ReplyError, SseClient
from helpers.raw_client import RawClient
from helpers.redis_cluster import RedisCluster
from helpers.redis_server import require_redis
from starlette.applications import Starlette
from starlette.routing import Mount

from backchannel.asgi import HubApp, Scope
from backchannel.asyncio import ServerConnection, Stream, connect, serve
from backchannel.exceptions import (
    BrokerUnavailable,
    CommandError,
    ConnectionClosedError,
    InvalidStatus,
)
from backchannel.hub import wire
from backchannel.hub.brokers import HistoryOptions, HistoryResult, MemoryBroker, PublishResult
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.hooks import Hooks
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.token import TokenVerifier
from backchannel.hub.transports.http import HttpSessions, SessionRelay
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.sse import ServerSentEvents
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol.http11 import Request, Response

SECRET = "test-secret-that-is-long-enough-for-hs256"

OPTIONS = HubOptions(
    namespaces={
        "chat": ChannelOptions(history_size=1000, presence=True, join_leave=True),
        "feed": ChannelOptions(history_size=10),
        "news": ChannelOptions(publish="server"),
        "drop": ChannelOptions(slow_consumer="drop"),
    },
    publish_rate=100.0,
    publish_burst=500,
    max_channels=50,
)


class AsgiHubClient(HubClient):
    """A WebSocket client of the ASGI app (HubApp mounted at /realtime under uvicorn)."""

    server = "uvicorn"

    @classmethod
    async def open(cls, port: int, *, path: str = "/realtime/ws", **params: Any) -> HubClient:
        return await super().open(port, path=path, **params)

    @classmethod
    async def raw(cls, port: int, *, path: str = "/realtime/ws") -> HubClient:
        return await super().raw(port, path=path)


class AsgiLongPollClient(LongPollClient):
    """A long-poll client of the ASGI app."""

    server = "uvicorn"

    def __init__(self, port: int, path: str = "/realtime/lp") -> None:
        super().__init__(port, path)


class AsgiSseClient(SseClient):
    """An SSE client of the ASGI app."""

    server = "uvicorn"

    def __init__(self, port: int, path: str = "/realtime/sse") -> None:
        super().__init__(port, path)


class ClusterNodes:
    """The hub nodes of the running ``hub_server`` block in the cluster variant: three
    hubs on one Redis Cluster, each serving on its own port. Clients of that variant
    open on the next node round-robin, whatever port the test names, so a test's first
    client is on the first node (the ``hub`` it gets) and its second on another node."""

    def __init__(self) -> None:
        #: The Redis Cluster's URL while a cluster-variant test runs, else "".
        self.url = ""
        self.ports: list[int] = []
        self._turn = 0

    def start(self, ports: list[int]) -> None:
        self.ports, self._turn = ports, 0

    def after(self, port: int) -> int:
        """The node after this one (a node other than the one a client is on)."""
        return self.ports[(self.ports.index(port) + 1) % len(self.ports)]

    def pick(self, port: int) -> int:
        if not self.ports:
            return port
        port = self.ports[self._turn % len(self.ports)]
        self._turn += 1
        return port


CLUSTER = ClusterNodes()
#: Hub nodes in the cluster variant.
CLUSTER_NODES = 3


class ClusterHubClient(HubClient):
    """A WebSocket client of the next node of the cluster variant."""

    server = "cluster"

    @classmethod
    async def open(cls, port: int, *, path: str = "/", **params: Any) -> HubClient:
        return await super().open(CLUSTER.pick(port), path=path, **params)

    @classmethod
    async def raw(cls, port: int, *, path: str = "/") -> HubClient:
        return await super().raw(CLUSTER.pick(port), path=path)


class ClusterLongPollClient(LongPollClient):
    """A long-poll client of the next node of the cluster variant."""

    server = "cluster"

    def __init__(self, port: int, path: str = "/lp") -> None:
        super().__init__(CLUSTER.pick(port), path)


class ClusterSseClient(SseClient):
    """An SSE client of the next node of the cluster variant, which POSTs its commands
    to the node after that one: each command goes through the relay (the broker) to
    the node holding the stream."""

    server = "cluster"

    def __init__(self, port: int, path: str = "/sse", *, post_port: int | None = None) -> None:
        port = CLUSTER.pick(port)
        if post_port is None and CLUSTER.ports:
            post_port = CLUSTER.after(port)
        super().__init__(port, path, post_port=post_port)


# The shared transport suite: these tests run over WebSocket, long polling and SSE, on
# backchannel's own server, on the ASGI app (backchannel.asgi) under uvicorn, and on
# three hub nodes sharing a Redis Cluster (three masters, three replicas).
ClientType = type[HubClient]
_LOCAL = [HubClient, LongPollClient, SseClient, AsgiHubClient, AsgiLongPollClient, AsgiSseClient]
_LOCAL_IDS = [
    *["websocket", "longpoll", "sse"],
    *["websocket-uvicorn", "longpoll-uvicorn", "sse-uvicorn"],
]
TRANSPORTS = pytest.mark.parametrize(
    "client_type",
    [*_LOCAL, ClusterHubClient, ClusterLongPollClient, ClusterSseClient],
    ids=[*_LOCAL_IDS, "websocket-cluster", "longpoll-cluster", "sse-cluster"],
)
#: For the tests that look into one hub's own sessions, which no other node shares.
ONE_NODE_TRANSPORTS = pytest.mark.parametrize("client_type", _LOCAL, ids=_LOCAL_IDS)


class Mounted:
    """What the test's uvicorn serves at /realtime: the HubApp of the ``hub_server``
    block that runs (one uvicorn per test, whatever hubs it starts)."""

    def __init__(self) -> None:
        self.app: HubApp | None = None
        self.port = 0

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.app is not None, "no hub_server block runs"
        await self.app(scope, receive, send)


MOUNTED = Mounted()


@pytest.fixture(autouse=True)
async def on_server(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A uvicorn for the tests whose clients speak to the ASGI app."""
    callspec = getattr(request.node, "callspec", None)
    client_type = callspec.params.get("client_type") if callspec is not None else None
    if getattr(client_type, "server", "serve") != "uvicorn":
        yield
        return
    async with uvicorn_server(Starlette(routes=[Mount("/realtime", MOUNTED)])) as port:
        MOUNTED.port = port
        try:
            yield
        finally:
            MOUNTED.port = 0


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One Redis Cluster for the module's cluster-variant tests, started on first use."""
    require_redis()
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def on_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """The Redis Cluster for the tests whose clients speak to the cluster variant."""
    callspec = getattr(request.node, "callspec", None)
    client_type = callspec.params.get("client_type") if callspec is not None else None
    if getattr(client_type, "server", "serve") != "cluster":
        yield
        return
    CLUSTER.url = request.getfixturevalue("redis_cluster").url
    try:
        yield
    finally:
        CLUSTER.url = ""


@pytest.fixture(autouse=True)
async def release_long_poll_clients() -> AsyncIterator[None]:
    yield
    await LongPollClient.release_all()


def token(user: str, *, ttl: float = 3600, secret: str = SECRET, **claims: Any) -> str:
    payload = {"sub": user, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


@asynccontextmanager
async def hub_server(
    options: HubOptions = OPTIONS, **serve_options: Any
) -> AsyncIterator[tuple[Hub, int]]:
    if CLUSTER.url:
        async with cluster_server(options, **serve_options) as answer:
            yield answer
        return
    async with Hub(options, tokens=TokenVerifier(secret=SECRET)) as hub:
        if MOUNTED.port:
            assert not serve_options, "options of serve() for the ASGI app"
            MOUNTED.app = HubApp(hub)
            try:
                yield hub, MOUNTED.port
            finally:
                # Held polls and streams end with the hub's 3000, before uvicorn waits
                # for them.
                await hub.close()
                MOUNTED.app = None
            return
        serve_options.setdefault("process_request", http_endpoints(hub))
        async with serve(
            websocket_handler(hub), "127.0.0.1", 0, compression=None, **serve_options
        ) as server:
            yield hub, server.port


_prefixes = itertools.count()


@asynccontextmanager
async def cluster_server(
    options: HubOptions, **serve_options: Any
) -> AsyncIterator[tuple[Hub, int]]:
    """Three hubs, each with its own RedisBroker on the shared Redis Cluster, each
    serving on its own port: the first node's hub and port."""
    # Keys of their own, so that tests on the shared cluster don't see each other's.
    prefix = f"e2e{next(_prefixes)}"
    async with AsyncExitStack() as stack:
        hubs: list[Hub] = []
        ports: list[int] = []
        for _ in range(CLUSTER_NODES):
            broker = RedisBroker(CLUSTER.url, prefix=prefix)
            hub = await stack.enter_async_context(
                Hub(options, broker=broker, tokens=TokenVerifier(secret=SECRET))
            )
            node_options = {"process_request": http_endpoints(hub, relay=broker), **serve_options}
            server = await stack.enter_async_context(
                serve(websocket_handler(hub), "127.0.0.1", 0, compression=None, **node_options)
            )
            hubs.append(hub)
            ports.append(server.port)
        CLUSTER.start(ports)
        try:
            yield hubs[0], ports[0]
        finally:
            CLUSTER.start([])


def http_endpoints(
    hub: Hub, *, relay: SessionRelay | None = None
) -> Callable[[ServerConnection, Request], Awaitable[Response | Stream | None]]:
    """Long polling at /lp and SSE at /sse, sharing one session table (and, on several
    nodes, the relay that carries a request to the node holding its session)."""
    table = HttpSessions(hub, relay=relay)
    endpoints = [LongPoll(hub, sessions=table), ServerSentEvents(hub, sessions=table)]

    async def process_request(
        connection: ServerConnection, request: Request
    ) -> Response | Stream | None:
        for endpoint in endpoints:
            answer = await endpoint.handle(request)
            if answer is not None:
                return answer
        return None

    return process_request


@TRANSPORTS
async def test_two_clients_see_each_others_publications_in_order(client_type: ClientType) -> None:
    async with hub_server() as (_, port):
        alice = await client_type.open(port, token=token("alice"))
        bob = await client_type.open(port, token=token("bob"))
        assert alice.info["user"] == "alice" and alice.info["client"] != bob.info["client"]
        for client in (alice, bob):
            await client.call("subscribe", channel="feed:1")
        acks = []
        for i in range(5):
            sender = alice if i % 2 == 0 else bob
            acks.append(await sender.call("publish", channel="feed:1", data={"n": i}))
        assert [ack["offset"] for ack in acks] == [1, 2, 3, 4, 5]
        for client in (alice, bob):
            pubs = await client.publications(5)
            assert [p["data"]["n"] for p in pubs] == [0, 1, 2, 3, 4]
            assert [p["offset"] for p in pubs] == [1, 2, 3, 4, 5]
            assert pubs[0]["info"]["user"] == "alice" and pubs[1]["info"]["user"] == "bob"
        await alice.close()
        await bob.close()


@TRANSPORTS
async def test_presence_and_join_leave(client_type: ClientType) -> None:
    async with hub_server() as (_, port):
        alice = await client_type.open(port, token=token("alice"))
        await alice.call("subscribe", channel="chat:room")
        bob = await client_type.open(port, token=token("bob"))
        await bob.call("subscribe", channel="chat:room")
        joins = [await alice.push(), await alice.push()]
        assert [p["push"] for p in joins] == ["join", "join"]
        assert joins[1]["info"]["user"] == "bob"
        present = await alice.call("presence", channel="chat:room")
        assert sorted(c["user"] for c in present["clients"].values()) == ["alice", "bob"]
        await bob.close()
        leave = await alice.push()
        assert leave["push"] == "leave" and leave["info"]["user"] == "bob"
        present = await alice.call("presence", channel="chat:room")
        assert [c["user"] for c in present["clients"].values()] == ["alice"]
        await alice.close()


async def test_presence_answers_a_page_at_a_time_or_counts_only() -> None:
    options = HubOptions(
        namespaces={"chat": ChannelOptions(presence=True)},
        presence_page_size=2,
        presence_page_max=3,
    )
    async with hub_server(options) as (_, port):
        clients = [await HubClient.open(port, token=token(user)) for user in "aab"]
        for client in clients:
            await client.call("subscribe", channel="chat:room")
        ids = sorted(client.info["client"] for client in clients)
        first = await clients[0].call("presence", channel="chat:room")
        assert list(first["clients"]) == ids[:2] and first["next_cursor"] == ids[1]
        rest = await clients[0].call("presence", channel="chat:room", cursor=ids[1])
        assert list(rest["clients"]) == ids[2:] and "next_cursor" not in rest
        whole = await clients[0].call("presence", channel="chat:room", limit=3)
        assert list(whole["clients"]) == ids and "next_cursor" not in whole
        counts = await clients[0].call("presence", channel="chat:room", count_only=True)
        assert counts == {"count": 3, "users": 2}
        for limit in (0, 4):
            with pytest.raises(ReplyError) as info:
                await clients[0].call("presence", channel="chat:room", limit=limit)
            assert (info.value.code, info.value.message) == (107, "limit: 1 to 3")
        for client in clients:
            await client.close()


@TRANSPORTS
async def test_a_client_cut_off_recovers_every_missed_publication_once(
    client_type: ClientType,
) -> None:
    async with hub_server() as (_, port):
        reader = await client_type.open(port, token=token("reader"))
        position = await reader.call("subscribe", channel="chat:news")
        writer = await client_type.open(port, token=token("writer"))
        await writer.call("subscribe", channel="chat:news")
        await writer.call("publish", channel="chat:news", data=0)
        (first,) = await reader.publications(1)
        reader.drop()
        for n in range(1, 101):
            await writer.call("publish", channel="chat:news", data=n)
        back = await client_type.open(port, token=token("reader"))
        result = await back.call(
            "subscribe",
            channel="chat:news",
            recover=True,
            epoch=position["epoch"],
            offset=first["offset"],
        )
        assert result["recovered"] is True
        assert [p["data"] for p in result["publications"]] == list(range(1, 101))
        offsets = [p["offset"] for p in result["publications"]]
        assert offsets == list(range(first["offset"] + 1, first["offset"] + 101))
        # Live publications continue after the recovered ones, with no duplicate.
        await writer.call("publish", channel="chat:news", data=101)
        (live,) = await back.publications(1)
        assert live["data"] == 101 and live["offset"] == offsets[-1] + 1
        # Nothing was sent twice: a ping's reply comes after anything already queued.
        await back.call("ping")
        extra = [back.pushes.get_nowait() for _ in range(back.pushes.qsize())]
        assert [p for p in extra if p["push"] == "publication"] == []
        await back.close()
        await writer.close()


@TRANSPORTS
async def test_a_position_older_than_the_history_is_not_recovered(client_type: ClientType) -> None:
    async with hub_server() as (_, port):
        client = await client_type.open(port, token=token("u"))
        top = await client.call("subscribe", channel="feed:small")
        for n in range(15):  # history keeps 10
            await client.call("publish", channel="feed:small", data=n)
        await client.call("unsubscribe", channel="feed:small")
        result = await client.call(
            "subscribe", channel="feed:small", recover=True, epoch=top["epoch"], offset=0
        )
        assert result["recovered"] is False and result["publications"] == []
        # Another epoch is not recoverable either.
        await client.call("unsubscribe", channel="feed:small")
        result = await client.call(
            "subscribe", channel="feed:small", recover=True, epoch="other", offset=14
        )
        assert result["recovered"] is False
        await client.close()


@TRANSPORTS
async def test_expired_and_forged_tokens_are_refused_with_their_codes(
    client_type: ClientType,
) -> None:
    async with hub_server() as (_, port):
        client = await client_type.raw(port)
        # Expired: an error the client answers by getting a new token; it stays connected.
        with pytest.raises(ReplyError) as info:
            await client.call("connect", token=token("alice", ttl=-10))
        assert info.value.code == 109
        # Forged (signed with another secret): disconnected, not to reconnect.
        forged = token("alice", secret="y" * 40)
        await client.send_raw(
            json.dumps({"id": 9, "method": "connect", "params": {"token": forged}})
        )
        push = await client.push()
        assert push["push"] == "disconnect" and push["code"] == 3500
        assert push["reconnect"] is False
        assert await client.closed() == (3500, "invalid token")
        # alg "none" is refused the same way.
        other = await client_type.raw(port)
        unsigned = jwt.encode({"sub": "alice"}, None, algorithm="none")
        await other.send_raw(
            json.dumps({"id": 1, "method": "connect", "params": {"token": unsigned}})
        )
        assert (await other.closed())[0] == 3500


@TRANSPORTS
async def test_user_limited_and_private_channels(client_type: ClientType) -> None:
    async with hub_server() as (_, port):
        alice = await client_type.open(port, token=token("alice"))
        carol = await client_type.open(port, token=token("carol"))
        await alice.call("subscribe", channel="chat:dm#alice,bob")
        with pytest.raises(ReplyError) as info:
            await carol.call("subscribe", channel="chat:dm#alice,bob")
        assert info.value.code == 103
        # A private channel needs a channel token for this client.
        with pytest.raises(ReplyError) as info:
            await alice.call("subscribe", channel="$chat:secret")
        assert info.value.code == 103
        good = token("alice", channel="$chat:secret", client=alice.info["client"])
        await alice.call("subscribe", channel="$chat:secret", token=good)
        stolen = token("alice", channel="$chat:secret", client=alice.info["client"])
        with pytest.raises(ReplyError) as info:
            await carol.call("subscribe", channel="$chat:secret", token=stolen)
        assert info.value.code == 103
        await alice.close()
        await carol.close()


@TRANSPORTS
async def test_idempotent_publish_is_delivered_once(client_type: ClientType) -> None:
    async with hub_server() as (_, port):
        client = await client_type.open(port, token=token("u"))
        await client.call("subscribe", channel="feed:orders")
        first = await client.call(
            "publish", channel="feed:orders", data="order 42 shipped", idempotency_key="k42"
        )
        again = await client.call(
            "publish", channel="feed:orders", data="order 42 shipped", idempotency_key="k42"
        )
        assert again == {**first, "duplicate": True}
        await client.call("publish", channel="feed:orders", data="next")
        pubs = await client.publications(2)
        assert [p["data"] for p in pubs] == ["order 42 shipped", "next"]
        await client.close()


@TRANSPORTS
async def test_server_only_channels_refuse_client_publishes(client_type: ClientType) -> None:
    async with hub_server() as (hub, port):
        client = await client_type.open(port, token=token("u"))
        await client.call("subscribe", channel="news:today")
        with pytest.raises(ReplyError) as info:
            await client.call("publish", channel="news:today", data="hi")
        assert info.value.code == 103
        await hub.publish("news:today", "from the server")
        (pub,) = await client.publications(1)
        assert pub["data"] == "from the server"
        await client.close()


async def test_a_slow_consumer_is_disconnected_and_the_others_get_everything() -> None:
    options = HubOptions(
        namespaces={"feed": ChannelOptions()}, publish_rate=1e9, publish_burst=10**9
    )
    async with hub_server(options, close_timeout=1) as (hub, port):
        fast = await HubClient.open(port, token=token("fast"))
        await fast.call("subscribe", channel="feed:firehose")
        # A raw client that subscribes, reads the two replies, and then stops reading.
        slow = await RawClient.open(port)
        await slow.command({"id": 1, "method": "connect", "params": {"token": token("slow")}})
        await slow.command({"id": 2, "method": "subscribe", "params": {"channel": "feed:firehose"}})
        replies = [json.loads((await slow.read_frame())[1]) for _ in range(2)]
        assert [reply["id"] for reply in replies] == [1, 2]
        session = next(s for s in hub.sessions if s.user == "slow")
        publisher = await HubClient.open(port, token=token("publisher"))
        await publisher.call("subscribe", channel="feed:firehose")
        big = "x" * 16_000
        received = []
        # Bounded: the stalled socket's buffers fill within a few MiB.
        for n in range(2000):
            await publisher.call("publish", channel="feed:firehose", data=[n, big])
            received += [p["data"][0] for p in await fast.publications(1)]
            if session.closed:
                break
        assert session.closed
        assert received == list(range(len(received)))
        # The slow client finds, after what it had not read, the reason and the close.
        frames = await slow.read_until_close()
        last_push = json.loads(frames[-2][1])
        assert last_push["push"] == "disconnect" and last_push["code"] == 3002
        assert frames[-1][0] == 8 and int.from_bytes(frames[-1][1][:2], "big") == 3002
        await fast.close()
        await publisher.close()


async def test_bad_input_gets_its_documented_answer_and_others_are_not_disturbed() -> None:
    options = HubOptions(
        namespaces={"feed": ChannelOptions()}, max_channels=20, publish_rate=1.0, publish_burst=5
    )
    async with hub_server(options, max_size=64 * 1024) as (_, port):
        bystander = await HubClient.open(port, token=token("bystander"))
        await bystander.call("subscribe", channel="feed:calm")

        client = await HubClient.open(port, token=token("noisy"))
        # An unknown method: error 104, the connection stays.
        with pytest.raises(ReplyError) as info:
            await client.call("teleport")
        assert info.value.code == 104
        # Bad parameters: 107.
        with pytest.raises(ReplyError) as info:
            await client.call("subscribe", channel=42)
        assert info.value.code == 107
        # 10 000 subscribes (in frames of 100): the first 20 (max_channels) succeed, the
        # next get 106, and once the command burst (500, counting every command, whatever
        # its result) is spent the connection ends with 3505: such churn would flood
        # every watcher of a channel with join and leave pushes.
        replies: list[dict[str, Any]] = []
        for start in range(0, 10_000, 100):
            batch = [("subscribe", {"channel": f"feed:{n}"}) for n in range(start, start + 100)]
            try:
                replies += await client.batch(batch)
            except ConnectionClosedError:
                break
        assert all("result" in reply for reply in replies[:20])
        assert {reply["error"]["code"] for reply in replies[20:]} == {106}
        # Three commands before these, refills while they ran: far fewer than 10 000.
        assert 400 <= len(replies) < 2000
        assert await client.closed() == (3505, "too many commands")

        # A publish flood on a fresh connection: 111 (temporary) after the publish burst,
        # within the command rate.
        client = await HubClient.open(port, token=token("noisy"))
        await client.call("subscribe", channel="feed:0")
        errors = []
        for n in range(50):
            try:
                await client.call("publish", channel="feed:0", data=n)
            except ReplyError as exc:
                errors.append((exc.code, exc.temporary))
        assert errors and set(errors) == {(111, True)} and len(errors) >= 40
        # Malformed JSON: nothing to answer, the connection ends with 3501.
        await client.send_raw("{not json")
        assert await client.closed() == (3501, "bad protocol")

        # An oversized message: the WebSocket layer closes with 1009.
        big = await HubClient.open(port, token=token("big"))
        await big.send_raw(json.dumps({"id": 2, "method": "ping", "params": {}}) + " " * 70_000)
        assert (await big.closed())[0] == 1009

        # Meanwhile the bystander was served as usual.
        await bystander.call("publish", channel="feed:calm", data="still here")
        (pub,) = await bystander.publications(1)
        assert pub["data"] == "still here"
        await bystander.close()


@TRANSPORTS
async def test_a_command_flood_ends_the_session_with_3505(client_type: ClientType) -> None:
    # A rate so low that no token comes back while the test runs: the burst is exact.
    options = HubOptions(namespaces={"feed": ChannelOptions()}, command_rate=1e-6, command_burst=10)
    async with hub_server(options) as (_, port):
        client = await client_type.open(port, token=token("noisy"))
        # connect took one token; nine pings pass, whatever they answer.
        for _ in range(9):
            await client.call("ping")
        with pytest.raises(ConnectionClosedError):
            await client.call("ping")
        assert await client.closed() == (3505, "too many commands")
        # Another connection has its own bucket.
        other = await client_type.open(port, token=token("calm"))
        await other.call("ping")
        await other.close()


@TRANSPORTS
async def test_commands_before_connect_and_a_connect_timeout(client_type: ClientType) -> None:
    options = HubOptions(connect_timeout=0.2)
    async with hub_server(options) as (_, port):
        client = await client_type.raw(port)
        with pytest.raises(ReplyError) as info:
            await client.call("subscribe", channel="x")
        assert info.value.code == 114
        # No connect command: 3005 once connect_timeout passes.
        assert await client.closed() == (3005, "no connect command in time")


async def test_an_origin_outside_the_allow_list_is_refused_with_403() -> None:
    async with hub_server(origins=["https://shop.example"]) as (_, port):
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{port}/", origin="https://evil.example")
        assert info.value.status == 403
        ws = await connect(f"ws://127.0.0.1:{port}/", origin="https://shop.example")
        client = HubClient(ws)
        await client.call("connect", token=token("alice"))
        await client.close()


async def test_a_token_refreshed_before_expiry_keeps_the_connection() -> None:
    async with hub_server() as (_, port):
        client = await HubClient.open(port, token=token("alice", ttl=2))
        short = client.info["expires"]
        result = await client.call("refresh", token=token("alice", ttl=3600))
        assert result["expires"] > short + 3000
        # Another user's token may not take over the connection.
        await client.send_raw(
            json.dumps({"id": 99, "method": "refresh", "params": {"token": token("mallory")}})
        )
        assert (await client.closed())[0] == 3500


async def test_a_token_that_expires_without_refresh_ends_the_connection() -> None:
    async with hub_server() as (_, port):
        # exp is whole seconds: ttl=2 leaves at least one second to connect first.
        client = await HubClient.open(port, token=token("alice", ttl=2))
        # The hub's timer fires at exp (at most two seconds): 3004, reconnect.
        push = await client.push()
        assert push["push"] == "disconnect" and push["code"] == 3004 and push["reconnect"]
        assert (await client.closed())[0] == 3004


async def test_connections_per_user_are_limited() -> None:
    options = HubOptions(namespaces={"feed": ChannelOptions()}, max_connections_per_user=2)
    async with hub_server(options) as (_, port):
        first = await HubClient.open(port, token=token("alice"))
        second = await HubClient.open(port, token=token("alice"))
        third = await HubClient.raw(port)
        await third.send_raw(
            json.dumps({"id": 1, "method": "connect", "params": {"token": token("alice")}})
        )
        assert await third.closed() == (3504, "too many connections for this user")
        # Another user is not affected.
        other = await HubClient.open(port, token=token("bob"))
        assert other.info["user"] == "bob"
        for client in (first, second, other):
            await client.close()


async def test_count_only_presence_history_rpc_and_send() -> None:
    received: list[object] = []

    async def add(session: Any, data: Any) -> Any:
        return {"method": "add", "echo": data, "user": session.user}

    class Received(Hooks):
        async def on_send(self, session: Any, data: Any) -> None:
            received.append(data)

    options = HubOptions(
        namespaces={"big": ChannelOptions(presence=True, presence_count_only=True, history_size=5)}
    )
    async with Hub(
        options, tokens=TokenVerifier(secret=SECRET), rpc={"add": add}, hooks=Received()
    ) as hub:
        async with serve(websocket_handler(hub), "127.0.0.1", 0) as server:
            a = await HubClient.open(server.port, token=token("alice"))
            b = await HubClient.open(server.port, token=token("alice"))
            c = await HubClient.open(server.port, token=token("bob"))
            for client in (a, b, c):
                await client.call("subscribe", channel="big:room")
            assert await a.call("presence", channel="big:room") == {"count": 3, "users": 2}
            for n in range(7):
                await a.call("publish", channel="big:room", data=n)
            history = await a.call("history", channel="big:room")
            assert [p["data"] for p in history["publications"]] == [2, 3, 4, 5, 6]
            assert history["offset"] == 7 and history["recovered"] is True
            latest = await a.call("history", channel="big:room", limit=2)
            assert [p["data"] for p in latest["publications"]] == [5, 6]
            answer = await a.call("rpc", method="add", data=[1, 2])
            assert answer == {"data": {"method": "add", "echo": [1, 2], "user": "alice"}}
            assert await a.call("send", data={"typing": True}) == {}
            assert received == [{"typing": True}]
            for client in (a, b, c):
                await client.close()


@TRANSPORTS
async def test_the_server_can_unsubscribe_and_disconnect_a_user(client_type: ClientType) -> None:
    async with hub_server() as (hub, port):
        alice = await client_type.open(port, token=token("alice"))
        bob = await client_type.open(port, token=token("bob"))
        for client in (alice, bob):
            await client.call("subscribe", channel="feed:x")
        await hub.unsubscribe("feed:x", user="alice")
        push = await alice.push()
        assert push == {
            "push": "unsubscribe",
            "channel": "feed:x",
            "code": 117,
            "reason": "unsubscribed by the server",
        }
        await hub.publish("feed:x", "only bob")
        (pub,) = await bob.publications(1)
        assert pub["data"] == "only bob"
        # alice no longer gets it: a ping's reply comes after anything queued before it.
        await alice.call("ping")
        assert alice.pushes.empty()
        await hub.disconnect("bob")
        assert (await bob.closed())[0] == 3503
        await alice.close()


async def test_a_slow_consumer_under_the_drop_policy_stays_and_is_told_what_it_missed() -> None:
    options = HubOptions(
        namespaces={"drop": ChannelOptions(slow_consumer="drop", history_size=10_000)},
        publish_rate=1e9,
        publish_burst=10**9,
    )
    async with hub_server(options) as (hub, port):
        fast = await HubClient.open(port, token=token("fast"))
        await fast.call("subscribe", channel="drop:firehose")
        slow = await RawClient.open(port)
        await slow.command({"id": 1, "method": "connect", "params": {"token": token("slow")}})
        await slow.command({"id": 2, "method": "subscribe", "params": {"channel": "drop:firehose"}})
        for _ in range(2):
            await slow.read_frame()
        session = next(s for s in hub.sessions if s.user == "slow")
        big = "x" * 16_000
        dropped = 0
        for n in range(2000):
            before = hub.statistics().slow_consumers
            await hub.publish("drop:firehose", [n, big])
            assert [p["data"][0] for p in await fast.publications(1)] == [n]
            if hub.statistics().slow_consumers > before:
                # Its outbox is full: this one is dropped for the slow session only.
                dropped = n + 1  # offsets start at 1: publication [n] has offset n + 1
                break
        assert dropped and not session.closed
        # Reading again, the slow client gets everything up to the dropped publication
        # (a backlog comes several to a frame), then a dropped push naming it, though no
        # later publication shows the gap: it reads the dropped one from history.
        lines: list[dict[str, Any]] = []
        for _ in range(10_000):
            _, payload = await slow.read_frame()
            lines += [json.loads(line) for line in payload.decode().split("\n")]
            if lines[-1]["push"] == "dropped":
                break
        *publications, notice = lines
        assert [p["offset"] for p in publications] == list(range(1, dropped))
        assert notice == {
            "push": "dropped",
            "channel": "drop:firehose",
            "epoch": publications[0]["epoch"],
            "offset": dropped,
        }
        await hub.publish("drop:firehose", "after the gap")
        _, payload = await slow.read_frame()
        assert json.loads(payload)["offset"] == dropped + 1
        slow.sock.close()
        await fast.close()


@TRANSPORTS
async def test_anonymous_connections_only_when_allowed(client_type: ClientType) -> None:
    async with hub_server() as (_, port):
        client = await client_type.raw(port)
        await client.send_raw(json.dumps({"id": 1, "method": "connect", "params": {}}))
        assert await client.closed() == (3500, "invalid token")
    options = HubOptions(anonymous=True, namespaces={"feed": ChannelOptions()})
    async with hub_server(options) as (_, port):
        client = await client_type.open(port)
        assert client.info["user"] == ""
        await client.call("subscribe", channel="feed:demo")
        await client.close()


@TRANSPORTS
async def test_presence_and_history_need_the_feature_and_a_subscription(
    client_type: ClientType,
) -> None:
    async with hub_server() as (_, port):
        client = await client_type.open(port, token=token("u"))
        for method, channel, code in (
            ("presence", "feed:1", 108),  # feed has no presence
            ("history", "news:1", 108),  # news has no history
            ("presence", "chat:1", 103),  # not subscribed
            ("history", "chat:1", 103),
            ("history", "nope:1", 102),  # namespace not configured
        ):
            with pytest.raises(ReplyError) as info:
                await client.call(method, channel=channel)
            assert info.value.code == code, (method, channel)
        await client.close()


# One node only: it reads the hub's own session table and connect timer.
@ONE_NODE_TRANSPORTS
async def test_connect_and_refresh_give_the_time_left_and_109_restarts_the_connect_clock(
    client_type: ClientType,
) -> None:
    async with hub_server() as (hub, port):
        client = await client_type.raw(port)
        with pytest.raises(ReplyError) as info:
            await client.call("connect", token=token("alice", ttl=-10))
        assert info.value.code == 109
        (session,) = hub.sessions
        before = hub._timers[session]
        # A second refusal restarts the time allowed to connect again, for a new token.
        with pytest.raises(ReplyError):
            await client.call("connect", token=token("alice", ttl=-10))
        after = hub._timers[session]
        assert after is not before and before.cancelled() and after.when() >= before.when()
        result = await client.call("connect", token=token("alice", ttl=600))
        assert 590 <= result["ttl"] <= 600 and result["expires"] - time.time() > 590
        refreshed = await client.call("refresh", token=token("alice", ttl=1200))
        assert 1190 <= refreshed["ttl"] <= 1200
        await client.close()


class RacingBroker(MemoryBroker):
    """A MemoryBroker where a publication lands while a subscriber's history is read,
    as when another node publishes at that moment."""

    racing: str | None = None

    async def history(self, channel: str, **kwargs: Any) -> HistoryResult:
        if channel == self.racing:
            self.racing = None
            await self.publish(channel, "raced", history=HistoryOptions(1000, 300))
        return await super().history(channel, **kwargs)


async def test_a_publication_during_recovery_is_delivered_once() -> None:
    broker = RacingBroker()
    async with Hub(OPTIONS, broker=broker, tokens=TokenVerifier(secret=SECRET)) as hub:
        async with serve(websocket_handler(hub), "127.0.0.1", 0) as server:
            client = await HubClient.open(server.port, token=token("u"))
            top = await client.call("subscribe", channel="chat:race")
            await client.call("publish", channel="chat:race", data="before")
            await client.publications(1)
            await client.call("unsubscribe", channel="chat:race")
            broker.racing = "chat:race"
            result = await client.call(
                "subscribe", channel="chat:race", recover=True, epoch=top["epoch"], offset=1
            )
            # The raced publication is in the recovered ones (history was read after it)
            # and it was also fanned out while the subscribe was pending: sent once only.
            assert [p["data"] for p in result["publications"]] == ["raced"]
            await client.call("ping")
            extra = [client.pushes.get_nowait() for _ in range(client.pushes.qsize())]
            assert [p for p in extra if p["push"] == "publication"] == []
            await client.call("publish", channel="chat:race", data="after")
            (live,) = await client.publications(1)
            assert live["data"] == "after" and live["offset"] == 3
            await client.close()


class RefreshRecorder(MemoryBroker):
    """A MemoryBroker that records each presence refresh the hub asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes: asyncio.Queue[list[tuple[str, str]]] = asyncio.Queue()

    async def refresh_presence(self, entries: Any, ttl: float) -> None:
        self.refreshes.put_nowait(sorted((c, who.client) for c, who in entries))
        await super().refresh_presence(entries, ttl)


async def test_a_node_refreshes_all_its_presence_entries_in_one_call() -> None:
    broker = RefreshRecorder()
    options = HubOptions(
        namespaces={"chat": ChannelOptions(presence=True), "feed": ChannelOptions()},
        presence_ttl=0.3,
    )
    async with Hub(options, broker=broker, tokens=TokenVerifier(secret=SECRET)) as hub:
        async with serve(websocket_handler(hub), "127.0.0.1", 0) as server:
            clients = [await HubClient.open(server.port, token=token(u)) for u in "ab"]
            for client in clients:
                for channel in ("chat:1", "chat:2", "feed:1"):
                    await client.call("subscribe", channel=channel)
            expected = sorted(
                (channel, client.info["client"])
                for client in clients
                for channel in ("chat:1", "chat:2")
            )
            # Refreshes that started before every subscription was made are partial;
            # within a few periods one has them all, in a single call.
            async with asyncio.timeout(10):
                while (entries := await broker.refreshes.get()) != expected:
                    assert set(entries) <= set(expected)
            for client in clients:
                await client.close()


class GatedBroker(MemoryBroker):
    """A broker whose node subscriptions wait until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def subscribe(self, channel: str) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().subscribe(channel)


class Sink:
    """A transport that keeps what it is given."""

    name = "sink"

    def __init__(self) -> None:
        self.written: list[str] = []

    def attach(self, outbox: Any) -> None:
        pass

    def deliver(self, text: str) -> bool:
        self.written.append(text)
        return True

    def wake(self) -> None:
        pass

    def close(self, disconnect: Any) -> None:
        pass

    @classmethod
    def deliver_many(cls, transports: Any, text: str) -> list[Any]:
        for transport in transports:
            transport.deliver(text)
        return []


async def test_subscribers_wait_for_the_node_subscription_and_survive_a_cancelled_first() -> None:
    broker = GatedBroker()
    async with Hub(HubOptions(), broker=broker) as hub:
        first, second, third = (hub.open_session(Sink()) for _ in range(3))
        subscribing = asyncio.create_task(hub.subscribe_session(first, "c"))
        await broker.entered.wait()
        waiting = asyncio.create_task(hub.subscribe_session(second, "c"))
        await asyncio.sleep(0)  # let it reach its wait (a turn of the loop, no timing)
        assert not waiting.done()  # not answered before the node is subscribed
        # The first subscriber's client goes away: the second gets a temporary error,
        # not a cancellation that would end its own connection.
        subscribing.cancel()
        with pytest.raises(BrokerUnavailable):
            await waiting
        with pytest.raises(asyncio.CancelledError):
            await subscribing
        # A later subscriber subscribes the node again, and is answered once it is.
        broker.entered.clear()
        later = asyncio.create_task(hub.subscribe_session(third, "c"))
        await broker.entered.wait()
        assert not later.done()
        broker.gate.set()
        await later
        assert hub.channels() == {"c": 1} and "c" in third.subscriptions


async def test_with_namespaces_and_no_default_a_plain_channel_name_is_refused() -> None:
    # Configuring namespaces lists what clients may use: a name outside them is not
    # quietly given the built-in options (clients may publish, no history...).
    options = HubOptions(namespaces={"chat": ChannelOptions()})
    async with hub_server(options) as (hub, port):
        client = await HubClient.open(port, token=token("alice"))
        for channel in ("lobby", "$lobby", "other:x"):
            with pytest.raises(ReplyError) as info:
                await client.call("subscribe", channel=channel)
            assert info.value.code == 102, channel
        with pytest.raises(CommandError) as caught:
            await hub.publish("lobby", "from the server")
        assert caught.value.code == 102
        assert await client.call("subscribe", channel="chat:x") == {}
        await client.close()


async def test_a_configured_default_takes_plain_channel_names() -> None:
    options = HubOptions(
        namespaces={"chat": ChannelOptions()}, default=ChannelOptions(history_size=5)
    )
    async with hub_server(options) as (_, port):
        client = await HubClient.open(port, token=token("alice"))
        await client.call("subscribe", channel="lobby")
        assert (await client.call("publish", channel="lobby", data=1))["offset"] == 1
        with pytest.raises(ReplyError) as info:
            await client.call("subscribe", channel="other:x")
        assert info.value.code == 102
        await client.close()


async def test_a_hub_without_namespaces_takes_plain_names_with_built_in_options() -> None:
    # An embedded hub needs no configuration (HubOptions()), as before.
    async with hub_server(HubOptions()) as (_, port):
        client = await HubClient.open(port, token=token("alice"))
        await client.call("subscribe", channel="lobby")
        await client.call("publish", channel="lobby", data=1)  # clients may publish
        assert (await client.publications(1))[0]["data"] == 1
        with pytest.raises(ReplyError) as info:
            await client.call("subscribe", channel="chat:x")
        assert info.value.code == 102
        await client.close()


async def test_a_publication_is_encoded_once_for_the_broker_and_every_subscriber() -> None:
    """The data the hub encoded to check its size is what the broker stores and what
    every subscriber's push is built from: one text, the same object for each."""
    async with Hub(HubOptions()) as hub:
        sinks = [Sink() for _ in range(3)]
        for sink in sinks:
            session = hub.open_session(sink)
            await hub.subscribe_session(session, "c")
            hub.go_live(session, "c")
        data = {"text": "héllo", "n": [1, 2.5, None]}
        result = await hub.publish("c", data)
        assert result.publication.encoded == wire.dumps(data)
        first = sinks[0].written[-1]
        assert all(sink.written[-1] is first for sink in sinks)
        assert json.loads(first) == {"push": "publication", "channel": "c", "data": data}
        [broadcast] = await hub.broadcast(["c"], "x")
        assert isinstance(broadcast, PublishResult) and broadcast.publication.encoded == '"x"'
