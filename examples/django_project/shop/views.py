"""The site's views: a login, an order's page, and the route that sets a status and
publishes it through the hub (in this process: no HTTP API)."""

from __future__ import annotations

import json

from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotFound,
    HttpResponseRedirect,
    JsonResponse,
)
from django.utils.html import escape
from django.views.decorators.http import require_POST

from .orders import ORDERS
from .realtime import COOKIE, hub, login_cookie, user_from_cookie

LOGIN = """<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Log in</title>
<form method="post" action="/login">
  <label>Name <input name="user" autofocus></label>
  <button>Log in</button>
</form>
"""

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
  // Its fallbacks, /realtime/sse and /realtime/lp, are found beside /realtime/ws.
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


async def login(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(LOGIN)
    user = request.POST.get("user", "").strip()
    if not user.isalnum():
        return HttpResponseBadRequest("a name is letters and digits\n")
    mine = [order for order, data in ORDERS.items() if data["owner"] == user]
    response = HttpResponseRedirect(f"/orders/{mine[0]}" if mine else "/login", status=303)
    response.set_cookie(COOKIE, login_cookie(user), httponly=True, samesite="Lax")
    return response


async def order_page(request: HttpRequest, order: str) -> HttpResponse:
    user = user_from_cookie(request.COOKIES.get(COOKIE))
    if user is None:
        return HttpResponse(LOGIN, status=401)
    data = ORDERS.get(order)
    if data is None or data["owner"] != user:
        return HttpResponseNotFound("no such order\n")
    return HttpResponse(
        PAGE.format(
            order=escape(order), order_json=json.dumps(order), status=escape(data["status"])
        )
    )


@require_POST
async def set_status(request: HttpRequest, order: str) -> HttpResponse:
    try:
        status = json.loads(request.body).get("status")
    except (ValueError, AttributeError):
        status = None
    if order not in ORDERS:
        return HttpResponseNotFound("no such order\n")
    if not isinstance(status, str):
        return HttpResponseBadRequest('give {"status": "..."}\n')
    ORDERS[order]["status"] = status
    result = await hub.publish(f"orders:{order}", {"status": status})
    return JsonResponse({"order": order, "status": status, "offset": result.publication.offset})
