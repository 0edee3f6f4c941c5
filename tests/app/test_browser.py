"""The demo chat page and the browser client in a real browser: Debian's Chromium, driven
by Playwright (no downloaded browser), against the real server.

Outside CI a developer without Chromium or Playwright may skip these; in CI (CI=true)
they must run, and fail if either is missing (``make test`` installs both).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.gateway import Gateway
from helpers.http import Http, Reply

from backchannel.app import App

from .conftest import API_KEY, make_config, running

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - only without the test extra
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless and quiet: no GPU here, and without the background-networking flags Chromium
# tries to reach Google's hosts, which this machine's closed network refuses.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get("BACKCHANNEL_TEST_ARTIFACTS")
    or Path(__file__).resolve().parents[2] / "test-artifacts"
)
WAIT_MS = 20_000

_missing = [
    what
    for what, ok in (
        ("playwright (pip install -e '.[test]')", async_playwright is not None),
        ("chromium (apt-get install chromium)", Path(CHROMIUM).exists()),
    )
    if not ok
]
pytestmark = pytest.mark.skipif(
    bool(_missing) and os.environ.get("CI") != "true",
    reason=f"missing {', '.join(_missing)}",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def server() -> AsyncIterator[tuple[App, int]]:
    async with running() as started:
        yield started


async def open_chat(browser: Browser, port: int, user: str, transport: str = "") -> Page:
    """A page of the demo chat, logged in as ``user`` in the lobby, once connected."""
    page = await browser.new_page(viewport={"width": 1000, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The page runs under the server's Content-Security-Policy: anything it blocks (an
    # inline script or style, a connection) is reported on the console.
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    query = f"?user={user}" + (f"&transport={transport}" if transport else "")
    response = await page.goto(f"http://127.0.0.1:{port}/{query}")
    assert response is not None
    assert "default-src 'none'" in (await response.all_headers())["content-security-policy"]
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    assert not errors, errors
    return page


async def say(page: Page, text: str) -> None:
    await page.fill("#text", text)
    await page.press("#text", "Enter")


async def shown(page: Page, text: str) -> None:
    """Wait until a message with this text is on the page."""
    await page.wait_for_selector(f'#messages li.message:has-text("{text}")', timeout=WAIT_MS)


async def texts(page: Page) -> list[str]:
    return await page.locator("#messages li.message .text").all_inner_texts()


async def publish(port: int, channel: str, data: Any) -> dict[str, Any]:
    """What a backend does: POST /api/publish."""
    http = await Http.open(port)
    try:
        reply = await http.exchange(
            "POST",
            "/api/publish",
            json.dumps({"channel": channel, "data": data}),
            [("Authorization", f"apikey {API_KEY}")],
        )
    finally:
        await http.close()
    assert reply.status == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


async def test_two_pages_chat_over_websocket_and_see_a_backend_publish(
    browser: Browser, server: tuple[App, int], artifacts: Path
) -> None:
    _, port = server
    alice = await open_chat(browser, port, "alice", "websocket")
    bob = await open_chat(browser, port, "bob", "websocket")
    for page in (alice, bob):
        assert await page.get_attribute("#status", "data-transport") == "websocket"
    await say(alice, "hello bob")
    await shown(bob, "hello bob")
    await say(bob, "hi alice")
    await shown(alice, "hi alice")
    await alice.wait_for_selector('#online li[data-user="bob"]', timeout=WAIT_MS)
    await bob.wait_for_selector('#online li[data-user="alice"]', timeout=WAIT_MS)

    await publish(port, "chat:lobby", {"text": "order 42 shipped"})
    for page in (alice, bob):
        await shown(page, "order 42 shipped")
        assert await texts(page) == ["hello bob", "hi alice", "order 42 shipped"]
    author = alice.locator("#messages li.message", has_text="hello bob").locator(".author")
    assert "alice" in await author.inner_text()
    backend = alice.locator("#messages li.message", has_text="order 42").locator(".author")
    assert await backend.inner_text() == "server"
    # A backend's message has no stamp of its sender: the page stamps it on arrival.
    assert await backend.locator("xpath=..").locator("time[datetime]").count() == 1
    await check_screenshot(bob, artifacts)


async def check_screenshot(page: Page, artifacts: Path) -> None:
    """Save the chat page as an artifact, and check that the picture shows the last
    message where the page lays it out: text pixels in its box, none in empty space."""
    png = await page.screenshot(path=artifacts / "chat.png")
    boxes = await page.evaluate(
        """() => {
            const items = document.querySelectorAll("#messages li.message .text");
            const last = items[items.length - 1].getBoundingClientRect();
            const list = document.querySelector("#messages").getBoundingClientRect();
            const below = {x: list.x, y: last.bottom + 40, width: list.width, height: 40};
            return [{x: last.x, y: last.y, width: last.width, height: last.height}, below];
        }"""
    )
    # The picture is read on a blank page: the chat page's CSP rightly allows no data: image.
    browser = page.context.browser
    assert browser is not None
    blank = await browser.new_page()
    found = await blank.evaluate(
        """async ([b64, [last, below]]) => {
            const img = new Image();
            img.src = "data:image/png;base64," + b64;
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = img.width;
            canvas.height = img.height;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const dark = (r) => {
                const w = Math.max(1, r.width), h = Math.max(1, r.height);
                const d = ctx.getImageData(r.x, r.y, w, h).data;
                let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] < 384) n++;
                return n;
            };
            return {width: img.width, height: img.height, text: dark(last), empty: dark(below)};
        }""",
        [base64.b64encode(png).decode(), boxes],
    )
    await blank.close()
    assert (found["width"], found["height"]) == (1000, 700)
    assert found["text"] > 20, found  # the glyphs of "order 42 shipped"
    assert found["empty"] == 0, found


async def test_behind_a_proxy_refusing_upgrades_and_buffering_streams_a_page_long_polls(
    browser: Browser, server: tuple[App, int]
) -> None:
    _, port = server
    async with Gateway(port, refuse_upgrades=True, buffer_streams=True) as gateway:
        # No transport forced: the client tries WebSocket, gets 403; then SSE, whose
        # stream the proxy holds back; then long polling, and chats with a WebSocket
        # page. (Falling back to SSE itself: test_browser_sse.py.)
        behind_proxy = await open_chat(browser, gateway.port, "carol")
        assert await behind_proxy.get_attribute("#status", "data-transport") == "longpoll"
        assert gateway.refused_upgrades >= 1 and gateway.upgrades == 0
        direct = await open_chat(browser, port, "dave", "websocket")
        # Typing notices cross transports too, both ways.
        await behind_proxy.fill("#text", "from long polling")
        await direct.wait_for_selector('#typing:has-text("carol")', timeout=WAIT_MS)
        await behind_proxy.press("#text", "Enter")
        await shown(direct, "from long polling")
        await direct.fill("#text", "from websocket")
        await behind_proxy.wait_for_selector('#typing:has-text("dave")', timeout=WAIT_MS)
        await direct.press("#text", "Enter")
        await shown(behind_proxy, "from websocket")
        assert await texts(behind_proxy) == ["from long polling", "from websocket"]


async def test_a_cut_page_reconnects_and_shows_every_missed_message_once_in_order(
    browser: Browser, server: tuple[App, int]
) -> None:
    _, port = server
    async with Gateway(port) as gateway:
        page = await open_chat(browser, gateway.port, "erin", "websocket")
        for i in range(1, 6):
            await publish(port, "chat:lobby", {"text": f"m{i}"})
        await shown(page, "m5")
        # The network goes away: connections cut, new ones turned away.
        gateway.blocked = True
        gateway.cut()
        await page.wait_for_selector('#status:not([data-state="connected"])', timeout=WAIT_MS)
        for i in range(6, 26):
            await publish(port, "chat:lobby", {"text": f"m{i}"})
        gateway.blocked = False
        await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
        for i in range(26, 31):
            await publish(port, "chat:lobby", {"text": f"m{i}"})
        await shown(page, "m30")
        assert await texts(page) == [f"m{i}" for i in range(1, 31)]


async def test_long_polling_through_a_proxy_that_loses_every_third_answer_loses_nothing(
    browser: Browser, server: tuple[App, int]
) -> None:
    _, port = server
    async with Gateway(port, drop_poll=lambda n: n % 3 == 0) as gateway:
        page = await open_chat(browser, gateway.port, "frank", "longpoll")
        await page.evaluate(
            "window.states = []; window.demo.client.on('state', (s) => window.states.push(s))"
        )
        for i in range(1, 16):
            await publish(port, "chat:lobby", {"text": f"p{i}"})
            # One publication per poll answer, so that answers carrying them are lost.
            await shown(page, f"p{i}")
        assert await texts(page) == [f"p{i}" for i in range(1, 16)]
        assert gateway.dropped >= 5
        # Never disconnected: the lost answers were sent again on the same session.
        assert await page.evaluate("window.states") == []
        assert await page.get_attribute("#status", "data-transport") == "longpoll"


async def get(port: int, path: str) -> Reply:
    http = await Http.open(port)
    try:
        return await http.exchange("GET", path)
    finally:
        await http.close()


async def test_the_demo_serves_its_favicon_script_and_style_and_the_page_links_the_icon(
    browser: Browser, server: tuple[App, int]
) -> None:
    _, port = server
    icon = await get(port, "/favicon.ico")
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.body.startswith(b"<svg") and b"</svg>" in icon.body
    for path, kind in (("/demo.js", "text/javascript"), ("/demo.css", "text/css")):
        reply = await get(port, path)
        assert reply.status == 200 and reply.headers["content-type"].startswith(kind), path
    page = await open_chat(browser, port, "gina")
    assert await page.get_attribute('link[rel="icon"]', "href") == "/favicon.ico"
    # Without the demo, none of its files is served.
    async with running(make_config(demo=False)) as (_, plain):
        assert (await get(plain, "/favicon.ico")).status == 404


async def test_a_message_clears_its_authors_typing_notice_and_shows_when_it_was_sent(
    browser: Browser, server: tuple[App, int]
) -> None:
    _, port = server
    hana = await open_chat(browser, port, "hana", "websocket")
    ivan = await open_chat(browser, port, "ivan", "websocket")
    await hana.fill("#text", "the build is green")
    await ivan.wait_for_selector('#typing:has-text("hana is typing")', timeout=WAIT_MS)
    before = await hana.evaluate("Date.now()")
    await hana.press("#text", "Enter")
    # The notice goes in the same step that shows the message, not seconds later when
    # it would expire by itself: read both at once, as soon as the message is there.
    seen = await ivan.wait_for_function(
        """() => {
            const item = [...document.querySelectorAll("#messages li.message")]
                .find((li) => li.textContent.includes("the build is green"));
            if (!item) return null;
            const time = item.querySelector("time");
            return {typing: document.querySelector("#typing").textContent,
                    at: time && Date.parse(time.dateTime), shown: time && time.textContent};
        }""",
        timeout=WAIT_MS,
    )
    found = await seen.json_value()
    after = await hana.evaluate("Date.now()")
    assert found["typing"] == "", found
    # Stamped by the sender's page when sent, shown as hours and minutes.
    assert before <= found["at"] <= after, (before, found, after)
    assert re.fullmatch(r"\d{1,2}:\d{2}( [AP]M)?", found["shown"]), found
    # A time no Date can hold (anyone may publish anything) is replaced by the arrival's.
    await publish(port, "chat:lobby", {"text": "odd clock", "at": 1e300})
    await shown(ivan, "odd clock")
    odd = ivan.locator("#messages li.message", has_text="odd clock").locator("time")
    stamped = await ivan.evaluate("(t) => Date.parse(t)", await odd.get_attribute("datetime"))
    assert after <= stamped <= await ivan.evaluate("Date.now()")


STATUS_LOG = """() => {
    // Every text the status shows, in order (a change of text adds a text node).
    window.statuses = [];
    new MutationObserver((records) => {
        for (const record of records)
            for (const node of record.addedNodes) window.statuses.push(node.textContent);
    }).observe(document.querySelector("#status"), {childList: true});
}"""


async def test_a_restarted_server_shows_reconnecting_pending_then_sent_grey_presence_lost_history(
    browser: Browser, artifacts: Path
) -> None:
    async with running() as (_, port):
        jack = await open_chat(browser, port, "jack", "websocket")
        kate = await open_chat(browser, port, "kate", "websocket")
        await say(jack, "before the restart")
        await shown(kate, "before the restart")
        await jack.wait_for_selector('#online li[data-user="kate"]', timeout=WAIT_MS)
        assert not await jack.eval_on_selector("#presence", "(s) => s.matches('.offline')")
        await jack.evaluate(STATUS_LOG)
    # The server is gone (its shutdown told the pages why); nothing listens on the port.
    await jack.wait_for_selector('#status:has-text("reconnecting in")', timeout=WAIT_MS)
    # Presence is greyed: who was online, as last seen.
    greyed = await jack.eval_on_selector(
        "#presence", "(s) => [s.matches('.offline'), Number(getComputedStyle(s).opacity)]"
    )
    assert greyed[0] and greyed[1] < 1, greyed
    assert await jack.locator('#online li[data-user="kate"]').count() == 1
    for text in ("typed while down 1", "typed while down 2"):
        await say(jack, text)
    pending = jack.locator("#messages li.message.pending")
    await pending.nth(1).wait_for(timeout=WAIT_MS)
    assert await pending.locator(".text").all_inner_texts() == [
        "typed while down 1",
        "typed while down 2",
    ]
    assert await pending.locator(".sending").all_inner_texts() == ["sending…", "sending…"]
    await jack.screenshot(path=artifacts / "chat-reconnecting.png")  # for a human to look at

    # The same port again, a new in-memory hub: the old stream (its epoch) is gone.
    async with running(make_config(port=port)):
        for page in (jack, kate):
            # The backoff grows while the port is closed: a bound above its cap (20 s).
            await page.wait_for_selector('#status[data-state="connected"]', timeout=45_000)
        await jack.wait_for_function(
            "() => !document.querySelector('#messages li.pending')", timeout=WAIT_MS
        )
        await shown(kate, "typed while down 2")
        for page in (jack, kate):
            notice = page.locator("#messages li.notice")
            await notice.wait_for(timeout=WAIT_MS)
            assert "history was lost on the server" in await notice.inner_text()
            # Sent once each, after the notice, in the order typed.
            sent = await texts(page)
            assert sent.count("typed while down 1") == sent.count("typed while down 2") == 1
            assert sent.index("typed while down 1") < sent.index("typed while down 2")
        await jack.wait_for_selector('#online li[data-user="kate"]', timeout=WAIT_MS)
        assert not await jack.eval_on_selector("#presence", "(s) => s.matches('.offline')")
        statuses = await jack.evaluate("window.statuses")
        assert any(
            re.fullmatch(r"reconnecting in \d+ s · server shutting down \(3000\)", text)
            for text in statuses
        ), statuses
        assert statuses[-1] == "connected · websocket", statuses
