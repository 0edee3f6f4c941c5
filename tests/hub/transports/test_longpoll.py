"""The long-polling transport's own rules: batches, acknowledgements, ids, timeouts.

The hub's behaviour over long polling (the same as over WebSocket) is tested by the shared
transport suite in test_hub.py.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers.http import Http
from helpers.redis_server import RedisServer, require_redis

from backchannel.asyncio import serve
from backchannel.hub.brokers.redis import RedisBroker
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol.limits import Limits

OPTIONS = HubOptions(anonymous=True, namespaces={"feed": ChannelOptions(history_size=10)})


@asynccontextmanager
async def endpoint(**options: Any) -> AsyncIterator[tuple[Hub, LongPoll, int]]:
    async with Hub(OPTIONS) as hub:
        long_poll = LongPoll(hub, **options)
        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=long_poll) as s:
            yield hub, long_poll, s.port


def command(cid: int, method: str, **params: Any) -> str:
    return json.dumps({"id": cid, "method": method, "params": params})


def lines(body: str) -> tuple[int, list[dict[str, Any]]]:
    first, _, rest = body.partition("\n")
    return json.loads(first)["batch"], [json.loads(line) for line in rest.split("\n") if rest]


async def test_a_batch_not_acknowledged_is_sent_again() -> None:
    async with endpoint() as (_, _, port):
        http = await Http.open(port)
        status, body = await http.request("POST", "/lp", command(1, "connect"))
        assert status == 200
        sid = json.loads(body)["sid"]
        # 128 bits from the CSPRNG, URL-safe: 22 characters.
        assert len(sid) == 22
        status, first = await http.request("GET", f"/lp?sid={sid}&ack=0")
        batch, replies = lines(first)
        assert status == 200 and batch == 1 and replies[0]["id"] == 1
        # The response was lost on the way: the client polls again with the same ack.
        status, again = await http.request("GET", f"/lp?sid={sid}&ack=0")
        assert again == first
        # Acknowledged, the next batch is new.
        await http.request("POST", f"/lp?sid={sid}", command(2, "ping"))
        status, body = await http.request("GET", f"/lp?sid={sid}&ack=1")
        batch, replies = lines(body)
        assert batch == 2 and replies == [{"id": 2, "result": {}}]
        # An ack for a batch never sent is refused.
        status, _ = await http.request("GET", f"/lp?sid={sid}&ack=7")
        assert status == 400
        await http.close()


async def test_unknown_sessions_and_methods() -> None:
    async with endpoint() as (_, _, port):
        http = await Http.open(port)
        status, body = await http.request("GET", "/lp?sid=not-a-session&ack=0")
        assert status == 404 and json.loads(body)["reconnect"] is True
        status, body = await http.request("POST", "/lp", command(1, "connect"))
        sid = json.loads(body)["sid"]
        status, _ = await http.request("PUT", f"/lp?sid={sid}")
        assert status == 405
        status, _ = await http.request("GET", f"/lp?sid={sid}&ack=x")
        assert status == 400
        await http.close()


async def test_an_idle_poll_is_answered_empty_after_the_poll_timeout() -> None:
    async with endpoint(poll_timeout=0.1) as (_, _, port):
        http = await Http.open(port)
        status, body = await http.request("POST", "/lp", command(1, "connect"))
        sid = json.loads(body)["sid"]
        await http.request("GET", f"/lp?sid={sid}&ack=0")
        status, body = await http.request("GET", f"/lp?sid={sid}&ack=1")
        assert status == 200 and body == '{"batch":1}'
        await http.close()


async def test_a_publication_is_the_same_text_for_every_waiting_session() -> None:
    async with endpoint() as (hub, long_poll, port):
        http = await Http.open(port)
        sids = []
        for _ in range(3):
            body = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")])
            _, answer = await http.request("POST", "/lp", body)
            sids.append(json.loads(answer)["sid"])
            await http.request("GET", f"/lp?sid={sids[-1]}&ack=0")  # the two replies
        await hub.publish("feed:a", {"n": 1})
        pending = [long_poll.sessions[sid].outbox.texts() for sid in sids]  # type: ignore[union-attr]
        assert all(len(p) == 1 for p in pending)
        assert pending[0][0] is pending[1][0] is pending[2][0]
        for sid in sids:
            _, body = await http.request("GET", f"/lp?sid={sid}&ack=1")
            batch, pushes = lines(body)
            assert batch == 2 and pushes[0]["data"] == {"n": 1}
        await http.close()


async def test_leaving_frees_the_session_at_once() -> None:
    async with endpoint() as (_, long_poll, port):
        http = await Http.open(port)
        _, body = await http.request("POST", "/lp", command(1, "connect"))
        sid = json.loads(body)["sid"]
        status, _ = await http.request("DELETE", f"/lp?sid={sid}")
        assert status == 200 and sid not in long_poll.sessions
        await http.close()


async def test_leaving_frees_what_was_queued_at_once() -> None:
    # The session and its transport refer to each other: what waits for an abandoned
    # session must be freed when it ends, not at the next full garbage collection.
    async with endpoint() as (hub, long_poll, port):
        http = await Http.open(port)
        body = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:a")])
        _, answer = await http.request("POST", "/lp", body)
        sid = json.loads(answer)["sid"]
        await http.request("GET", f"/lp?sid={sid}&ack=0")  # a batch held for its ack
        for n in range(5):
            await hub.publish("feed:a", {"n": n})
        transport = long_poll.sessions[sid]
        assert transport.outbox and transport.batches
        status, _ = await http.request("DELETE", f"/lp?sid={sid}")
        assert status == 200
        assert not transport.outbox and not transport.batches and transport.session is None
        await http.close()


async def test_replies_to_a_session_never_polled_are_bounded_by_its_outbox() -> None:
    # Reply amplification over long polling: commands whose replies are large, from a
    # client that never polls. Replies count against the session's outbox: past it the
    # session ends with 3002 and what is held stays bounded.
    options = HubOptions(
        anonymous=True,
        namespaces={"feed": ChannelOptions(history_size=100)},
        outbox_max_bytes=2**20,
    )
    async with Hub(options) as hub:
        long_poll = LongPoll(hub)
        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=long_poll) as s:
            for n in range(100):
                await hub.publish("feed:big", {"n": n, "pad": "x" * 1000})
            http = await Http.open(s.port)
            body = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:big")])
            _, answer = await http.request("POST", "/lp", body)
            sid = json.loads(answer)["sid"]
            transport = long_poll.sessions[sid]
            reads = "\n".join(
                command(3 + n, "history", channel="feed:big", limit=100) for n in range(100)
            )
            statuses = [(await http.request("POST", f"/lp?sid={sid}", reads))[0] for _ in range(5)]
            # The first frame asks for ~10 MiB of replies: the session ends on it, and
            # the next sends hear that it is closed, without reconnecting.
            assert statuses[0] == 200 and set(statuses[1:]) == {410}
            assert hub.statistics().sessions == 0
            held = sum(len(text) for text in transport.outbox.texts())  # type: ignore[union-attr]
            assert held <= 2**20 + 1000
            _, body = await http.request("GET", f"/lp?sid={sid}&ack=0")
            _, pushes = lines(body)
            assert pushes[-1]["push"] == "disconnect" and pushes[-1]["code"] == 3002
            await http.close()


async def test_after_the_disconnect_push_the_session_is_gone_with_the_same_advice() -> None:
    async with Hub(HubOptions()) as hub:  # not anonymous: connect without a token is 3500
        long_poll = LongPoll(hub)
        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=long_poll) as s:
            http = await Http.open(s.port)
            _, body = await http.request("POST", "/lp", command(1, "connect"))
            sid = json.loads(body)["sid"]
            _, body = await http.request("GET", f"/lp?sid={sid}&ack=0")
            batch, pushes = lines(body)
            assert pushes[-1]["push"] == "disconnect" and pushes[-1]["code"] == 3500
            status, body = await http.request("GET", f"/lp?sid={sid}&ack={batch}")
            assert status == 410 and json.loads(body)["reconnect"] is False
            status, _ = await http.request("GET", f"/lp?sid={sid}&ack={batch}")
            assert status == 404
            await http.close()


async def test_hostile_requests_get_their_answer_and_leave_other_sessions_alone() -> None:
    """Forged, reused and oversized requests: 404 and 413, and a session that is being
    used meanwhile loses nothing."""
    async with Hub(OPTIONS) as hub:
        long_poll = LongPoll(hub)
        async with serve(
            websocket_handler(hub),
            "127.0.0.1",
            0,
            process_request=long_poll,
            limits=Limits(max_body_size=4096),
        ) as server:
            port = server.port
            victim = await Http.open(port)
            body = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:v")])
            sid = json.loads((await victim.request("POST", "/lp", body))[1])["sid"]
            _, replies = lines((await victim.request("GET", f"/lp?sid={sid}&ack=0"))[1])
            assert [r["id"] for r in replies] == [1, 2]

            attacker = await Http.open(port)
            forged = sid[:-1] + ("A" if sid[-1] != "A" else "B")
            for method, target in [
                ("GET", f"/lp?sid={forged}&ack=0"),
                ("POST", f"/lp?sid={forged}"),
                ("DELETE", f"/lp?sid={forged}"),
                ("GET", "/lp?ack=0"),
                ("GET", f"/lp?sid={sid.upper()}&ack=0"),
            ]:
                status, answer = await attacker.request(method, target, command(9, "ping"))
                assert (status, json.loads(answer)["error"]) == (404, "unknown session")

            # A session that left is gone for good: its id is never answered again, and
            # new sessions get new ids.
            own = json.loads((await attacker.request("POST", "/lp", command(1, "connect")))[1])
            assert (await attacker.request("DELETE", f"/lp?sid={own['sid']}"))[0] == 200
            assert (await attacker.request("GET", f"/lp?sid={own['sid']}&ack=0"))[0] == 404
            fresh = json.loads((await attacker.request("POST", "/lp", command(1, "connect")))[1])
            assert fresh["sid"] not in (own["sid"], sid)

            # Bodies over the limit are refused before they are read whole: 413, and the
            # connection is closed (its remaining bytes are not a request).
            for target in ("/lp", f"/lp?sid={sid}"):
                big = await Http.open(port)
                status, _ = await big.request("POST", target, command(3, "send", data="x" * 8000))
                assert status == 413
                assert await big.reader.read() == b""
                await big.close()

            # The victim's session is intact: it still gets what is published.
            await hub.publish("feed:v", "still here")
            _, pushes = lines((await victim.request("GET", f"/lp?sid={sid}&ack=1"))[1])
            assert [p["data"] for p in pushes] == ["still here"]
            await victim.close()
            await attacker.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path) as server:
        yield server


@asynccontextmanager
async def node(
    redis_url: str, *, owner_check: float = 1.0, poll_timeout: float = 25.0
) -> AsyncIterator[tuple[Hub, int]]:
    """One node of a cluster: a hub on the Redis broker, long polling relayed."""
    broker = RedisBroker(redis_url, prefix="lp", owner_check=owner_check)
    async with Hub(OPTIONS, broker=broker) as hub:
        long_poll = LongPoll(hub, relay=broker, poll_timeout=poll_timeout)
        async with serve(websocket_handler(hub), "127.0.0.1", 0, process_request=long_poll) as s:
            yield hub, s.port


async def test_polls_that_land_on_other_nodes_get_everything_once_in_order(
    redis_server: RedisServer,
) -> None:
    async with node(redis_server.url) as (hub_a, port_a), node(redis_server.url) as (_, port_b):
        http = {port_a: await Http.open(port_a), port_b: await Http.open(port_b)}
        ports = itertools.cycle([port_b, port_a])
        body = "\n".join([command(1, "connect"), command(2, "subscribe", channel="feed:x")])
        status, answer = await http[port_a].request("POST", "/lp", body)
        sid = json.loads(answer)["sid"]
        ack, received = 0, []
        for round_ in range(6):
            # A send through one node, a publication on the other, polls on both.
            port = next(ports)
            status, _ = await http[port].request(
                "POST", f"/lp?sid={sid}", command(10 + round_, "ping")
            )
            assert status == 200
            await hub_a.publish("feed:x", round_)
            port = next(ports)
            status, body = await http[port].request("GET", f"/lp?sid={sid}&ack={ack}")
            assert status == 200, body
            if round_ == 2:
                # The answer is "lost": the next poll, on the other node, gets it again.
                port = next(ports)
                status, again = await http[port].request("GET", f"/lp?sid={sid}&ack={ack}")
                assert again == body
            ack, lines_ = lines(body)
            received += [line["data"] for line in lines_ if line.get("push") == "publication"]
        while len(received) < 6:
            port = next(ports)
            _, body = await http[port].request("GET", f"/lp?sid={sid}&ack={ack}")
            ack, lines_ = lines(body)
            received += [line["data"] for line in lines_ if line.get("push") == "publication"]
        assert received == list(range(6))
        for connection in http.values():
            await connection.close()


async def test_a_relayed_poll_held_by_a_live_node_is_not_taken_for_gone(
    redis_server: RedisServer,
) -> None:
    # The node that relays checks its peer every 10 ms: a hundred checks while the poll
    # is held for its whole timeout (1 s), each of which must find the peer up.
    async with (
        node(redis_server.url, poll_timeout=1) as (_, port_a),
        node(redis_server.url, owner_check=0.01, poll_timeout=1) as (_, port_b),
    ):
        http_a, http_b = await Http.open(port_a), await Http.open(port_b)
        sid = json.loads((await http_a.request("POST", "/lp", command(1, "connect")))[1])["sid"]
        status, body = await http_a.request("GET", f"/lp?sid={sid}&ack=0")
        ack, _ = lines(body)
        status, body = await http_b.request("GET", f"/lp?sid={sid}&ack={ack}")
        assert (status, json.loads(body)) == (200, {"batch": ack})
        await http_a.close()
        await http_b.close()
