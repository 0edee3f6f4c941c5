"""Benchmark server on aiohttp's web server (echo, /sub and /pub broadcast)."""

from __future__ import annotations

import argparse
import asyncio

from _common import BACKLOG, MAX_SIZE, parse_args, ready, run
from aiohttp import WSMsgType, web


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    subscribers: set[web.WebSocketResponse] = set()

    async def send(ws: web.WebSocketResponse, kind: WSMsgType, data: str | bytes) -> None:
        if kind == WSMsgType.TEXT:
            assert isinstance(data, str)
            await ws.send_str(data)
        else:
            assert isinstance(data, bytes)
            await ws.send_bytes(data)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=MAX_SIZE)
        await ws.prepare(request)
        if request.path == "/sub":
            subscribers.add(ws)
            try:
                async for _ in ws:
                    pass
            finally:
                subscribers.discard(ws)
        elif request.path == "/pub":
            async for msg in ws:
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                for subscriber in list(subscribers):
                    try:
                        await send(subscriber, msg.type, msg.data)
                    except ConnectionError:
                        pass
                await ws.send_str("ok")
        else:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    await send(ws, msg.type, msg.data)
        return ws

    app = web.Application(client_max_size=MAX_SIZE)
    app.router.add_get("/{tail:.*}", handler)
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
