"""A subscription fills a gap in offsets from history (no mocks: a real hub, real
sockets, and a long-polling proxy that loses one publication on the way, as a broken
link between nodes would)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt

from backchannel.asyncio import ServerConnection, serve
from backchannel.client import Client, Publication, SubscribedEvent, Subscription
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.token import TokenVerifier
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.protocol.http11 import Headers, Request, Response

SECRET = "test-secret-that-is-long-enough-for-hs256"
WAIT = 10.0


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + 3600)}, SECRET, algorithm="HS256")


class LossyProxy:
    """Forwards long-polling requests to the hub and drops, from the polls' answers, the
    first publication push at ``lose`` (an offset): the client never gets it live."""

    def __init__(self, upstream: str, lose: int) -> None:
        self.upstream = upstream
        self.lose = lose
        self.lost: list[dict[str, object]] = []
        self._http = httpx.AsyncClient(timeout=60)

    async def __call__(self, connection: ServerConnection, request: Request) -> Response:
        headers = {k: v for k, v in request.headers if k.lower() == "content-type"}
        answer = await self._http.request(
            request.method, self.upstream + request.path, content=request.body, headers=headers
        )
        body = answer.text
        if request.method == "GET" and not self.lost:
            lines = body.split("\n")
            kept = [line for line in lines if not self._loses(line)]
            body = "\n".join(kept)
        out = Headers([("Content-Type", answer.headers.get("content-type", "text/plain"))])
        return Response(answer.status_code, out, body.encode())

    def _loses(self, line: str) -> bool:
        try:
            obj = json.loads(line)
        except ValueError:
            return False
        if isinstance(obj, dict) and obj.get("push") == "publication" and not self.lost:
            if obj.get("offset") == self.lose:
                self.lost.append(obj)
                return True
        return False

    async def aclose(self) -> None:
        await self._http.aclose()


async def take(sub: Subscription, n: int) -> list[Publication]:
    out: list[Publication] = []
    async with asyncio.timeout(WAIT):
        async for publication in sub:
            out.append(publication)
            if len(out) == n:
                break
    return out


async def test_a_gap_in_offsets_is_filled_from_history_before_anything_newer() -> None:
    options = HubOptions(namespaces={"chat": ChannelOptions(history_size=100)})
    subscribed: list[SubscribedEvent] = []

    async def no_websocket(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with Hub(options, tokens=TokenVerifier(secret=SECRET)) as hub:
        longpoll = LongPoll(hub)

        async def direct(connection: ServerConnection, request: Request) -> Response | None:
            return await longpoll(connection, request)

        async with serve(no_websocket, "127.0.0.1", 0, process_request=direct) as h:
            proxy = LossyProxy(f"http://127.0.0.1:{h.port}", lose=3)

            async def lossy(connection: ServerConnection, request: Request) -> Response:
                return await proxy(connection, request)

            async with serve(
                lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=lossy
            ) as p:
                url = f"ws://127.0.0.1:{p.port}/ws"
                async with Client(url, transports=("longpoll",), token=token("r")) as c:
                    sub = await c.subscribe("chat:gap", on_subscribed=subscribed.append)
                    for n in range(1, 6):
                        await hub.publish("chat:gap", n)
                    pubs = await take(sub, 5)
                    # 3 was lost on the way; 4 showed the gap: 3 came from history first.
                    assert [p.data for p in pubs] == [1, 2, 3, 4, 5]
                    assert [p.offset for p in pubs] == [1, 2, 3, 4, 5]
                    assert [obj["offset"] for obj in proxy.lost] == [3]
                    await c.call("ping")
                    assert sub._queue == type(sub._queue)()  # nothing came twice
                    # Filled without a reconnection: still the first subscription.
                    assert len(subscribed) == 1
            await proxy.aclose()
