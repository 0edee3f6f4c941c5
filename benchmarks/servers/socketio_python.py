"""python-socketio 5.x on aiohttp, for benchmarks/hub.py: rooms as channels.

Events: ``join`` (a room name; acknowledged with ``true`` once the socket is in the room),
``publish`` (``{"room": R, "data": D}``: emits ``pub`` with D to every socket in R, the
sender included, as a hub publication reaches every subscriber).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import socketio  # type: ignore[import-untyped,unused-ignore]
from _common import BACKLOG, MAX_SIZE, parse_args, ready, run
from aiohttp import web


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    # No compression (as the other servers), no logging, and the default ping interval
    # (25 s), which the generator's clients answer.
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        logger=False,
        engineio_logger=False,
        http_compression=False,
        compression_threshold=2**30,
        max_http_buffer_size=MAX_SIZE,
        transports=["websocket"],
    )
    app = web.Application(client_max_size=MAX_SIZE)
    sio.attach(app)

    @sio.on("join")  # type: ignore[untyped-decorator,unused-ignore]
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.on("publish")  # type: ignore[untyped-decorator,unused-ignore]
    async def publish(sid: str, message: dict[str, Any]) -> None:
        await sio.emit("pub", message["data"], room=message["room"])

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=BACKLOG)
    await site.start()
    try:
        ready()
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    run(main, parse_args(__doc__ or ""))
