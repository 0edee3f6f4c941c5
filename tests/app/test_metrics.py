"""Prometheus metrics at /metrics, read back with prometheus-client's own parser after a
scripted session; and the /health and /ready probes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.http import Http
from helpers.hub_client import HubClient, LongPollClient, ReplyError
from helpers.redis_server import RedisServer, require_redis
from prometheus_client.parser import text_string_to_metric_families

from backchannel.hub.token import make_token

from .conftest import API_KEY, SECRET, make_config, running


async def get(port: int, target: str, method: str = "GET", body: str = "") -> tuple[int, str]:
    http = await Http.open(port)
    try:
        headers = [("Authorization", f"apikey {API_KEY}")] if target.startswith("/api/") else []
        reply = await http.exchange(method, target, body, headers=headers)
        return reply.status, reply.body.decode()
    finally:
        await http.close()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample by name and labels, parsed by prometheus-client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition the server reaches on its own (bounded)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never reached")


async def test_metrics_count_a_scripted_session() -> None:
    config = make_config()
    config.metrics.enabled = True
    async with running(config) as (app, port):
        node = frozenset({("node", app.node)})
        token = make_token(SECRET, "alice")
        ws = await HubClient.open(port, path="/ws", token=token)
        await ws.call("subscribe", channel="chat:lobby")
        lp = await LongPollClient.open(port, token=make_token(SECRET, "bob"))
        await lp.call("subscribe", channel="chat:lobby")
        for n in range(3):
            status, _ = await get(
                port, "/api/publish", "POST", json.dumps({"channel": "chat:lobby", "data": n})
            )
            assert status == 200
        for client in (ws, lp):
            assert [p["data"] for p in await client.publications(3)] == [0, 1, 2]
        assert (await get(port, "/api/nothing", "POST", "{}"))[0] == 404
        # Refused: a publish to a namespace that does not exist, by a backend and by a
        # client (whose subscribe is refused first).
        refused = json.dumps({"channel": "nowhere:x", "data": 1})
        assert (await get(port, "/api/publish", "POST", refused))[0] == 400
        with pytest.raises(ReplyError):
            await ws.call("subscribe", channel="nowhere:x")

        # The long-polling client, idle, holds a poll waiting for news.
        await until(lambda: app.longpoll.held() == 1)

        status, text = await get(port, "/metrics")
        assert status == 200
        values = samples(text)

        def value(name: str, **labels: str) -> float:
            return values[(name, node | frozenset(labels.items()))]

        assert value("backchannel_connections", transport="websocket") == 1
        assert value("backchannel_connections", transport="longpoll") == 1
        assert value("backchannel_connections", transport="sse") == 0  # listed, unused
        assert value("backchannel_sessions") == 2
        assert value("backchannel_users") == 2
        assert value("backchannel_subscriptions") == 2
        assert value("backchannel_channels") == 1
        assert value("backchannel_long_polls_held") == 1
        assert value("backchannel_publications_accepted_total") == 3
        assert value("backchannel_publications_fanned_out_total") == 3
        # Three publications to two subscribers, and bob's join told to alice.
        assert value("backchannel_deliveries_total") == 7
        assert value("backchannel_slow_consumers_total", policy="disconnect") == 0
        assert value("backchannel_slow_consumers_total", policy="drop") == 0
        assert value("backchannel_publications_refused_total") == 1
        assert value("backchannel_commands_total", method="connect", code="0") == 2
        assert value("backchannel_commands_total", method="subscribe", code="0") == 2
        assert value("backchannel_commands_total", method="subscribe", code="102") == 1
        assert value("backchannel_recoveries_total", outcome="recovered") == 0
        assert value("backchannel_api_requests_total", method="publish", status="200") == 3
        # Each publication's fan-out timed once (the API's three, and none other).
        assert value("backchannel_fanout_seconds_count") == 3
        assert value("backchannel_fanout_seconds_bucket", le="+Inf") == 3
        # An unknown method is counted as "other": clients cannot grow the label set.
        assert value("backchannel_api_requests_total", method="other", status="404") == 1

        await ws.close()
        await lp.close()


async def test_metrics_are_off_unless_enabled() -> None:
    async with running() as (_, port):
        assert (await get(port, "/metrics"))[0] == 404


async def test_health_and_ready_on_the_memory_broker() -> None:
    async with running() as (_, port):
        status, body = await get(port, "/health")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        status, body = await get(port, "/ready")
        assert status == 200 and json.loads(body) == {"status": "ready"}


async def test_ready_follows_the_broker(tmp_path: Path) -> None:
    require_redis()
    with RedisServer(tmp_path) as redis:
        config = make_config()
        config.broker.url = redis.url
        async with running(config) as (_, port):
            assert (await get(port, "/ready"))[0] == 200
            redis.stop()
            # The process is alive (liveness), but it cannot serve (readiness).
            assert (await get(port, "/health"))[0] == 200
            status, body = await get(port, "/ready")
            assert status == 503 and json.loads(body) == {"status": "broker unreachable"}
            redis.start()
            assert (await get(port, "/ready"))[0] == 200


async def test_ready_is_503_once_shutdown_begins() -> None:
    async with running() as (app, port):
        http = await Http.open(port)
        assert (await http.exchange("GET", "/ready")).status == 200
        # Shutting down: load balancers must stop sending new clients here at once.
        app.closing = True
        reply = await http.exchange("GET", "/ready")
        assert reply.status == 503 and json.loads(reply.body)["error"]["code"] == 116
        await http.close()


async def test_webhook_outcomes_are_counted() -> None:
    from helpers.webhook_receiver import Receiver

    from backchannel.app.config import WebhooksConfig

    receiver = await Receiver.start("hook-secret", "--fail-first", "1")
    try:
        config = make_config()
        config.metrics.enabled = True
        config.webhooks = WebhooksConfig(
            url=receiver.url,
            secret="hook-secret",
            events=["connect"],
            retry_min=0.01,
            retry_max=0.05,
        )
        async with running(config) as (app, port):
            ws = await HubClient.open(port, path="/ws", token=make_token(SECRET, "alice"))
            await receiver.wait_accepted(1)
            await ws.close()
            status, text = await get(port, "/metrics")
            assert status == 200 and "backchannel_webhooks_total" in text
    finally:
        await receiver.kill()
    # Read once the server has stopped: the sender has seen the answer by then.
    assert app.metrics is not None
    values = samples(app.metrics.render().decode())
    node = ("node", app.node)

    def total(outcome: str) -> float:
        return values[("backchannel_webhooks_total", frozenset({node, ("outcome", outcome)}))]

    # The first attempt got 500, the second was accepted.
    assert (total("sent"), total("failed"), total("retried")) == (1, 1, 1)
    assert (total("dropped"), total("dead_lettered")) == (0, 0)


async def test_broker_round_trips_are_counted_and_timed(tmp_path: Path) -> None:
    require_redis()
    with RedisServer(tmp_path) as redis:
        config = make_config()
        config.broker.url = redis.url
        config.metrics.enabled = True
        async with running(config) as (app, port):
            node = frozenset({("node", app.node)})
            body = json.dumps({"channel": "chat:lobby", "data": "hi"})
            for _ in range(3):
                assert (await get(port, "/api/publish", "POST", body))[0] == 200
            redis.stop()
            assert (await get(port, "/api/publish", "POST", body))[0] == 503
            values = samples((await get(port, "/metrics"))[1])
            publish = node | {("operation", "publish")}
            assert values[("backchannel_broker_calls_total", publish)] == 4
            assert values[("backchannel_broker_errors_total", publish)] == 1
            assert values[("backchannel_broker_call_seconds_count", publish)] == 4
            redis.start()
