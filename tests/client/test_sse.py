"""The Python client on Server-Sent Events, against a real hub over real sockets, behind
a misbehaving proxy where the test needs one (helpers/gateway.py): the fallback from
WebSocket to SSE and on to long polling, a cut stream recovered, leaving. The client's
behaviour common to every transport runs over SSE in test_client.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
from helpers.gateway import Gateway

from backchannel.asyncio import ServerConnection, serve
from backchannel.client import Client, ConnectedEvent, Publication
from backchannel.client.sse import SseTransport
from backchannel.exceptions import CommandError, InvalidResponse
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
#: Every wait in these tests: long enough for a loaded CI machine, short enough to fail.
WAIT = 10.0
OPTIONS = HubOptions(namespaces={"feed": ChannelOptions(history_size=1000)})


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + 3600)}, SECRET, algorithm="HS256")


@asynccontextmanager
async def hub_server(*, sse: bool = True) -> AsyncIterator[tuple[Hub, int]]:
    """A hub on a free port: WebSocket, long polling at /lp, and (unless ``sse`` is
    false, as on an older server) SSE at /sse."""
    async with Hub(OPTIONS, tokens=TokenVerifier(secret=SECRET)) as hub:
        sessions = HttpSessions(hub)
        endpoints: list[Any] = [LongPoll(hub, sessions=sessions)]
        if sse:
            endpoints.append(ServerSentEvents(hub, sessions=sessions))

        async def process_request(connection: ServerConnection, request: Request) -> Any:
            for endpoint in endpoints:
                answer = await endpoint.handle(request)
                if answer is not None:
                    return answer
            return None

        async with serve(
            websocket_handler(hub), "127.0.0.1", 0, process_request=process_request
        ) as server:
            yield hub, server.port


def client(port: int, *transports: str, **options: Any) -> Client:
    """A client on these transports, in order; quick to reconnect and to fall back."""
    options.setdefault("min_delay", 0.01)
    options.setdefault("max_delay", 0.1)
    options.setdefault("fallback_timeout", 1.0)
    return Client(
        f"ws://127.0.0.1:{port}/ws",
        token=token("alice"),
        transports=transports,  # type: ignore[arg-type]
        **options,
    )


async def take(sub: AsyncIterator[Publication], n: int) -> list[Publication]:
    out: list[Publication] = []
    async with asyncio.timeout(WAIT):
        async for publication in sub:
            out.append(publication)
            if len(out) == n:
                break
    return out


async def test_an_upgrade_refused_falls_back_to_sse_which_carries_everything() -> None:
    async with (
        hub_server() as (hub, port),
        Gateway(port, refuse_upgrades=True) as gateway,
        client(gateway.port, "websocket", "sse", "longpoll") as c,
    ):
        assert c.transport == "sse"
        assert gateway.refused_upgrades == 1 and gateway.streams == 1
        sub = await c.subscribe("feed:a")
        await c.publish("feed:a", "by the client")  # a POST; the reply on the stream
        await hub.publish("feed:a", "by the backend")
        assert [p.data for p in await take(sub, 2)] == ["by the client", "by the backend"]
        with pytest.raises(CommandError) as refused:  # an error reply, on the stream too
            await c.rpc("nothing")
        assert refused.value.code == 104


async def test_a_proxy_that_buffers_streams_makes_the_client_go_on_to_long_polling() -> None:
    async with (
        hub_server() as (hub, port),
        Gateway(port, refuse_upgrades=True, buffer_streams=True) as gateway,
        client(gateway.port, "websocket", "sse", "longpoll", fallback_timeout=0.5) as c,
    ):
        # The SSE stream began (the proxy holds it) but brought no session in time.
        assert c.transport == "longpoll"
        assert gateway.streams == 1
        sub = await c.subscribe("feed:b")
        await hub.publish("feed:b", "polled")
        assert [p.data for p in await take(sub, 1)] == ["polled"]


async def test_a_server_without_sse_makes_the_client_go_on_to_long_polling() -> None:
    async with (
        hub_server(sse=False) as (_, port),
        client(port, "sse", "longpoll") as c,
    ):
        assert c.transport == "longpoll"
    # Alone, SSE against such a server is refused (404, or 426 from a bare server).
    async with hub_server(sse=False) as (_, port):
        with pytest.raises(InvalidResponse, match=r"HTTP 4\d\d"):
            await SseTransport.open(
                f"http://127.0.0.1:{port}/sse", '{"id":1,"method":"connect"}', open_timeout=WAIT
            )


async def test_on_sse_the_first_transport_is_tried_again_every_fifth_reconnect() -> None:
    connected: asyncio.Queue[ConnectedEvent] = asyncio.Queue()
    async with (
        hub_server() as (hub, port),
        Gateway(port, refuse_upgrades=True) as gateway,
        client(gateway.port, "websocket", "sse", on_connected=connected.put_nowait) as c,
    ):
        async with asyncio.timeout(WAIT):
            assert (await connected.get()).transport == "sse"
            for _ in range(5):
                await hub.disconnect("alice", codes.FORCE_RECONNECT)
                assert (await connected.get()).transport == "sse"
        # The fifth reconnect tried WebSocket first (refused), then SSE at once.
        assert gateway.refused_upgrades == 2
        assert gateway.streams == 6
        assert c.transport == "sse"


async def test_a_cut_stream_is_reconnected_and_every_publication_recovered_once() -> None:
    async with (
        hub_server() as (hub, port),
        Gateway(port) as gateway,
        client(gateway.port, "sse") as c,
    ):
        sub = await c.subscribe("feed:c")
        for n in range(1, 6):
            await hub.publish("feed:c", n)
        assert [p.offset for p in await take(sub, 5)] == [1, 2, 3, 4, 5]
        gateway.blocked = True
        gateway.cut()
        async with asyncio.timeout(WAIT):
            await c.until(lambda: c.state != "connected")
        for n in range(6, 21):
            await hub.publish("feed:c", n)
        gateway.blocked = False
        pubs = await take(sub, 15)
        assert [p.offset for p in pubs] == list(range(6, 21))
        assert sub.recovered is True
        assert c.transport == "sse" and gateway.streams == 2
        await hub.publish("feed:c", 21)
        assert [p.offset for p in await take(sub, 1)] == [21]
