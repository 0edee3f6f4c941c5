"""Closing after a failure, seen by a real browser: Debian's Chromium, driven by
Playwright, against the asyncio server.

A browser that sends a message past ``max_size`` is still uploading it when the server
fails the connection. The server must close as RFC 6455 section 7.1.1 describes (close
frame, stop writing, read and drop until the browser closes), or the kernel's reset
destroys the close frame and the page sees 1006 instead of 1009.

Skipped without Chromium or Playwright outside CI, as tests/app/test_browser.py.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backchannel.asyncio import ServerConnection, serve
from backchannel.protocol.http11 import Request, Response

try:
    from playwright.async_api import Browser, async_playwright
except ImportError:  # pragma: no cover - only without the test extra
    async_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless and quiet, as in tests/app/test_browser.py: no GPU, no calls to Google's hosts.
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

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

PAGE = "<!doctype html><title>close</title><p>close test</p>"

# Opens a WebSocket, sends one binary message of `size` bytes as soon as it is open, and
# resolves with what the close event reports. The page's own bound stops a hang.
SEND_AND_WAIT_FOR_CLOSE = """
([url, size]) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const timer = setTimeout(() => resolve({code: -1, reason: "no close event"}), 20000);
  ws.onopen = () => {
    // Random bytes: compression cannot shrink them, the whole size goes on the wire.
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i += 65536) crypto.getRandomValues(data.subarray(i, i + 65536));
    ws.send(data.buffer);
  };
  ws.onclose = (event) => {
    clearTimeout(timer);
    resolve({code: event.code, reason: event.reason, wasClean: event.wasClean});
  };
})
"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def page(ws: ServerConnection, request: Request) -> Response | None:
    if request.path == "/":
        response = Response.text(200, PAGE)
        response.headers.set("Content-Type", "text/html; charset=utf-8")
        return response
    return None


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_browser_sees_1009_for_a_message_over_max_size(
    browser: Browser, compression: str | None
) -> None:
    size = 4 * 2**20
    async with serve(
        echo,
        "127.0.0.1",
        0,
        max_size=64 * 1024,
        compression=compression,
        process_request=page,
        ping_interval=None,
    ) as server:
        tab = await browser.new_page()
        try:
            await tab.goto(f"http://127.0.0.1:{server.port}/")
            url = f"ws://127.0.0.1:{server.port}/ws"
            result: dict[str, Any] = await tab.evaluate(SEND_AND_WAIT_FOR_CLOSE, [url, size])
        finally:
            await tab.close()
    assert result["code"] == 1009, result
    # The reason names the limit: the frame's size, or what its data inflates to.
    assert "65536" in result["reason"] or "limit" in result["reason"], result
