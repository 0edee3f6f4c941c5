"""The ``backchannel`` command line: ``serve``, ``token``, ``echo`` and ``connect``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import os
import signal
import ssl
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from .app import App, Config, load_config
from .asyncio import ServerConnection, connect, serve
from .exceptions import BackchannelError, ConnectionClosed, InvalidArgument, InvalidStatus
from .hub.token import make_token
from .protocol.deflate import DeflateConfig
from .protocol.handshake import is_upgrade_request
from .protocol.http11 import Request, Response
from .protocol.limits import Limits

__all__ = ["main"]

T = TypeVar("T")


def _size(text: str) -> int:
    """A size like 1048576, 16MiB or 64KiB."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30}
    lower = text.lower()
    for suffix, factor in units.items():
        if lower.endswith(suffix):
            return int(float(lower[: -len(suffix)]) * factor)
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backchannel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "serve", help="run the hub: WebSocket, long polling, HTTP API, demo chat page"
    )
    run.add_argument("--config", help="TOML file (docs/config.md); BACKCHANNEL_* overrides it")
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="port (default 8000)")
    run.add_argument("--tls-cert", help="PEM certificate chain; serves https:// and wss://")
    run.add_argument("--tls-key", help="PEM private key for --tls-cert")
    run.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")

    token = commands.add_parser("token", help="print a connection token (for testing)")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--ttl", type=float, help="seconds until it expires (default: never)")
    token.add_argument("--info", help="JSON shown to others in presence")
    token.add_argument("--channel", help="make a channel token for this private channel")
    token.add_argument("--config", help="TOML file with [auth] secret")

    echo = commands.add_parser("echo", help="run an echo server (every message back)")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=8765)
    echo.add_argument("--tls-cert", help="PEM certificate chain; serves wss://")
    echo.add_argument("--tls-key", help="PEM private key for --tls-cert")
    echo.add_argument("--max-size", type=_size, default=2**20, help="message size limit")
    echo.add_argument(
        "--compress-all",
        action="store_true",
        help="compress every message, however small, when permessage-deflate is agreed",
    )
    echo.add_argument("--no-compression", action="store_true")
    echo.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")

    client = commands.add_parser("connect", help="an interactive client, like wscat")
    client.add_argument("url")
    client.add_argument("--header", action="append", default=[], metavar="K:V")
    client.add_argument("--subprotocol", action="append", default=[])
    client.add_argument("--insecure", action="store_true", help="don't verify certificates")
    return parser


def _static(name: str) -> bytes:
    return importlib.resources.files("backchannel").joinpath("static", name).read_bytes()


async def _echo_handler(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _echo_page(connection: ServerConnection, request: Request) -> Response | None:
    """Serve the demo page at ``/``; let upgrades through."""
    if is_upgrade_request(request):
        return None
    if request.path in ("/", "/index.html") and request.method == "GET":
        response = Response(200, body=_static("echo.html"))
        response.headers.add("Content-Type", "text/html; charset=utf-8")
        return response
    return None


async def _run_echo(args: argparse.Namespace) -> None:
    context = None
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    async with serve(
        _echo_handler,
        args.host,
        args.port,
        ssl=context,
        compression=None if args.no_compression else DeflateConfig(),
        compress_threshold=0 if args.compress_all else 128,
        limits=Limits(max_size=args.max_size),
        process_request=_echo_page,
    ) as server:
        scheme = "https" if context else "http"
        print(f"echo server on {scheme}://{args.host}:{server.port}/", flush=True)
        await _until_signal()
        print("shutting down", flush=True)


async def _run_connect(args: argparse.Namespace) -> int:
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    headers = []
    for header in args.header:
        name, _, value = header.partition(":")
        headers.append((name.strip(), value.strip()))
    try:
        ws = await connect(
            args.url,
            ssl=context,
            additional_headers=headers,
            subprotocols=args.subprotocol or None,
        )
    except InvalidStatus as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.body:
            print(exc.body.decode(errors="replace").rstrip(), file=sys.stderr)
        return 1
    except (BackchannelError, OSError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"connected to {args.url} (Ctrl-D to close)", file=sys.stderr)

    async def printer() -> None:
        async for message in ws:
            if isinstance(message, str):
                print(f"< {message}", flush=True)
            else:
                print(f"< [binary {len(message)} bytes] {message[:64].hex()}", flush=True)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    printing = asyncio.create_task(printer())
    try:
        while not printing.done():
            reading = asyncio.ensure_future(reader.readline())
            await asyncio.wait({reading, printing}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():
                reading.cancel()
                break
            line = reading.result()
            if not line:
                break
            with contextlib.suppress(ConnectionClosed):
                await ws.send(line.decode().rstrip("\n"))
        await ws.close()
        await printing
    except ConnectionClosed:
        pass
    print(f"closed: {ws.close_code} {ws.close_reason or ''}".rstrip(), file=sys.stderr)
    return 0 if ws.close_code in (1000, 1001, 1005) else 1


def _load(args: argparse.Namespace) -> Config:
    try:
        config = load_config(args.config, os.environ)
    except InvalidArgument as exc:
        sys.exit(f"error: {exc}")
    for name in ("host", "port", "tls_cert", "tls_key"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config.server, name, value)
    return config


async def _run_serve(config: Config) -> None:
    app = App(config)
    async with app.run() as server:
        for line in app.banner(server):
            print(line, flush=True)
        await _until_signal()
        print("shutting down", flush=True)


async def _until_signal() -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    await stop


def _token(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.auth.secret:
        print(
            "error: no secret to sign with: set [auth] secret in --config, or "
            "BACKCHANNEL_AUTH_SECRET (the server must use the same one)",
            file=sys.stderr,
        )
        return 2
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except ValueError:
            print("error: --info must be JSON", file=sys.stderr)
            return 2
    print(make_token(config.auth.secret, args.sub, ttl=args.ttl, info=info, channel=args.channel))
    return 0


def _run(main: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``backchannel`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _run(_run_serve(_load(args)), args.loop)
    elif args.command == "token":
        sys.exit(_token(args))
    elif args.command == "echo":
        _run(_run_echo(args), args.loop)
    else:
        sys.exit(asyncio.run(_run_connect(args)))
