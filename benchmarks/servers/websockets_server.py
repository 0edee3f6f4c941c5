"""Benchmark server on websockets' asyncio implementation (echo, /sub and /pub broadcast)."""

from __future__ import annotations

import argparse
import asyncio

from _common import BACKLOG, MAX_SIZE, parse_args, ready, run
from websockets import broadcast
from websockets.asyncio.server import ServerConnection, serve


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    subscribers: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else "/"
        if path == "/sub":
            subscribers.add(ws)
            try:
                async for _ in ws:
                    pass
            finally:
                subscribers.discard(ws)
        elif path == "/pub":
            async for message in ws:
                broadcast(subscribers, message)
                await ws.send("ok")
        else:
            async for message in ws:
                await ws.send(message)

    async with serve(
        handler, args.host, args.port, compression=None, max_size=MAX_SIZE, backlog=BACKLOG
    ):
        ready()
        await stop.wait()


if __name__ == "__main__":
    run(main, parse_args(__doc__ or ""))
