"""The SSE transport's own rules: the stream's framing, event ids and Last-Event-ID
recovery, heartbeats, refusals, a client that does not read.

The hub's behaviour over SSE (the same as over WebSocket and long polling) is tested by
the shared transport suite in test_hub.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from helpers.http import Http
from helpers.hub_client import SseTransport

from backchannel.asyncio import ServerConnection, Stream, serve
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.transports.http import HttpSessions, HttpTransport
from backchannel.hub.transports.sse import MAX_CHUNK, ServerSentEvents
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol.http11 import Request, Response

OPTIONS = HubOptions(anonymous=True, namespaces={"feed": ChannelOptions(history_size=100)})


class WatchedSessions(HttpSessions):
    """The session table, telling when a session is added and when one is dropped."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.registered = asyncio.Event()
        self.forgotten = asyncio.Event()

    async def register(self, transport: HttpTransport) -> None:
        await super().register(transport)
        self.registered.set()

    def forget(self, transport: HttpTransport) -> None:
        super().forget(transport)
        self.forgotten.set()


@asynccontextmanager
async def endpoint(
    options: HubOptions = OPTIONS, *, ping_timeout: float = 20, **settings: Any
) -> AsyncIterator[tuple[Hub, ServerSentEvents, str]]:
    async with Hub(options) as hub:
        sse = ServerSentEvents(hub, **settings)
        async with serve(
            websocket_handler(hub), "127.0.0.1", 0, process_request=sse, ping_timeout=ping_timeout
        ) as server:
            yield hub, sse, f"http://127.0.0.1:{server.port}/sse"


def command(cid: int, method: str, **params: Any) -> str:
    return json.dumps({"id": cid, "method": method, "params": params})


async def wire(transport: SseTransport, n: int) -> list[dict[str, Any]]:
    """The next ``n`` wire lines of the stream."""
    out = []
    async with asyncio.timeout(10):
        for _ in range(n):
            frame = await transport.receive()
            assert isinstance(frame, str), frame
            out.append(json.loads(frame))
    return out


async def test_the_stream_opens_with_retry_and_the_session_and_carries_replies() -> None:
    async with endpoint() as (_, sse, url):
        frame = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")])
        client = await SseTransport.open(url, frame)
        # retry first, then the session event: the POSTs' address.
        assert client.retry == 2000
        assert client.events[0] == ("session", f'{{"sid":"{client.sid}"}}', None)
        assert client.sid in sse.sessions
        connected, subscribed = await wire(client, 2)
        assert connected["id"] == 1 and subscribed["id"] == 2
        await client.send(command(3, "ping"))
        assert await wire(client, 1) == [{"id": 3, "result": {}}]
        # Leaving ends the session and its stream.
        await client.close()
        assert client.sid not in sse.sessions


async def test_event_ids_carry_the_positions_of_the_recoverable_subscriptions() -> None:
    options = HubOptions(
        anonymous=True,
        namespaces={"feed": ChannelOptions(history_size=100), "live": ChannelOptions()},
    )
    async with endpoint(options) as (hub, _, url):
        frame = "\n".join(
            [
                command(1, "connect"),
                command(2, "subscribe", channel="feed:a"),
                command(3, "subscribe", channel="live:b"),  # no history: no position
            ]
        )
        client = await SseTransport.open(url, frame)
        _, feed, _ = await wire(client, 3)
        epoch = feed["result"]["epoch"]
        ids = [event_id for _, _, event_id in client.events[1:]]
        # connect: no id; the subscribe with a position: one; without: none.
        assert ids == [None, json.dumps({"feed:a": [epoch, 0]}, separators=(",", ":")), None]
        await hub.publish("feed:a", "one")
        await hub.publish("live:b", "not recoverable")
        await wire(client, 2)
        assert client.events[-2][2] == json.dumps({"feed:a": [epoch, 1]}, separators=(",", ":"))
        assert client.events[-1][2] is None
        await client.close()


async def test_last_event_id_recovers_what_a_dropped_stream_missed() -> None:
    async with endpoint() as (hub, _, url):
        frame = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")])
        first = await SseTransport.open(url, frame)
        await wire(first, 2)
        for n in range(3):
            await hub.publish("feed:a", n)
        assert [p["data"] for p in await wire(first, 3)] == [0, 1, 2]
        last_id = first.last_id
        assert last_id is not None
        # The stream drops (a network cut).
        first.abort()
        await first.close()
        for n in range(3, 8):
            await hub.publish("feed:a", n)
        # EventSource reconnects to the same URL with the last id it saw.
        again = await SseTransport.open(url, frame, last_event_id=last_id)
        _, subscribed = await wire(again, 2)
        result = subscribed["result"]
        assert result["recovered"] is True
        assert [p["data"] for p in result["publications"]] == [3, 4, 5, 6, 7]
        await hub.publish("feed:a", 8)
        assert [p["data"] for p in await wire(again, 1)] == [8]
        await again.close()


@pytest.mark.parametrize(
    "last_event_id",
    ["not json", "[1,2]", '{"feed:a": "x"}', '{"feed:a": ["e", -1]}', '{"feed:a": ["e"]}'],
)
async def test_a_malformed_last_event_id_is_ignored(last_event_id: str) -> None:
    async with endpoint() as (_, _, url):
        frame = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")])
        client = await SseTransport.open(url, frame, last_event_id=last_event_id)
        _, subscribed = await wire(client, 2)
        # A fresh subscribe: no recovery asked, none answered.
        assert "result" in subscribed and "recovered" not in subscribed["result"]
        await client.close()


async def test_heartbeat_comments_keep_a_quiet_stream_alive() -> None:
    async with endpoint(heartbeat=0.05) as (_, _, url):
        client = await SseTransport.open(url, command(1, "connect"))
        await wire(client, 1)
        async with asyncio.timeout(10):
            for _ in range(3):
                client.heartbeat.clear()
                await client.heartbeat.wait()
        assert client.heartbeats >= 3 and len(client.events) == 2  # nothing else came
        await client.close()


async def test_a_refused_connect_is_a_stream_with_the_disconnect_push_last() -> None:
    async with Hub(HubOptions()) as hub:  # not anonymous: connect without a token is 3500
        sse = ServerSentEvents(hub)
        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=sse) as s:
            async with httpx.AsyncClient() as http:
                url = f"http://127.0.0.1:{s.port}/sse"
                reply = await http.get(url, params={"frame": command(1, "connect")}, timeout=10)
            assert reply.status_code == 200
            assert reply.headers["content-type"] == "text/event-stream; charset=utf-8"
            assert reply.headers["cache-control"] == "no-store"
            assert reply.headers["x-accel-buffering"] == "no"
            events = reply.text.split("\n\n")
            assert events[0] == "retry: 2000"
            assert events[1].startswith("event: session\ndata: ")
            last = json.loads(events[-2].removeprefix("data: "))
            assert last["push"] == "disconnect" and last["code"] == 3500
            assert last["reconnect"] is False and events[-1] == ""
            assert not sse.sessions


async def test_requests_that_are_not_the_wire_get_their_answer() -> None:
    async with endpoint() as (_, _, url):
        port = int(url.split(":")[2].split("/")[0])
        http = await Http.open(port)
        assert (await http.exchange("GET", "/sse")).status == 400  # no frame
        for method, target in [
            ("POST", "/sse?sid=not-a-session"),
            ("DELETE", "/sse?sid=not-a-session"),
        ]:
            reply = await http.exchange(method, target, command(1, "ping"))
            assert reply.status == 404 and reply.json() == {
                "error": "unknown session",
                "reconnect": True,
            }
        assert (await http.exchange("POST", "/sse", command(1, "ping"))).status == 400
        assert (await http.exchange("PUT", "/sse?sid=x")).status == 405
        await http.close()


async def test_a_client_that_never_reads_is_bounded_by_its_outbox() -> None:
    # Publications to a stream whose client reads nothing, the stream given its turn
    # after each: it takes the outbox while the socket drains, then the server asks for
    # nothing more, so the server's buffer stays bounded, the outbox fills and the
    # session ends with 3002 (the hub never waits); the server then drops the stream.
    options = HubOptions(
        anonymous=True,
        namespaces={"feed": ChannelOptions(history_size=10)},
        outbox_max_bytes=256 * 1024,
        publish_rate=1e9,
        publish_burst=10**9,
    )
    async with Hub(options) as hub:
        table = WatchedSessions(hub)
        sse = ServerSentEvents(hub, sessions=table)
        connections: list[ServerConnection] = []

        async def endpoint(
            connection: ServerConnection, request: Request
        ) -> Response | Stream | None:
            connections.append(connection)
            return await sse.handle(request)

        server = await serve(
            websocket_handler(hub), "127.0.0.1", 0, process_request=endpoint, ping_timeout=0.5
        )
        frame = quote("\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")]))
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(f"GET /sse?frame={frame} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        async with asyncio.timeout(10):
            await table.registered.wait()
        (transport,) = sse.sessions.values()
        (connection,) = connections
        session = transport.session
        assert session is not None
        big = "x" * 16_000
        streamed = 0
        for n in range(10_000):
            await hub.publish("feed:a", [n, big])
            # The stream's turn (a yield to the event loop, not a wait for time).
            for _ in range(3):
                await asyncio.sleep(0)
            if not transport.outbox and not session.closed:
                streamed += 1  # taken into the stream: the socket had room
            assert transport.outbox is not None and transport.outbox.size <= 256 * 1024
            assert connection.buffered_amount <= 64 * 1024 + MAX_CHUNK + 1024
            if session.closed:
                break
        assert streamed > 0
        assert session.ended is not None and session.ended.code == 3002
        # The stream is dropped once its client has read nothing for ping_timeout.
        async with asyncio.timeout(10):
            await table.forgotten.wait()
        assert not sse.sessions and transport.outbox is not None and not transport.outbox
        sock.close()
        await server.aclose()


async def test_last_event_id_resumes_the_frames_subscribes_that_name_no_position() -> None:
    async with endpoint() as (hub, _, url):
        client = await SseTransport.open(
            url, "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")])
        )
        await wire(client, 2)
        # Subscribed by POST: in the ids, but not in the URL's frame.
        await client.send(command(3, "subscribe", channel="feed:c"))
        await wire(client, 1)
        for channel in ("feed:a", "feed:b", "feed:c"):
            await hub.publish(channel, "seen")
        await wire(client, 2)
        positions = json.loads(client.last_id or "")
        assert set(positions) == {"feed:a", "feed:c"}
        await client.close()
        for channel in ("feed:a", "feed:b", "feed:c"):
            await hub.publish(channel, "missed")
        # The id names feed:b too (forged, or from an older stream); the frame asks for
        # feed:b with a position of its own, which is kept; feed:c, not in the frame, is
        # not resumed (the client resubscribes it itself).
        epoch = positions["feed:a"][0]
        last_id = json.dumps({**positions, "feed:b": [epoch, 2]})
        frame = "\n".join(
            [
                command(1, "connect"),
                command(2, "subscribe", channel="feed:a"),
                command(3, "subscribe", channel="feed:b", recover=True, epoch="x", offset=0),
            ]
        )
        again = await SseTransport.open(url, frame, last_event_id=last_id)
        _, a, b = await wire(again, 3)
        assert a["result"]["recovered"] is True
        assert [p["data"] for p in a["result"]["publications"]] == ["missed"]
        assert b["result"]["recovered"] is False  # its own position (another epoch)
        assert set(json.loads(again.last_id or "")) == {"feed:a", "feed:b"}
        await again.close()
