"""Django Channels 4 under uvicorn, for benchmarks/hub.py: groups as channels.

Django Channels has no wire protocol of its own (an application writes its consumer), so
this consumer speaks the few lines of backchannel's hub wire the load generator uses, and
the generator drives it as it drives ``backchannel serve``: ``connect`` and ``subscribe``
(``group_add``) are answered with an empty result; ``publish`` encodes the publication
push once and ``group_send``s it to the channel's group, whose every member (the sender
included) writes it, as a hub publication reaches every subscriber. The channel layer is
Channels' in-memory one: one process, as the hub's memory broker. uvicorn runs on uvloop
with httptools and its websockets-sansio implementation, compression off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any

import django
import uvicorn
from _common import BACKLOG, MAX_SIZE, parse_args, ready, run
from django.conf import settings

settings.configure(
    DEBUG=False,
    INSTALLED_APPS=["channels"],
    # Channels' own in-memory layer; its per-consumer queue (capacity 100) is far above
    # what one consumer holds in any workload here.
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    LOGGING_CONFIG=None,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

#: Group names allow letters, digits, '-', '_' and '.' only.
_NOT_IN_GROUP_NAMES = re.compile(r"[^0-9A-Za-z_.\-]")


def group_of(channel: str) -> str:
    return _NOT_IN_GROUP_NAMES.sub(".", channel)[:99]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Hub(AsyncWebsocketConsumer):  # type: ignore[misc,unused-ignore]
    async def connect(self) -> None:
        self.joined: list[str] = []
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        replies = []
        for line in (text_data or "").split("\n"):
            command = json.loads(line)
            params = command.get("params", {})
            method = command["method"]
            if method == "subscribe":
                group = group_of(params["channel"])
                await self.channel_layer.group_add(group, self.channel_name)
                self.joined.append(group)
            elif method == "publish":
                push = {"push": "publication", "channel": params["channel"], "data": params["data"]}
                await self.channel_layer.group_send(
                    group_of(params["channel"]), {"type": "publication", "text": dumps(push)}
                )
            replies.append(dumps({"id": command["id"], "result": {}}))
        await self.send(text_data="\n".join(replies))

    async def publication(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        for group in self.joined:
            await self.channel_layer.group_discard(group, self.channel_name)


application = ProtocolTypeRouter({"websocket": URLRouter([path("ws", Hub.as_asgi())])})


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    config = uvicorn.Config(
        application,
        host=args.host,
        port=args.port,
        loop="none",  # the loop _common.run made (uvloop with --loop uvloop)
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=MAX_SIZE,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=BACKLOG,
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # raises why it did not start
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.05)  # uvicorn has no start event to wait for
    ready()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        # uvicorn may take SIGTERM itself and end ``serving``: either ends the run.
        await asyncio.wait([stopping, serving], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        server.should_exit = True
        await serving


if __name__ == "__main__":
    run(main, parse_args(__doc__ or ""))
