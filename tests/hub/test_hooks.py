"""The application's hooks: authorize (refusals reach the client with their codes),
observe (in order, never in the way), RPC by method name."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers.http import Http
from helpers.stalled import Stalled

from backchannel.asyncio import ClientConnection, connect, serve
from backchannel.exceptions import CommandError, DisconnectRequest
from backchannel.hub import codes
from backchannel.hub.codes import Disconnect
from backchannel.hub.hooks import Connected, ConnectRequest, Hooks, RpcHandler
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.session import Session
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.hub.wire import Publication

TIMEOUT = 10
OPTIONS = HubOptions(namespaces={"orders": ChannelOptions(history_size=10)})


class Peer:
    """A raw client of the wire format: commands out, replies matched, pushes kept."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next = 0
        self.pushes: list[dict[str, Any]] = []

    async def call(self, method: str, /, **params: Any) -> dict[str, Any]:
        """The reply (result or error) to one command."""
        self.next += 1
        await self.ws.send(json.dumps({"id": self.next, "method": method, "params": params}))
        async with asyncio.timeout(TIMEOUT):
            while True:
                for line in str(await self.ws.recv()).split("\n"):
                    message = json.loads(line)
                    if message.get("id") == self.next:
                        return message  # type: ignore[no-any-return]
                    self.pushes.append(message)

    async def closed(self) -> tuple[int | None, str | None]:
        async with asyncio.timeout(TIMEOUT):
            await self.ws.wait_closed()
        return self.ws.close_code, self.ws.close_reason


@asynccontextmanager
async def hub_server(
    hooks: Hooks, rpc: dict[str, RpcHandler] | None = None
) -> AsyncIterator[tuple[Hub, str]]:
    async with (
        Hub(OPTIONS, hooks=hooks, rpc=rpc) as hub,
        serve(websocket_handler(hub), "127.0.0.1", 0) as server,
    ):
        yield hub, f"ws://127.0.0.1:{server.port}/"


@asynccontextmanager
async def peer(url: str) -> AsyncIterator[Peer]:
    async with connect(url, ping_interval=None) as ws:
        yield Peer(ws)


class CookieAuth(Hooks):
    """Connects by a session cookie the client sends in connect's data, no JWT."""

    SESSIONS = {"s-alice": "alice", "s-bob": "bob"}

    async def authorize_connect(self, request: ConnectRequest) -> Connected | None:
        data = request.data if isinstance(request.data, dict) else {}
        if data.get("banned"):
            raise DisconnectRequest(4501, "banned")
        user = self.SESSIONS.get(data.get("cookie", ""))
        if user is None:
            raise CommandError(1000, "log in first")
        return Connected(user, info={"name": user.title()})

    async def authorize_subscribe(self, session: Session, channel: str) -> None:
        if channel == "orders:crash":
            raise RuntimeError("a bug in the application")
        if not channel.endswith(session.user):
            raise CommandError(1003, "not your order")

    async def authorize_publish(self, session: Session, channel: str, data: Any) -> Any:
        if data == "forbidden":
            raise CommandError(1004, "not allowed")
        return {"text": data, "by": session.user}


async def test_authorize_connect_decides_who_connects_and_refusals_keep_their_codes() -> None:
    async with hub_server(CookieAuth()) as (_, url):
        async with peer(url) as client:
            refused = await client.call("connect", data={"cookie": "wrong"})
            assert refused["error"] == {"code": 1000, "message": "log in first", "temporary": False}
            # The connection stays after an error: the client can try again.
            accepted = await client.call("connect", data={"cookie": "s-alice"})
            assert accepted["result"]["user"] == "alice"
        async with peer(url) as client:
            await client.ws.send(
                json.dumps({"id": 1, "method": "connect", "params": {"data": {"banned": True}}})
            )
            assert await client.closed() == (4501, "banned")
        async with peer(url) as client:
            # No token, no cookie, anonymous off: the hook's refusal, not a silent accept.
            reply = await client.call("connect")
            assert reply["error"]["code"] == 1000


async def test_authorize_subscribe_and_publish_refuse_with_application_errors() -> None:
    async with hub_server(CookieAuth()) as (_, url), peer(url) as client:
        await client.call("connect", data={"cookie": "s-alice"})
        refused = await client.call("subscribe", channel="orders:bob")
        assert refused["error"] == {"code": 1003, "message": "not your order", "temporary": False}
        assert "result" in await client.call("subscribe", channel="orders:alice")
        refused = await client.call("publish", channel="orders:alice", data="forbidden")
        assert refused["error"]["code"] == 1004
        # authorize_publish changed the data: subscribers see what it returned.
        ack = await client.call("publish", channel="orders:alice", data="hello")
        assert ack["result"]["offset"] == 1
        history = await client.call("history", channel="orders:alice")
        (publication,) = history["result"]["publications"]
        assert publication["data"] == {"text": "hello", "by": "alice"}


async def test_a_hook_that_raises_anything_else_is_logged_and_answered_100(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with hub_server(CookieAuth()) as (_, url), peer(url) as client:
        await client.call("connect", data={"cookie": "s-alice"})
        with caplog.at_level(logging.ERROR, logger="backchannel.hub"):
            reply = await client.call("subscribe", channel="orders:crash")
        assert reply["error"] == {
            "code": 100,
            "message": "internal server error",
            "temporary": True,
        }
        (record,) = [r for r in caplog.records if r.exc_info]
        assert isinstance(record.exc_info[1], RuntimeError)  # type: ignore[index]
        # The session goes on.
        assert "result" in await client.call("subscribe", channel="orders:alice")


async def test_rpc_handlers_by_name_and_application_errors_reach_the_client() -> None:
    async def stock(session: Session, data: Any) -> Any:
        if data["sku"] == "gone":
            raise CommandError(1001, "out of stock")
        if data["sku"] == "bug":
            raise KeyError("oops")
        return {"sku": data["sku"], "left": 3, "asked_by": session.user}

    async with hub_server(CookieAuth(), {"stock": stock}) as (hub, url), peer(url) as client:
        await client.call("connect", data={"cookie": "s-bob"})
        answer = await client.call("rpc", method="stock", data={"sku": "a1"})
        assert answer["result"] == {"data": {"sku": "a1", "left": 3, "asked_by": "bob"}}
        gone = await client.call("rpc", method="stock", data={"sku": "gone"})
        assert gone["error"] == {"code": 1001, "message": "out of stock", "temporary": False}
        bug = await client.call("rpc", method="stock", data={"sku": "bug"})
        assert bug["error"]["code"] == 100 and bug["error"]["temporary"] is True
        missing = await client.call("rpc", method="nope")
        assert missing["error"]["code"] == codes.METHOD_NOT_FOUND.code

        async def echo(session: Session, data: Any) -> Any:
            return data

        hub.add_rpc("echo", echo)
        assert (await client.call("rpc", method="echo", data=[1]))["result"] == {"data": [1]}


class CatchAll(CookieAuth):
    """Answers every RPC method without a handler of its own."""

    async def rpc(self, session: Session, method: str, data: Any) -> Any:
        if method == "refuse":
            raise CommandError(1005, "no")
        return {"method": method, "data": data, "by": session.user}


async def test_an_rpc_without_a_handler_goes_to_the_hooks_rpc() -> None:
    async def named(session: Session, data: Any) -> Any:
        return "the named handler"

    async with hub_server(CatchAll(), {"named": named}) as (_, url), peer(url) as client:
        await client.call("connect", data={"cookie": "s-bob"})
        answer = await client.call("rpc", method="orders.list", data=[1])
        assert answer["result"] == {"data": {"method": "orders.list", "data": [1], "by": "bob"}}
        assert (await client.call("rpc", method="named"))["result"] == {"data": "the named handler"}
        refused = await client.call("rpc", method="refuse")
        assert refused["error"]["code"] == 1005


class HeaderAuth(Hooks):
    """Connects by a header of the HTTP request; answers RPCs with what it kept."""

    request_headers = frozenset({"x-team", "Cookie"})

    async def authorize_connect(self, request: ConnectRequest) -> Connected | None:
        assert request.headers is request.session.headers
        return Connected(request.headers.get("x-team", "nobody"))

    async def rpc(self, session: Session, method: str, data: Any) -> Any:
        return dict(session.headers)


async def test_the_request_headers_the_hooks_name_and_no_others_are_kept_on_the_session() -> None:
    sent = [("X-Team", "red"), ("Cookie", "a=1"), ("cookie", "b=2"), ("X-Other", "secret")]
    kept = {"x-team": "red", "cookie": "a=1; b=2"}
    async with (
        Hub(OPTIONS, hooks=HeaderAuth()) as hub,
        serve(websocket_handler(hub), "127.0.0.1", 0, process_request=LongPoll(hub)) as server,
    ):
        url = f"ws://127.0.0.1:{server.port}/"
        async with connect(url, additional_headers=sent) as ws:
            client = Peer(ws)
            assert (await client.call("connect"))["result"]["user"] == "red"
            assert (await client.call("rpc", method="headers"))["result"]["data"] == kept
        http = await Http.open(server.port)
        try:
            frame = '{"id":1,"method":"connect"}\n{"id":2,"method":"rpc","params":{"method":"h"}}'
            opened = await http.exchange("POST", "/lp", frame, sent)
            sid = opened.json()["sid"]
            batch = await http.exchange("GET", f"/lp?sid={sid}&ack=0")
            replies = [json.loads(line) for line in batch.text.split("\n")[1:]]
            assert replies[0]["result"]["user"] == "red"
            assert replies[1]["result"]["data"] == kept
        finally:
            await http.close()


class Renewal(CookieAuth):
    """Connections expire at once; ``authorize_refresh`` does what ``outcome`` says."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome
        self.asked = asyncio.Event()

    async def authorize_connect(self, request: ConnectRequest) -> Connected | None:
        return Connected("ann", expires=int(time.time()) - 1)

    async def authorize_refresh(self, session: Session) -> int | None:
        # Set before deciding, without a suspension after: when the test wakes up, the
        # hub has applied the decision.
        self.asked.set()
        if self.outcome == "disconnect":
            raise DisconnectRequest(4001, "renew")
        if self.outcome == "past":
            return int(time.time()) - 1
        if self.outcome == "bug":
            raise RuntimeError("a bug in the application")
        return None


@pytest.mark.parametrize(
    ("outcome", "closed"),
    [
        ("none", None),
        ("disconnect", (4001, "renew")),
        ("past", (3004, "token expired")),
        ("bug", (3004, "token expired")),
    ],
)
async def test_authorize_refresh_decides_whether_an_expired_connection_lives_on(
    outcome: str, closed: tuple[int, str] | None, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Renewal(outcome)
    async with hub_server(hooks) as (hub, url), peer(url) as client:
        assert (await client.call("connect"))["result"]["ttl"] == 0
        async with asyncio.timeout(TIMEOUT):
            await hooks.asked.wait()
        if closed is None:
            (session,) = hub.sessions
            assert session.expires is None and not session.closed
            assert "result" in await client.call("ping")
        else:
            assert await client.closed() == closed
    if outcome == "bug":
        (record,) = [r for r in caplog.records if r.exc_info]
        assert isinstance(record.exc_info[1], RuntimeError)  # type: ignore[index]


class Gate(CookieAuth):
    """authorize_subscribe waits for a gate when bob subscribes."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def authorize_subscribe(self, session: Session, channel: str) -> None:
        if session.user == "bob":
            self.entered.set()
            await self.gate.wait()
        await super().authorize_subscribe(session, channel)


async def test_a_slow_hook_never_blocks_another_session() -> None:
    hooks = Gate()
    async with hub_server(hooks) as (_, url), peer(url) as bob, peer(url) as alice:
        await bob.call("connect", data={"cookie": "s-bob"})
        await alice.call("connect", data={"cookie": "s-alice"})
        waiting = asyncio.create_task(bob.call("subscribe", channel="orders:bob"))
        await hooks.entered.wait()
        # While bob's hook waits, alice is served in full.
        assert "result" in await alice.call("subscribe", channel="orders:alice")
        assert "result" in await alice.call("publish", channel="orders:alice", data="x")
        assert not waiting.done()
        hooks.gate.set()
        assert "result" in await waiting


class Recorder(CookieAuth):
    """Every observer event, in order; on_connect of "slow" waits for a gate."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    async def on_connect(self, session: Session) -> None:
        self.events.put_nowait(("connect", session.user))

    async def on_disconnect(self, session: Session, disconnect: Disconnect | None) -> None:
        self.events.put_nowait(("disconnect", session.user, disconnect))

    async def on_subscribe(self, session: Session, channel: str) -> None:
        self.events.put_nowait(("subscribe", session.user, channel))

    async def on_unsubscribe(self, session: Session, channel: str) -> None:
        self.events.put_nowait(("unsubscribe", session.user, channel))

    async def on_publish(self, publication: Publication, session: Session | None) -> None:
        self.events.put_nowait(("publish", publication.data, session and session.user))

    async def on_channel_occupied(self, channel: str) -> None:
        self.events.put_nowait(("occupied", channel))

    async def on_channel_vacated(self, channel: str) -> None:
        self.events.put_nowait(("vacated", channel))

    async def next(self) -> tuple[Any, ...]:
        async with asyncio.timeout(TIMEOUT):
            return await self.events.get()


async def test_observers_see_every_event_once_in_order() -> None:
    hooks = Recorder()
    async with hub_server(hooks) as (hub, url):
        async with peer(url) as client:
            await client.call("connect", data={"cookie": "s-alice"})
            assert await hooks.next() == ("connect", "alice")
            await client.call("subscribe", channel="orders:alice")
            assert await hooks.next() == ("occupied", "orders:alice")
            assert await hooks.next() == ("subscribe", "alice", "orders:alice")
            await client.call("publish", channel="orders:alice", data="hi")
            assert await hooks.next() == ("publish", {"text": "hi", "by": "alice"}, "alice")
            await hub.publish("orders:alice", "from the server")
            assert await hooks.next() == ("publish", "from the server", None)
            await client.call("unsubscribe", channel="orders:alice")
            assert await hooks.next() == ("unsubscribe", "alice", "orders:alice")
            assert await hooks.next() == ("vacated", "orders:alice")
            await client.call("subscribe", channel="orders:alice")
            assert await hooks.next() == ("occupied", "orders:alice")
            assert await hooks.next() == ("subscribe", "alice", "orders:alice")
            await hub.disconnect("alice", Disconnect(4001, "bye"))
            assert await client.closed() == (4001, "bye")
        assert await hooks.next() == ("unsubscribe", "alice", "orders:alice")
        assert await hooks.next() == ("vacated", "orders:alice")
        assert await hooks.next() == ("disconnect", "alice", Disconnect(4001, "bye"))
        assert hooks.events.empty()


class SlowObserver(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def on_connect(self, session: Session) -> None:
        await self.gate.wait()
        await super().on_connect(session)


async def test_a_slow_observer_delays_only_the_observers_after_it() -> None:
    hooks = SlowObserver()
    async with hub_server(hooks) as (_, url), peer(url) as client:
        await client.call("connect", data={"cookie": "s-alice"})
        # The session is served while its on_connect hook waits.
        assert "result" in await client.call("subscribe", channel="orders:alice")
        assert "result" in await client.call("publish", channel="orders:alice", data=1)
        assert hooks.events.empty()
        hooks.gate.set()
        assert await hooks.next() == ("connect", "alice")
        assert await hooks.next() == ("occupied", "orders:alice")


class Slow(Recorder):
    async def on_slow_consumer(self, session: Session, channel: str | None) -> None:
        self.events.put_nowait(("slow", session.user, channel))


async def test_statistics_count_the_node_and_a_slow_consumer_is_observed() -> None:
    hooks = Slow()
    options = HubOptions(
        namespaces={"orders": ChannelOptions(history_size=10, slow_consumer="drop")},
        outbox_max_messages=1,
    )
    async with Hub(options, hooks=hooks) as hub:
        session = hub.open_session(Stalled())
        await hub.connect_session(session, data={"cookie": "s-alice"})
        await hub.subscribe_session(session, "orders:alice")
        hub.go_live(session, "orders:alice")
        await hub.publish("orders:alice", 1)
        await hub.publish("orders:alice", 2)  # the outbox holds one: dropped
        stats = hub.statistics()
        assert (stats.sessions, stats.sessions_by_transport, stats.users) == (1, {"stalled": 1}, 1)
        assert (stats.subscriptions, stats.channels) == (1, 1)
        # The second one was dropped for the full outbox: not a delivery.
        assert (stats.publications_in, stats.publications_out, stats.deliveries) == (2, 2, 1)
        assert stats.slow_consumers == 1
        assert hub.channels() == {"orders:alice": 1}
        events = [await hooks.next() for _ in range(6)]
        assert ("slow", "alice", "orders:alice") in events
        since = (await hub.history("orders:alice")).position
        await hub.unsubscribe_session(session, "orders:alice")
        await hub.subscribe_session(session, "orders:alice", since=since)
        assert hub.statistics().recoveries_succeeded == 1


async def test_the_server_subscribes_a_user_and_the_client_gets_a_subscribe_push() -> None:
    async with hub_server(CookieAuth()) as (hub, url), peer(url) as client:
        await client.call("connect", data={"cookie": "s-alice"})
        await hub.publish("orders:alice", "before")
        await hub.subscribe("alice", "orders:alice")
        for _ in range(100):  # bounded: a few turns of the loop
            if client.pushes:
                break
            await client.call("ping")
        await hub.publish("orders:alice", "after")
        for _ in range(100):
            if len(client.pushes) == 2:
                break
            await client.call("ping")
        subscribed, publication = client.pushes
        assert subscribed["push"] == "subscribe" and subscribed["channel"] == "orders:alice"
        assert subscribed["offset"] == 1 and isinstance(subscribed["epoch"], str)
        assert publication["push"] == "publication" and publication["data"] == "after"


class Hanging(CookieAuth):
    async def on_connect(self, session: Session) -> None:
        await asyncio.Event().wait()  # never returns


async def test_a_hook_that_hangs_does_not_stop_a_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    from backchannel.hub import hooks

    monkeypatch.setattr(hooks, "CLOSE_TIMEOUT", 0.05)
    hub = Hub(OPTIONS, hooks=Hanging())
    async with hub:
        session = hub.open_session(Stalled())
        await hub.connect_session(session, data={"cookie": "s-alice"})
    # Reaching here is the test: close() gave up on the hanging hook (no timing asserted).
    assert session.closed


class Watcher(Hooks):
    """Only watches: records the events it sees."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def on_connect(self, session: Session) -> None:
        self.events.put_nowait(("connect", session.user))

    async def on_subscribe(self, session: Session, channel: str) -> None:
        self.events.put_nowait(("subscribe", channel))


async def test_observers_watch_beside_the_hooks_that_decide() -> None:
    # One Hooks decides (the cookie), others only watch (as webhooks do beside a proxy):
    # each observer sees every event, in order, and none can decide anything.
    first, second = Watcher(), Watcher()
    async with (
        Hub(OPTIONS, hooks=CookieAuth(), observers=[first, second]) as hub,
        serve(websocket_handler(hub), "127.0.0.1", 0) as server,
        peer(f"ws://127.0.0.1:{server.port}/") as client,
    ):
        await client.call("connect", data={"cookie": "s-alice"})
        await client.call("subscribe", channel="orders:alice")
        for recorder in (first, second):
            async with asyncio.timeout(10):
                seen = [await recorder.events.get() for _ in range(2)]
            assert seen == [("connect", "alice"), ("subscribe", "orders:alice")]
