"""Alert rules (docs/operations.md, "Alerts") on a real App: real clients on real
sockets, a real redis-server stopped and started, a stalled raw client, and a real
webhook receiver process. Evaluations are driven by the test (``Alerts.evaluate``, with
its clock moved past the window where a rule must resolve), or, where the change comes
from the network, by the App's own loop with a short interval, awaited through its log
records or the receiver's."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers.hub_client import HubClient
from helpers.raw_client import RawClient
from helpers.redis_server import RedisServer, require_redis
from helpers.webhook_receiver import Receiver

from backchannel.app import App
from backchannel.app.alerts import Alerts
from backchannel.app.config import AlertsConfig, WebhooksConfig, load_config
from backchannel.exceptions import InvalidArgument
from backchannel.hub.options import ChannelOptions
from backchannel.hub.token import make_token

from .conftest import SECRET, make_config, running

HOOK_SECRET = "alerts-webhook-secret"
#: Seconds a test waits for something that should come at once (a bound against a hang).
WAIT = 10.0
#: An interval that the App's own loop never reaches within a test: the test evaluates.
NEVER = 3600.0


class Records(logging.Handler):
    """The log records of ``backchannel.alerts``, and a way to wait for the next ones."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def lines(self) -> list[tuple[int, str]]:
        return [(record.levelno, record.getMessage()) for record in self.records]

    async def wait_for(self, count: int) -> None:
        """Until ``count`` records came (AssertionError after WAIT seconds)."""
        try:
            async with asyncio.timeout(WAIT):
                while len(self.records) < count:
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{count} alert log lines expected: {self.lines()}") from None


@pytest.fixture
def records() -> Iterator[Records]:
    logger = logging.getLogger("backchannel.alerts")
    handler = Records()
    level = logger.level
    logger.setLevel(logging.INFO)  # resolves are INFO
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def alerts_of(app: App) -> Alerts:
    assert app.alerts is not None
    return app.alerts


def clock() -> float:
    return asyncio.get_running_loop().time()


async def client(port: int, user: str) -> HubClient:
    return await HubClient.open(port, path="/ws", token=make_token(SECRET, user))


def states(app: App) -> list[tuple[str, str]]:
    return [(event["name"], event["state"]) for event in alerts_of(app).events()]


def metric(app: App, line_start: str) -> str:
    assert app.metrics is not None
    text = app.metrics.render().decode()
    return next(line for line in text.splitlines() if line.startswith(line_start))


# Connections: the App's own loop, through the log.


async def test_connections_above_is_raised_and_resolved_once(records: Records) -> None:
    config = make_config()
    config.alerts = AlertsConfig(interval=0.02, connections_above=1)
    config.metrics.enabled = True
    async with running(config) as (app, port):
        alerts = alerts_of(app)
        alice = await client(port, "alice")
        # Evaluated by the loop many times: one client is not above 1.
        await alerts.evaluate()
        assert alerts.events() == [] and alerts.active() == []
        bob = await client(port, "bob")
        await records.wait_for(1)
        (raised,) = alerts.active()
        assert raised["name"] == "connections" and raised["state"] == "raised"
        assert raised["value"] == 2.0 and raised["threshold"] == 1.0
        assert "2" in raised["message"] and "above 1" in raised["message"]
        active = f'backchannel_alerts_active{{name="connections",node="{app.node}"}}'
        assert metric(app, active).endswith(" 1.0")
        # While it holds, no repeat, however many evaluations.
        for _ in range(5):
            await alerts.evaluate()
        assert len(records.records) == 1
        await bob.close()
        await records.wait_for(2)
        assert alerts.active() == []
        assert metric(app, active).endswith(" 0.0")
        for _ in range(5):
            await alerts.evaluate()
        await alice.close()
    assert records.lines() == [
        (logging.WARNING, "alert raised: client sessions on this node: 2, above 1"),
        (logging.INFO, "alert resolved: client sessions on this node: 1, no longer above 1"),
    ]
    assert states(app) == [("connections", "raised"), ("connections", "resolved")]
    resolved = alerts_of(app).events()[1]
    assert resolved["value"] == 1.0 and resolved["time"] >= raised["time"]
    assert set(resolved) == {"time", "name", "state", "value", "threshold", "message"}


async def test_a_rule_waits_hold_seconds_before_it_is_raised() -> None:
    config = make_config()
    config.alerts = AlertsConfig(interval=NEVER, connections_above=1, hold=30.0)
    async with running(config) as (app, port):
        alerts = alerts_of(app)
        clients = [await client(port, name) for name in ("alice", "bob")]
        start = clock()
        await alerts.evaluate(start)
        await alerts.evaluate(start + 29)
        assert alerts.active() == []  # true, but not for 30 s yet
        await alerts.evaluate(start + 30)
        assert [event["name"] for event in alerts.active()] == ["connections"]
        for each in clients:
            await each.close()


# The broker: a real Redis, stopped and started.


async def test_broker_unreachable_is_raised_while_redis_is_down(
    tmp_path: Path, records: Records
) -> None:
    require_redis()
    with RedisServer(tmp_path) as redis:
        config = make_config()
        config.broker.url = redis.url
        config.alerts = AlertsConfig(interval=NEVER, broker_unreachable=True, broker_timeout=2.0)
        async with running(config) as (app, _):
            alerts = alerts_of(app)
            await alerts.evaluate()
            assert alerts.active() == []
            redis.stop()
            await alerts.evaluate()
            await alerts.evaluate()
            assert [(e["name"], e["value"]) for e in alerts.active()] == [
                ("broker_unreachable", 1.0)
            ]
            redis.start()  # on the same port
            await alerts.evaluate()
            assert alerts.active() == []
            await alerts.evaluate()
    assert states(app) == [("broker_unreachable", "raised"), ("broker_unreachable", "resolved")]
    assert records.lines() == [
        (logging.WARNING, "alert raised: broker unreachable: no answer to a ping"),
        (logging.INFO, "alert resolved: broker reachable again"),
    ]


# Slow consumers: a raw client that stops reading.


async def test_slow_consumers_per_minute_from_a_stalled_client() -> None:
    config = make_config()
    config.auth.anonymous = True
    config.channels = {"feed": ChannelOptions(slow_consumer="drop")}
    config.hub = {"outbox_max_messages": 2, "max_data_size": 200_000}
    config.alerts = AlertsConfig(interval=NEVER, slow_consumers_per_minute_above=2.0)
    async with running(config) as (app, port):
        alerts = alerts_of(app)
        stalled = await RawClient.open(port, path="/ws")
        await stalled.command({"id": 1, "method": "connect", "params": {}})
        await stalled.command({"id": 2, "method": "subscribe", "params": {"channel": "feed:a"}})
        replies: list[int] = []
        for _ in range(2):  # the two replies, in one frame or two
            _, payload = await stalled.read_frame()
            replies += [json.loads(line)["id"] for line in payload.split(b"\n")]
            if len(replies) == 2:
                break
        assert replies == [1, 2]
        await alerts.evaluate()
        assert alerts.active() == []
        # Large publications until its socket is full and three were dropped for it.
        big = "x" * 100_000
        for _ in range(2000):  # bounded: a stalled loopback socket holds a few MiB
            await app.hub.publish("feed:a", big)
            if app.hub.statistics().slow_consumers >= 3:
                break
        dropped = app.hub.statistics().slow_consumers
        assert dropped >= 3
        start = clock()
        await alerts.evaluate(start)
        (raised,) = alerts.active()
        # Within the first minute: the count so far, per minute.
        assert raised["name"] == "slow_consumers" and raised["value"] == float(dropped)
        assert raised["threshold"] == 2.0
        # A minute later, nothing new was dropped: the rate is 0 over the window.
        await alerts.evaluate(start + 61)
        assert alerts.active() == []
        assert states(app) == [("slow_consumers", "raised"), ("slow_consumers", "resolved")]
        assert alerts.events()[-1]["value"] == 0.0
        stalled.sock.close()


# Fan-out latency: a threshold below the smallest bucket.


async def test_fanout_p99_above_a_tiny_threshold() -> None:
    config = make_config()
    config.alerts = AlertsConfig(
        interval=NEVER, window=10.0, fanout_p99_ms_above=0.001, events_kept=3
    )
    async with running(config) as (app, port):
        alerts = alerts_of(app)
        clients = [await client(port, f"user{n}") for n in range(20)]
        for each in clients:
            await each.call("subscribe", channel="typing:room")
        moment = clock()
        await alerts.evaluate(moment)
        assert alerts.active() == []  # nothing fanned out yet
        for cycle in range(2):
            await app.hub.publish("typing:room", {"cycle": cycle})
            moment += 1
            await alerts.evaluate(moment)
            (raised,) = alerts.active()
            assert raised["name"] == "fanout_p99" and raised["threshold"] == 0.001
            assert raised["value"] >= 0.5  # the smallest bucket's bound, in ms
            # No fan-out in the last window: resolved.
            moment += 11
            await alerts.evaluate(moment)
            assert alerts.active() == []
        # Four events; the oldest is forgotten (events_kept = 3).
        assert states(app) == [
            ("fanout_p99", "resolved"),
            ("fanout_p99", "raised"),
            ("fanout_p99", "resolved"),
        ]
        for each in clients:
            await each.close()


# The webhook: a real receiver process checks every signature.


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    started = await Receiver.start(HOOK_SECRET)
    try:
        yield started
    finally:
        await started.kill()


async def test_each_raise_and_resolve_is_a_signed_webhook(receiver: Receiver) -> None:
    config = make_config()
    config.webhooks = WebhooksConfig(url=receiver.url, secret=HOOK_SECRET, events=["alert"])
    config.alerts = AlertsConfig(interval=0.02, connections_above=1)
    async with running(config) as (app, port):
        alice = await client(port, "alice")
        bob = await client(port, "bob")
        (raised,) = await receiver.wait_accepted(1)
        await bob.close()
        _, resolved = await receiver.wait_accepted(2)
        await alice.close()
    records = await receiver.stop()
    assert [record["kind"] for record in records] == ["accepted", "accepted"]
    assert records[0]["headers"]["X-Backchannel-Event"] == "alert"
    fields = {"id", "event", "time", "node", "name", "state", "value", "threshold", "message"}
    assert set(raised) == set(resolved) == fields
    assert (raised["event"], raised["node"], raised["name"]) == ("alert", app.node, "connections")
    assert (raised["state"], raised["value"], raised["threshold"]) == ("raised", 2, 1)
    assert (resolved["state"], resolved["value"]) == ("resolved", 1)
    assert raised["message"] == alerts_of(app).events()[0]["message"]


# Configuration.


def test_no_rule_means_no_alerts() -> None:
    assert App(make_config()).alerts is None
    # Settings without a rule do not turn alerts on either.
    config = make_config()
    config.alerts = AlertsConfig(interval=1.0, window=5.0)
    assert App(config).alerts is None


def test_rules_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "backchannel.toml"
    path.write_text("[alerts]\ninterval = 2\nconnections_above = 5000\nbroker_unreachable = true\n")
    config = load_config(path, {"BACKCHANNEL_ALERTS_FANOUT_P99_MS_ABOVE": "250"})
    assert config.alerts == AlertsConfig(
        interval=2.0, connections_above=5000, broker_unreachable=True, fanout_p99_ms_above=250.0
    )
    assert App(config).alerts is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("interval = 0", "alerts.interval must be > 0"),
        ("window = -1.0", "alerts.window must be > 0"),
        ("connections_above = -1", "alerts.connections_above must be >= 0 (0: off)"),
        ("hold = -5", "alerts.hold must be >= 0"),
        ("events_kept = 0", "alerts.events_kept must be >= 1"),
        ('broker_unreachable = "yes"', "[alerts] broker_unreachable: expected bool"),
        ("connection_above = 5", "[alerts] connection_above: no such setting"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "backchannel.toml"
    path.write_text(f"[alerts]\n{text}\n")
    with pytest.raises(InvalidArgument) as error:
        load_config(path)
    assert message in str(error.value) and "\n" not in str(error.value)
