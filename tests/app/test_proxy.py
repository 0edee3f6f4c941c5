"""The backend proxy: a real backend process decides connects, refreshes, subscribes,
publishes and RPCs of clients on WebSocket and long polling, and sees the headers and
cookies the config names."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import jwt
import pytest
from helpers.backend import Backend
from helpers.hub_client import TIMEOUT, HubClient, LongPollClient, ReplyError

from backchannel.app import App, Config
from backchannel.app.config import ProxyConfig
from backchannel.asyncio import connect
from backchannel.client.longpoll import LongPollTransport
from backchannel.exceptions import InvalidArgument, InvalidStatus

from .conftest import SECRET, make_config, running

TRANSPORTS = ["websocket", "longpoll"]
#: What a browser logged in to the backend sends with every request.
BROWSER = {
    "Cookie": "theme=dark; session=s-alice; tracking=xyz",
    "Authorization": "Bearer t-zed",
    "X-Not-Chosen": "private",
}


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with Backend() as server:
        yield server


#: The site's own pages (cookies are passed on only for requests from these, or from
#: clients that send no Origin).
SITE = "https://shop.example"


def proxy_config(backend: Backend, **proxy: Any) -> Config:
    config = make_config(origins=[SITE])
    config.proxy = ProxyConfig(
        connect_url=backend.url("connect"),
        refresh_url=backend.url("refresh"),
        subscribe_url=backend.url("subscribe"),
        publish_url=backend.url("publish"),
        rpc_url=backend.url("rpc"),
        headers=["Authorization"],
        cookies=["session"],
    )
    for key, value in proxy.items():
        setattr(config.proxy, key, value)
    return config


class HeaderLongPoll(LongPollClient):
    """A long-poll client whose requests carry a browser's headers."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        super().__init__(port)
        self.headers = headers

    async def _open_transport(self, first_frame: str) -> LongPollTransport:
        http = httpx.AsyncClient(headers=self.headers, timeout=httpx.Timeout(TIMEOUT, read=40))
        response = await http.post(self.url, content=first_frame.encode())
        body = response.json()
        return LongPollTransport(http, self.url, body["sid"], body["ack"])


@asynccontextmanager
async def clients(port: int) -> AsyncIterator[Any]:
    """``await open(transport, headers)``: a client not yet connected; all are closed
    at the end."""
    opened: list[HubClient] = []

    async def open_client(transport: str, headers: dict[str, str] | None = None) -> HubClient:
        client: HubClient
        if transport == "websocket":
            ws = await connect(
                f"ws://127.0.0.1:{port}/ws", additional_headers=headers or {}, open_timeout=TIMEOUT
            )
            client = HubClient(ws)
        else:
            client = HeaderLongPoll(port, headers or {})
        opened.append(client)
        return client

    try:
        yield open_client
    finally:
        for client in opened:
            await client.close()
        await LongPollClient.release_all()


def calls_of(backend: Backend, kind: str, client: str) -> list[dict[str, Any]]:
    return [call for call in backend.calls(kind) if call["body"]["client"] == client]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_logged_in_page_connects_without_a_token_and_chosen_headers_reach_the_backend(
    backend: Backend, transport: str
) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        client = await open_client(transport, BROWSER)
        info = await client.call("connect")
        assert info["user"] == "alice"  # from the session cookie, by the backend
        seen = (await client.call("rpc", method="whoami"))["data"]
        assert seen["user"] == "alice"
        assert seen["client"] == info["client"]
        assert seen["transport"] == transport
        # Only the cookie and the header the config names are passed on.
        assert seen["headers"]["cookie"] == "session=s-alice"
        assert seen["headers"]["authorization"] == "Bearer t-zed"
        assert "x-not-chosen" not in seen["headers"]
        [call] = calls_of(backend, "connect", info["client"])
        assert call["body"]["transport"] == transport
        assert "user" not in call["body"]
        assert call["headers"]["cookie"] == "session=s-alice"


async def test_the_backend_refuses_a_connect_with_its_error_or_its_disconnect(
    backend: Backend,
) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        stranger = await open_client("websocket")
        with pytest.raises(ReplyError) as refused:
            await stranger.call("connect")
        assert (refused.value.code, refused.value.message) == (1000, "not logged in")
        # A header the config passes on is enough for a backend that reads it.
        carol = await open_client("longpoll", {"Authorization": "Bearer t-carol"})
        assert (await carol.call("connect"))["user"] == "carol"
        banned = await open_client("websocket", BROWSER)
        banned.send_raw('{"id": 1, "method": "connect", "params": {"data": {"ban": true}}}')
        assert await banned.closed() == (4501, "banned")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cookies_of_a_page_of_another_site_are_not_passed_on(
    backend: Backend, transport: str
) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        own = await open_client(transport, {**BROWSER, "Origin": SITE})
        assert (await own.call("connect"))["user"] == "alice"
        if transport == "websocket":
            # The handshake itself refuses another site's page.
            with pytest.raises(InvalidStatus) as refused:
                await open_client(transport, {**BROWSER, "Origin": "https://evil.example"})
            assert refused.value.status == 403
            return
        # A long-poll open from another site's page is answered (without CORS headers,
        # so that page cannot read it), but its visitor's cookie does not reach the backend.
        other = await open_client(
            transport, {"Cookie": BROWSER["Cookie"], "Origin": "https://evil.example"}
        )
        with pytest.raises(ReplyError) as not_logged_in:
            await other.call("connect")
        assert not_logged_in.value.code == 1000


def test_passing_cookies_on_needs_the_sites_origins(backend: Backend) -> None:
    config = proxy_config(backend)
    for origins in ([], ["*"]):
        config.server.origins = origins
        with pytest.raises(InvalidArgument, match=r"proxy\.cookies: set server\.origins"):
            App(config)


async def test_a_client_with_a_token_connects_as_its_token_says_without_the_backend(
    backend: Backend,
) -> None:
    token = jwt.encode({"sub": "dave"}, SECRET, algorithm="HS256")
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        client = await open_client("websocket", BROWSER)
        info = await client.call("connect", token=token)
        assert info["user"] == "dave"
        assert calls_of(backend, "connect", info["client"]) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_backend_allows_refuses_or_disconnects_a_subscribe(
    backend: Backend, transport: str
) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        client = await open_client(transport, BROWSER)
        info = await client.call("connect")
        assert "epoch" in await client.call("subscribe", channel="chat:open")
        with pytest.raises(ReplyError) as refused:
            await client.call("subscribe", channel="chat:secret")
        assert (refused.value.code, refused.value.message) == (1001, "members only")
        [call] = [
            c
            for c in calls_of(backend, "subscribe", info["client"])
            if c["body"]["channel"] == "chat:open"
        ]
        assert call["body"]["user"] == "alice"
        assert call["headers"]["cookie"] == "session=s-alice"
        client.send_raw('{"id": 99, "method": "subscribe", "params": {"channel": "chat:kick"}}')
        assert await client.closed() == (4000, "go away")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_backend_changes_or_refuses_a_publish(backend: Backend, transport: str) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        client = await open_client(transport, BROWSER)
        await client.call("connect")
        await client.call("subscribe", channel="chat:room")
        await client.call("publish", channel="chat:room", data={"text": "hi"})
        [publication] = await client.publications(1)
        # What the backend made of it, not what the client sent.
        assert publication["data"] == {"text": "hi", "by": "alice"}
        with pytest.raises(ReplyError) as refused:
            await client.call("publish", channel="chat:room", data={"text": "spam"})
        assert (refused.value.code, refused.value.message) == (1002, "no spam")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_rpc_is_answered_by_the_backend(backend: Backend, transport: str) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        client = await open_client(transport, BROWSER)
        await client.call("connect")
        assert await client.call("rpc", method="add", data={"a": 2, "b": 3}) == {"data": 5}
        with pytest.raises(ReplyError) as unknown:
            await client.call("rpc", method="nothing")
        assert unknown.value.code == 104


async def test_without_rpc_url_an_rpc_is_104_and_without_connect_url_a_token_is_needed(
    backend: Backend,
) -> None:
    config = proxy_config(backend, rpc_url="", connect_url="")
    async with running(config) as (app, port), clients(port) as open_client:
        assert app.proxy is not None
        client = await open_client("websocket", BROWSER)
        client.send_raw('{"id": 1, "method": "connect", "params": {}}')
        assert (await client.closed())[0] == 3500
        token = jwt.encode({"sub": "erin"}, SECRET, algorithm="HS256")
        client = await open_client("websocket", BROWSER)
        await client.call("connect", token=token)
        with pytest.raises(ReplyError) as unknown:
            await client.call("rpc", method="add", data={"a": 1, "b": 1})
        assert unknown.value.code == 104
    async with running(make_config()) as (app, port):
        assert app.proxy is None  # no [proxy] URL: no proxy, no httpx client


async def test_backend_failures_give_documented_codes_and_one_log_line_each(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = f"http://127.0.0.1:{closed.getsockname()[1]}/subscribe"
    config = proxy_config(backend, timeout=0.5, subscribe_url=nobody, max_response_size=2**20)
    caplog.set_level(logging.WARNING, "backchannel.proxy")
    async with running(config) as (_, port), clients(port) as open_client:
        client = await open_client("websocket", BROWSER)
        await client.call("connect")
        outcomes = {}
        for method in ("crash", "garbage", "huge", "slow"):
            with pytest.raises(ReplyError) as failed:
                await client.call("rpc", method=method)
            outcomes[method] = (failed.value.code, failed.value.temporary)
        with pytest.raises(ReplyError) as failed:
            await client.call("subscribe", channel="chat:open")
        outcomes["unreachable"] = (failed.value.code, failed.value.temporary)
        # The connection stays, and works.
        assert await client.call("rpc", method="add", data={"a": 1, "b": 2}) == {"data": 3}
    assert outcomes == {
        "crash": (100, True),
        "garbage": (100, True),
        "huge": (100, True),
        "slow": (116, True),
        "unreachable": (116, True),
    }
    records = [r for r in caplog.records if r.name == "backchannel.proxy"]
    assert [r.exc_info for r in records] == [None] * 5
    messages = [r.getMessage() for r in records]
    assert "HTTP 500" in messages[0]
    assert "not JSON" in messages[1]
    assert "larger than 1048576 bytes" in messages[2]
    assert "no answer within 0.5 s" in messages[3]
    assert messages[4].startswith("proxy subscribe to " + nobody)


async def test_the_backend_extends_an_expired_connection_then_ends_it(backend: Backend) -> None:
    async with running(proxy_config(backend)) as (_, port), clients(port) as open_client:
        client = await open_client("websocket", BROWSER)
        client.send_raw('{"id": 1, "method": "connect", "params": {"data": {"expire": "now"}}}')
        # Expired at once: the backend gives it one more second, then says expired.
        assert await client.closed() == (3004, "token expired")
    refreshes = [call for call in backend.calls("refresh") if call["body"].get("user") == "alice"]
    clients_seen = {call["body"]["client"] for call in refreshes}
    assert len(clients_seen) == 1
    assert len(refreshes) == 2
    assert refreshes[0]["headers"]["cookie"] == "session=s-alice"
