"""The server's logs: levels, text and JSON lines, and the access log of a running
server (requests, upgrades, connects and disconnects with their codes)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from helpers.http import Http
from helpers.hub_client import HubClient, SseClient

from backchannel.app import logs
from backchannel.hub.codes import Disconnect
from backchannel.hub.token import make_token

from .conftest import SECRET, make_config, running


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """backchannel's records as JSON lines in a buffer; logging as it was afterwards."""
    root = logging.getLogger("backchannel")
    before = (list(root.handlers), root.level, root.propagate)
    buffer = io.StringIO()
    logs.configure("info", "json", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level, root.propagate = before[0], before[1], before[2]


def lines(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_json_lines_carry_the_extra_fields_and_errors_on_one_line(
    captured: io.StringIO,
) -> None:
    log = logging.getLogger("backchannel.test")
    log.info("hello %s", "there", extra={"client": "c1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    log.debug("not at info")
    first, second = lines(captured)
    assert first["message"] == "hello there" and first["client"] == "c1"
    assert first["level"] == "info" and first["logger"] == "backchannel.test"
    assert str(first["time"]).endswith("Z")
    assert second["level"] == "error" and "ValueError: boom" in str(second["error"])
    assert "\n" not in captured.getvalue().rstrip("\n").split("\n")[1]


def test_a_level_or_format_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        logs.configure("loud")
    with pytest.raises(ValueError, match="log format"):
        logs.configure("info", "xml")


async def test_the_access_log_of_a_running_server(captured: io.StringIO) -> None:
    async with running(make_config()) as (app, port):
        http = await Http.open(port)
        assert (await http.exchange("GET", "/health?x=secret")).status == 200
        await http.close()
        # The frame of an SSE open holds a token: the log shows the path only.
        streamed = await SseClient.open(port, token=make_token(SECRET, "secret-sse-user"))
        await streamed.close()
        alice = await HubClient.open(port, path="/ws", token=make_token(SECRET, "alice"))
        bob = await HubClient.open(port, path="/ws", token=make_token(SECRET, "bob"))
        await app.hub.disconnect("bob", Disconnect(4001, "bye"))
        assert await bob.closed() == (4001, "bye")
        await alice.close()
    # The server has stopped: the hooks' queue ran to its end.
    access = [line for line in lines(captured) if line["logger"] == "backchannel.access"]
    requests = [line for line in access if "status" in line]
    assert {"method": "GET", "path": "/health", "status": 200}.items() <= requests[0].items()
    assert "secret" not in json.dumps(requests)  # no query string in the log
    assert {"method": "GET", "path": "/sse", "status": 200}.items() <= requests[1].items()
    upgrades = [line for line in requests if line["status"] == 101]
    assert [line["path"] for line in upgrades] == ["/ws", "/ws"]
    events = {(line["event"], line["user"]): line for line in access if "event" in line}
    assert {("connect", "alice"), ("connect", "bob")} <= set(events)
    assert events["disconnect", "bob"]["code"] == 4001
    assert events["disconnect", "alice"]["code"] is None  # the client left


async def test_the_access_log_can_be_turned_off(captured: io.StringIO) -> None:
    config = make_config()
    config.log.access = False
    async with running(config) as (_, port):
        http = await Http.open(port)
        assert (await http.exchange("GET", "/health")).status == 200
        await http.close()
    assert not [line for line in lines(captured) if line["logger"] == "backchannel.access"]
