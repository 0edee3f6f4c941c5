"""The Python client end to end, against a real hub over real sockets (no mocks):
WebSocket, long polling and SSE, reconnection with recovery, token refresh, fallback.
(What is SSE's own: test_sse.py.)"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest

from backchannel.asyncio import ServerConnection, serve
from backchannel.client import (
    Client,
    ClientInfo,
    ConnectedEvent,
    DisconnectedEvent,
    Position,
    Publication,
    SubscribedEvent,
    TokenRefusedEvent,
    UnsubscribedEvent,
    default_longpoll_url,
    default_sse_url,
)
from backchannel.exceptions import (
    CommandError,
    DisconnectRequest,
    InvalidArgument,
    InvalidStatus,
)
from backchannel.hub import codes
from backchannel.hub.hooks import Hooks
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.session import Session
from backchannel.hub.token import TokenVerifier
from backchannel.hub.transports.http import HttpSessions
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.sse import ServerSentEvents
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol.http11 import Request, Response

SECRET = "test-secret-that-is-long-enough-for-hs256"
#: Every wait in these tests: long enough for a loaded CI machine, short enough to fail.
WAIT = 10.0

OPTIONS = HubOptions(
    namespaces={
        "chat": ChannelOptions(history_size=1000, presence=True, join_leave=True),
        "feed": ChannelOptions(history_size=10),
        "news": ChannelOptions(publish="server"),
        "count": ChannelOptions(presence=True, presence_count_only=True),
        "drop": ChannelOptions(history_size=1000, slow_consumer="drop"),
    },
    # One client per presence page: Client.presence must follow next_cursor.
    presence_page_size=1,
)

TRANSPORTS = pytest.mark.parametrize("transport", ["websocket", "longpoll", "sse"])


def token(user: str, *, ttl: float = 3600) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


async def add(session: Session, data: Any) -> Any:
    return data["a"] + data["b"]


async def refuse(session: Session, data: Any) -> Any:
    raise CommandError(1001, "no such procedure")


RPC = {"add": add, "refuse": refuse}


@asynccontextmanager
async def hub_server(
    *, refuse_websocket: bool = False, **hub_options: Any
) -> AsyncIterator[tuple[Hub, str]]:
    """A hub on a free port, long polling at /lp and SSE at /sse beside WebSocket; its
    WebSocket URL. With ``refuse_websocket``, upgrades are answered 403 (as a proxy that
    blocks WebSocket would) and only the HTTP transports work."""
    hub_options.setdefault("rpc", RPC)
    async with Hub(OPTIONS, tokens=TokenVerifier(secret=SECRET), **hub_options) as hub:
        sessions = HttpSessions(hub)
        endpoints = (LongPoll(hub, sessions=sessions), ServerSentEvents(hub, sessions=sessions))

        async def process_request(connection: ServerConnection, request: Request) -> Any:
            if refuse_websocket and request.headers.get("Upgrade", "").lower() == "websocket":
                return Response.text(403, "WebSocket is blocked here")
            for endpoint in endpoints:
                answer = await endpoint.handle(request)
                if answer is not None:
                    return answer
            return None

        async with serve(
            websocket_handler(hub), "127.0.0.1", 0, process_request=process_request
        ) as server:
            yield hub, f"ws://127.0.0.1:{server.port}/ws"


def client(url: str, transport: str, **options: Any) -> Client:
    """A client on one transport; reconnects quickly so tests stay fast."""
    options.setdefault("min_delay", 0.01)
    options.setdefault("max_delay", 0.1)
    return Client(url, transports=(transport,), **options)  # type: ignore[arg-type]


class Recorder:
    """Collects what a handler receives and lets a test wait for the n-th item."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait(self, n: int, what: Callable[[Any], bool] = lambda _: True) -> list[Any]:
        """Wait until ``n`` items matching ``what`` came; return them."""
        async with asyncio.timeout(WAIT):
            while True:
                matching = [item for item in self.items if what(item)]
                if len(matching) >= n:
                    return matching
                self._changed.clear()
                await self._changed.wait()


async def take(sub: AsyncIterator[Publication], n: int) -> list[Publication]:
    out: list[Publication] = []
    async with asyncio.timeout(WAIT):
        async for publication in sub:
            out.append(publication)
            if len(out) == n:
                break
    return out


# Connecting.


@TRANSPORTS
async def test_connect_with_a_token(transport: str) -> None:
    connected = Recorder()
    async with hub_server() as (_, url):
        async with client(url, transport, token=token("alice"), on_connected=connected) as c:
            assert c.state == "connected"
            assert c.user == "alice" and c.client_id and c.transport == transport
            assert c.expires is not None and c.expires > time.time()
            (event,) = await connected.wait(1)
            assert event == ConnectedEvent(c.client_id, "alice", transport)  # type: ignore[arg-type]
        assert c.state == "closed" and c.error is None


@TRANSPORTS
async def test_connect_with_a_callback_that_first_gives_an_expired_token(transport: str) -> None:
    tokens = [token("bob", ttl=-60), token("bob")]
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return tokens.pop(0)

    async with hub_server() as (_, url), client(url, transport, token=get_token) as c:
        # The hub answered 109; the client got a new token and connected again.
        assert c.user == "bob" and calls == 2


@TRANSPORTS
async def test_an_invalid_token_stops_the_client(transport: str) -> None:
    refused = Recorder()
    async with hub_server() as (_, url):
        c = client(url, transport, token="not-a-jwt", on_token_refused=refused)
        with pytest.raises(DisconnectRequest) as raised:
            await c.connect()
        assert raised.value.code == codes.INVALID_TOKEN.code
        assert c.state == "closed" and c.error is raised.value
        # The reason reaches the application as an event too.
        (event,) = await refused.wait(1)
        assert event == TokenRefusedEvent(3500, raised.value.reason, False)
        await c.close()


@TRANSPORTS
async def test_a_refused_token_asks_the_callback_for_a_new_one_once(transport: str) -> None:
    tokens = ["not-a-jwt", token("carol")]
    refused = Recorder()

    async def get_token() -> str:
        return tokens.pop(0)

    async with (
        hub_server() as (_, url),
        client(url, transport, token=get_token, on_token_refused=refused) as c,
    ):
        assert c.user == "carol" and tokens == []
        (event,) = await refused.wait(1)
        assert event == TokenRefusedEvent(3500, event.reason, True) and event.reason


@TRANSPORTS
@pytest.mark.parametrize("bad", ["invalid", "expired"])
async def test_a_token_refused_again_stops_the_client(transport: str, bad: str) -> None:
    calls = 0
    refused = Recorder()

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        return "not-a-jwt" if bad == "invalid" else token("dave", ttl=-60)

    async with hub_server() as (_, url):
        c = client(url, transport, token=get_token, on_token_refused=refused)
        with pytest.raises((DisconnectRequest, CommandError)) as raised:
            async with asyncio.timeout(WAIT):  # not a loop of reconnections
                await c.connect()
        code = codes.INVALID_TOKEN.code if bad == "invalid" else codes.TOKEN_EXPIRED.code
        assert raised.value.code == code and c.state == "closed"
        # Asked once more, then given up: not a loop of reconnections.
        assert calls == 2
        events = await refused.wait(2)
        assert [(e.code, e.retrying) for e in events] == [(code, True), (code, False)]
        await c.close()


# Channels.


@TRANSPORTS
async def test_subscribe_and_read_with_async_for(transport: str) -> None:
    async with (
        hub_server() as (_, url),
        client(url, transport, token=token("alice")) as alice,
        client(url, transport, token=token("bob")) as bob,
    ):
        sub = await alice.subscribe("feed:1")
        assert sub.state == "subscribed"
        await bob.subscribe("feed:1")
        for n in range(3):
            await bob.publish("feed:1", {"n": n})
        pubs = await take(sub, 3)
        assert [p.data for p in pubs] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert [p.offset for p in pubs] == [1, 2, 3]
        assert pubs[0].channel == "feed:1" and pubs[0].publisher is not None
        assert pubs[0].publisher.user == "bob"
        await sub.unsubscribe()
        assert sub.state == "unsubscribed" and alice.subscription("feed:1") is None
        async with asyncio.timeout(WAIT):
            assert [p async for p in sub] == []  # iteration ends


@TRANSPORTS
async def test_handlers_sync_and_async(transport: str) -> None:
    publications, joins, leaves = Recorder(), Recorder(), Recorder()

    async def on_publication(publication: Publication) -> None:
        await asyncio.sleep(0)  # an async handler is awaited, in order
        publications(publication)

    async with hub_server() as (_, url), client(url, transport, token=token("alice")) as alice:
        await alice.subscribe(
            "chat:room", on_publication=on_publication, on_join=joins, on_leave=leaves
        )
        async with client(url, transport, token=token("bob")) as bob:
            await bob.subscribe("chat:room")
            await bob.publish("chat:room", "hi")
            await bob.publish("chat:room", "there")
            got = await publications.wait(2)
            assert [p.data for p in got] == ["hi", "there"]
            who = await joins.wait(1, lambda info: info.user == "bob")
            assert isinstance(who[0], ClientInfo) and who[0].client == bob.client_id
        (left,) = await leaves.wait(1)
        assert left.user == "bob"


@TRANSPORTS
async def test_publish_ack_and_duplicate_with_the_same_key(transport: str) -> None:
    async with hub_server() as (_, url), client(url, transport, token=token("alice")) as c:
        sub = await c.subscribe("chat:dup")
        first = await c.publish("chat:dup", 1, idempotency_key="k1")
        again = await c.publish("chat:dup", 1, idempotency_key="k1")
        other = await c.publish("chat:dup", 2)
        assert first.offset == 1 and first.epoch and not first.duplicate
        assert again.duplicate and (again.offset, again.epoch) == (first.offset, first.epoch)
        assert other.offset == 2 and not other.duplicate
        assert [p.data for p in await take(sub, 2)] == [1, 2]


@TRANSPORTS
async def test_presence_history_rpc_send_and_errors(transport: str) -> None:
    sent: asyncio.Queue[Any] = asyncio.Queue()

    class Sent(Hooks):
        async def on_send(self, session: Session, data: Any) -> None:
            sent.put_nowait((session.user, data))

    async with (
        hub_server(hooks=Sent()) as (_, url),
        client(url, transport, token=token("alice")) as alice,
        client(url, transport, token=token("bob")) as bob,
    ):
        await alice.subscribe("chat:p")
        await bob.subscribe("chat:p")
        present = await alice.presence("chat:p")
        assert sorted(info.user for info in present.values()) == ["alice", "bob"]
        assert present[bob.client_id].user == "bob"  # type: ignore[index]
        stats = await alice.presence_stats("chat:p")
        assert (stats.clients, stats.users) == (2, 2)

        await alice.subscribe("count:c")
        assert (await alice.presence_stats("count:c")).clients == 1
        with pytest.raises(CommandError) as raised:
            await alice.presence("count:c")
        assert raised.value.code == codes.NOT_AVAILABLE.code

        for n in range(5):
            await alice.publish("chat:p", n)
        latest = await alice.history("chat:p", limit=2)
        assert [p.data for p in latest.publications] == [3, 4] and latest.offset == 5
        after = await alice.history("chat:p", since=Position(latest.epoch, 2))
        assert [p.data for p in after.publications] == [2, 3, 4] and after.recovered
        gone = await alice.history("chat:p", since=Position("another-epoch", 1))
        assert not gone.recovered

        assert await alice.rpc("add", {"a": 2, "b": 3}) == 5
        with pytest.raises(CommandError) as raised:
            await alice.rpc("refuse")
        assert (raised.value.code, raised.value.temporary) == (1001, False)
        with pytest.raises(CommandError) as raised:
            await alice.rpc("missing")
        assert raised.value.code == codes.METHOD_NOT_FOUND.code

        await alice.send({"hello": "server"})
        async with asyncio.timeout(WAIT):
            assert await sent.get() == ("alice", {"hello": "server"})

        # The low-level call returns the raw result, and refuses what the hub would.
        assert await alice.call("ping") == {}
        with pytest.raises(CommandError) as raised:
            await alice.call("no-such-method")
        assert raised.value.code == codes.METHOD_NOT_FOUND.code
        with pytest.raises(CommandError) as raised:
            await alice.publish("news:x", "only the server publishes here")
        assert raised.value.code == codes.PERMISSION_DENIED.code
        with pytest.raises(InvalidArgument):
            await alice.publish("chat:p", math.nan)
        assert alice.state == "connected"  # nothing invalid reached the hub


@TRANSPORTS
async def test_unsubscribed_by_the_server(transport: str) -> None:
    ended = Recorder()
    async with hub_server() as (hub, url), client(url, transport, token=token("alice")) as c:
        sub = await c.subscribe("chat:kick", on_unsubscribed=ended)
        await hub.unsubscribe("chat:kick", user="alice")
        (event,) = await ended.wait(1)
        assert event == UnsubscribedEvent("chat:kick", codes.UNSUBSCRIBED.code, event.reason)
        assert sub.state == "unsubscribed" and c.subscription("chat:kick") is None


@TRANSPORTS
async def test_a_slow_reader_loses_the_oldest_publications_not_memory(transport: str) -> None:
    async with (
        hub_server() as (_, url),
        client(url, transport, token=token("alice"), max_queue=3) as c,
    ):
        sub = await c.subscribe("chat:slow")
        for n in range(5):
            # Our own publication's push comes before the publish's reply.
            await c.publish("chat:slow", n)
        assert sub.dropped == 2
        assert [p.data for p in await take(sub, 3)] == [2, 3, 4]


# Reconnection and recovery.


@TRANSPORTS
async def test_reconnect_recovers_missed_publications_exactly_once(transport: str) -> None:
    """The reader is cut off (3004) and, while it waits for a new token, misses
    publications; once back, it gets each of them once, in order, then live ones."""
    release = asyncio.Event()
    token_calls = 0

    async def get_token() -> str:
        nonlocal token_calls
        token_calls += 1
        if token_calls > 1:
            await release.wait()  # holds the reconnection: the gap is certain
        return token("reader")

    subscribed, disconnected = Recorder(), Recorder()
    async with (
        hub_server() as (hub, url),
        client(url, transport, token=get_token, on_disconnected=disconnected) as reader,
        client(url, transport, token=token("writer")) as writer,
    ):
        sub = await reader.subscribe("chat:news", on_subscribed=subscribed)
        await writer.subscribe("chat:news")
        await writer.publish("chat:news", 0)
        assert [p.data for p in await take(sub, 1)] == [0]
        first_client = reader.client_id

        await hub.disconnect("reader", codes.TOKEN_EXPIRED_DISCONNECT)
        (event,) = await disconnected.wait(1)
        assert event == DisconnectedEvent(3004, event.reason, True)
        for n in range(1, 6):
            await writer.publish("chat:news", n)
        release.set()

        back = await subscribed.wait(2)
        assert back[1] == SubscribedEvent("chat:news", True, back[1].epoch, 6)
        assert sub.recovered is True and reader.client_id != first_client
        await writer.publish("chat:news", 6)
        pubs = await take(sub, 6)
        assert [p.data for p in pubs] == [1, 2, 3, 4, 5, 6]
        assert [p.offset for p in pubs] == [2, 3, 4, 5, 6, 7]
        # Nothing came twice: a round trip later, the queue is empty.
        await reader.call("ping")
        assert sub._queue == type(sub._queue)()


@TRANSPORTS
async def test_force_reconnect_renews_subscriptions(transport: str) -> None:
    connected = Recorder()
    async with (
        hub_server() as (hub, url),
        client(url, transport, token=token("reader"), on_connected=connected) as reader,
        client(url, transport, token=token("writer")) as writer,
    ):
        sub = await reader.subscribe("chat:again")
        await writer.subscribe("chat:again")
        await hub.disconnect("reader", codes.FORCE_RECONNECT)
        await connected.wait(2)
        # publish() waits for the renewed subscription; every publication comes once.
        for n in range(3):
            await writer.publish("chat:again", n)
        result = await reader.publish("chat:again", "back")
        assert not result.duplicate
        assert [p.data for p in await take(sub, 4)] == [0, 1, 2, "back"]


@TRANSPORTS
async def test_a_do_not_reconnect_code_stops_the_client(transport: str) -> None:
    disconnected = Recorder()
    async with hub_server() as (hub, url):
        c = client(url, transport, token=token("alice"), on_disconnected=disconnected)
        await c.connect()
        sub = await c.subscribe("chat:x")
        await hub.disconnect("alice", codes.FORCE_DISCONNECT)
        async with asyncio.timeout(WAIT):
            await c.wait_closed()
        assert c.state == "closed"
        assert isinstance(c.error, DisconnectRequest) and c.error.code == 3503
        (event,) = await disconnected.wait(1)
        assert event.code == 3503 and not event.reconnect
        with pytest.raises(DisconnectRequest):
            await c.rpc("add", {"a": 1, "b": 1})
        with pytest.raises(DisconnectRequest):
            await take(sub, 1)
        await c.close()


# Token refresh.


@TRANSPORTS
async def test_the_token_is_refreshed_before_it_expires(transport: str) -> None:
    """Tokens live 3 s; the connection outlives several of them without a disconnect."""
    calls: list[float] = []
    third = asyncio.get_running_loop().create_future()

    async def get_token() -> str:
        calls.append(time.monotonic())
        if len(calls) == 3 and not third.done():
            third.set_result(None)
        return token("alice", ttl=3)

    disconnected = Recorder()
    async with (
        hub_server() as (_, url),
        client(url, transport, token=get_token, on_disconnected=disconnected) as c,
    ):
        client_id, expires = c.client_id, c.expires
        async with asyncio.timeout(WAIT):
            await third  # two refreshes: past the first token's expiry
        assert await c.rpc("add", {"a": 1, "b": 2}) == 3
        assert c.client_id == client_id and disconnected.items == []
        assert c.expires is not None and expires is not None and c.expires > expires


# Falling back to long polling.


async def test_falls_back_to_long_polling_when_websocket_is_refused() -> None:
    connected = Recorder()
    async with (
        hub_server(refuse_websocket=True) as (_, url),
        Client(url, token=token("alice"), on_connected=connected) as c,
    ):
        assert c.transport == "longpoll"
        (event,) = await connected.wait(1)
        assert event.transport == "longpoll"
        sub = await c.subscribe("feed:fb")
        await c.publish("feed:fb", "over http")
        assert [p.data for p in await take(sub, 1)] == ["over http"]


async def test_websocket_only_stops_when_the_upgrade_is_refused() -> None:
    async with hub_server(refuse_websocket=True) as (_, url):
        c = Client(url, token=token("alice"), transports=("websocket",))
        with pytest.raises(InvalidStatus) as raised:
            await c.connect()
        assert raised.value.status == 403
        await c.close()


def test_the_long_poll_url_is_derived_from_the_websocket_url() -> None:
    assert Client("ws://example.com:8080/ws").longpoll_url == "http://example.com:8080/lp"
    assert Client("wss://example.com/ws").longpoll_url == "https://example.com/lp"
    assert Client("wss://a/ws", longpoll_url="https://b/poll").longpoll_url == "https://b/poll"
    # Any path that does not end in the segment /ws is replaced whole.
    assert Client("ws://example.com/socket").longpoll_url == "http://example.com/lp"
    assert Client("ws://example.com/news").sse_url == "http://example.com/sse"


def test_under_a_mount_the_http_urls_replace_the_last_segment_ws() -> None:
    mounted = Client("wss://example.com/realtime/ws?x=1")
    assert mounted.longpoll_url == "https://example.com/realtime/lp"
    assert mounted.sse_url == "https://example.com/realtime/sse"
    assert default_longpoll_url("ws://h:8000/a/b/ws") == "http://h:8000/a/b/lp"
    assert default_sse_url("ws://h:8000/ws") == "http://h:8000/sse"


@TRANSPORTS
async def test_a_subscription_made_by_the_server_is_handed_over_and_renewed(
    transport: str,
) -> None:
    given: asyncio.Queue[Any] = asyncio.Queue()
    async with (
        hub_server() as (hub, url),
        client(url, transport, token=token("alice"), on_subscription=given.put_nowait) as alice,
    ):
        await hub.subscribe("alice", "feed:orders")
        async with asyncio.timeout(WAIT):
            sub = await given.get()
        assert sub.channel == "feed:orders" and sub.state == "subscribed"
        assert alice.subscription("feed:orders") is sub
        await hub.publish("feed:orders", "one")
        async with asyncio.timeout(WAIT):
            assert (await anext(aiter(sub))).data == "one"
        # After a reconnection the client renews it with recovery, like its own.
        await hub.disconnect("alice", codes.FORCE_RECONNECT)
        await hub.publish("feed:orders", "two")
        async with asyncio.timeout(WAIT):
            assert (await anext(aiter(sub))).data == "two"


class Valve:
    """A TCP proxy between a client and the hub whose hub-to-client direction can be
    shut: the client then reads nothing, like one on a stalled network, while its own
    library keeps reading its socket. The proxy's socket to the hub has a small receive
    buffer, so the hub's side fills quickly."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.open = asyncio.Event()
        self.open.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket()
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        upstream.setblocking(False)
        await loop.sock_connect(upstream, ("127.0.0.1", self.port))

        async def to_hub() -> None:
            while data := await reader.read(65536):
                await loop.sock_sendall(upstream, data)

        async def to_client() -> None:
            while True:
                await self.open.wait()
                data = await loop.sock_recv(upstream, 65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()

        tasks = [loop.create_task(to_hub()), loop.create_task(to_client())]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            upstream.close()
            writer.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._server.close()
        await self._server.wait_closed()


async def test_publications_the_hub_dropped_for_a_stalled_reader_are_recovered_at_once() -> None:
    """Drop policy: the reader stalls, the hub drops what does not fit in its outbox and
    no later publication comes to show the gap; its ``dropped`` push makes the client
    read them from history: every publication, in order, once."""
    subscribed = Recorder()
    async with hub_server() as (hub, url):
        valve = Valve(int(url.rsplit(":", 1)[1].split("/")[0]))
        port = await valve.start()
        async with client(f"ws://127.0.0.1:{port}/ws", "websocket", token=token("r")) as reader:
            sub = await reader.subscribe("drop:feed", on_subscribed=subscribed)
            await subscribed.wait(1)
            valve.open.clear()
            published = 0
            # Bounded: the stalled sockets and the 1 MiB outbox hold a few MiB.
            for _ in range(1000):
                # Random text: the connection compresses, and must still fill up.
                await hub.publish("drop:feed", [published, os.urandom(20_000).hex()])
                published += 1
                # A turn of the loop between publications, as a real server has, so that
                # the outbox fills because the reader stalls, not within one turn.
                await asyncio.sleep(0)
                if hub.statistics().slow_consumers >= 3:
                    break
            # The last publications were dropped, and nothing comes after them.
            assert hub.statistics().slow_consumers >= 3
            valve.open.set()
            pubs = await take(sub, published)
            assert [p.data[0] for p in pubs] == list(range(published))
            assert [p.offset for p in pubs] == list(range(1, published + 1))
            # Nothing came twice: a round trip later, the queue is empty.
            await reader.call("ping")
            assert sub._queue == type(sub._queue)() and sub.dropped == 0
        await valve.close()
