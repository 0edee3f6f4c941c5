"""What the client's HTTP transports share (client/http.py): commands POSTed one
request at a time and batched while one is out, refusals told apart, the open's status
read. Against a real HTTP server (backchannel.asyncio.serve answering plain requests);
the transports end to end are in test_client.py and test_sse.py."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from backchannel.asyncio import ServerConnection, serve
from backchannel.client.http import HttpTransport, check_open, parse_json, tls_context
from backchannel.client.transport import CONNECTION_LOST, Ending
from backchannel.exceptions import InvalidResponse
from backchannel.hub.wire import MAX_BATCH
from backchannel.protocol.http11 import Request, Response

#: A generous bound against a hang, not a timing assertion.
WAIT = 10.0


class Quiet(HttpTransport):
    """An HTTP transport that receives nothing: only sending is under test."""

    transport_name = "longpoll"
    send_label = "test send"
    refusal_label = "test server"

    async def _receive_loop(self) -> None:
        await asyncio.Event().wait()


@dataclass
class Receiver:
    """What the server got: each POST's body and each DELETE; the first POST is held
    until ``release`` is set, and ``answer`` replaces the 200."""

    bodies: list[str] = field(default_factory=list)
    deletes: int = 0
    first_in: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    answer: Response | None = None
    got: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def process(self, connection: ServerConnection, request: Request) -> Response:
        if request.method == "DELETE":
            self.deletes += 1
            return Response.text(200, "")
        self.bodies.append(request.body.decode())
        if len(self.bodies) == 1:
            self.first_in.set()
            await self.release.wait()
        async with self.got:
            self.got.notify_all()
        return self.answer or Response.text(200, "")

    async def wait_for(self, count: int) -> list[str]:
        async with asyncio.timeout(WAIT), self.got:
            await self.got.wait_for(lambda: len(self.bodies) >= count)
        return self.bodies


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    got = Receiver()

    async def never(connection: ServerConnection) -> None:  # no WebSocket here
        raise AssertionError("unexpected upgrade")

    async with serve(never, "127.0.0.1", 0, process_request=got.process) as server:
        yield got, f"http://127.0.0.1:{server.port}/lp"


async def test_frames_sent_while_a_post_is_out_go_together_in_order(
    receiver: tuple[Receiver, str],
) -> None:
    got, url = receiver
    async with httpx.AsyncClient() as http:
        transport = Quiet(http, url, "sid1")
        await transport.send("a")
        async with asyncio.timeout(WAIT):
            await got.first_in.wait()
        await transport.send("b")
        await transport.send("c\nd")
        got.release.set()
        assert await got.wait_for(2) == ["a", "b\nc\nd"]
        await transport.close()
    assert got.deletes == 1  # the session is freed at once, not at the hub's idle timeout


async def test_a_post_carries_at_most_a_batch_of_commands(
    receiver: tuple[Receiver, str],
) -> None:
    got, url = receiver
    async with httpx.AsyncClient() as http:
        transport = Quiet(http, url, "sid1")
        await transport.send("first")
        async with asyncio.timeout(WAIT):
            await got.first_in.wait()
        for i in range(MAX_BATCH + 1):
            await transport.send(str(i))
        got.release.set()
        bodies = await got.wait_for(3)
        await transport.close()
    assert [body.split("\n") for body in bodies[1:]] == [
        [str(i) for i in range(MAX_BATCH)],
        [str(MAX_BATCH)],
    ]


async def test_a_refused_post_ends_the_transport_with_the_hubs_reason(
    receiver: tuple[Receiver, str],
) -> None:
    got, url = receiver
    got.release.set()
    got.answer = Response.json(410, {"error": "session expired", "reconnect": False})
    async with httpx.AsyncClient() as http:
        transport = Quiet(http, url, "sid1")
        await transport.send("a")
        async with asyncio.timeout(WAIT):
            ending = await transport.receive()
        await transport.close()
    reason = "test server answered HTTP 410: session expired"
    assert ending == Ending(CONNECTION_LOST, reason, False)
    assert got.deletes == 0  # the hub said the session is gone: nothing to free


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_an_open_worth_retrying_is_a_connection_error(status: int) -> None:
    with pytest.raises(ConnectionError, match=f"long poll open answered HTTP {status}"):
        check_open(status, "long poll")


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_an_open_refused_for_good_is_an_invalid_response(status: int) -> None:
    with pytest.raises(InvalidResponse, match=f"SSE open answered HTTP {status}"):
        check_open(status, "SSE")
    check_open(200, "SSE")  # and a 200 is no error


def test_json_that_is_not_is_none() -> None:
    assert parse_json('{"error": "x"}') == {"error": "x"}
    assert parse_json("<html>proxy error</html>") is None


def test_the_tls_context_is_made_once_per_process() -> None:
    first = tls_context()
    assert isinstance(first, ssl.SSLContext)
    assert tls_context() is first
