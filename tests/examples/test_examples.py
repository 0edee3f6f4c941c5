"""The examples of examples/ as a reader runs them: each started by a real ASGI server
(uvicorn, hypercorn) as a process, its page opened in Debian's Chromium (Playwright, as
tests/app/test_browser.py) and updated live by what a POST to the example's route
publishes through the hub.

The server gets its listening socket from the test (``--fd`` / ``--bind fd://``): bound
and listening before the process starts, so the first request simply waits for the app
to be ready, with no port to guess or poll.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from helpers.gateway import Gateway

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - only without the test extra
    async_playwright = None  # type: ignore[assignment]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As tests/app/test_browser.py: headless and quiet, no calls to Google's hosts.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000
#: Seconds a server has to start (answer its first request) and to stop.
START_TIMEOUT = 60.0

_missing = [
    what
    for what, ok in (
        ("playwright (pip install -e '.[test]')", async_playwright is not None),
        ("chromium (apt-get install chromium)", Path(CHROMIUM).exists()),
    )
    if not ok
]
pytestmark = [
    pytest.mark.skipif(
        bool(_missing) and os.environ.get("CI") != "true",
        reason=f"missing {', '.join(_missing)}",
    ),
    # One browser for the module: its fixture and the tests share one event loop.
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@contextlib.contextmanager
def served(server: str, app: str, cwd: Path) -> Iterator[str]:
    """Run ``app`` (module:attribute, imported from ``cwd``) under ``server`` (uvicorn or
    hypercorn) as a process; yields its base URL. On the way out the server is stopped
    (SIGTERM, as Ctrl-C would) and must have logged no error."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port, fd = listener.getsockname()[1], listener.fileno()
    if server == "uvicorn":
        args = ["-m", "uvicorn", "--fd", str(fd), "--log-level", "warning", app]
    else:
        args = ["-m", "hypercorn", "--bind", f"fd://{fd}", "--log-level", "warning", app]
    with tempfile.TemporaryFile() as log:
        try:
            # python -m puts the working directory on sys.path: the example's modules.
            process = subprocess.Popen(
                [sys.executable, *args],
                cwd=cwd,
                pass_fds=[fd],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "NO_PROXY": "*"},
            )
        finally:
            listener.close()  # the server holds its own copy
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
        assert "Traceback" not in output and "ERROR" not in output, output


def http(base: str) -> httpx.AsyncClient:
    """A client of the example (no proxy; the first request waits for the app to start)."""
    return httpx.AsyncClient(base_url=base, trust_env=False, timeout=START_TIMEOUT)


async def new_page(browser: Browser) -> tuple[Page, list[str]]:
    """A page in a context of its own (its own cookies), with its errors collected."""
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    return page, errors


async def log_in_and_follow_an_order(
    browser: Browser, base: str, user: str, *, upgrades_refused: bool = False
) -> Page:
    """Log in through the example's form; its redirect opens the user's order, whose page
    says "live" once it follows the order's channel. ``upgrades_refused``: behind a proxy
    that refuses WebSocket upgrades, whose 403 the browser reports on the console."""
    page, errors = await new_page(browser)
    await page.goto(f"{base}/login")
    await page.fill("input[name=user]", user)
    await page.click("button")
    await page.wait_for_selector('#state:text-is("live")', timeout=WAIT_MS)
    if upgrades_refused:
        errors = [error for error in errors if "Unexpected response code: 403" not in error]
    assert not errors, errors
    return page


async def refused_subscription(page: Page, channel: str) -> int:
    """The error code a second client of the page gets subscribing to ``channel``."""
    code: int = await page.evaluate(
        """async (channel) => {
            const { Client } = await import("/realtime/js/backchannel.js");
            const scheme = location.protocol === "https:" ? "wss:" : "ws:";
            const client = new Client(`${scheme}//${location.host}/realtime/ws`);
            try {
                return await new Promise((resolve) => {
                    client.subscribe(channel, {
                        onSubscribed: () => resolve(0),
                        onError: (err) => resolve(err.code),
                    });
                    client.connect();
                });
            } finally {
                client.close();
            }
        }""",
        channel,
    )
    return code


async def test_fastapi_orders_page_shows_the_status_a_post_publishes(browser: Browser) -> None:
    with served("uvicorn", "app:app", EXAMPLES / "fastapi_orders") as base:
        async with http(base) as client:
            # Not logged in: no page.
            assert (await client.get("/orders/42")).status_code == 401
            page = await log_in_and_follow_an_order(browser, base, "alice")
            assert page.url == f"{base}/orders/42"
            assert await page.inner_text("#status") == "placed"
            reply = await client.post("/orders/42/status", json={"status": "shipped"})
            assert reply.status_code == 200, reply.text
            await page.wait_for_selector('#status:text-is("shipped")', timeout=WAIT_MS)
            # The hook lets alice follow her own orders only: bob's is refused (103).
            assert await refused_subscription(page, "orders:43") == 103
            # Behind a proxy that refuses upgrades, the page falls back to the mounted
            # HTTP transports (found beside /realtime/ws), logged in by the same cookie:
            # SSE, or long polling when the proxy also holds streams back whole.
            for buffer_streams, transport in ((False, "sse"), (True, "longpoll")):
                async with Gateway(
                    int(base.rpartition(":")[2]),
                    refuse_upgrades=True,
                    buffer_streams=buffer_streams,
                ) as gateway:
                    proxied = await log_in_and_follow_an_order(
                        browser, f"http://127.0.0.1:{gateway.port}", "alice", upgrades_refused=True
                    )
                    assert gateway.upgrades == 0 and gateway.refused_upgrades >= 1
                    assert await proxied.evaluate("window.order.client.transport") == transport
                    status = f"delivered ({transport})"
                    reply = await client.post("/orders/42/status", json={"status": status})
                    assert reply.status_code == 200, reply.text
                    for each in (page, proxied):
                        await each.wait_for_selector(
                            f'#status:text-is("{status}")', timeout=WAIT_MS
                        )
                    # Closed without a word to the server: what it held for the page (a
                    # stream, a long poll) ends as the connection does, not at the poll
                    # timeout, so the server's shutdown does not wait for it.
                    await proxied.context.close()
            await page.context.close()


async def test_starlette_chat_under_hypercorn_shows_announcements_and_messages(
    browser: Browser,
) -> None:
    with served("hypercorn", "app:app", EXAMPLES / "starlette_chat") as base:
        async with http(base) as client:
            page, errors = await new_page(browser)
            await page.goto(f"{base}/")
            await page.wait_for_selector('#state:text-is("subscribed")', timeout=WAIT_MS)
            reply = await client.post("/announce", json={"text": "welcome"})
            assert reply.status_code == 200, reply.text
            await page.wait_for_selector('#messages li:text-is("welcome")', timeout=WAIT_MS)
            await page.fill("#text", "hello from the page")
            await page.press("#text", "Enter")
            await page.wait_for_selector(
                '#messages li:text-is("hello from the page")', timeout=WAIT_MS
            )
            assert await page.locator("#messages li").all_inner_texts() == [
                "welcome",
                "hello from the page",
            ]
            assert not errors, errors
            await page.context.close()


async def test_django_project_page_shows_the_status_a_post_publishes(browser: Browser) -> None:
    with served("uvicorn", "shop.asgi:application", EXAMPLES / "django_project") as base:
        async with http(base) as client:
            assert (await client.get("/orders/42")).status_code == 401
            page = await log_in_and_follow_an_order(browser, base, "alice")
            assert page.url == f"{base}/orders/42"
            reply = await client.post("/orders/42/status", json={"status": "shipped"})
            assert reply.status_code == 200, reply.text
            await page.wait_for_selector('#status:text-is("shipped")', timeout=WAIT_MS)
            assert await refused_subscription(page, "orders:43") == 103
            await page.context.close()
