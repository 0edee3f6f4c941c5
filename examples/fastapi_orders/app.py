"""Order status, live: a FastAPI shop with backchannel's hub mounted at /realtime.

- ``GET /login`` and ``POST /login``: a tiny login that sets a signed cookie (the shop's own
  authentication; yours would be a session, OAuth, ...).
- ``GET /orders/{id}``: a page that shows the order's status live, through the browser
  client the mounted hub serves (``/realtime/js/backchannel.js``).
- ``POST /orders/{id}/status``: the shop's backend changes the status and publishes it in
  the channel ``orders:{id}`` through the hub's facade, in this process (no HTTP API).

The hub knows who a connection is from the same cookie (``authenticate`` reads it from the
ASGI scope), and lets a user subscribe to their own orders only (``authorize_subscribe``).

Run it (README.md beside this file): ``uvicorn app:app --port 8000``, then open
http://127.0.0.1:8000/login.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from backchannel.asgi import HubApp
from backchannel.exceptions import CommandError
from backchannel.hub import ChannelOptions, Connected, Hooks, Hub, HubOptions, Session, codes

COOKIE = "shop_user"
# Signs the login cookie. Made up at start here (a restart logs everybody out); a real
# shop reads its secret from its configuration.
SECRET = os.environ.get("SHOP_SECRET", "").encode() or secrets.token_bytes(32)

# The shop's orders: who owns each, and its status (a database in a real shop).
ORDERS: dict[str, dict[str, str]] = {
    "42": {"owner": "alice", "status": "placed"},
    "43": {"owner": "bob", "status": "placed"},
}


def sign(user: str) -> str:
    mac = hmac.new(SECRET, user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{mac}"


def signed_user(value: str | None) -> str | None:
    """The user a cookie's value was signed for, or None (no cookie, or a forged one)."""
    if not value or "." not in value:
        return None
    user = value.rpartition(".")[0]
    return user if hmac.compare_digest(value, sign(user)) else None


def cookie_from_scope(scope: dict[str, Any]) -> str | None:
    """The login cookie of an ASGI request (HTTP or WebSocket): the hub's view of it."""
    jar: SimpleCookie = SimpleCookie()
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            jar.load(value.decode("latin-1"))
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None else None


async def authenticate(scope: dict[str, Any]) -> Connected | None:
    """Who a hub connection is: the shop's logged-in user. None refuses it (this hub takes
    no tokens and no anonymous connections)."""
    user = signed_user(cookie_from_scope(scope))
    return Connected(user) if user else None


class ShopHooks(Hooks):
    async def authorize_subscribe(self, session: Session, channel: str) -> None:
        # orders:{id}: only the order's owner may follow it.
        order = ORDERS.get(channel.removeprefix("orders:"))
        if order is None or order["owner"] != session.user:
            raise CommandError(codes.PERMISSION_DENIED)


hub = Hub(
    # The last status is kept in history, so that a page reads what it may have missed
    # between rendering and subscribing. The server alone publishes there.
    HubOptions(namespaces={"orders": ChannelOptions(history_size=1, publish="server")}),
    hooks=ShopHooks(),
)
realtime = HubApp(hub, authenticate=authenticate)
# FastAPI does not pass lifespan events to mounted apps: the hub starts and stops with
# the host application through its lifespan.
app = FastAPI(lifespan=realtime.lifespan)
app.mount("/realtime", realtime)


def current_user(request: Request) -> str | None:
    return signed_user(request.cookies.get(COOKIE))


LOGIN = """<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Log in</title>
<form method="post" action="/login">
  <label>Name <input name="user" autofocus></label>
  <button>Log in</button>
</form>
"""


@app.get("/login", response_class=HTMLResponse)
async def login_form() -> str:
    return LOGIN


@app.post("/login")
async def login(request: Request) -> RedirectResponse:
    # A form post, read without python-multipart: the example needs nothing else.
    form = parse_qs((await request.body()).decode())
    user = form.get("user", [""])[0].strip()
    if not user.isalnum():
        raise HTTPException(400, "a name is letters and digits")
    mine = [order for order, data in ORDERS.items() if data["owner"] == user]
    response = RedirectResponse(f"/orders/{mine[0]}" if mine else "/login", status_code=303)
    response.set_cookie(COOKIE, sign(user), httponly=True, samesite="lax")
    return response


PAGE = """<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Order {order}</title>
<h1>Order {order}</h1>
<p>Status: <strong id="status">{status}</strong></p>
<p id="state">connecting</p>
<script type="module">
  import {{ Client }} from "/realtime/js/backchannel.js";

  const order = {order_json};
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  // The hub is under /realtime: its fallbacks, /realtime/sse and /realtime/lp, are found
  // beside /realtime/ws.
  const client = new Client(`${{scheme}}//${{location.host}}/realtime/ws`);
  window.order = {{ client }};  // for the console (and the tests)
  let shown = -1;  // the offset of the status on the page
  const show = (pub) => {{
    if (pub.offset <= shown) return;
    shown = pub.offset;
    document.querySelector("#status").textContent = pub.data.status;
  }};
  const sub = client.subscribe(`orders:${{order}}`, {{
    onSubscribed: async () => {{
      // What was published before the subscription: the last status, from history.
      const {{ publications }} = await sub.history({{ limit: 1 }});
      publications.forEach(show);
      document.querySelector("#state").textContent = "live";
    }},
    onPublication: show,
    onError: (err) => {{ document.querySelector("#state").textContent = err.message; }},
  }});
  await client.connect();
</script>
"""


@app.get("/orders/{order}", response_class=HTMLResponse)
async def order_page(order: str, request: Request) -> HTMLResponse:
    user = current_user(request)
    if user is None:
        return HTMLResponse(LOGIN, status_code=401)
    data = ORDERS.get(order)
    if data is None or data["owner"] != user:
        raise HTTPException(404, "no such order")
    return HTMLResponse(
        PAGE.format(
            order=html.escape(order),
            order_json=json.dumps(order),
            status=html.escape(data["status"]),
        )
    )


@app.post("/orders/{order}/status")
async def set_status(order: str, request: Request) -> dict[str, Any]:
    """The shop's backend (a warehouse, a payment callback) sets an order's status. A real
    shop guards this route; the example leaves it open to be tried with curl."""
    body = await request.json()
    status = body.get("status") if isinstance(body, dict) else None
    if order not in ORDERS or not isinstance(status, str):
        raise HTTPException(404 if order not in ORDERS else 400)
    ORDERS[order]["status"] = status
    result = await hub.publish(f"orders:{order}", {"status": status})
    return {"order": order, "status": status, "offset": result.publication.offset}
