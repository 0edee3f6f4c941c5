"""The ``backchannel`` command line: ``serve``, ``token``, ``echo`` and ``connect``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from .app import App, Config, load_config
from .asyncio import ServerConnection, connect, serve
from .exceptions import (
    BackchannelError,
    BrokerUnavailable,
    ConnectionClosed,
    InvalidArgument,
    InvalidStatus,
)
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
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="N processes on one port (SO_REUSEPORT); needs the Redis broker",
    )
    # Set by --workers for its children: bind with SO_REUSEPORT, print one line.
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)

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
    echo.add_argument(
        "--compress-level",
        type=int,
        choices=range(1, 10),
        default=6,
        metavar="1-9",
        help="zlib level for permessage-deflate (default 6; 1 is several times faster)",
    )
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
        compression=None
        if args.no_compression
        else DeflateConfig(compress_level=args.compress_level),
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


async def _run_serve(config: Config, worker: bool = False) -> None:
    app = App(config)
    async with app.run(reuse_port=worker) as server:
        lines = app.banner(server)
        for line in lines[:1] if worker else lines:
            print(line, flush=True)
        await _until_signal()
        print("shutting down", flush=True)


def _serve_workers(args: argparse.Namespace, config: Config) -> int:
    """Run ``--workers N`` children of this command on one port, restart one that dies,
    and stop them all on SIGINT or SIGTERM."""
    if not config.broker.url:
        print(
            "error: --workers needs the Redis broker, or each process would be a hub of "
            "its own: set [broker] url, or BACKCHANNEL_BROKER_URL",
            file=sys.stderr,
        )
        return 2
    # One secret and one API key for all: a token or key must work on every worker.
    env = dict(os.environ)
    env["BACKCHANNEL_AUTH_SECRET"] = config.auth.secret or secrets.token_urlsafe(32)
    env["BACKCHANNEL_API_KEY"] = api_key = config.api.key or secrets.token_urlsafe(24)
    # The port is chosen here (when 0) and held with SO_REUSEPORT, so that every worker
    # binds the same one.
    holder = socket.socket(socket.AF_INET6 if ":" in config.server.host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((config.server.host, config.server.port))
    port = holder.getsockname()[1]
    command = [sys.executable, "-m", "backchannel", "serve", "--worker", "--port", str(port)]
    for flag in ("config", "host", "tls_cert", "tls_key"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    command += ["--loop", args.loop]
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children = [subprocess.Popen(command, env=env) for _ in range(args.workers)]
    scheme = "https" if config.server.tls_cert else "http"
    print(
        f"backchannel on {scheme}://{config.server.host}:{port}/ ({args.workers} workers)",
        flush=True,
    )
    if not config.api.key:
        print(f"HTTP API key (made for this run; set api.key): {api_key}", flush=True)
    try:
        while not stopping:
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    print(
                        f"worker {child.pid} exited ({child.returncode}); restarting",
                        flush=True,
                    )
                    children[i] = subprocess.Popen(command, env=env)
            time.sleep(0.5)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        holder.close()
    print("shutting down", flush=True)
    return 0


async def _until_signal() -> None:
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stopping() -> None:
        # A second signal during the shutdown (an orchestrator that repeats SIGTERM) is
        # the same request: not an error.
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stopping)
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
        config = _load(args)
        if args.workers > 1:
            sys.exit(_serve_workers(args, config))
        try:
            _run(_run_serve(config, args.worker), args.loop)
        except (BrokerUnavailable, InvalidArgument, OSError) as exc:
            # Redis down, a port in use, a missing certificate: say so, no traceback.
            sys.exit(f"error: {exc}")
    elif args.command == "token":
        sys.exit(_token(args))
    elif args.command == "echo":
        _run(_run_echo(args), args.loop)
    else:
        sys.exit(asyncio.run(_run_connect(args)))
