"""What every benchmark server script shares: arguments, the event loop, READY, shutdown.

A server runs until its standard input reaches end of file (the runner holds the other end
of that pipe, so a runner that dies takes its servers with it), or until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable

HOST = "127.0.0.1"
#: Largest message every server accepts: 2 MiB (the bulk workload sends 1 MiB).
MAX_SIZE = 2**21
#: Listen backlog, the same for every server, so opening 200 connections at once works.
BACKLOG = 1024

Main = Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return parser.parse_args()


def ready() -> None:
    """Tell the runner that the server listens."""
    print("READY", flush=True)


def note(text: str) -> None:
    """One line of information for the runner (stderr)."""
    print(text, file=sys.stderr, flush=True)


def _watch_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        is_pipe = False
    if not is_pipe:
        return

    def on_stdin() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            stop.set()

    loop.add_reader(0, on_stdin)


def run(main: Main, args: argparse.Namespace) -> None:
    """Run ``main(args, stop)`` on the chosen loop; ``stop`` is set when it is time to exit."""

    async def wrapper() -> None:
        stop = asyncio.Event()
        _watch_stop(stop)
        await main(args, stop)

    try:
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(wrapper())
        else:
            asyncio.run(wrapper())
    except KeyboardInterrupt:
        pass
