"""Real ASGI servers in the test's event loop: uvicorn and hypercorn on 127.0.0.1, on a
port the OS picks (a socket bound here first, so its port is known before the server
starts; connections wait in its backlog until the server accepts them)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig


def _listening_socket() -> socket.socket:
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (without it, Nagle holds a response's body behind its head for a delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@asynccontextmanager
async def uvicorn_server(app: Any, *, lifespan: str = "off") -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn (its sans-I/O websockets protocol, httptools) until the
    block exits; yields the port. ``lifespan="on"`` runs the app's lifespan scope."""
    sock = _listening_socket()
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan=lifespan,
        ws="websockets-sansio",
        # Held polls and streams end when the hub closes; this bounds a test that
        # leaves one open.
        timeout_graceful_shutdown=5,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield sock.getsockname()[1]
    finally:
        await server.shutdown(sockets=[sock])


@asynccontextmanager
async def hypercorn_server(app: Any) -> AsyncIterator[int]:
    """Serve ``app`` with hypercorn until the block exits; yields the port."""
    sock = _listening_socket()
    port = sock.getsockname()[1]
    config = HypercornConfig()
    # Hypercorn takes the socket over (and closes it when it stops).
    config.bind = [f"fd://{sock.detach()}"]
    config.loglevel = "WARNING"
    config.graceful_timeout = 5
    stop = asyncio.Event()
    task = asyncio.ensure_future(hypercorn_serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield port
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task
