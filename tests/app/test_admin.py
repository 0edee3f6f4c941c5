"""The live dashboard at /admin (app/admin.py): its login, its guards, its snapshots over
the hub, and the page itself in Debian's Chromium (Playwright), against the real server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers.cluster import Cluster, healthz, token
from helpers.http import Http, Reply
from helpers.hub_client import HubClient, ReplyError
from helpers.redis_server import RedisServer, require_redis

from backchannel.app import App
from backchannel.app.admin import LIVE_CHANNEL, USER, Admin
from backchannel.app.config import AdminConfig, AlertsConfig
from backchannel.hub import codes
from backchannel.hub.token import make_token
from backchannel.protocol.http11 import Headers, Request

from .conftest import SECRET, make_config, running
from .test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, WAIT_MS
from .test_browser import pytestmark as browser_only

try:
    from playwright.async_api import Browser, Page, async_playwright
except ImportError:  # pragma: no cover - only without the test extra
    async_playwright = None  # type: ignore[assignment]

PASSWORD = "correct horse battery staple"
#: The Host our HTTP helper sends: a POST of this server's own pages has this Origin.
OWN = [("Origin", "http://x")]
#: Bounds on loops that wait for snapshots (each a fraction of a second apart).
MAX_PUSHES = 200
#: How often the page is read while waiting for it to show something (milliseconds).
POLL_MS = 50


def admin_config(**admin: Any) -> Any:
    config = make_config()
    config.admin = AdminConfig(password=PASSWORD, interval=0.2, **admin)
    return config


def with_alerts(config: Any) -> Any:
    """A config whose one alert rule (more than one session) is evaluated only when the
    test says (``app.alerts.evaluate()``): its own timer waits an hour."""
    config.alerts = AlertsConfig(interval=3600.0, connections_above=1)
    return config


@pytest.fixture
async def admin_server() -> AsyncIterator[tuple[App, int]]:
    async with running(with_alerts(admin_config(login_burst=3))) as started:
        yield started


async def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: list[tuple[str, str]] | None = None,
) -> Reply:
    http = await Http.open(port)
    try:
        data = "" if body is None else json.dumps(body)
        return await http.exchange(method, path, data, headers or [])
    finally:
        await http.close()


async def login(port: int, password: str = PASSWORD, origin: str = "http://x") -> Reply:
    return await request(port, "POST", "/admin/login", {"password": password}, [("Origin", origin)])


def cookie_of(reply: Reply) -> list[tuple[str, str]]:
    value = reply.headers["set-cookie"].split(";")[0]
    return [("Cookie", value)]


async def test_admin_is_off_unless_a_password_is_set(tmp_path: Path) -> None:
    async with running() as (app, port):
        assert app.admin is None
        for method, path in [
            ("GET", "/admin"),
            ("POST", "/admin/login"),
            ("GET", "/admin/api/token"),
        ]:
            reply = await request(port, method, path, {"password": ""}, OWN)
            assert reply.status == 404, (path, reply.text)
        # Nor does its namespace exist: nobody can subscribe to the live channel.
        token = make_token(SECRET, USER)
        client = await HubClient.open(port, path="/ws", token=token)
        channel_token = make_token(SECRET, USER, channel=LIVE_CHANNEL)
        with pytest.raises(ReplyError) as refused:
            await client.call("subscribe", channel=LIVE_CHANNEL, token=channel_token)
        assert refused.value.code == codes.UNKNOWN_CHANNEL.code
        await client.close()


async def test_a_wrong_password_is_refused_and_logins_are_rate_limited(
    admin_server: tuple[App, int],
) -> None:
    _, port = admin_server
    for _ in range(3):  # login_burst
        reply = await login(port, "not the password")
        assert reply.status == 403, reply.text
        assert "set-cookie" not in reply.headers
    limited = await login(port, "not the password")
    assert limited.status == 429
    assert int(limited.headers["retry-after"]) >= 1
    # Past the limit even the right password waits: guessing costs time.
    assert (await login(port)).status == 429


async def test_a_login_sets_a_strict_cookie_that_opens_the_endpoints_until_logout(
    admin_server: tuple[App, int],
) -> None:
    app, port = admin_server
    assert (await request(port, "GET", "/admin/api/token")).status == 401
    refused = await request(port, "POST", "/admin/api/publish", {"channel": "chat:a"}, OWN)
    assert refused.status == 401
    reply = await login(port)
    assert reply.status == 200, reply.text
    cookie = reply.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin"):
        assert attribute in cookie
    assert "Secure" not in cookie  # no TLS here: the browser would not send it back
    tokens = reply.json()
    assert tokens["channel"] == LIVE_CHANNEL
    assert app.hub.tokens is not None
    assert app.hub.tokens.verify(tokens["token"]).user == USER
    assert app.hub.tokens.verify_channel(tokens["channel_token"]).channel == LIVE_CHANNEL

    session = cookie_of(reply)
    again = await request(port, "GET", "/admin/api/token?client=abc", None, session)
    assert again.status == 200
    assert app.hub.tokens.verify_channel(again.json()["channel_token"]).client == "abc"
    published = await request(
        port, "POST", "/admin/api/publish", {"channel": "chat:a", "data": {"n": 1}}, session + OWN
    )
    assert published.status == 200, published.text
    out = await request(port, "POST", "/admin/logout", {}, session + OWN)
    assert out.status == 200
    assert (await request(port, "GET", "/admin/api/token", None, session)).status == 401


async def test_under_tls_the_session_cookie_is_secure(
    tls_files: dict[str, Path], client_ssl: ssl.SSLContext
) -> None:
    config = admin_config()
    config.server.tls_cert = str(tls_files["cert"])
    config.server.tls_key = str(tls_files["key"])
    async with running(config) as (_, port):
        base = f"https://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, verify=client_ssl) as http:
            reply = await http.post(
                "/admin/login", json={"password": PASSWORD}, headers={"Origin": base}
            )
    assert reply.status_code == 200, reply.text
    assert "Secure" in reply.headers["set-cookie"].split("; ")


def admin_request(method: str, path: str, body: Any = None, cookie: str = "") -> Request:
    headers = Headers([("Host", "x"), ("Origin", "http://x")])
    if cookie:
        headers.add("Cookie", cookie)
    return Request(method, path, headers, b"" if body is None else json.dumps(body).encode())


async def test_a_login_ends_after_session_ttl_and_the_oldest_past_max_sessions() -> None:
    now = [1000.0]
    admin = Admin(
        AdminConfig(password=PASSWORD, session_ttl=60.0, max_sessions=2),
        secret=SECRET,
        node="n",
        page_headers=lambda page: [],
        clock=lambda: now[0],
    )

    async def log_in() -> str:
        reply = await admin.handle(
            admin_request("POST", "/admin/login", {"password": PASSWORD}), "/admin/login", "a"
        )
        assert reply.status == 200
        cookie = reply.headers.get("Set-Cookie")
        assert cookie is not None and "Max-Age=60" in cookie
        return cookie.split(";")[0]

    async def status(cookie: str) -> int:
        request = admin_request("GET", "/admin/api/token", cookie=cookie)
        return (await admin.handle(request, "/admin/api/token", "a")).status

    first = await log_in()
    now[0] += 59.0
    assert await status(first) == 200
    now[0] += 1.0
    assert await status(first) == 401  # expired
    second, third = await log_in(), await log_in()
    fourth = await log_in()  # a third login at once: the oldest held one ends
    assert [await status(c) for c in (second, third, fourth)] == [401, 200, 200]
    assert await status("backchannel_admin=forged") == 401


async def test_cross_origin_posts_are_refused(admin_server: tuple[App, int]) -> None:
    _, port = admin_server
    # A page of another site cannot log in with a password it guessed...
    assert (await login(port, origin="http://evil.example")).status == 403
    session = cookie_of(await login(port))
    publish = {"channel": "chat:lobby", "data": {"text": "forged"}}
    # ...nor act with a logged-in browser's cookie (nor can a request without Origin).
    for origin in ([("Origin", "http://evil.example")], [("Origin", "null")], []):
        reply = await request(port, "POST", "/admin/api/publish", publish, session + origin)
        assert reply.status == 403, reply.text
    history = await request(
        port, "POST", "/admin/api/history", {"channel": "chat:lobby"}, session + OWN
    )
    assert history.status == 200
    assert history.json()["publications"] == []


async def test_presence_shows_one_page_with_the_counts_of_the_whole_channel() -> None:
    config = admin_config()
    config.hub = {"presence_page_size": 2}  # three clients: more than a page
    async with running(config) as (_, port):
        clients = [
            await HubClient.open(port, path="/ws", token=make_token(SECRET, user))
            for user in ("alice", "bob", "mallory")
        ]
        try:
            for client in clients:
                await client.call("subscribe", channel="chat:lobby")
            session = cookie_of(await login(port))
            reply = await request(
                port, "POST", "/admin/api/presence", {"channel": "chat:lobby"}, session + OWN
            )
            assert reply.status == 200, reply.text
            result = reply.json()
            assert len(result["clients"]) == 2 and "next_cursor" in result
            assert (result["count"], result["users"]) == (3, 3)
        finally:
            for client in clients:
                await client.close()


async def live_snapshots(client: HubClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` snapshots the client gets on the live channel."""
    snapshots = []
    for _ in range(MAX_PUSHES):
        push = await client.push()
        if push["push"] == "publication" and push["channel"] == LIVE_CHANNEL:
            snapshots.append(push["data"])
            if len(snapshots) == count:
                return snapshots
    raise AssertionError(f"only {len(snapshots)} snapshots")


async def test_each_node_publishes_snapshots_only_while_a_dashboard_watches(
    admin_server: tuple[App, int],
) -> None:
    app, port = admin_server
    tokens = (await login(port)).json()
    watcher = await HubClient.open(port, path="/ws", token=tokens["token"])
    alice = await HubClient.open(port, path="/ws", token=make_token(SECRET, "alice"))
    await alice.call("subscribe", channel="chat:lobby")
    await watcher.call("subscribe", channel=LIVE_CHANNEL, token=tokens["channel_token"])
    # Clients cannot publish there: only the server does.
    with pytest.raises(ReplyError) as refused:
        await watcher.call("publish", channel=LIVE_CHANNEL, data={"node": "fake"})
    assert refused.value.code == codes.PERMISSION_DENIED.code
    await alice.call("publish", channel="chat:lobby", data={"text": "hi"})
    snapshots = await live_snapshots(watcher, 3)
    last = snapshots[-1]
    assert last["node"] == app.node
    assert last["stats"]["sessions"] == 2
    assert ["chat:lobby", 1] in last["channels"]
    assert sum(s["stats"]["publications_in"] for s in snapshots) >= 1
    assert all(s["alerts"] == {"active": [], "events": []} for s in snapshots)
    # Once the server raises an alert (two sessions, above the rule's 1), it is in the
    # snapshots. The rule is evaluated here, not by the alerts' own timer.
    assert app.alerts is not None
    await app.alerts.evaluate()
    for _ in range(MAX_PUSHES):  # one taken before the alert may be on its way
        (snapshot,) = await live_snapshots(watcher, 1)
        if snapshot["alerts"]["active"]:
            break
    assert [a["name"] for a in snapshot["alerts"]["active"]] == ["connections"]
    # Snapshots do not count as the application's publications.
    assert app.hub.statistics().publications_in == 1
    assert app.admin is not None
    assert app.admin.published >= 3
    await watcher.call("unsubscribe", channel=LIVE_CHANNEL)
    # A period that had begun before the unsubscribe may still publish; after it, the
    # node sees nobody watching and publishes nothing.
    await live_round(app, 2)
    published = app.admin.published
    await live_round(app, 3)
    assert app.admin.published == published
    await watcher.close()
    await alice.close()


async def live_round(app: App, periods: int) -> None:
    """Wait for ``periods`` periods of the snapshot loop (it checks presence each time)."""
    admin = app.admin
    assert admin is not None
    for _ in range(periods):
        await asyncio.wait_for(admin.period.wait(), 10)
        admin.period.clear()


async def test_a_warning_logged_on_the_node_is_in_its_recent_errors(
    admin_server: tuple[App, int],
) -> None:
    _, port = admin_server
    tokens = (await login(port, "a wrong guess")).json()
    assert tokens["error"]["message"] == "wrong password"
    tokens = (await login(port)).json()
    watcher = await HubClient.open(port, path="/ws", token=tokens["token"])
    await watcher.call("subscribe", channel=LIVE_CHANNEL, token=tokens["channel_token"])
    (snapshot,) = await live_snapshots(watcher, 1)
    (error,) = [e for e in snapshot["errors"] if "failed login" in e["message"]]
    assert (error["level"], error["logger"]) == ("WARNING", "backchannel.app")
    await watcher.close()


# A cluster: every node publishes its own snapshot, so a dashboard sees them all.


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    folder = tmp_path / "redis"
    folder.mkdir()
    with RedisServer(folder) as server:
        yield server


async def test_with_redis_every_node_publishes_its_snapshot_under_its_name(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    cluster = Cluster(tmp_path, redis_server.url)
    try:
        env = cluster.env(BACKCHANNEL_ADMIN_PASSWORD=PASSWORD, BACKCHANNEL_ADMIN_INTERVAL="0.2")
        nodes = [cluster.spawn(env=env) for _ in range(2)]
        ports = [await node.ready() for node in nodes]
        names = {(await healthz(port))["node"] for port in ports}
        reply = await login(ports[0])
        assert reply.status == 200, reply.text
        tokens = reply.json()
        watcher = cluster.track(await HubClient.open(ports[0], path="/ws", token=tokens["token"]))
        await watcher.call("subscribe", channel=LIVE_CHANNEL, token=tokens["channel_token"])
        # A client on the other node only: its count is in that node's snapshot.
        other = cluster.track(await HubClient.open(ports[1], path="/ws", token=token("zoe")))
        await other.call("subscribe", channel="chat:lobby")
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(MAX_PUSHES):
            (snapshot,) = await live_snapshots(watcher, 1)
            seen[snapshot["node"]] = snapshot
            if set(seen) == names and sum(s["stats"]["sessions"] for s in seen.values()) == 2:
                break
        assert set(seen) == names
        assert sum(s["stats"]["sessions"] for s in seen.values()) == 2
        assert all(s["broker"] == "RedisBroker" for s in seen.values())
        (zoes,) = [s for s in seen.values() if ["chat:lobby", 1] in s["channels"]]
        assert zoes["stats"]["sessions"] == 1
    finally:
        await cluster.close()


# The page, in Chromium.


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def number(page: Page, selector: str) -> float:
    return float(await page.inner_text(selector))


async def wait_text(page: Page, selector: str, predicate: Callable[[str], bool]) -> str:
    """Wait until the element's text satisfies ``predicate``. Polled from here: the
    page's CSP (rightly) forbids the eval that page.wait_for_function needs."""
    text = ""
    for _ in range(WAIT_MS // POLL_MS):
        texts = await page.locator(selector).all_inner_texts()
        text = texts[0] if texts else ""
        if texts and predicate(text):
            return text
        await page.wait_for_timeout(POLL_MS)
    raise AssertionError(f"{selector}: {text!r}")


def above(n: float) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            return float(text) > n
        except ValueError:
            return False

    return check


async def open_dashboard(browser: Browser, port: int) -> tuple[Page, list[str]]:
    """The dashboard, logged in after a wrong password, once its hub connection is up;
    and the errors its console will report (script errors, anything the CSP blocks)."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    response = await page.goto(f"http://127.0.0.1:{port}/admin")
    assert response is not None
    assert "default-src 'none'" in (await response.all_headers())["content-security-policy"]
    # A wrong password is refused on the page; the right one opens the dashboard.
    await page.fill("#password", "not the password")
    await page.click("#login button")
    await wait_text(page, "#login-error", lambda t: "wrong password" in t)
    await page.fill("#password", PASSWORD)
    await page.click("#login button")
    await page.wait_for_selector('#status[data-state="connected"]', timeout=WAIT_MS)
    return page, errors


@browser_only
async def test_with_redis_the_page_shows_a_row_per_node_and_their_sums(
    browser: Browser, tmp_path: Path, redis_server: RedisServer
) -> None:
    cluster = Cluster(tmp_path, redis_server.url)
    try:
        env = cluster.env(BACKCHANNEL_ADMIN_PASSWORD=PASSWORD, BACKCHANNEL_ADMIN_INTERVAL="0.2")
        nodes = [cluster.spawn(env=env) for _ in range(2)]
        ports = [await node.ready() for node in nodes]
        names = sorted([(await healthz(port))["node"] for port in ports])
        # Two clients on the second node; the dashboard is on the first.
        for user in ("yves", "zoe"):
            client = cluster.track(await HubClient.open(ports[1], path="/ws", token=token(user)))
            await client.call("subscribe", channel="chat:lobby")
        page, errors = await open_dashboard(browser, ports[0])
        for _ in range(WAIT_MS // POLL_MS):
            rows = await page.locator("#nodes tbody tr").evaluate_all(
                "(rows) => rows.map((r) => r.dataset.node)"
            )
            if len(rows) == 2:
                break
            await page.wait_for_timeout(POLL_MS)
        assert rows == names
        await wait_text(page, '#channels tr[data-channel="chat:lobby"] td:last-child', "2".__eq__)
        # The sums: the dashboard's connection on one node, two clients on the other.
        await wait_text(page, "#total-connections", "3".__eq__)
        assert await page.inner_text("#total-nodes") == "2"
        assert await page.inner_text('#nodes-total td[data-key="connections"]') == "3"
        assert not errors, errors
    finally:
        await cluster.close()


@browser_only
async def test_the_dashboard_page_live_in_chromium(browser: Browser) -> None:
    async with running(with_alerts(admin_config())) as (app, port):
        clients = {
            user: await HubClient.open(port, path="/ws", token=make_token(SECRET, user))
            for user in ("alice", "bob", "mallory")
        }
        # Three sessions, above the rule's one: the alert is raised.
        assert app.alerts is not None
        await app.alerts.evaluate()
        for client in clients.values():
            await client.call("subscribe", channel="chat:lobby")
        await clients["bob"].call("subscribe", channel="chat:random")

        page, errors = await open_dashboard(browser, port)
        await page.wait_for_selector(f'#nodes tr[data-node="{app.node}"]', timeout=WAIT_MS)
        await wait_text(page, '#channels tr[data-channel="chat:lobby"] td:last-child', "3".__eq__)
        # Alerts: the active one counted and listed.
        await wait_text(page, "#total-alerts", "1".__eq__)
        listed = await page.locator("#alerts li").all_inner_texts()
        assert "raised connections" in listed[0], listed

        # A scripted client publishes: rates, deliveries and fan-out latency go live.
        async def chatter() -> None:
            for i in range(2000):  # bounded; cancelled once the page has shown enough
                await clients["alice"].call("publish", channel="chat:lobby", data={"n": i})
                await asyncio.sleep(
                    0.05
                )  # a steady workload (within publish_rate), not a synchronisation

        publisher = asyncio.create_task(chatter())
        try:
            await wait_text(page, "#total-publications", above(5))
            await wait_text(page, "#total-deliveries", above(10))
            await wait_text(page, "#total-p99", above(0))
            # Enough points for every chart to draw a line.
            for _ in range(WAIT_MS // POLL_MS):
                if await page.evaluate("window.admin.updates") >= 8:
                    break
                await page.wait_for_timeout(POLL_MS)
        finally:
            publisher.cancel()

        # Presence and history of a channel.
        await page.fill("#channel", "chat:lobby")
        await page.click('#lookup button[data-action="presence"]')
        await wait_text(
            page,
            '#result[data-action="presence"]',
            lambda t: t.startswith("3 clients, 3 users\n") and "mallory" in t,
        )
        await page.click('#lookup button[data-action="history"]')
        await wait_text(page, '#result[data-action="history"]', lambda t: '"n"' in t)

        # Publish from the page: a subscriber gets it.
        await page.fill("#publish-channel", "chat:random")
        await page.fill("#publish-data", '{"text": "from the dashboard"}')
        await page.click("#publish button")
        for _ in range(MAX_PUSHES * 10):  # bob hears chat:lobby too
            (publication,) = await clients["bob"].publications(1)
            if publication["channel"] == "chat:random":
                break
        assert publication["data"] == {"text": "from the dashboard"}

        # Disconnect a user: their client is told so.
        await page.fill("#user", "mallory")
        await page.click("#disconnect button")
        code, _ = await clients["mallory"].closed()
        assert code == codes.FORCE_DISCONNECT.code
        # alice, bob and the dashboard itself.
        await wait_text(page, f'#nodes tr[data-node="{app.node}"] td:nth-child(3)', "3".__eq__)
        await wait_text(page, '#channels tr[data-channel="chat:lobby"] td:last-child', "2".__eq__)
        assert not errors, errors
        await check_screenshot(page, app.node)
        for name in ("alice", "bob"):
            await clients[name].close()


async def check_screenshot(page: Page, node: str) -> None:
    """Save the dashboard as an artifact, and check the picture: the values the page
    shows, and a line drawn in each chart (coloured pixels in every chart's canvas)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = await page.screenshot(path=ARTIFACTS / "admin.png", full_page=True)
    assert await page.inner_text("#total-nodes") == "1"
    assert await page.inner_text("#total-connections") == "3"
    assert await page.inner_text(f'#nodes tr[data-node="{node}"] td:first-child') == node
    boxes = await page.evaluate(
        """() => [...document.querySelectorAll(".chart canvas")].map((c) => {
            const r = c.getBoundingClientRect();
            return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height};
        })"""
    )
    assert len(boxes) == 4
    browser = page.context.browser
    assert browser is not None
    # Read on a blank page: the dashboard's CSP rightly allows no data: image.
    blank = await browser.new_page()
    counts = await blank.evaluate(
        """async ([b64, boxes]) => {
            const img = new Image();
            img.src = "data:image/png;base64," + b64;
            await img.decode();
            const canvas = document.createElement("canvas");
            canvas.width = img.width;
            canvas.height = img.height;
            const ctx = canvas.getContext("2d");
            ctx.drawImage(img, 0, 0);
            return boxes.map((r) => {
                const d = ctx.getImageData(r.x, r.y, r.width, r.height).data;
                let n = 0;  // saturated pixels: a series' line, not text or grid (grey)
                for (let i = 0; i < d.length; i += 4) {
                    const hi = Math.max(d[i], d[i + 1], d[i + 2]);
                    const lo = Math.min(d[i], d[i + 1], d[i + 2]);
                    if (hi - lo > 80) n++;
                }
                return n;
            });
        }""",
        [base64.b64encode(png).decode(), boxes],
    )
    await blank.close()
    assert all(n > 50 for n in counts), counts
