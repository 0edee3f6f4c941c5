"""The HTTP API for backends, against a running server, with real hub clients listening."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers.http import Http, Reply
from helpers.hub_client import HubClient
from helpers.redis_server import RedisServer, require_redis

from backchannel.app import App
from backchannel.app.config import BrokerConfig
from backchannel.hub import ChannelOptions
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.token import make_token
from backchannel.hub.wire import ClientInfo

from .conftest import API_KEY, SECRET, make_config, running

AUTH = [("Authorization", f"apikey {API_KEY}")]


@pytest.fixture
async def server() -> AsyncIterator[tuple[App, int]]:
    async with running() as started:
        yield started


async def api(port: int, method: str, params: Any, headers: Any = AUTH) -> Reply:
    http = await Http.open(port)
    try:
        body = params if isinstance(params, (str, bytes)) else json.dumps(params)
        return await http.exchange("POST", f"/api/{method}", body, headers)
    finally:
        await http.close()


async def listener(port: int, user: str, *channels: str) -> HubClient:
    client = await HubClient.open(port, path="/ws", token=make_token(SECRET, user, ttl=600))
    for channel in channels:
        await client.call("subscribe", channel=channel)
    return client


async def test_publish_reaches_subscribers_and_is_kept(server: tuple[App, int]) -> None:
    _, port = server
    alice = await listener(port, "alice", "orders:42")
    reply = await api(port, "publish", {"channel": "orders:42", "data": {"status": "shipped"}})
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    result = reply.json()
    assert result["offset"] == 1 and result["epoch"]
    [publication] = await alice.publications(1)
    assert publication["data"] == {"status": "shipped"} and publication["offset"] == 1
    history = (await api(port, "history", {"channel": "orders:42"})).json()
    assert [p["data"] for p in history["publications"]] == [{"status": "shipped"}]
    assert (history["offset"], history["epoch"]) == (1, result["epoch"])
    await alice.close()


async def test_an_idempotency_key_publishes_once(server: tuple[App, int]) -> None:
    _, port = server
    params = {"channel": "orders:7", "data": "paid", "idempotency_key": "order-7-paid"}
    first = (await api(port, "publish", params)).json()
    again = (await api(port, "publish", params)).json()
    assert again == {**first, "duplicate": True}
    history = (await api(port, "history", {"channel": "orders:7"})).json()
    assert len(history["publications"]) == 1


async def test_broadcast_answers_for_each_channel(server: tuple[App, int]) -> None:
    _, port = server
    alice = await listener(port, "alice", "orders:1", "chat:lobby")
    reply = await api(
        port, "broadcast", {"channels": ["orders:1", "nope:1", "chat:lobby"], "data": "sale"}
    )
    assert reply.status == 200, reply.text
    results = reply.json()["results"]
    assert results[0]["offset"] == 1
    assert results[1] == {"error": {"code": 102, "message": "unknown channel", "temporary": False}}
    assert results[2]["offset"] == 1
    got = await alice.publications(2)
    assert sorted(p["channel"] for p in got) == ["chat:lobby", "orders:1"]
    await alice.close()


async def test_presence_unsubscribe_and_disconnect(server: tuple[App, int]) -> None:
    _, port = server
    alice = await listener(port, "alice", "chat:room")
    bob = await listener(port, "bob", "chat:room")
    presence = (await api(port, "presence", {"channel": "chat:room"})).json()
    assert sorted(who["user"] for who in presence["clients"].values()) == ["alice", "bob"]

    reply = await api(port, "unsubscribe", {"channel": "chat:room", "user": "bob"})
    assert (reply.status, reply.json()) == (200, {})
    push = await bob.push()
    while push["push"] != "unsubscribe":
        push = await bob.push()
    assert push["channel"] == "chat:room" and push["code"] == 117

    reply = await api(port, "disconnect", {"user": "alice", "code": 4001, "reason": "banned"})
    assert (reply.status, reply.json()) == (200, {})
    assert await alice.closed() == (4001, "banned")
    # Bob is still there.
    assert await bob.call("ping") == {}
    await bob.close()


async def test_presence_pages_cover_20000_members_once_and_counts_answer_alone(
    tmp_path: Any,
) -> None:
    require_redis()
    members = 20_000
    config = make_config()
    with RedisServer(tmp_path) as redis_server:
        config.broker = BrokerConfig(url=redis_server.url, prefix="pages")
        # Written straight to Redis in one pipeline per 10 000 entries, as nodes holding
        # 20 000 subscribers would have refreshed them: no 20 000 clients needed.
        writer = RedisBroker(redis_server.url, prefix="pages")
        entries = [("chat:big", ClientInfo(f"c{i:05}", f"u{i % 1000}")) for i in range(members)]
        await writer.refresh_presence(entries, ttl=600)
        await writer.close()
        async with running(config) as (_, port):
            counts = await api(port, "presence", {"channel": "chat:big", "count_only": True})
            assert counts.json() == {"count": members, "users": 1000}
            # Without a limit: the default page, and where to go on.
            first = (await api(port, "presence", {"channel": "chat:big"})).json()
            assert len(first["clients"]) == 1000
            assert first["next_cursor"] == "c00999"
            seen: list[str] = []
            params: dict[str, Any] = {"channel": "chat:big", "limit": 5000}
            for _ in range(members // 5000 + 2):  # bounded: one more than it needs
                page = (await api(port, "presence", params)).json()
                seen.extend(page["clients"])
                if "next_cursor" not in page:
                    break
                params["cursor"] = page["next_cursor"]
            assert seen == [who.client for _, who in entries] and len(set(seen)) == members
            assert page["clients"]["c19999"] == {"client": "c19999", "user": "u999"}
            too_many = await api(port, "presence", {"channel": "chat:big", "limit": 5001})
            assert too_many.status == 400
            assert too_many.json()["error"]["message"] == "limit: 1 to 5000"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], 401),
        ([("Authorization", "apikey wrong")], 401),
        ([("Authorization", f"Basic {API_KEY}")], 401),
        ([("Authorization", f"Bearer {API_KEY}")], 200),
    ],
)
async def test_the_key_is_required(
    server: tuple[App, int], headers: list[tuple[str, str]], status: int
) -> None:
    _, port = server
    reply = await api(port, "publish", {"channel": "orders:1", "data": 1}, headers)
    assert reply.status == status
    if status == 401:
        assert reply.json()["error"]["code"] == 101


@pytest.mark.parametrize(
    ("method", "body", "status", "code", "message"),
    [
        ("publish", "not json", 400, 107, "not JSON"),
        ("publish", "[1]", 400, 107, "JSON object"),
        ("publish", {"data": 1}, 400, 107, "missing parameter 'channel'"),
        ("publish", {"channel": "orders:1", "data": 1, "x": 2}, 400, 107, "unknown parameter"),
        ("publish", {"channel": 5, "data": 1}, 400, 107, "must be of type str"),
        ("publish", '{"channel": "orders:1", "data": NaN}', 400, 107, "not JSON"),
        ("publish", {"channel": "nope:1", "data": 1}, 400, 102, "unknown channel"),
        # Namespaces are configured (the demo's) and no default: a plain name is refused.
        ("publish", {"channel": "lobby", "data": 1}, 400, 102, "unknown channel"),
        ("publish", {"channel": "", "data": 1}, 400, 107, "invalid channel name"),
        ("publish", {"channel": "orders:1", "data": "x" * 70_000}, 413, 113, "too large"),
        ("presence", {"channel": "orders:1"}, 400, 108, "not available"),
        ("history", {"channel": "typing:x"}, 400, 108, "not available"),
        ("broadcast", {"channels": [], "data": 1}, 400, 107, "1 to 1000"),
        ("disconnect", {"user": "a", "code": 3500}, 400, 107, "4000-4999"),
        ("frobnicate", {}, 404, 104, "no API method"),
    ],
)
async def test_bad_requests_get_a_clear_json_error(
    server: tuple[App, int], method: str, body: Any, status: int, code: int, message: str
) -> None:
    _, port = server
    reply = await api(port, method, body)
    assert reply.status == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and message in error["message"]


async def test_only_post_is_allowed(server: tuple[App, int]) -> None:
    _, port = server
    http = await Http.open(port)
    reply = await http.exchange("GET", "/api/publish", headers=AUTH)
    assert reply.status == 405 and reply.headers["allow"] == "POST"
    await http.close()


async def test_a_body_over_the_server_limit_is_413_and_the_server_goes_on() -> None:
    async with running(make_config(max_body_size=1000)) as (_, port):
        reply = await api(port, "publish", {"channel": "orders:1", "data": "x" * 2000})
        assert reply.status == 413
        # The API's own error shape, though the API never saw the request.
        assert reply.headers["content-type"] == "application/json"
        error = reply.json()["error"]
        assert error["code"] == 113 and error["temporary"] is False
        assert "server.max_body_size (1000 bytes)" in error["message"]
        assert reply.headers["cache-control"] == "no-store"
        reply = await api(port, "publish", {"channel": "orders:1", "data": "small"})
        assert reply.status == 200


async def test_too_many_requests_from_one_address_get_429() -> None:
    config = make_config()
    config.api.rate, config.api.burst = 0.001, 3
    async with running(config) as (_, port):
        statuses = [
            (await api(port, "publish", {"channel": "orders:1", "data": i})).status
            for i in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        reply = await api(port, "publish", {"channel": "orders:1", "data": 0})
        assert reply.json()["error"] == {
            "code": 111,
            "message": "too many requests",
            "temporary": True,
        }


async def test_a_configured_default_namespace_takes_plain_channel_names() -> None:
    config = make_config()
    config.channels = {"default": ChannelOptions(history_size=5)}
    async with running(config) as (_, port):
        reply = await api(port, "publish", {"channel": "lobby", "data": 1})
        assert reply.status == 200 and reply.json()["offset"] == 1
        reply = await api(port, "publish", {"channel": "chat:x", "data": 1})
        assert reply.status == 400 and reply.json()["error"]["code"] == 102
