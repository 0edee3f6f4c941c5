"""The standalone server's routes: hub on /ws and /lp, files, demo tokens, limits, CORS."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import jwt
import pytest
from helpers.http import Http
from helpers.hub_client import HubClient, LongPollClient, ReplyError, SseClient

from backchannel.asyncio import connect
from backchannel.exceptions import InvalidStatus
from backchannel.hub.token import make_token

from .conftest import SECRET, make_config, running

ROOT = Path(__file__).resolve().parents[2]


async def get(port: int, target: str, method: str = "GET", body: str = "") -> tuple[int, bytes]:
    http = await Http.open(port)
    try:
        reply = await http.exchange(method, target, body)
        return reply.status, reply.body
    finally:
        await http.close()


async def test_the_browser_client_and_the_demo_page_are_served() -> None:
    async with running() as (app, port):
        status, body = await get(port, "/js/backchannel.js")
        assert status == 200 and body == (ROOT / "js" / "backchannel.js").read_bytes()
        status, body = await get(port, "/js/backchannel.d.ts")
        assert status == 200 and body == (ROOT / "js" / "backchannel.d.ts").read_bytes()
        # The modules backchannel.js imports: the whole folder, as it is.
        modules = sorted((ROOT / "js" / "lib").glob("*.js"))
        assert len(modules) >= 7
        for module in modules:
            status, body = await get(port, f"/js/lib/{module.name}")
            assert status == 200 and body == module.read_bytes(), module.name
        status, body = await get(port, "/")
        assert status == 200 and b'<script type="module" src="/demo.js">' in body
        status, body = await get(port, "/demo.js")  # the page's script, from this origin
        assert status == 200 and b'from "/js/backchannel.js"' in body
        status, body = await get(port, "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok", "node": app.node}
        assert (await get(port, "/nothing-here"))[0] == 404
        assert (await get(port, "/ws"))[0] == 426


async def test_without_the_demo_there_is_no_page_and_no_token() -> None:
    async with running(make_config(demo=False)) as (_, port):
        assert (await get(port, "/"))[0] == 404
        assert (await get(port, "/demo/token", "POST", '{"user": "a"}'))[0] == 404
        assert (await get(port, "/js/backchannel.js"))[0] == 200


async def test_a_demo_token_connects_as_that_user() -> None:
    async with running() as (_, port):
        status, body = await get(port, "/demo/token", "POST", '{"user": "alice"}')
        assert status == 200
        token = json.loads(body)["token"]
        client = await HubClient.open(port, path="/ws", token=token)
        assert client.info["user"] == "alice" and client.info["ttl"] > 3000
        await client.close()
        for bad in ('{"user": ""}', '{"user": "a b"}', '{"user": "<b>"}', "[]", "x"):
            status, body = await get(port, "/demo/token", "POST", bad)
            assert status == 400 and json.loads(body)["error"]["code"] == 107
        assert (await get(port, "/demo/token"))[0] == 405


async def test_the_hub_is_on_ws_and_lp_and_upgrades_elsewhere_are_refused() -> None:
    token = make_token(SECRET, "bob", ttl=600)
    async with running() as (_, port):
        ws = await HubClient.open(port, path="/ws", token=token)
        lp = await LongPollClient.open(port, token=token)
        await lp.call("subscribe", channel="chat:x")
        await ws.call("subscribe", channel="chat:x")
        await ws.call("publish", channel="chat:x", data="both")
        [publication] = await lp.publications(1)
        assert publication["data"] == "both"
        with pytest.raises(InvalidStatus) as caught:
            await connect(f"ws://127.0.0.1:{port}/elsewhere")
        assert caught.value.status == 404
        await ws.close()
        await lp.close()


async def test_with_websocket_disabled_upgrades_get_403_and_long_polling_works() -> None:
    async with running(make_config(websocket=False)) as (_, port):
        with pytest.raises(InvalidStatus) as caught:
            await connect(f"ws://127.0.0.1:{port}/ws")
        assert caught.value.status == 403
        client = await LongPollClient.open(port, token=make_token(SECRET, "carol", ttl=600))
        assert client.info["user"] == "carol"
        await client.close()


async def test_a_flood_of_opens_from_one_address_gets_429_and_spares_open_sessions() -> None:
    config = make_config(open_rate=0.001, open_burst=3)
    token = make_token(SECRET, "dave", ttl=600)
    async with running(config) as (_, port):
        established = await HubClient.open(port, path="/ws", token=token)  # 1
        await established.call("subscribe", channel="chat:flood")
        http = await Http.open(port)
        connect_frame = json.dumps({"id": 1, "method": "connect", "params": {"token": token}})
        statuses = [(await http.exchange("POST", "/lp", connect_frame)).status for _ in range(4)]
        assert statuses == [200, 200, 429, 429]  # 2 and 3, then refused
        refused = await http.exchange("POST", "/lp", connect_frame)
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == 111
        with pytest.raises(InvalidStatus) as caught:
            await connect(f"ws://127.0.0.1:{port}/ws")
        assert caught.value.status == 429
        # The session opened before the flood is not disturbed.
        assert (await established.call("publish", channel="chat:flood", data=1))["offset"] == 1
        await established.close()
        await http.close()


async def test_cross_origin_long_polling_needs_an_allowed_origin() -> None:
    async with running(make_config(origins=["https://shop.example"])) as (_, port):
        http = await Http.open(port)
        allowed = [("Origin", "https://shop.example")]
        preflight = await http.exchange("OPTIONS", "/lp?sid=x", headers=allowed)
        assert preflight.status == 204
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        assert "DELETE" in preflight.headers["access-control-allow-methods"]
        answer = await http.exchange("GET", "/lp?sid=x&ack=0", headers=allowed)
        assert answer.status == 404
        assert answer.headers["access-control-allow-origin"] == "https://shop.example"
        other = [("Origin", "https://evil.example")]
        assert (await http.exchange("OPTIONS", "/lp?sid=x", headers=other)).status == 403
        answer = await http.exchange("GET", "/lp?sid=x&ack=0", headers=other)
        assert "access-control-allow-origin" not in answer.headers
        await http.close()
        # The WebSocket handshake checks the same list.
        with pytest.raises(InvalidStatus) as caught:
            await connect(f"ws://127.0.0.1:{port}/ws", origin="https://evil.example")
        assert caught.value.status == 403


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() -> None:
    config = make_config(open_rate=0.001, open_burst=1, trusted_proxies=["127.0.0.1"])
    frame = json.dumps({"id": 1, "method": "connect", "params": {"token": "x"}})
    async with running(config) as (_, port):
        http = await Http.open(port)

        async def open_from(forwarded: str) -> int:
            headers = [("X-Forwarded-For", forwarded)]
            return (await http.exchange("POST", "/lp", frame, headers)).status

        assert await open_from("203.0.113.1") == 200
        assert await open_from("203.0.113.1") == 429
        assert await open_from("203.0.113.2") == 200
        # A client cannot pick its bucket: only the last hop before the proxy counts.
        assert await open_from("198.51.100.9, 203.0.113.1") == 429
        await http.close()


@pytest.mark.parametrize("query", ["?sid=", "?xsid=1", "?q=sid=", "?sid=&v=1"])
async def test_an_open_with_a_query_still_counts_against_the_open_limit(query: str) -> None:
    # Each of these opens a session (LongPoll sees no sid): each must use the bucket.
    config = make_config(open_rate=0.001, open_burst=2)
    frame = json.dumps({"id": 1, "method": "connect", "params": {"token": "x"}})
    async with running(config) as (_, port):
        http = await Http.open(port)
        statuses = [(await http.exchange("POST", f"/lp{query}", frame)).status for _ in range(3)]
        assert statuses == [200, 200, 429]
        await http.close()


@pytest.mark.parametrize(
    "claims",
    [{"sub": ""}, {"sub": "alice", "channel": "$chat:secret"}],
    ids=["empty-sub", "channel-token"],
)
async def test_a_connection_token_without_a_user_or_for_a_channel_is_refused(
    claims: dict[str, str],
) -> None:
    token = jwt.encode({**claims, "exp": int(time.time()) + 600}, SECRET, "HS256")
    async with running() as (_, port):
        for client in (await HubClient.raw(port, path="/ws"), await LongPollClient.raw(port)):
            await client.send_raw(
                json.dumps({"id": 1, "method": "connect", "params": {"token": token}})
            )
            assert (await client.closed())[0] == 3500
            await client.close()


async def test_a_channel_token_cannot_refresh_a_connection() -> None:
    async with running() as (_, port):
        client = await HubClient.open(port, path="/ws", token=make_token(SECRET, "bob", ttl=600))
        channel_token = make_token(SECRET, "bob", ttl=600, channel="$chat:b")
        await client.send_raw(
            json.dumps({"id": 2, "method": "refresh", "params": {"token": channel_token}})
        )
        assert (await client.closed())[0] == 3500


async def test_security_headers_of_pages_scripts_and_answers() -> None:
    async with running() as (_, port):
        http = await Http.open(port)
        page = await http.exchange("GET", "/")
        csp = page.headers["content-security-policy"]
        for directive in ("default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'"):
            assert directive in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["x-content-type-options"] == "nosniff"
        script = await http.exchange("GET", "/js/backchannel.js")
        assert script.headers["x-content-type-options"] == "nosniff"
        assert script.headers["content-type"].startswith("text/javascript")
        answers = [
            await http.exchange("GET", "/lp?sid=nope&ack=0"),
            await http.exchange("POST", "/lp", json.dumps({"id": 1, "method": "connect"})),
            await http.exchange("POST", "/api/publish", "{}"),
            await http.exchange("POST", "/demo/token", '{"user": "alice"}'),
            await http.exchange("GET", "/healthz"),
            await http.exchange("GET", "/nothing-here"),
        ]
        for answer in answers:
            assert answer.headers["x-content-type-options"] == "nosniff", answer
            assert answer.headers["cache-control"] == "no-store", answer
        await http.close()


async def head_then_get(port: int, target: str) -> tuple[bytes, bytes]:
    """The head of a HEAD answer, and the first bytes after it on the same connection
    (the answer to a GET /healthz sent next): a HEAD answer with a body would show."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            writer.write(f"HEAD {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            following = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
    return head, following


def header_lines(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


@pytest.mark.parametrize("target", ["/", "/js/backchannel.js", "/healthz"])
async def test_head_answers_as_get_without_the_body(target: str) -> None:
    async with running() as (_, port):
        http = await Http.open(port)
        get_reply = await http.exchange("GET", target)
        await http.close()
        head, following = await head_then_get(port, target)
        assert head.startswith(b"HTTP/1.1 200 ")
        fields = header_lines(head)
        assert fields["content-length"] == str(len(get_reply.body))
        assert fields["content-type"] == get_reply.headers["content-type"]
        assert following == b"HTTP/1.1 200 OK\r\n"  # no body came before it


async def test_head_elsewhere_has_no_body_and_other_methods_on_files_get_405() -> None:
    async with running() as (_, port):
        for target in ("/nothing-here", "/api/publish", "/lp"):
            head, following = await head_then_get(port, target)
            assert not head.startswith(b"HTTP/1.1 200 "), target
            assert following == b"HTTP/1.1 200 OK\r\n", target
        http = await Http.open(port)
        refused = await http.exchange("POST", "/js/backchannel.js")
        assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"
        await http.close()


async def test_an_anonymous_connection_is_no_user_of_a_user_limited_channel() -> None:
    config = make_config()
    config.auth.anonymous = True
    async with running(config) as (_, port):
        client = await HubClient.open(port, path="/ws")
        assert client.info["user"] == ""
        for channel in ("chat:dm#alice,bob", "chat:dm#alice,", "chat:dm#", "chat:dm#,"):
            with pytest.raises(ReplyError) as info:
                await client.call("subscribe", channel=channel)
            assert info.value.code == 103, channel
        await client.call("subscribe", channel="chat:lobby")
        await client.close()


async def test_sse_is_served_at_sse_counted_by_the_open_rate_and_can_be_turned_off() -> None:
    config = make_config(open_rate=0.001, open_burst=2, origins=["https://shop.example"])
    token = make_token(SECRET, "erin", ttl=600)
    async with running(config) as (_, port):
        client = await SseClient.open(port, token=token)
        assert client.info["user"] == "erin"
        assert (await client.call("subscribe", channel="chat:sse"))["offset"] == 0
        await client.close()
        # A stream from an allowed origin gets CORS, and a cache never keeps it.
        url = f"http://127.0.0.1:{port}/sse"
        frame = json.dumps({"id": 1, "method": "connect", "params": {"token": token}})
        async with httpx.AsyncClient() as http:
            headers = {"Origin": "https://shop.example"}
            async with http.stream(
                "GET", url, params={"frame": frame}, headers=headers, timeout=10
            ) as stream:
                assert stream.status_code == 200
                assert stream.headers["access-control-allow-origin"] == "https://shop.example"
                assert stream.headers["cache-control"] == "no-store"
                assert stream.headers["x-content-type-options"] == "nosniff"
            # The third open from this address is one too many: opens are counted as
            # long-poll opens and WebSocket upgrades are.
            refused = await http.get(url, params={"frame": frame}, timeout=10)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == 111
    # Stopping the server ends a stream with the disconnect push: come back later.
    async with running(make_config()) as (_, port):
        client = await SseClient.open(port, token=token)
    assert await client.closed() == (3000, "server shutting down")
    await client.close()
    config = make_config()
    config.sse.enabled = False
    async with running(config) as (_, port):
        async with httpx.AsyncClient() as http:
            answer = await http.get(f"http://127.0.0.1:{port}/sse", params={"frame": frame})
            assert answer.status_code == 404
