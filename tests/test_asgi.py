"""backchannel.asgi: the hub mounted in a Starlette application, served by a real uvicorn
(and hypercorn), with the hub's own clients over WebSocket and long polling."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from helpers.asgi_server import hypercorn_server, uvicorn_server
from helpers.hub_client import HubClient, LongPollClient, SseClient
from helpers.raw_client import RawClient
from helpers.redis_server import RedisServer, require_redis
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from backchannel.asgi import HubApp, Scope, route
from backchannel.asyncio import Stream, connect
from backchannel.client import Client
from backchannel.exceptions import InvalidStatus
from backchannel.hub import Connected, Disconnect, Hooks, Hub, Session
from backchannel.hub.brokers import MemoryBroker
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.token import TokenVerifier
from backchannel.hub.transports.longpoll import Authenticate, LongPoll
from backchannel.protocol.http11 import Headers, Request, Response

SECRET = "test-secret-that-is-long-enough-for-hs256"
OPTIONS = HubOptions(namespaces={"feed": ChannelOptions(history_size=100)})
API_KEY = "an-api-key-for-the-asgi-tests"


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + 3600)}, SECRET, algorithm="HS256")


@pytest.fixture(autouse=True)
async def release_long_poll_clients() -> AsyncIterator[None]:
    yield
    await LongPollClient.release_all()


def starlette(realtime: HubApp, **options: Any) -> Starlette:
    """A host application: a page of its own, and the hub mounted at /realtime."""

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the host's page")

    return Starlette(routes=[Route("/", home), Mount("/realtime", realtime)], **options)


@asynccontextmanager
async def mounted(
    hub_app: dict[str, Any] | None = None, hooks: Hooks | None = None
) -> AsyncIterator[tuple[Hub, int]]:
    """A started hub, mounted at /realtime of a Starlette app under uvicorn."""
    async with Hub(OPTIONS, tokens=TokenVerifier(secret=SECRET), hooks=hooks) as hub:
        realtime = HubApp(hub, **(hub_app or {}))
        async with uvicorn_server(starlette(realtime)) as port:
            try:
                yield hub, port
            finally:
                # Held polls end with the hub's 3000, before the server waits for them.
                await hub.close()


async def exchange(ws: HubClient, lp: HubClient) -> None:
    """Each client publishes, and both see both publications in order."""
    for client in (ws, lp):
        await client.call("subscribe", channel="feed:1")
    await ws.call("publish", channel="feed:1", data="from websocket")
    await lp.call("publish", channel="feed:1", data="from long polling")
    for client in (ws, lp):
        pubs = await client.publications(2)
        assert [p["data"] for p in pubs] == ["from websocket", "from long polling"]


async def test_websocket_long_poll_and_sse_clients_exchange_publications_under_a_mount() -> None:
    async with mounted() as (hub, port):
        ws = await HubClient.open(port, path="/realtime/ws", token=token("alice"))
        lp = LongPollClient(port, "/realtime/lp")
        lp.info = await lp.call("connect", token=token("bob"))
        sse = SseClient(port, "/realtime/sse")
        sse.info = await sse.call("connect", token=token("carol"))
        assert (ws.info["user"], lp.info["user"], sse.info["user"]) == ("alice", "bob", "carol")
        assert hub.statistics().sessions_by_transport == {"websocket": 1, "longpoll": 1, "sse": 1}
        await exchange(ws, lp)
        await sse.call("subscribe", channel="feed:1")
        await lp.call("publish", channel="feed:1", data="to all three")
        for client in (ws, lp, sse):
            assert (await client.publications(1))[0]["data"] == "to all three"
        await sse.close()
        # The host application still answers its own routes.
        async with httpx.AsyncClient() as http:
            page = await http.get(f"http://127.0.0.1:{port}/")
            assert page.text == "the host's page"
            # Nothing of the hub outside its prefix.
            assert (await http.post(f"http://127.0.0.1:{port}/lp")).status_code == 404
        await ws.close()
        await lp.close()


async def test_http_routes_files_api_and_the_body_limit() -> None:
    limits = {"max_body_size": 1000, "max_message_size": 1000}
    async with mounted({"api_key": API_KEY, **limits}) as (_, port):
        client = await HubClient.open(port, path="/realtime/ws", token=token("alice"))
        await client.call("subscribe", channel="feed:api")
        base = f"http://127.0.0.1:{port}/realtime"
        async with httpx.AsyncClient() as http:
            script = await http.get(f"{base}/js/backchannel.js")
            assert script.status_code == 200
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"
            assert script.headers["access-control-allow-origin"] == "*"
            assert "export" in script.text
            module = await http.get(f"{base}/js/lib/wire.js")
            assert module.status_code == 200
            head = await http.head(f"{base}/js/backchannel.js")
            assert head.content == b"" and int(head.headers["content-length"]) == len(
                script.content
            )
            # The HTTP API publishes to the WebSocket client.
            published = await http.post(
                f"{base}/api/publish",
                headers={"Authorization": f"apikey {API_KEY}"},
                json={"channel": "feed:api", "data": {"n": 1}},
            )
            assert published.status_code == 200 and published.json()["offset"] == 1
            assert published.headers["cache-control"] == "no-store"
            (pub,) = await client.publications(1)
            assert pub["data"] == {"n": 1}
            wrong = await http.post(f"{base}/api/publish", json={"channel": "feed:api"})
            assert wrong.status_code == 401
            # A body over max_body_size: 413, in the API's error shape.
            large = await http.post(f"{base}/lp", content=b"x" * 1001)
            assert large.status_code == 413
            assert large.json()["error"]["code"] == 113
            # A plain GET of the WebSocket's path, and a path that is not the hub's.
            assert (await http.get(f"{base}/ws")).status_code == 426
            assert (await http.get(f"{base}/nothing")).status_code == 404
        await client.close()
        # A WebSocket message over max_message_size, counted in bytes of UTF-8 (here
        # under 1000 characters, but over 1000 bytes): 1009.
        large = await HubClient.raw(port, path="/realtime/ws")
        text = json.dumps(
            {"id": 1, "method": "ping", "params": {"a": "é" * 600}}, ensure_ascii=False
        )
        assert len(text) < 1000 < len(text.encode())
        await large.send_raw(text)
        assert (await large.closed())[0] == 1009


async def test_without_an_api_key_there_is_no_api() -> None:
    async with mounted() as (_, port), httpx.AsyncClient() as http:
        answer = await http.post(
            f"http://127.0.0.1:{port}/realtime/api/publish",
            headers={"Authorization": f"apikey {API_KEY}"},
            json={"channel": "feed:api", "data": 1},
        )
        assert answer.status_code == 404


async def test_new_sessions_are_rate_limited_per_address() -> None:
    # Two opens at once, then (at one per 1000 s) none: WebSocket, long poll or SSE.
    async with mounted({"open_rate": 0.001, "open_burst": 2}) as (_, port):
        first = await HubClient.open(port, path="/realtime/ws", token=token("a"))
        second = LongPollClient(port, "/realtime/lp")
        await second.call("connect", token=token("b"))
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{port}/realtime/ws")
        assert refused.value.status == 429
        assert json.loads(refused.value.body)["error"]["code"] == 111
        base = f"http://127.0.0.1:{port}/realtime"
        async with httpx.AsyncClient() as http:
            opened = await http.post(f"{base}/lp", content=b'{"id":1,"method":"connect"}')
            assert opened.status_code == 429 and opened.headers["retry-after"] == "1"
            streamed = await http.get(f"{base}/sse", params={"frame": "{}"})
            assert streamed.status_code == 429
            # What is not an open is not counted: the long-poll session still polls.
            await second.call("ping")
        await first.close()
        await second.close()


class WatchedBroker(MemoryBroker):
    """The memory broker, telling when the hub starts and closes it."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def start(self, handler: Any) -> None:
        self.events.append("start")
        await super().start(handler)

    async def close(self) -> None:
        self.events.append("close")
        await super().close()


async def test_lifespan_starts_and_stops_the_hub_as_the_served_app() -> None:
    broker = WatchedBroker()
    realtime = HubApp(Hub(OPTIONS, broker=broker, tokens=TokenVerifier(secret=SECRET)))
    async with uvicorn_server(realtime, lifespan="on") as port:
        assert broker.events == ["start"] and realtime.running
        client = await HubClient.open(port, path="/ws", token=token("alice"))
        assert client.info["user"] == "alice"
        await client.close()
    assert broker.events == ["start", "close"] and not realtime.running


async def test_lifespan_context_manager_in_the_host_application() -> None:
    broker = WatchedBroker()
    realtime = HubApp(Hub(OPTIONS, broker=broker, tokens=TokenVerifier(secret=SECRET)))
    # Starlette does not pass the lifespan scope to a mounted app: the host runs it.
    app = starlette(realtime, lifespan=realtime.lifespan)
    async with uvicorn_server(app, lifespan="on") as port:
        assert broker.events == ["start"]
        client = await HubClient.open(port, path="/realtime/ws", token=token("alice"))
        await client.call("subscribe", channel="feed:1")
        await client.close()
    assert broker.events == ["start", "close"]


async def who_by_cookie(scope: Scope) -> Connected | None:
    """The host application's login: a cookie names the user (a real application would
    look its session up; Starlette's SessionMiddleware puts it in ``scope["session"]``)."""
    for name, value in scope["headers"]:
        if name == b"cookie" and value.startswith(b"user="):
            user = value.partition(b"=")[2].decode()
            return Connected(user, info={"via": "cookie"})
    return None


class Leaving(Hooks):
    """Tells when erin's session ends."""

    def __init__(self, left: asyncio.Event) -> None:
        self.left = left

    async def on_disconnect(self, session: Session, disconnect: Disconnect | None) -> None:
        if session.user == "erin":
            self.left.set()


async def test_the_authenticate_hook_makes_the_session_the_hosts_user() -> None:
    left = asyncio.Event()
    async with mounted({"authenticate": who_by_cookie}, Leaving(left)) as (hub, port):
        # WebSocket: the cookie decides, without a token.
        ws = await connect(
            f"ws://127.0.0.1:{port}/realtime/ws", additional_headers={"Cookie": "user=carol"}
        )
        carol = HubClient(ws)
        info = await carol.call("connect")
        assert info["user"] == "carol"
        # Long polling: the open's cookie decides; the replies come by polling.
        base = f"http://127.0.0.1:{port}/realtime/lp"
        async with httpx.AsyncClient(headers={"Cookie": "user=dave"}) as http:
            opened = await http.post(base, content=b'{"id":1,"method":"connect","params":{}}')
            sid = opened.json()["sid"]
            batch = await http.get(base, params={"sid": sid, "ack": 0})
            reply = json.loads(batch.text.splitlines()[1])
            assert reply["id"] == 1 and reply["result"]["user"] == "dave"
            # Later requests of the session do not ask the hook again (a poll is hot).
            await http.delete(base, params={"sid": sid})
        # SSE: the stream's open decides, and the reply comes on the stream.
        connect_frame = '{"id":1,"method":"connect","params":{}}'
        sse_url = f"http://127.0.0.1:{port}/realtime/sse"
        async with (
            httpx.AsyncClient(headers={"Cookie": "user=erin"}) as http,
            http.stream("GET", sse_url, params={"frame": connect_frame}) as stream,
        ):
            assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
            lines = stream.aiter_lines()
            async with asyncio.timeout(10):
                async for line in lines:
                    if line.startswith('data: {"id":1'):
                        assert json.loads(line[6:])["result"]["user"] == "erin"
                        break
            assert "erin" in {s.user for s in hub.sessions}
        # The client went away: the server closed the stream, and the session with it.
        async with asyncio.timeout(10):
            await left.wait()
        users = {s.user: s.info for s in hub.sessions}
        assert users["carol"] == {"via": "cookie"}
        # Without the cookie, the token decides as usual; without either, 3500.
        bob = await HubClient.open(port, path="/realtime/ws", token=token("bob"))
        assert bob.info["user"] == "bob"
        nobody = await HubClient.raw(port, path="/realtime/ws")
        await nobody.send_raw(json.dumps({"id": 1, "method": "connect", "params": {}}))
        assert (await nobody.closed())[0] == 3500
        # A page of another site cannot use the browser's cookies over WebSocket.
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                f"ws://127.0.0.1:{port}/realtime/ws",
                origin="https://evil.example",
                additional_headers={"Cookie": "user=carol"},
            )
        assert refused.value.status == 403
        await carol.close()
        await bob.close()


async def test_a_slow_asgi_websocket_client_does_not_hold_back_the_others() -> None:
    options = HubOptions(
        namespaces={"feed": ChannelOptions()}, publish_rate=1e9, publish_burst=10**9
    )
    async with Hub(options, tokens=TokenVerifier(secret=SECRET)) as hub:
        async with uvicorn_server(starlette(HubApp(hub))) as port:
            fast = await HubClient.open(port, path="/realtime/ws", token=token("fast"))
            await fast.call("subscribe", channel="feed:firehose")
            slow = await RawClient.open(port, path="/realtime/ws")
            await slow.command({"id": 1, "method": "connect", "params": {"token": token("slow")}})
            await slow.command(
                {"id": 2, "method": "subscribe", "params": {"channel": "feed:firehose"}}
            )
            replies = []
            while len(replies) < 2:  # one frame may carry both (newline-joined)
                replies += (await slow.read_frame())[1].decode().splitlines()
            assert [json.loads(reply)["id"] for reply in replies] == [1, 2]
            session = next(s for s in hub.sessions if s.user == "slow")
            publisher = await HubClient.open(port, path="/realtime/ws", token=token("pub"))
            await publisher.call("subscribe", channel="feed:firehose")
            big = "x" * 16_000
            received = []
            # Bounded: the stalled socket's buffers and the outbox (1 MiB) fill soon.
            for n in range(2000):
                await publisher.call("publish", channel="feed:firehose", data=[n, big])
                received += [p["data"][0] for p in await fast.publications(1)]
                if session.closed:
                    break
            assert session.closed and session.ended is not None
            assert session.ended.code == 3002
            assert received == list(range(len(received)))
            # The slow client finds, after what it had not read, the reason and the close.
            frames = await slow.read_until_close()
            last_push = json.loads(frames[-2][1].decode().splitlines()[-1])
            assert last_push["push"] == "disconnect" and last_push["code"] == 3002
            assert frames[-1][0] == 8 and int.from_bytes(frames[-1][1][:2], "big") == 3002
            await fast.close()
            await publisher.close()


class Countdown:
    """An HTTP endpoint of the hub's kind that streams: each chunk it is given, until
    the client goes away (then its body's ``finally`` runs)."""

    path = "/countdown"

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.closed = asyncio.Event()

    def opens_session(self, request: Request) -> bool:
        return False

    async def handle(
        self, request: Request, *, authenticate: Authenticate | None = None
    ) -> Response | Stream | None:
        if request.method != "GET":
            return Response.text(405, "GET only\n")
        return Stream(200, Headers([("Content-Type", "text/plain")]), self._body())

    async def _body(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield await self.chunks.get()
        finally:
            self.closed.set()


async def test_a_stream_is_sent_as_it_comes_and_closed_when_the_client_leaves() -> None:
    countdown = Countdown()
    async with mounted({"sse": countdown}) as (_, port), httpx.AsyncClient() as http:
        url = f"http://127.0.0.1:{port}/realtime/countdown"
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/plain"
            chunks = response.aiter_raw()
            for text in (b"3", b"2"):
                countdown.chunks.put_nowait(text)
                async with asyncio.timeout(10):
                    assert await anext(chunks) == text
            assert not countdown.closed.is_set()
        # The client closed its connection: the server is told, and ends the body.
        async with asyncio.timeout(10):
            await countdown.closed.wait()
        # A plain answer of the same endpoint is sent as a response.
        refused = await http.post(url)
        assert refused.status_code == 405 and refused.headers["cache-control"] == "no-store"


class Watched:
    """An ASGI middleware that records how each HTTP call of the application ended
    ("returned", or "cancelled" by the server), and sets ``read`` once the application
    has read a request whole."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ended: list[str] = []
        self.read = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def reading() -> Any:
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                self.read.set()
            return message

        try:
            await self.app(scope, reading, send)
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("returned")


@pytest.mark.parametrize("server", [uvicorn_server, hypercorn_server], ids=["uvicorn", "hypercorn"])
async def test_a_held_poll_whose_client_goes_away_frees_the_server(server: Any) -> None:
    async with Hub(OPTIONS, tokens=TokenVerifier(secret=SECRET)) as hub:
        # A poll is held for an hour, unless its client going away ends it.
        realtime = HubApp(hub, longpoll=LongPoll(hub, poll_timeout=3600))
        app = Watched(starlette(realtime))
        commands = [
            {"id": 1, "method": "connect", "params": {"token": token("alice")}},
            {"id": 2, "method": "subscribe", "params": {"channel": "feed:gone"}},
        ]
        async with server(app) as port, httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/realtime/lp"
            opened = await http.post(url, content="\n".join(map(json.dumps, commands)))
            sid = opened.json()["sid"]
            replies = (await http.get(url, params={"sid": sid, "ack": 0})).text.splitlines()
            ack = json.loads(replies[0])["batch"]
            assert [json.loads(line)["id"] for line in replies[1:]] == [1, 2]
            # A poll with nothing to deliver is held; its client goes away.
            app.read.clear()
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /realtime/lp?sid={sid}&ack={ack} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            await writer.drain()
            async with asyncio.timeout(10):
                await app.read.wait()
            writer.close()
            await writer.wait_closed()
        # The server's shutdown (which waits for pending answers) found the poll ended by
        # its client's going: the server did not have to cancel it past its graceful timeout.
        assert app.ended == ["returned"] * 3
        assert realtime.longpoll.held() == 0
        # What is published meanwhile waits for the session's next poll.
        await hub.publish("feed:gone", "after the client left")
        async with server(app) as port, httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{port}/realtime/lp"
            batch = (await http.get(url, params={"sid": sid, "ack": ack})).text.splitlines()
            assert json.loads(batch[0])["batch"] == ack + 1
            pushes = [json.loads(line) for line in batch[1:]]
            assert [push["data"] for push in pushes] == ["after the client left"]
            assert (await http.delete(url, params={"sid": sid})).status_code == 200


async def test_the_python_client_finds_the_mounted_http_transports_beside_the_websocket() -> None:
    async with mounted() as (_, port):
        url = f"ws://127.0.0.1:{port}/realtime/ws"
        for transport in ("sse", "longpoll"):
            # Given only the WebSocket URL: /realtime/ws gives /realtime/sse and /lp.
            client = Client(url, token=token("alice"), transports=(transport,))  # type: ignore[arg-type]
            try:
                async with asyncio.timeout(10):
                    await client.connect()
                    assert client.transport == transport
                    await client.subscribe("feed:beside")
                    assert (await client.publish("feed:beside", transport)).offset >= 1
            finally:
                await client.close()


async def test_route_sends_the_prefix_to_the_hub_and_the_rest_to_the_app() -> None:
    async def plain(scope: Scope, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"app {scope['path']}".encode()})

    broker = WatchedBroker()
    realtime = HubApp(Hub(OPTIONS, broker=broker, tokens=TokenVerifier(secret=SECRET)))
    # The lifespan goes to the hub (Django's application answers none).
    async with uvicorn_server(route("/realtime", realtime, plain), lifespan="on") as port:
        assert broker.events == ["start"]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/shop")).text == "app /shop"
            assert (await http.get(f"http://127.0.0.1:{port}/realtimes")).text == "app /realtimes"
            script = await http.get(f"http://127.0.0.1:{port}/realtime/js/backchannel.js")
            assert script.status_code == 200
        ws = await HubClient.open(port, path="/realtime/ws", token=token("alice"))
        lp = LongPollClient(port, "/realtime/lp")
        lp.info = await lp.call("connect", token=token("bob"))
        await exchange(ws, lp)
        await ws.close()
        await lp.close()
    assert broker.events == ["start", "close"]


async def test_hypercorn_serves_it_too() -> None:
    async with Hub(OPTIONS, tokens=TokenVerifier(secret=SECRET)) as hub:
        async with hypercorn_server(starlette(HubApp(hub))) as port:
            ws = await HubClient.open(port, path="/realtime/ws", token=token("alice"))
            lp = LongPollClient(port, "/realtime/lp")
            lp.info = await lp.call("connect", token=token("bob"))
            await exchange(ws, lp)
            sse = SseClient(port, "/realtime/sse")
            await sse.call("connect", token=token("carol"))
            await sse.call("subscribe", channel="feed:1")
            await ws.call("publish", channel="feed:1", data="streamed")
            assert (await sse.publications(1))[0]["data"] == "streamed"
            await sse.close()
            await ws.close()
            await lp.close()
            await hub.close()


async def test_two_nodes_need_no_sticky_sessions_for_the_http_transports(tmp_path: Path) -> None:
    """Two HubApps on one Redis: a request for a session held by the other node is
    relayed there (the SSE stream on one node, its commands posted to the other)."""
    require_redis()
    with RedisServer(tmp_path) as redis:
        async with AsyncExitStack() as stack:
            ports = []
            for name in ("a", "b"):
                broker = RedisBroker(redis.url, prefix="asgi-two-nodes")
                hub = Hub(OPTIONS, broker=broker, tokens=TokenVerifier(secret=SECRET), name=name)
                realtime = HubApp(hub)
                app = starlette(realtime, lifespan=realtime.lifespan)
                ports.append(await stack.enter_async_context(uvicorn_server(app, lifespan="on")))
            a, b = ports
            sse = SseClient(a, "/realtime/sse", post_port=b)
            await sse.call("connect", token=token("carol"))
            await sse.call("subscribe", channel="feed:1")  # posted to b, run on a
            ws = await HubClient.open(b, path="/realtime/ws", token=token("alice"))
            await ws.call("subscribe", channel="feed:1")
            await ws.call("publish", channel="feed:1", data="across nodes")
            assert (await sse.publications(1))[0]["data"] == "across nodes"
            # Long polling: opened on a, polled on b.
            async with httpx.AsyncClient() as http:
                opened = await http.post(
                    f"http://127.0.0.1:{a}/realtime/lp",
                    content=json.dumps(
                        {"id": 1, "method": "connect", "params": {"token": token("dave")}}
                    ),
                )
                sid = opened.json()["sid"]
                batch = await http.get(
                    f"http://127.0.0.1:{b}/realtime/lp", params={"sid": sid, "ack": 0}
                )
                reply = json.loads(batch.text.splitlines()[1])
                assert reply["result"]["user"] == "dave"
                await http.delete(f"http://127.0.0.1:{b}/realtime/lp", params={"sid": sid})
            await sse.close()
            await ws.close()
