"""The Python client's outbox end to end (no mocks): publishes made while the server is
down, or whose reply was lost with the connection, count once; each publish's fate
reaches the application; a three-node cluster (``backchannel serve`` processes on a
real Redis) with a node killed loses and duplicates nothing, in both directions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from helpers.cluster import Cluster
from helpers.cluster import token as cluster_token
from helpers.redis_server import RedisServer, require_redis

from backchannel.asyncio import Server, ServerConnection, serve
from backchannel.client import (
    Client,
    DisconnectedEvent,
    Publication,
    PublishEvent,
    PublishResult,
    Subscription,
)
from backchannel.exceptions import CommandError, OutboxFull, PublishDropped
from backchannel.hub import codes
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.token import TokenVerifier
from backchannel.hub.transports.http import HttpSessions
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.sse import ServerSentEvents
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol.http11 import Request

SECRET = "test-secret-that-is-long-enough-for-hs256"
#: Every wait in these tests: long enough for a loaded machine, short enough to fail.
WAIT = 20.0

OPTIONS = HubOptions(
    namespaces={
        "chat": ChannelOptions(history_size=1000),
        "news": ChannelOptions(history_size=10, publish="server"),
    },
)

TRANSPORTS = pytest.mark.parametrize("transport", ["websocket", "longpoll", "sse"])


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + 3600)}, SECRET, algorithm="HS256")


class Restartable:
    """A hub whose listener can go down and come back on the same port, as a server
    process that restarts behind a fixed address; history and idempotency keys stay
    (the hub lives on), the connections and long-poll sessions do not."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.port = 0
        self._server: Server | None = None

    async def start(self) -> None:
        sessions = HttpSessions(self.hub)
        endpoints = (
            LongPoll(self.hub, sessions=sessions),
            ServerSentEvents(self.hub, sessions=sessions),
        )

        async def process_request(connection: ServerConnection, request: Request) -> Any:
            for endpoint in endpoints:
                answer = await endpoint.handle(request)
                if answer is not None:
                    return answer
            return None

        self._server = await serve(
            websocket_handler(self.hub), "127.0.0.1", self.port, process_request=process_request
        )
        self.port = self._server.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.aclose()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


@asynccontextmanager
async def restartable(**hub_options: Any) -> AsyncIterator[Restartable]:
    options = hub_options.pop("options", OPTIONS)
    async with Hub(options, tokens=TokenVerifier(secret=SECRET), **hub_options) as hub:
        server = Restartable(hub)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def client(url: str | list[str], transport: str = "websocket", **options: Any) -> Client:
    """A client that reconnects quickly, so that tests stay fast."""
    options.setdefault("min_delay", 0.01)
    options.setdefault("max_delay", 0.2)
    return Client(url, transports=(transport,), **options)  # type: ignore[arg-type]


class Recorder:
    """Collects what a handler receives; a test waits for the n-th item."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait(self, n: int) -> list[Any]:
        async with asyncio.timeout(WAIT):
            while len(self.items) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.items


async def take(sub: Subscription, n: int) -> list[Publication]:
    out: list[Publication] = []
    async with asyncio.timeout(WAIT):
        async for publication in sub:
            out.append(publication)
            if len(out) == n:
                break
    return out


async def nothing_more(c: Client, sub: Subscription) -> None:
    """Nothing else is queued for ``sub`` a round trip later (nothing came twice)."""
    await c.call("ping")
    assert sub._queue == type(sub._queue)()


def started(publishes: list[asyncio.Task[PublishResult]]) -> None:
    """Every publish task ran up to its wait (so each is in the outbox), none settled."""
    assert not any(task.done() for task in publishes)


@TRANSPORTS
async def test_publishes_made_while_the_server_is_down_arrive_once_after_it_returns(
    transport: str,
) -> None:
    disconnected, fates = Recorder(), Recorder()
    async with restartable() as server:
        reader = client(server.url, transport, token=token("reader"))
        writer = client(
            server.url,
            transport,
            token=token("writer"),
            on_disconnected=disconnected,
            on_publish=fates,
        )
        async with reader, writer:
            sub = await reader.subscribe("chat:down")
            await writer.subscribe("chat:down")
            assert (await writer.publish("chat:down", "before")).offset == 1

            await server.stop()
            await disconnected.wait(1)
            assert writer.live_connection() is None
            publishes = [asyncio.create_task(writer.publish("chat:down", n)) for n in range(20)]
            await asyncio.sleep(0)  # one turn: each task queues its publish
            started(publishes)
            assert writer.outbox_size == 20

            await server.start()
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*publishes)
            assert [r.offset for r in results] == list(range(2, 22))
            assert not any(r.duplicate for r in results)
            assert writer.outbox_size == 0
            pubs = await take(sub, 21)
            assert [p.data for p in pubs] == ["before", *range(20)]
            assert [p.offset for p in pubs] == list(range(1, 22))
            await nothing_more(reader, sub)
            events = await fates.wait(21)
            assert [e.fate for e in events] == ["acknowledged"] * 21
            assert [e.data for e in events] == ["before", *range(20)]
            assert [e.result for e in events[1:]] == results


class Cutter:
    """A TCP proxy between a client and the hub whose hub-to-client direction can be
    held (what the hub sends waits in the proxy) and whose connections can all be cut,
    as a network failure would: a reply the hub sent is then lost."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open = asyncio.Event()
        self.open.set()
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            while data := await src.read(65536):
                if held:
                    await self.open.wait()
                dst.write(data)
                await dst.drain()

        pipes = [
            asyncio.create_task(pipe(reader, up_writer, False)),
            asyncio.create_task(pipe(up_reader, writer, True)),
        ]
        try:
            # Either side's end ends both, as a TCP proxy does.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pipes:
                p.cancel()
            self._conns.discard(task)
            for w in (writer, up_writer):
                w.transport.abort()

    def cut(self) -> None:
        """Cut every connection at once, without a goodbye."""
        for task in list(self._conns):
            task.cancel()

    async def close(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()


async def test_a_publish_whose_reply_was_lost_is_sent_again_and_counts_once() -> None:
    connected = Recorder()
    async with restartable() as server:
        cutter = Cutter(server.port)
        port = await cutter.start()
        reader = client(server.url, token=token("reader"))
        writer = client(f"ws://127.0.0.1:{port}/ws", token=token("writer"), on_connected=connected)
        async with reader, writer:
            sub = await reader.subscribe("chat:lost")
            await writer.subscribe("chat:lost")
            cutter.open.clear()  # the hub's reply will not get through
            publish = asyncio.create_task(writer.publish("chat:lost", "once"))
            # The hub published it: the reader, on its own connection, has it.
            (first,) = await take(sub, 1)
            assert first.data == "once" and not publish.done()
            cutter.cut()
            cutter.open.set()
            async with asyncio.timeout(WAIT):
                result = await publish
            # Sent again on the next connection with the same key: a duplicate, with
            # the first one's position, and delivered once.
            assert len(await connected.wait(2)) == 2
            assert result.duplicate and (result.offset, result.epoch) == (1, first.epoch)
            await writer.publish("chat:lost", "next")
            assert [p.data for p in await take(sub, 1)] == ["next"]
            await nothing_more(reader, sub)
        await cutter.close()


async def test_each_publish_fate_reaches_the_application() -> None:
    fates = Recorder()
    async with restartable() as server:
        c = client(
            server.url,
            token=token("alice"),
            on_publish=fates,
            max_outbox=3,
            max_outbox_bytes=400,
            publish_timeout=0.5,
        )
        async with c:
            await c.subscribe("chat:fates")
            await c.subscribe("news:fates")
            ok = await c.publish("chat:fates", "ok", idempotency_key="k-ok")
            # Refused with its code: clients may not publish in news:.
            with pytest.raises(CommandError) as refused:
                await c.publish("news:fates", "no", idempotency_key="k-no")
            assert refused.value.code == codes.PERMISSION_DENIED.code
            # Too large for the outbox's bytes: refused before it is queued.
            with pytest.raises(OutboxFull):
                await c.publish("chat:fates", "x" * 400, idempotency_key="k-big")
            events = await fates.wait(3)
            assert events[0] == PublishEvent("chat:fates", "ok", "k-ok", "acknowledged", ok)
            assert (events[1].fate, events[1].error) == ("refused", refused.value)
            assert events[2].fate == "dropped" and isinstance(events[2].error, OutboxFull)

            await server.stop()
            # While the server is down: three fit, a fourth does not; none is
            # acknowledged within publish_timeout, so each is dropped, unsent.
            waiting = [asyncio.create_task(c.publish("chat:fates", n)) for n in range(3)]
            await asyncio.sleep(0)  # one turn: each task queues its publish
            started(waiting)
            with pytest.raises(OutboxFull):
                await c.publish("chat:fates", 3)
            async with asyncio.timeout(WAIT):
                outcomes = await asyncio.gather(*waiting, return_exceptions=True)
            assert all(isinstance(o, PublishDropped) and not o.sent for o in outcomes)
            events = await fates.wait(7)
            assert [e.fate for e in events[3:]] == ["dropped"] * 4
            assert c.outbox_size == 0


async def test_a_publish_whose_caller_went_away_is_still_sent() -> None:
    fates, disconnected = Recorder(), Recorder()
    async with restartable() as server:
        c = client(server.url, token=token("alice"), on_publish=fates, on_disconnected=disconnected)
        async with c:
            sub = await c.subscribe("chat:orphan")
            await server.stop()
            await disconnected.wait(1)
            caller = asyncio.create_task(c.publish("chat:orphan", "still"))
            await asyncio.sleep(0)  # one turn: the publish is queued
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert c.outbox_size == 1
            await server.start()
            (event,) = await fates.wait(1)
            assert event.fate == "acknowledged" and event.data == "still"
            assert [p.data for p in await take(sub, 1)] == ["still"]


async def test_a_full_outbox_after_a_reconnection_is_paced_not_flooded() -> None:
    """A hub with a small command burst and a slow publish rate: the outbox sends a few
    at a time and pauses when refused (111), so the client is not cut off for flooding
    (3505, not to reconnect) and every publish arrives once."""
    options = HubOptions(
        namespaces={"chat": ChannelOptions(history_size=1000)},
        command_burst=50,
        command_rate=50.0,
        publish_burst=30,
        publish_rate=30.0,
    )
    disconnected = Recorder()
    async with restartable(options=options) as server:
        c = client(server.url, token=token("alice"), on_disconnected=disconnected)
        async with c:
            sub = await c.subscribe("chat:paced")
            await server.stop()
            await disconnected.wait(1)
            # More than the command burst: sent at once, they would flood the hub.
            publishes = [asyncio.create_task(c.publish("chat:paced", n)) for n in range(60)]
            await asyncio.sleep(0)  # one turn: each task queues its publish
            started(publishes)
            await server.start()
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*publishes)
            assert sorted(r.offset for r in results) == list(range(1, 61))
            pubs = await take(sub, 60)
            assert sorted(p.data for p in pubs) == list(range(60))
            assert c.state == "connected" and len(disconnected.items) == 1
            await nothing_more(c, sub)


# A cluster: three ``backchannel serve`` nodes on one Redis.

CLUSTER_CONFIG = """\
[channels.chat]
history_size = 1000
history_ttl = 600.0
"""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    with RedisServer(folder) as server:
        yield server


async def test_a_killed_node_loses_and_duplicates_nothing_in_both_directions(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Alice is on the node that is killed, Bob on another; both publish all along. Each
    gets every publication of both, once, in one order, and each publish is
    acknowledged once: Alice's unanswered ones are sent again from her outbox to
    another node, and her subscription recovers what she missed."""
    cluster = Cluster(tmp_path, redis_server.url, config=CLUSTER_CONFIG)
    try:
        nodes = await cluster.start(3)
        urls = [f"ws://127.0.0.1:{node.port}/ws" for node in nodes]
        alice_moved = Recorder()
        # Alice tries node 2 first, and the others when it is gone.
        alice = cluster.track(
            client(
                [urls[2], urls[0], urls[1]],
                token=cluster_token("alice"),
                on_disconnected=alice_moved,
            )
        )
        bob = cluster.track(client(urls[0], token=cluster_token("bob")))
        await alice.connect()
        await bob.connect()
        channel = "chat:both"
        alice_sub = await alice.subscribe(channel)
        bob_sub = await bob.subscribe(channel)
        count = 40

        burst = 10
        unanswered: list[int] = []  # Alice's publishes not answered when the node died

        async def publish_all(c: Client, who: str, kill_at: int | None) -> list[PublishResult]:
            tasks = []
            for n in range(count):
                tasks.append(asyncio.create_task(c.publish(channel, [who, n])))
                if kill_at is not None and n == kill_at:
                    # The earlier ones of Alice's acknowledged, a burst of them sent:
                    # the node dies under it, before (some of) their replies.
                    await asyncio.gather(*tasks[: kill_at - burst + 1])
                    await nodes[2].kill()
                    unanswered.append(c.outbox_size)
                elif kill_at is None or not kill_at - burst < n < kill_at:
                    await asyncio.sleep(0.005)  # a steady pace, not a synchronisation
            return list(await asyncio.gather(*tasks))

        async with asyncio.timeout(60):
            alice_results, bob_results = await asyncio.gather(
                publish_all(alice, "alice", count // 3), publish_all(bob, "bob", None)
            )
        resent = sum(r.duplicate for r in alice_results)
        print(
            f"\nkilled node: {2 * count} publishes from two clients, Alice's node killed "
            f"during a burst of {burst} of hers ({unanswered[0]} unanswered then); "
            f"{resent} sent again after a lost reply (acknowledged as duplicates); "
            f"none lost, none delivered twice"
        )
        assert isinstance(alice_moved.items[0], DisconnectedEvent)
        assert alice.url in urls[:2]  # she moved to a surviving node
        offsets = sorted(r.offset for r in alice_results + bob_results)
        assert offsets == list(range(1, 2 * count + 1))  # each acknowledged once

        expected = sorted([["alice", n] for n in range(count)] + [["bob", n] for n in range(count)])
        for c, sub in ((alice, alice_sub), (bob, bob_sub)):
            pubs = await take(sub, 2 * count)
            assert [p.offset for p in pubs] == list(range(1, 2 * count + 1))
            assert sorted(p.data for p in pubs) == expected
            # Each publisher's own publications in the order they were made.
            for who in ("alice", "bob"):
                assert [p.data[1] for p in pubs if p.data[0] == who] == list(range(count))
            await nothing_more(c, sub)
    finally:
        await cluster.close()
