"""The browser client on Server-Sent Events, in Debian's Chromium against the real server
behind a misbehaving proxy (helpers/gateway.py): the fallback from WebSocket to SSE,
remembered across a reload, and recovery after a cut stream. The fallback to long
polling behind a proxy that also buffers streams is in test_browser.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers.gateway import Gateway

from backchannel.hub.options import ChannelOptions

from .conftest import make_config, running
from .test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    async_playwright,
    open_chat,
    publish,
    say,
    shown,
    texts,
)

if async_playwright is not None:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.skipif(
    (async_playwright is None or not Path(CHROMIUM).exists()) and os.environ.get("CI") != "true",
    reason="needs playwright and chromium (make test installs both)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_a_page_whose_upgrades_are_refused_falls_back_to_sse_and_remembers_it_on_reload(
    browser: Browser,
) -> None:
    async with running() as (_, port), Gateway(port, refuse_upgrades=True) as gateway:
        # No transport forced: the client tries WebSocket, gets 403, then SSE.
        page = await open_chat(browser, gateway.port, "ulla")
        assert await page.get_attribute("#status", "data-transport") == "sse"
        assert gateway.refused_upgrades == 1 and gateway.upgrades == 0
        assert gateway.streams == 1
        direct = await open_chat(browser, port, "vera", "websocket")
        await publish(port, "chat:lobby", {"text": "from the backend"})
        await shown(page, "from the backend")
        await say(page, "from sse")  # a publish POSTed, its echo on the stream
        await shown(direct, "from sse")
        await shown(page, "from sse")
        await say(direct, "from websocket")
        await shown(page, "from websocket")
        assert await texts(page) == ["from the backend", "from sse", "from websocket"]
        # A reload starts with SSE at once: the tab's sessionStorage remembers.
        await page.reload()
        await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
        assert await page.get_attribute("#status", "data-transport") == "sse"
        assert gateway.refused_upgrades == 1, "WebSocket was not tried again"
        assert gateway.streams == 2


async def sse_client(page: Page, user: str, channel: str) -> None:
    """A client of the page's own on SSE only (``window.client``), subscribed to a
    channel, recording the offsets it is given (``window.got``) and its states."""
    await page.evaluate(
        """async ([user, channel]) => {
            const { Client } = await import("/js/backchannel.js");
            const res = await fetch("/demo/token", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({user})});
            const { token } = await res.json();
            window.got = [];
            window.states = [];
            const client = new Client(`ws://${location.host}/ws`, {token,
                transports: ["sse"], minReconnectDelay: 100, maxReconnectDelay: 500});
            client.on("state", (s) => window.states.push(s));
            window.client = client;
            await client.connect();
            const sub = client.subscribe(channel, {
                onPublication: (pub) => window.got.push(pub.offset),
            });
            await sub.ready();
        }""",
        [user, channel],
    )


async def test_a_page_on_sse_whose_stream_is_cut_recovers_every_message_once_in_order(
    browser: Browser,
) -> None:
    config = make_config()
    config.channels["feed"] = ChannelOptions(history_size=1_000)
    async with running(config) as (_, port), Gateway(port) as gateway:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{gateway.port}/")
        await sse_client(page, "wanda", "feed:sse")
        assert await page.evaluate("window.client.transport") == "sse"
        for n in range(1, 11):
            await publish(port, "feed:sse", {"n": n})
        await page.wait_for_function("() => window.got.length === 10", timeout=WAIT_MS)
        # The stream is cut and the network stays away while 20 more are published.
        gateway.blocked = True
        gateway.cut()
        await page.wait_for_function("() => window.client.state !== 'connected'", timeout=WAIT_MS)
        for n in range(11, 31):
            await publish(port, "feed:sse", {"n": n})
        gateway.blocked = False
        await page.wait_for_function("() => window.client.state === 'connected'", timeout=WAIT_MS)
        for n in range(31, 36):
            await publish(port, "feed:sse", {"n": n})
        await page.wait_for_function("() => window.got.includes(35)", timeout=WAIT_MS)
        assert await page.evaluate("window.got") == list(range(1, 36))
        assert await page.evaluate("window.client.transport") == "sse"
        assert "disconnected" in await page.evaluate("window.states")
        assert gateway.streams >= 2  # a new stream, a new session, recovered
