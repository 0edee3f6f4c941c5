"""Signed webhooks out (docs/operations.md, "Webhooks"), against a real receiver process
(tests/helpers/webhook_receiver.py) that checks every signature with the documented
recipe and drops duplicates by delivery id; and across a three-node cluster, where each
event is sent by exactly one node."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.cluster import Cluster, api, token
from helpers.hub_client import HubClient
from helpers.redis_server import RedisServer, require_redis
from helpers.webhook_receiver import Receiver

from backchannel.app.config import WebhooksConfig
from backchannel.app.webhooks import Webhooks, sign
from backchannel.hub import HubOptions
from backchannel.hub.options import ChannelOptions
from backchannel.hub.token import make_token

from .conftest import SECRET, make_config, running

HOOK_SECRET = "webhook-test-secret"
ROOT = Path(__file__).resolve().parent.parent.parent


def hooks_config(receiver: Receiver, **settings: Any) -> WebhooksConfig:
    """Webhooks to ``receiver``, with retries quick enough for a test."""
    values: dict[str, Any] = {
        "url": receiver.url,
        "secret": HOOK_SECRET,
        "retry_min": 0.01,
        "retry_max": 0.05,
        **settings,
    }
    return WebhooksConfig(**values)


def key(event: dict[str, Any]) -> tuple[Any, ...]:
    """What an event is about, without its id, time and node."""
    return (event["event"], event.get("user"), event.get("channel"), json.dumps(event.get("data")))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver.start(HOOK_SECRET)
    try:
        yield started
    finally:
        await started.kill()


async def started_webhooks(config: WebhooksConfig) -> Webhooks:
    webhooks = Webhooks(config, HubOptions(), node="test")
    await webhooks.start()
    return webhooks


# Events, content and signatures.


async def test_each_event_is_sent_signed_once(receiver: Receiver) -> None:
    config = make_config()
    config.webhooks = hooks_config(receiver)
    async with running(config) as (app, port):
        alice = await HubClient.open(port, path="/ws", token=make_token(SECRET, "alice"))
        await alice.call("subscribe", channel="chat:room")  # chat has presence
        await alice.call("publish", channel="chat:room", data={"text": "hi"})
        await app.hub.publish("chat:room", {"text": "from the server"})
        await alice.call("unsubscribe", channel="chat:room")
        await alice.close()
        events = await receiver.wait_accepted(10)
    records = await receiver.stop()

    assert Counter(key(e) for e in events) == Counter(
        [
            ("connect", "alice", None, "null"),
            ("subscribe", "alice", "chat:room", "null"),
            ("presence_join", "alice", "chat:room", "null"),
            ("channel_occupied", None, "chat:room", "null"),
            ("publish", "alice", "chat:room", '{"text": "hi"}'),
            ("publish", None, "chat:room", '{"text": "from the server"}'),
            ("unsubscribe", "alice", "chat:room", "null"),
            ("presence_leave", "alice", "chat:room", "null"),
            ("channel_vacated", None, "chat:room", "null"),
            ("disconnect", "alice", None, "null"),
        ]
    )
    # Every request was verified by the receiver, and nothing came twice.
    assert [r["kind"] for r in records] == ["accepted"] * 10
    assert len({e["id"] for e in events}) == 10
    by_event = {e["event"]: e for e in events}
    connect = by_event["connect"]
    assert connect["transport"] == "websocket" and connect["node"] == app.node
    assert by_event["disconnect"]["code"] is None  # the client left
    client_publish = next(e for e in events if e["event"] == "publish" and "user" in e)
    assert client_publish["client"] == connect["client"]
    assert client_publish["offset"] == 1 and client_publish["epoch"]
    record = records[0]
    assert record["headers"]["X-Backchannel-Delivery"] == record["event"]["id"]
    assert record["headers"]["X-Backchannel-Event"] == record["event"]["event"]
    assert abs(record["event"]["time"] / 1000 - time.time()) < 600
    assert app.webhooks is not None and app.webhooks.sent == 10


async def test_events_and_namespaces_select_what_is_sent(receiver: Receiver) -> None:
    config = make_config()
    # Names without a namespace take the default namespace's options when there is one.
    config.channels = {**config.channels, "default": ChannelOptions()}
    config.webhooks = hooks_config(
        receiver, events=["subscribe", "publish"], namespaces=["chat", "default"]
    )
    async with running(config) as (_, port):
        alice = await HubClient.open(port, path="/ws", token=make_token(SECRET, "alice"))
        for channel in ("chat:a", "typing:b", "plain"):
            await alice.call("subscribe", channel=channel)
            await alice.call("publish", channel=channel, data=channel)
        await alice.close()
    records = await receiver.stop()  # after the server's shutdown: all is out

    assert sorted(key(r["event"]) for r in records) == [
        ("publish", "alice", "chat:a", '"chat:a"'),
        ("publish", "alice", "plain", '"plain"'),
        ("subscribe", "alice", "chat:a", "null"),
        ("subscribe", "alice", "plain", "null"),
    ]


# Retries, duplicates, the dead-letter log.


async def test_a_failing_receiver_gets_each_event_once_after_retries() -> None:
    receiver = await Receiver.start(HOOK_SECRET, "--fail-first", "2")
    try:
        webhooks = await started_webhooks(hooks_config(receiver))
        for channel in ("chat:1", "chat:2", "chat:3"):
            await webhooks.on_channel_occupied(channel)
        events = await receiver.wait_accepted(3)
        await webhooks.close()
        records = await receiver.stop()
    finally:
        await receiver.kill()

    assert sorted(e["channel"] for e in events) == ["chat:1", "chat:2", "chat:3"]
    attempts: dict[str, list[tuple[str, int]]] = {}
    for record in records:
        attempts.setdefault(record["delivery"], []).append((record["kind"], record["attempt"]))
    # Each delivery: two 500s, then accepted at the third attempt, under the same id.
    assert sorted(attempts.values()) == [
        [("failed", 1), ("failed", 2), ("accepted", 3)] for _ in range(3)
    ]
    assert webhooks.stats() == {
        "sent": 3,
        "failed": 6,
        "retried": 6,
        "dropped": 0,
        "dead_lettered": 0,
    }


async def test_a_timed_out_attempt_is_sent_again_with_its_id() -> None:
    """At least once: the receiver took the event but answered after our timeout; the
    retry carries the same id and body, and the receiver drops it as a duplicate."""
    receiver = await Receiver.start(HOOK_SECRET, "--slow-first", "3")
    try:
        webhooks = await started_webhooks(hooks_config(receiver, timeout=0.3))
        await webhooks.on_channel_occupied("chat:1")
        await webhooks.close()
        records = await receiver.stop()
    finally:
        await receiver.kill()

    assert [r["kind"] for r in records] == ["accepted", "duplicate"]
    first, second = records
    assert first["delivery"] == second["delivery"]
    assert first["event"] == second["event"]
    assert (webhooks.sent, webhooks.failed, webhooks.retried) == (1, 1, 1)


async def test_an_event_that_cannot_be_delivered_goes_to_the_dead_letter_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = await Receiver.start("not-the-secret-we-sign-with")
    try:
        webhooks = await started_webhooks(hooks_config(receiver, max_attempts=3))
        with caplog.at_level(logging.ERROR, "backchannel.webhooks"):
            await webhooks.on_channel_vacated("chat:gone")
            await webhooks.close()
        records = await receiver.stop()
    finally:
        await receiver.kill()

    assert [(r["kind"], r["reason"]) for r in records] == [("refused", "bad signature")] * 3
    assert webhooks.stats() == {
        "sent": 0,
        "failed": 3,
        "retried": 2,
        "dropped": 0,
        "dead_lettered": 1,
    }
    [line] = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert "\n" not in line
    letter = json.loads(line.partition(": ")[2])
    assert letter["error"] == "HTTP 401" and letter["attempts"] == 3
    assert letter["event"]["event"] == "channel_vacated"
    assert letter["event"]["channel"] == "chat:gone"
    assert letter["event"]["id"] == records[0]["delivery"]


async def test_the_queue_is_bounded_and_shutdown_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver that never answers: the queue holds ``queue_size`` events (in flight
    included), drops and counts the rest, and close gives up after ``flush_timeout``,
    putting what is left in the dead-letter log."""
    receiver = await Receiver.start(HOOK_SECRET, "--hang")
    try:
        config = hooks_config(receiver, queue_size=3, concurrency=1, flush_timeout=0.2)
        webhooks = await started_webhooks(config)
        with caplog.at_level(logging.WARNING, "backchannel.webhooks"):
            for n in range(10):
                await webhooks.on_channel_occupied(f"chat:{n}")
            assert (webhooks.pending, webhooks.dropped) == (3, 7)
            async with asyncio.timeout(10):
                await webhooks.close()
        await receiver.stop()
    finally:
        await receiver.kill()

    assert webhooks.stats()["dead_lettered"] == 3 and webhooks.pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("webhook channel_occupied dropped" in m for m in messages)
    letters = [m for m in messages if "dead letter" in m]
    assert len(letters) == 3 and all("not delivered at shutdown" in m for m in letters)


async def test_close_delivers_what_waits(receiver: Receiver) -> None:
    webhooks = await started_webhooks(hooks_config(receiver))
    for n in range(20):
        await webhooks.on_channel_occupied(f"chat:{n}")
    await webhooks.close()
    assert webhooks.sent == 20
    records = await receiver.stop()
    assert sorted(r["event"]["channel"] for r in records) == sorted(f"chat:{n}" for n in range(20))


# The verification recipe of the docs, in node.


def docs_block(language: str) -> str:
    """The ``language`` block of the Webhooks section of docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.partition("## Webhooks")[2].partition("\n## ")[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, f"one {language} block expected in the Webhooks section"
    return blocks[0]


def test_the_node_recipe_verifies_our_signatures(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    now = int(time.time())
    body = json.dumps({"id": "d-1", "event": "publish", "data": "héllo"}).encode()
    cases = [
        (now, body, sign(HOOK_SECRET, now, body), True),
        (now, body + b" ", sign(HOOK_SECRET, now, body), False),  # body changed
        (now, body, sign("another secret", now, body), False),
        (now - 600, body, sign(HOOK_SECRET, now - 600, body), False),  # too old
    ]
    checks = "".join(
        f"console.log(verifyWebhook({json.dumps(HOOK_SECRET)}, "
        f'{{"x-backchannel-timestamp": "{ts}", "x-backchannel-signature": "{sig}"}}, '
        f"Buffer.from({json.dumps(list(data))})));\n"
        for ts, data, sig, _ in cases
    )
    script = tmp_path / "verify.js"
    script.write_text(docs_block("js") + "\n" + checks)
    out = subprocess.run(
        [node, str(script)], capture_output=True, text=True, timeout=30, check=True
    )
    # The block's own example prints first; then one line per case.
    assert out.stdout.split()[-len(cases) :] == [str(ok).lower() for *_, ok in cases]


# A cluster: each event once, from the node where it happened.

CLUSTER_CONFIG = """\
[channels.chat]
presence = true
"""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    with RedisServer(folder, persistent=False) as server:
        yield server


async def test_a_three_node_cluster_sends_each_event_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    receiver = await Receiver.start(HOOK_SECRET, "--fail-first", "1")
    cluster = Cluster(tmp_path, redis_server.url, config=CLUSTER_CONFIG)
    try:
        env = cluster.env(
            BACKCHANNEL_WEBHOOKS_URL=receiver.url,
            BACKCHANNEL_WEBHOOKS_SECRET=HOOK_SECRET,
            BACKCHANNEL_WEBHOOKS_RETRY_MIN="0.01",
            BACKCHANNEL_WEBHOOKS_RETRY_MAX="0.05",
        )
        nodes = [cluster.spawn(env=env) for _ in range(3)]
        for node in nodes:
            await node.ready()
        alice = await HubClient.open(nodes[0].port, path="/ws", token=token("alice"))
        await alice.call("subscribe", channel="chat:room")
        bob = await HubClient.open(nodes[1].port, path="/ws", token=token("bob"))
        await bob.call("subscribe", channel="chat:room")
        reply = await api(nodes[2].port, "publish", {"channel": "chat:room", "data": "api"})
        assert reply.status == 200, reply.text
        await alice.call("publish", channel="chat:room", data="alice")
        await alice.call("unsubscribe", channel="chat:room")
        await alice.close()
        # Bob stays: his node's shutdown ends his session, and sends what follows.
        expected = {
            ("connect", "alice", None, "null"): 0,
            ("subscribe", "alice", "chat:room", "null"): 0,
            ("presence_join", "alice", "chat:room", "null"): 0,
            ("channel_occupied", None, "chat:room", "null"): 0,
            ("connect", "bob", None, "null"): 1,
            ("subscribe", "bob", "chat:room", "null"): 1,
            ("presence_join", "bob", "chat:room", "null"): 1,
            ("publish", None, "chat:room", '"api"'): 2,
            ("publish", "alice", "chat:room", '"alice"'): 0,
            ("unsubscribe", "alice", "chat:room", "null"): 0,
            ("presence_leave", "alice", "chat:room", "null"): 0,
            ("disconnect", "alice", None, "null"): 0,
            ("unsubscribe", "bob", "chat:room", "null"): 1,
            ("presence_leave", "bob", "chat:room", "null"): 1,
            ("channel_vacated", None, "chat:room", "null"): 1,
            ("disconnect", "bob", None, "null"): 1,
        }
        # A clean stop of a node delivers what it holds, the events of its own
        # shutdown included.
        for node in nodes:
            assert await node.stop() == 0
        records = await receiver.stop()
        await bob.close()
    finally:
        await receiver.kill()
        await cluster.close()

    accepted = [r["event"] for r in receiver.of_kind("accepted")]
    assert Counter(key(e) for e in accepted) == Counter(expected.keys())
    [bye] = [e for e in accepted if e["event"] == "disconnect" and e["user"] == "bob"]
    assert (bye["code"], bye["reason"]) == (3000, "server shutting down")
    # Each from the node where it happened (its name ends with the node's pid).
    pids = [node.process.pid for node in nodes]
    for event in accepted:
        assert event["node"].endswith(f":{pids[expected[key(event)]]}"), event
    # Every first attempt failed with 500, and the retry was accepted: by delivery id,
    # each event once.
    assert sorted(r["kind"] for r in records) == sorted(["failed", "accepted"] * len(expected))
    assert len({e["id"] for e in accepted}) == len(expected)
    assert {r["delivery"] for r in records} == {e["id"] for e in accepted}
