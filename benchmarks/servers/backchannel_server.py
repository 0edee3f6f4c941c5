"""Benchmark server on backchannel.asyncio (echo on any path, /sub and /pub broadcast)."""

from __future__ import annotations

import argparse
import asyncio
import os

from _common import BACKLOG, MAX_SIZE, note, parse_args, ready, run

from backchannel.asyncio import ServerConnection, broadcast, serve
from backchannel.protocol import speedups
from backchannel.protocol.limits import Limits


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    subscribers: set[ServerConnection] = set()

    async def handler(conn: ServerConnection) -> None:
        path = conn.request.path
        if path == "/sub":
            subscribers.add(conn)
            try:
                async for _ in conn:
                    pass
            finally:
                subscribers.discard(conn)
        elif path == "/pub":
            async for message in conn:
                broadcast(subscribers, message)
                await conn.send("ok")
        else:
            async for message in conn:
                await conn.send(message)

    async with serve(
        handler,
        args.host,
        args.port,
        compression=None,
        limits=Limits(max_size=MAX_SIZE),
        backlog=BACKLOG,
    ):
        note(
            "backchannel:"
            f" speedups={'active' if speedups.ACTIVE else 'inactive'}"
            f" BACKCHANNEL_NO_EXTENSIONS={os.environ.get('BACKCHANNEL_NO_EXTENSIONS', '')!r}"
        )
        ready()
        await stop.wait()


if __name__ == "__main__":
    run(main, parse_args(__doc__ or ""))
