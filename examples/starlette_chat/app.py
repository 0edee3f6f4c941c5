"""A chat room in a Starlette app: backchannel's hub mounted at /realtime, one page.

Visitors chat in ``chat:lobby`` (anonymous: no login here); the server announces things in
the same room from a route, ``POST /announce``, through the hub's facade.

Run it (README.md beside this file): ``uvicorn app:app --port 8000``, then open
http://127.0.0.1:8000/ in two tabs.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Mount, Route

from backchannel.asgi import HubApp
from backchannel.hub import ChannelOptions, Hub, HubOptions

hub = Hub(
    # Anyone may connect; the room keeps its last 50 messages for those who arrive.
    HubOptions(anonymous=True, namespaces={"chat": ChannelOptions(history_size=50)}),
)
realtime = HubApp(hub)

PAGE = """<!doctype html>
<meta charset="utf-8">
<link rel="icon" href="data:,">
<title>Lobby</title>
<p id="state">connecting</p>
<ul id="messages"></ul>
<form id="say"><input id="text" autocomplete="off"> <button>Send</button></form>
<script type="module">
  import { Client } from "/realtime/js/backchannel.js";

  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const client = new Client(`${scheme}//${location.host}/realtime/ws`);
  // History and live messages may overlap: each offset once, in offset order.
  const show = (pub) => {
    const list = document.querySelector("#messages");
    if (list.querySelector(`li[data-offset="${pub.offset}"]`)) return;
    const item = document.createElement("li");
    item.dataset.offset = pub.offset;
    item.textContent = pub.data.text;  // text, never HTML
    const after = [...list.children].find((li) => Number(li.dataset.offset) > pub.offset);
    list.insertBefore(item, after ?? null);
  };
  const lobby = client.subscribe("chat:lobby", {
    onSubscribed: async () => {
      const { publications } = await lobby.history({ limit: 50 });
      publications.forEach(show);
      document.querySelector("#state").textContent = "subscribed";
    },
    onPublication: show,
  });
  document.querySelector("#say").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.querySelector("#text");
    if (input.value) lobby.publish({ text: input.value });
    input.value = "";
  });
  await client.connect();
</script>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def announce(request: Request) -> JSONResponse:
    body = await request.json()
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return JSONResponse({"error": "give a text"}, status_code=400)
    result = await hub.publish("chat:lobby", {"text": text})
    return JSONResponse({"offset": result.publication.offset})


app = Starlette(
    routes=[
        Route("/", page),
        Route("/announce", announce, methods=["POST"]),
        Mount("/realtime", realtime),
    ],
    # A mounted app gets no lifespan events: the hub starts and stops with this one.
    lifespan=realtime.lifespan,
)
