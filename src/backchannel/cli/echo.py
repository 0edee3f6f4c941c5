"""``backchannel echo``: an echo server with its page."""

from __future__ import annotations

import argparse
import importlib.resources
import ssl

from ..asyncio import ServerConnection, serve
from ..protocol.deflate import DeflateConfig
from ..protocol.handshake import is_upgrade_request
from ..protocol.http11 import Request, Response
from ..protocol.limits import Limits
from .errors import fail, listen_error
from .runner import until_signal


def static(name: str) -> bytes:
    return importlib.resources.files("backchannel").joinpath("static", name).read_bytes()


async def echo_handler(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def echo_page(connection: ServerConnection, request: Request) -> Response | None:
    """Serve the demo page at ``/``; let upgrades through."""
    if is_upgrade_request(request):
        return None
    if request.path in ("/", "/index.html") and request.method == "GET":
        response = Response(200, body=static("echo.html"))
        response.headers.add("Content-Type", "text/html; charset=utf-8")
        return response
    return None


async def run_echo(args: argparse.Namespace, context: ssl.SSLContext | None) -> None:
    try:
        async with serve(
            echo_handler,
            args.host,
            args.port,
            ssl=context,
            compression=None
            if args.no_compression
            else DeflateConfig(compress_level=args.compress_level),
            compress_threshold=0 if args.compress_all else 128,
            limits=Limits(max_size=args.max_size),
            process_request=echo_page,
        ) as server:
            scheme = "https" if context else "http"
            print(f"echo server on {scheme}://{args.host}:{server.port}/", flush=True)
            await until_signal()
            print("shutting down", flush=True)
    except OSError as exc:  # listening failed: nothing else in here does I/O of its own
        fail(listen_error(exc, args.host, args.port), 1)
