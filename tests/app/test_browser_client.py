"""The browser client (js/) where it runs: its types checked by tsc, and in Debian's
Chromium against the real server, the outbox, recovery after a restart and a hidden
page's liveness. The demo page's own tests are in test_browser.py (its fixtures too).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from helpers.gateway import Gateway
from helpers.http import Http

from backchannel.hub.options import ChannelOptions

from .conftest import API_KEY, make_config, running
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

ROOT = Path(__file__).resolve().parents[2]
TSC = ROOT / "tests" / "interop" / "node_modules" / ".bin" / "tsc"

_missing_browser = async_playwright is None or not Path(CHROMIUM).exists()
browser_only = pytest.mark.skipif(
    _missing_browser and os.environ.get("CI") != "true",
    reason="needs playwright and chromium (make test installs both)",
)


def test_tsc_accepts_the_types_and_the_modules_and_refuses_misuse(tmp_path: Path) -> None:
    """`tsc -p js/tsconfig.json`: backchannel.d.ts, an example of its use with two
    `@ts-expect-error` lines (misuse must fail), and the JSDoc types of js/lib/."""
    if not TSC.exists() and os.environ.get("CI") != "true":
        pytest.skip("typescript not installed (make node-deps)")
    run = subprocess.run(
        [str(TSC), "-p", "tsconfig.json"],
        cwd=ROOT / "js",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # The check is not vacuous: a use the .d.ts does not allow fails it.
    bad = tmp_path / "bad.ts"
    bad.write_text(
        f'import {{ Client }} from "{ROOT / "js" / "backchannel.js"}";\n'
        'new Client("ws://x/ws").on("outbox", (fate) => fate.status === "lost");\n'
    )
    run = subprocess.run(
        [str(TSC), "--noEmit", "--strict", "--module", "nodenext", "--lib", "es2022,dom", bad],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode != 0 and "TS2367" in run.stdout, run.stdout


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def history(port: int, channel: str) -> list[Any]:
    http = await Http.open(port)
    try:
        reply = await http.exchange(
            "POST",
            "/api/history",
            json.dumps({"channel": channel, "limit": 100}),
            [("Authorization", f"apikey {API_KEY}")],
        )
    finally:
        await http.close()
    assert reply.status == 200, reply.text
    return [pub["data"] for pub in reply.json()["publications"]]


@browser_only
async def test_a_page_offline_publishes_five_messages_that_all_arrive_once_after(
    browser: Browser,
) -> None:
    async with running() as (_, port), Gateway(port) as gateway:
        page = await open_chat(browser, gateway.port, "olive", "websocket")
        other = await open_chat(browser, port, "paul", "websocket")
        await page.evaluate(
            "window.fates = [];"
            "window.demo.client.on('outbox', (f) => window.fates.push([f.status, f.data.text]))"
        )
        # Offline: the browser's network and the path to the server both go.
        await page.context.set_offline(True)
        gateway.blocked = True
        gateway.cut()
        await page.wait_for_selector('#status:not([data-state="connected"])', timeout=WAIT_MS)
        sent = [f"offline {i}" for i in range(1, 6)]
        for text in sent:
            await say(page, text)
        assert await page.evaluate("window.demo.client.outbox.size") == 5
        gateway.blocked = False
        await page.context.set_offline(False)  # the online event reconnects at once
        for text in sent:
            await shown(other, text)
            await shown(page, text)
        assert await texts(other) == sent
        assert await texts(page) == sent
        # Each once in the stream, stamped by the page (its clock) when typed.
        kept = await history(port, "chat:lobby")
        assert [data["text"] for data in kept] == sent
        assert all(isinstance(data["at"], int) for data in kept)
        await page.wait_for_function("() => window.demo.client.outbox.size === 0", timeout=WAIT_MS)
        fates = await page.evaluate("window.fates")
        assert [f for f in fates if f[0] != "queued"] == [["acknowledged", t] for t in sent]


@browser_only
async def test_a_page_whose_server_restarts_recovers_with_no_reload(browser: Browser) -> None:
    async with Gateway(0) as gateway:
        async with running() as (_, first_port):
            gateway.upstream_port = first_port
            page = await open_chat(browser, gateway.port, "quinn", "websocket")
            await page.evaluate("window.notReloaded = true")
            before = await page.evaluate("window.demo.client.clientId")
            await publish(first_port, "chat:lobby", {"text": "before"})
            await shown(page, "before")
        # The server stopped (its clients heard "come back later"); another starts.
        await page.wait_for_selector('#status:not([data-state="connected"])', timeout=WAIT_MS)
        async with running() as (_, second_port):
            gateway.upstream_port = second_port
            await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
            await publish(second_port, "chat:lobby", {"text": "after"})
            await shown(page, "after")
            await say(page, "still here")
            await shown(page, "still here")
            assert await page.evaluate("window.notReloaded") is True
            assert await page.evaluate("window.demo.client.clientId") != before


async def own_client(page: Page, user: str, **options: Any) -> None:
    """A client of the page's own (``window.client``), connected, that counts the
    commands it sends by method (``window.sent``) and records its events."""
    await page.evaluate(
        """async ([user, options]) => {
            const { Client } = await import("/js/backchannel.js");
            const res = await fetch("/demo/token", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({user})});
            const { token } = await res.json();
            window.sent = {};
            class Counting extends WebSocket {
                send(data) {
                    for (const line of String(data).split("\\n")) {
                        const method = JSON.parse(line).method;
                        window.sent[method] = (window.sent[method] ?? 0) + 1;
                    }
                    super.send(data);
                }
            }
            window.events = [];
            const client = new Client(`ws://${location.host}/ws`, {token,
                transports: ["websocket"], WebSocket: Counting, ...options});
            client.on("state", (s) => window.events.push(s));
            client.on("disconnect", (d) => window.events.push(`disconnect ${d.reason}`));
            window.client = client;
            await client.connect();
            window.firstId = client.clientId;
        }""",
        [user, options],
    )


@browser_only
async def test_a_gap_the_hub_makes_for_a_slow_page_is_filled_from_history_in_order(
    browser: Browser,
) -> None:
    config = make_config()
    config.channels["feed"] = ChannelOptions(history_size=10_000, slow_consumer="drop")
    async with running(config) as (app, port), Gateway(port) as gateway:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{gateway.port}/")
        await own_client(page, "sam")
        await page.evaluate(
            """() => new Promise((resolve) => {
                window.got = [];
                window.client.subscribe("feed:x", {
                    onPublication: (pub) => window.got.push(pub.offset),
                    onSubscribed: resolve,
                });
            })"""
        )
        # The page stops reading: the hub's write buffer fills, then its outbox for the
        # page, then publications are dropped for it (the channel's policy).
        gateway.stall()
        big = "x" * 16_384
        published = 0
        while app.hub.statistics().slow_consumers == 0:
            assert published < 5_000, "no publication was ever dropped"
            await app.hub.publish("feed:x", {"n": published, "pad": big})
            published += 1
        for _ in range(5):
            await app.hub.publish("feed:x", {"n": published, "pad": big})
            published += 1
        gateway.resume()
        # The last publication arrives after every one before it, none twice.
        await page.wait_for_function(f"() => window.got.includes({published})", timeout=WAIT_MS)
        assert await page.evaluate("window.got") == list(range(1, published + 1))
        assert await page.evaluate("window.sent.history") >= 1
        assert await page.evaluate("window.events") == ["connecting", "connected"]


@browser_only
async def test_a_hidden_page_is_not_timed_out_and_probes_when_visible(browser: Browser) -> None:
    async with running() as (_, port), Gateway(port) as gateway:
        page = await browser.new_page()
        await page.goto(f"http://127.0.0.1:{gateway.port}/")
        # A client of its own with a short heartbeat: 200 ms pings, 400 ms to answer.
        await own_client(page, "rita", pingInterval=200, pingTimeout=400)
        await page.evaluate(
            """() => {
                window.vis = "visible";
                Object.defineProperty(document, "visibilityState", {get: () => window.vis});
            }"""
        )
        # Hidden, and the connection silent (its answers held back) for more than twice
        # the ping timeout: probes go out, nothing times out.
        await page.evaluate(
            "window.vis = 'hidden'; document.dispatchEvent(new Event('visibilitychange'))"
        )
        gateway.stall()
        start = await page.evaluate("window.sent.ping ?? 0")
        await page.wait_for_function(
            f"() => (window.sent.ping ?? 0) >= {start + 5}", timeout=WAIT_MS
        )
        assert await page.evaluate("window.events") == ["connecting", "connected"]
        # Visible again: a probe at once, answered now that the answers flow.
        gateway.resume()
        before = await page.evaluate("window.sent.ping ?? 0")
        await page.evaluate(
            "window.vis = 'visible'; document.dispatchEvent(new Event('visibilitychange'))"
        )
        await page.wait_for_function(f"() => (window.sent.ping ?? 0) > {before}", timeout=WAIT_MS)
        # The same connection answers: an RPC no one handles gets its error reply.
        code = await page.evaluate("window.client.rpc('nothing').then(() => 0, (e) => e.code)")
        assert code == 104
        assert await page.evaluate("window.events") == ["connecting", "connected"]
        assert await page.evaluate("window.client.clientId === window.firstId")


async def shared_tab(page: Page, user: str) -> None:
    """A tab-sharing client of the page's own (``window.client``), connected, counting
    the WebSockets the page opens (``window.opened``) and the numbered publications of
    ``feed:tabs`` it is given (``window.got``)."""
    await page.evaluate(
        """async (user) => {
            const { Client } = await import("/js/backchannel.js");
            const res = await fetch("/demo/token", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({user})});
            const { token } = await res.json();
            window.opened = 0;
            class Counting extends WebSocket {
                constructor(...args) { super(...args); window.opened++; }
            }
            window.got = [];
            window.others = [];
            const client = new Client(`ws://${location.host}/ws`, {token,
                transports: ["websocket"], WebSocket: Counting, shareTabs: true});
            window.client = client;
            // How much had arrived when the connection to the leader was lost.
            window.atLost = null;
            client.on("disconnect", () => { window.atLost ??= window.got.length; });
            await client.connect();
            window.feed = client.subscribe("feed:tabs", {
                onPublication: (pub) => typeof pub.data.n === "number"
                    ? window.got.push(pub.data.n) : window.others.push(pub.data),
            });
            await window.feed.ready();
        }""",
        user,
    )


@browser_only
async def test_two_tabs_share_one_connection_and_the_follower_misses_nothing_when_the_leader_closes(
    browser: Browser,
) -> None:
    config = make_config()
    config.channels["feed"] = ChannelOptions(history_size=1_000)
    count = 120
    async with running(config) as (app, port):
        context = await browser.new_context()
        try:
            leader = await context.new_page()
            await leader.goto(f"http://127.0.0.1:{port}/")
            await shared_tab(leader, "tess")
            follower = await context.new_page()
            await follower.goto(f"http://127.0.0.1:{port}/")
            await shared_tab(follower, "tess")
            assert await leader.evaluate("window.client.leader") is True
            assert await follower.evaluate("window.client.leader") is False
            # One WebSocket for the two tabs, one session on the server.
            assert await leader.evaluate("window.opened") == 1
            assert await follower.evaluate("window.opened") == 0
            assert app.hub.statistics().sessions == 1
            # The follower publishes through the leader's connection; both tabs see it.
            result = await follower.evaluate("window.feed.publish({text: 'via the leader'})")
            assert result["offset"] == 1
            for page in (leader, follower):
                await page.wait_for_function("() => window.others.length === 1", timeout=WAIT_MS)

            # A backend publishes numbered messages; the leader's tab closes meanwhile.
            for n in range(count // 4):
                await publish(port, "feed:tabs", {"n": n})
            await follower.wait_for_function(
                f"() => window.got.length === {count // 4}", timeout=WAIT_MS
            )
            closing = asyncio.create_task(leader.close(run_before_unload=False))
            for n in range(count // 4, count // 2):
                await publish(port, "feed:tabs", {"n": n})
            await closing
            for n in range(count // 2, count):  # the leader is gone: none reach it
                await publish(port, "feed:tabs", {"n": n})
            # The follower took over: it connected (its first WebSocket) and recovered.
            await follower.wait_for_function(
                f"() => window.got.length >= {count} && window.client.leader === true",
                timeout=WAIT_MS,
            )
            assert await follower.evaluate("window.got") == list(range(count))
            # It lost its leader before it had them: the rest came by the new leader.
            assert await follower.evaluate("window.atLost") <= count // 2
            assert await follower.evaluate("window.others") == [{"text": "via the leader"}]
            assert await follower.evaluate("window.opened") == 1
            assert await follower.evaluate("window.client.state") == "connected"
            # Publishing works from the new leader, still once.
            await follower.evaluate("(n) => window.feed.publish({n})", count)
            await follower.wait_for_function(
                f"() => window.got.length === {count + 1}", timeout=WAIT_MS
            )
            assert await follower.evaluate("window.got") == list(range(count + 1))
        finally:
            await context.close()
