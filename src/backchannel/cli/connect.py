"""``backchannel connect``: a client, interactive or scripted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import ssl
import sys
import threading
from collections.abc import Callable

from ..asyncio import connect
from ..exceptions import (
    BackchannelError,
    ConnectionClosed,
    InvalidStatus,
)

CONNECT_HELP = """\
Each line of standard input is sent as a text message; each message received is printed
on standard output ("< text", or "< [binary N bytes] HEX"); notices go to standard error.
At the end of the input (Ctrl-D, or the end of a file or pipe), connect waits until it
has received at least as many messages as it sent lines, or until --wait seconds have
passed, then closes with 1000. Exit status: 0 after a normal close, 1 otherwise.

  printf 'hello\\nworld\\n' | backchannel connect ws://127.0.0.1:8765/
"""


def stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes | None]:
    """Lines of standard input, then None at its end. A thread reads them: it works
    alike for a terminal, a pipe, a file and /dev/null (an event loop's pipe transport
    takes none of the last two), and as a daemon it never holds up the exit."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads anymore
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        stream = sys.stdin.buffer if sys.stdin is not None else None
        try:
            while stream is not None and (line := stream.readline()):
                put(line)
        except (OSError, ValueError):  # standard input closed or unreadable: its end
            pass
        put(None)

    threading.Thread(target=read, name="backchannel-stdin", daemon=True).start()
    return queue


async def run_connect(args: argparse.Namespace) -> int:
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    headers = []
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            print(f"error: --header {header!r}: write it as NAME:VALUE", file=sys.stderr)
            return 2
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
    except (socket.gaierror, ConnectionRefusedError) as exc:
        # The system's words name neither the host nor the port: the URL does.
        print(f"error: cannot connect to {args.url}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except (BackchannelError, OSError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    interactive = sys.stdin is not None and sys.stdin.isatty()
    hint = " (Ctrl-D to close)" if interactive else ""
    print(f"connected to {args.url}{hint}", file=sys.stderr, flush=True)

    received = 0
    progress = asyncio.Event()

    async def printer() -> None:
        nonlocal received
        async for message in ws:
            if isinstance(message, str):
                print(f"< {message}", flush=True)
            else:
                print(f"< [binary {len(message)} bytes] {message[:64].hex()}", flush=True)
            received += 1
            progress.set()

    loop = asyncio.get_running_loop()
    lines = stdin_lines(loop)
    printing = asyncio.create_task(printer())
    sent = 0

    def answered() -> bool:
        return received >= sent

    try:
        while not printing.done():
            reading = asyncio.ensure_future(lines.get())
            await asyncio.wait({reading, printing}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # the server closed
                reading.cancel()
                break
            line = reading.result()
            if line is None:
                await replies(printing, progress, answered, args.wait)
                break
            with contextlib.suppress(ConnectionClosed):
                await ws.send(line.decode(errors="replace").rstrip("\r\n"))
                sent += 1
        await ws.close()
        await printing
    except ConnectionClosed:
        pass
    print(f"closed: {ws.close_code} {ws.close_reason or ''}".rstrip(), file=sys.stderr)
    return 0 if ws.close_code in (1000, 1001, 1005) else 1


async def replies(
    printing: asyncio.Task[None], progress: asyncio.Event, done: Callable[[], bool], seconds: float
) -> None:
    """Wait until ``done()``, the connection ends, or ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not done() and not printing.done() and loop.time() < deadline:
        progress.clear()
        waiting = asyncio.ensure_future(progress.wait())
        await asyncio.wait(
            {waiting, printing},
            timeout=deadline - loop.time(),
            return_when=asyncio.FIRST_COMPLETED,
        )
        waiting.cancel()
