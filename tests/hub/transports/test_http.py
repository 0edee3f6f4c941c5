"""The HTTP transports' shared session table: ids, idle expiry, CORS, the relay between
nodes (hub/transports/http.py), seen through long polling and SSE."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers.http import Http
from helpers.hub_client import SseTransport
from helpers.redis_server import RedisServer, require_redis

from backchannel.asyncio import ServerConnection, Stream, serve
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.transports.http import HttpSessions, HttpTransport
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.sse import ServerSentEvents
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol.http11 import Request, Response

OPTIONS = HubOptions(anonymous=True, namespaces={"feed": ChannelOptions(history_size=10)})


@asynccontextmanager
async def endpoint(**options: Any) -> AsyncIterator[tuple[Hub, LongPoll, int]]:
    async with Hub(OPTIONS) as hub:
        long_poll = LongPoll(hub, **options)
        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=long_poll) as s:
            yield hub, long_poll, s.port


def command(cid: int, method: str, **params: Any) -> str:
    return json.dumps({"id": cid, "method": method, "params": params})


async def test_a_session_not_polled_within_idle_timeout_is_closed_and_freed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expired = asyncio.Event()
    original = HttpSessions._expire

    def spy(self: HttpSessions, transport: HttpTransport) -> None:
        original(self, transport)
        expired.set()

    monkeypatch.setattr(HttpSessions, "_expire", spy)
    async with endpoint(idle_timeout=0.2) as (hub, long_poll, port):
        http = await Http.open(port)
        status, body = await http.request("POST", "/lp", command(1, "connect"))
        sid = json.loads(body)["sid"]
        assert sid in long_poll.sessions and len(hub.sessions) == 1
        async with asyncio.timeout(5):
            await expired.wait()
        assert sid not in long_poll.sessions
        status, _ = await http.request("GET", f"/lp?sid={sid}&ack=0")
        assert status == 404
        await http.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path) as server:
        yield server


@asynccontextmanager
async def node(redis_url: str) -> AsyncIterator[tuple[Hub, int]]:
    """One node of a cluster: a hub on the Redis broker, long polling and SSE sharing
    one table of sessions, relayed."""
    broker = RedisBroker(redis_url, prefix="lp")
    async with Hub(OPTIONS, broker=broker) as hub:
        table = HttpSessions(hub, relay=broker)
        long_poll = LongPoll(hub, sessions=table)
        sse = ServerSentEvents(hub, sessions=table)

        async def endpoints(
            connection: ServerConnection, request: Request
        ) -> Response | Stream | None:
            return await long_poll.handle(request) or await sse.handle(request)

        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=endpoints) as s:
            yield hub, s.port


async def test_a_session_whose_node_is_gone_is_unknown_everywhere(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url) as (_, port_b):
        async with node(redis_server.url) as (_, port_a):
            http = await Http.open(port_a)
            sid = json.loads((await http.request("POST", "/lp", command(1, "connect")))[1])["sid"]
            await http.close()
        # Node A stopped: node B does not wait for it.
        other = await Http.open(port_b)
        status, body = await other.request("GET", f"/lp?sid={sid}&ack=0")
        assert (status, json.loads(body)["reconnect"]) == (404, True)
        await other.close()


async def test_the_relay_hands_each_forwarded_request_to_the_endpoint_of_its_path(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url) as (_, port_a), node(redis_server.url) as (_, port_b):
        # An SSE stream on node A, its commands sent to node B.
        stream = await SseTransport.open(
            f"http://127.0.0.1:{port_a}/sse",
            "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:r")]),
            post_url=f"http://127.0.0.1:{port_b}/sse",
        )
        await stream.send(command(3, "publish", channel="feed:r", data="through B"))
        lines = []
        async with asyncio.timeout(10):
            while len(lines) < 4:
                frame = await stream.receive()
                assert isinstance(frame, str)
                lines.append(json.loads(frame))
        assert [line.get("id") for line in lines[:2]] == [1, 2]
        assert {line.get("id") for line in lines[2:]} == {3, None}
        assert next(line for line in lines if "push" in line)["data"] == "through B"
        # A long-poll session on node A, sent to through node B, in the same table.
        http_a, http_b = await Http.open(port_a), await Http.open(port_b)
        sid = (await http_a.exchange("POST", "/lp", command(1, "connect"))).json()["sid"]
        assert (await http_b.exchange("POST", f"/lp?sid={sid}", command(2, "ping"))).status == 200
        # An id is answered only by the endpoint that opened it, relayed or not.
        for http in (http_a, http_b):
            reply = await http.exchange("POST", f"/sse?sid={sid}", command(3, "ping"))
            assert reply.status == 404
            reply = await http.exchange("GET", f"/lp?sid={stream.sid}&ack=0")
            assert reply.status == 404
        await http_a.close()
        await http_b.close()
        await stream.close()
