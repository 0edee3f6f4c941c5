"""Held SSE streams beside WebSocket subscribers on one server: what each costs, and how
fast one publication reaches all of them.

``python -m benchmarks.sse [--sessions N] [--publications K] [--idle S] [--quick]
[--json FILE]``. One hub server process (``Hub`` with the memory broker,
``backchannel.asyncio.serve`` with ``ServerSentEvents`` as ``process_request``, on
uvloop, pinned to the first CPU) and this process as the load generator (raw asyncio
protocols on uvloop, pinned to the second CPU; the WebSocket client and most of the
machinery are benchmarks.longpoll's):

1. A baseline of 10 streams and 10 WebSocket subscribers; then N SSE streams (``GET
   /sse?frame=connect+subscribe``, chunked event stream read by hand), then N WebSocket
   subscribers, all to ``bench:all``, 200 opening at a time. The server's RSS is read
   after each step: the growth over a step, divided by its sessions, is one session's
   cost.
2. The server's CPU time over an idle window with all 2N held (the SSE heartbeat, a
   comment every 15 s per stream, is on, as in production).
3. K publications, one at a time, through ``Hub.publish`` in the server process: the
   server stamps the monotonic clock before the call, the generator stamps each delivery
   on arrival (one clock for both processes), per transport. The next publication waits
   until every session of both transports has the last one.

The generator's CPU share during the deliveries is printed beside the server's: a star
marks a run where it was 90% busy or more (then it may be the limit, not the server).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from backchannel.asyncio import serve
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.transports.sse import ServerSentEvents
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol import speedups

from .fanout import (
    BenchError,
    cpu_model,
    emit,
    loop_name,
    pin,
    raise_open_files,
    run_child,
    stdin_reader,
)
from .loadgen import WorkloadError
from .longpoll import (
    CHANNEL,
    HOST,
    MAX_HEAD,
    OPEN_COMMANDS,
    OPEN_CONCURRENCY,
    SPARE_FDS,
    BenchClient,
    Clocks,
    GcClock,
    ServerProcess,
    Tally,
    WsClient,
    delivered,
    note,
)

ROOT = Path(__file__).resolve().parent.parent
PATH = "/sse"
BASELINE_SESSIONS = 10
#: Seconds between status requests while waiting for the server's subscriber count.
STATUS_INTERVAL = 0.01
CLIENT_BOUND = 0.9


# --- the server process -------------------------------------------------------------------


async def server_main(args: argparse.Namespace) -> None:
    options = HubOptions(
        anonymous=True,
        namespaces={"bench": ChannelOptions()},
        max_connections_per_user=2 * args.sessions + 10 * BASELINE_SESSIONS,
    )
    reader = await stdin_reader()
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    hub = Hub(options)
    sse = ServerSentEvents(hub, path=PATH)
    async with (
        hub,
        serve(
            websocket_handler(hub),
            HOST,
            0,
            process_request=sse,
            compression=None,
            ping_interval=None,
        ) as server,
    ):
        emit(event="ready", port=server.port, loop=loop_name(), speedups=speedups.ACTIVE)
        while True:
            try:
                async with asyncio.timeout(args.idle + 2 * args.timeout):
                    line = await reader.readline()
            except TimeoutError:
                raise BenchError("no command from the driver") from None
            if not line:
                return
            command = json.loads(line)
            name = command["cmd"]
            if name == "quit":
                return
            if name == "status":
                emit(
                    event="status",
                    sessions=len(hub.sessions),
                    subscribers=hub.channels().get(CHANNEL, 0),
                    streams=sse.streams(),
                    **gc_clock.fields(),
                )
            elif name == "publish":
                i = command["i"]
                gc_clock.longest_ns = 0
                start = time.monotonic_ns()
                await hub.publish(CHANNEL, {"n": i})
                emit(event="published", i=i, t0_ns=start, publish_ns=time.monotonic_ns() - start)
            else:
                raise BenchError(f"unknown command {name!r}")


# --- the load generator -------------------------------------------------------------------


class SseClient(BenchClient):
    """An SSE session: one GET, then a chunked event stream decoded by hand."""

    def __init__(self, tally: Tally, port: int) -> None:
        super().__init__(tally, port)
        self.head_done = False
        #: The decoded body not yet split into events.
        self.events = bytearray()
        self.heartbeats = 0

    def start(self) -> None:
        assert self.transport is not None
        target = f"{PATH}?frame={quote(OPEN_COMMANDS)}"
        self.transport.write(
            f"GET {target} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )

    def receive(self, now: int) -> None:
        buffer = self.buffer
        if not self.head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BenchError("HTTP response head too long")
                return
            head = bytes(buffer[:end]).lower()
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                raise BenchError(f"stream refused: {head[:120]!r}")
            del buffer[: end + 4]
            self.head_done = True
        # Chunks: "<hex size>\r\n<data>\r\n".
        pos = 0
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                break
            size = int(buffer[pos:line_end], 16)
            end = line_end + 2 + size + 2
            if len(buffer) < end:
                break
            if size == 0:
                raise BenchError("a stream ended")
            self.events += buffer[line_end + 2 : end - 2]
            pos = end
        del buffer[:pos]
        events = self.events
        start = 0
        while True:
            end = events.find(b"\n\n", start)
            if end < 0:
                break
            self.event(bytes(events[start:end]), now)
            start = end + 2
        del events[:start]

    def event(self, event: bytes, now: int) -> None:
        data = None
        session = False
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                data = line[6:]
            elif line == b"event: session":
                session = True
            elif line.startswith(b":"):
                self.heartbeats += 1
        if data is not None and not session:
            self.line(json.loads(data), now)


class SseServer(ServerProcess):
    @classmethod
    async def start(cls, args: argparse.Namespace, cpu: int | None) -> SseServer:
        argv = ["--role", "server", "--sessions", str(args.sessions)]
        argv += ["--idle", str(args.idle), "--timeout", str(args.timeout)]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.sse",
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        return cls("server", proc)


async def open_sessions(
    factory: Callable[[Tally, int], BenchClient], tally: Tally, port: int, count: int, limit: float
) -> None:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> None:
        async with gate:
            _, client = await loop.create_connection(lambda: factory(tally, port), HOST, port)
            await asyncio.shield(client.ready)

    opening = asyncio.gather(*(one() for _ in range(count)))
    try:
        async with asyncio.timeout(limit):
            await asyncio.wait({opening, tally.error}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise BenchError(f"{count} sessions did not all subscribe within {limit:g} s") from None
    finally:
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, BenchError, OSError):
                await opening
    if tally.error.done():
        tally.error.result()
    opening.result()


async def settle(server: ServerProcess, subscribers: int, limit: float) -> dict[str, Any]:
    """Wait until the server counts ``subscribers`` on the channel."""
    async with asyncio.timeout(limit):
        while True:
            status = await server.status(limit)
            if status["subscribers"] == subscribers:
                return status
            await asyncio.sleep(STATUS_INTERVAL)


@dataclass
class Result:
    sessions: int
    publications: int
    loop: str = ""
    speedups: bool = False
    rss_fresh_kib: int = 0
    rss_base_kib: int = 0
    rss_sse_kib: int = 0
    rss_full_kib: int = 0
    open_sse_s: float = 0.0
    open_ws_s: float = 0.0
    idle_s: float = 0.0
    idle_server_cpu_s: float = 0.0
    other_load_idle_pct: float = 0.0
    heartbeats: int = 0
    publish_ms: list[float] = field(default_factory=list)
    #: Per transport: median and last arrival of each publication, from Hub.publish.
    t50_ms: dict[str, list[float]] = field(default_factory=lambda: {"sse": [], "websocket": []})
    tlast_ms: dict[str, list[float]] = field(default_factory=lambda: {"sse": [], "websocket": []})
    delivery_wall_s: float = 0.0
    delivery_server_cpu_s: float = 0.0
    delivery_generator_cpu_s: float = 0.0
    other_load_publications_pct: float = 0.0

    def kib_per(self, transport: str) -> float:
        n = self.sessions - BASELINE_SESSIONS
        if transport == "sse":
            return (self.rss_sse_kib - self.rss_base_kib) / n
        return (self.rss_full_kib - self.rss_sse_kib) / n


async def run(args: argparse.Namespace, cpus: tuple[int | None, int | None]) -> Result:
    n, k = args.sessions, args.publications
    result = Result(n, k)
    tallies = {"sse": Tally(n, k), "websocket": Tally(n, k)}
    clients: dict[str, Callable[[Tally, int], BenchClient]] = {
        "sse": SseClient,
        "websocket": WsClient,
    }
    server = await SseServer.start(args, cpus[0])
    opened: list[SseClient] = []

    def sse_client(tally: Tally, port: int) -> BenchClient:
        client = SseClient(tally, port)
        opened.append(client)
        return client

    clients["sse"] = sse_client
    try:
        ready = await server.expect("ready", "listening port", args.timeout)
        result.loop, result.speedups = ready["loop"], ready["speedups"]
        port = ready["port"]
        result.rss_fresh_kib = server.rss()
        for kind in ("sse", "websocket"):
            await open_sessions(clients[kind], tallies[kind], port, BASELINE_SESSIONS, args.timeout)
        await settle(server, 2 * BASELINE_SESSIONS, args.timeout)
        result.rss_base_kib = server.rss()
        for kind in ("sse", "websocket"):
            note(f"opening {n - BASELINE_SESSIONS} {kind} sessions")
            start = time.monotonic()
            count = n - BASELINE_SESSIONS
            await open_sessions(clients[kind], tallies[kind], port, count, args.timeout)
            subscribers = n + BASELINE_SESSIONS if kind == "sse" else 2 * n
            await settle(server, subscribers, args.timeout)
            if kind == "sse":
                result.open_sse_s = time.monotonic() - start
                result.rss_sse_kib = server.rss()
            else:
                result.open_ws_s = time.monotonic() - start
                result.rss_full_kib = server.rss()

        note(f"{2 * n} sessions open; idle for {args.idle:g} s")
        beats = sum(client.heartbeats for client in opened)
        start_idle = Clocks.read(server)
        await asyncio.sleep(args.idle)
        end_idle = Clocks.read(server)
        result.idle_server_cpu_s = end_idle.server - start_idle.server
        result.idle_s = end_idle.wall - start_idle.wall
        result.other_load_idle_pct = start_idle.others_pct(end_idle)
        result.heartbeats = sum(client.heartbeats for client in opened) - beats
        for tally in tallies.values():
            if tally.error.done():
                tally.error.result()

        note(f"{k} publications")
        gc.collect()
        gc.disable()
        start_publications = Clocks.read(server)
        for i in range(k):
            server_cpu0, gen_cpu0, wall0 = server.cpu(), time.process_time(), time.monotonic()
            await server.send(cmd="publish", i=i)
            published = await server.expect("published", f"publication {i}", args.timeout)
            for tally in tallies.values():
                await delivered(tally, i, args.timeout)
            result.delivery_wall_s += time.monotonic() - wall0
            result.delivery_server_cpu_s += server.cpu() - server_cpu0
            result.delivery_generator_cpu_s += time.process_time() - gen_cpu0
            t0 = published["t0_ns"]
            result.publish_ms.append(published["publish_ns"] / 1e6)
            for kind, tally in tallies.items():
                arrivals = [stamp - t0 for stamp in tally.arrivals[i]]
                result.t50_ms[kind].append(statistics.median(arrivals) / 1e6)
                result.tlast_ms[kind].append(max(arrivals) / 1e6)
        result.other_load_publications_pct = start_publications.others_pct(Clocks.read(server))
        for tally in tallies.values():
            tally.close()
        await server.send(cmd="quit")
        await server.stop(args.timeout)
        return result
    finally:
        gc.enable()
        for tally in tallies.values():
            tally.close()
        server.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.proc.wait()


def med_max(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def report(args: argparse.Namespace, result: Result, pinned: bool, generator_loop: str) -> None:
    r = result
    compiled = "on" if r.speedups else "off"
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; server on {r.loop}, generator on "
        f"{generator_loop}; compiled speedups {compiled}"
        + ("" if pinned else "; processes not pinned")
    )
    print(
        f"{args.sessions} SSE streams and {args.sessions} WebSocket subscribers on one server, "
        f"{args.publications} publications one at a time, {args.idle:g} s idle window"
    )
    print()
    print(
        "| transport | open, s | KiB per session | publication reaches 50% / 100%, ms (median) "
        "| 100%, worst, ms |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, label, opened in (
        ("sse", "SSE stream", r.open_sse_s),
        ("websocket", "WebSocket", r.open_ws_s),
    ):
        t50 = statistics.median(r.t50_ms[kind])
        tlast = statistics.median(r.tlast_ms[kind])
        print(
            f"| {label} | {opened:.1f} | {r.kib_per(kind):.1f} | {t50:.0f} / {tlast:.0f} "
            f"| {max(r.tlast_ms[kind]):.0f} |"
        )
    print()
    bound = r.delivery_generator_cpu_s >= CLIENT_BOUND * r.delivery_wall_s
    print(
        f"Server RSS: {r.rss_fresh_kib / 1024:.1f} MiB fresh, {r.rss_base_kib / 1024:.1f} with "
        f"the baseline, {r.rss_sse_kib / 1024:.1f} with the streams, "
        f"{r.rss_full_kib / 1024:.1f} with both."
    )
    print(
        f"Idle, {2 * args.sessions} sessions: server CPU "
        f"{100 * r.idle_server_cpu_s / r.idle_s:.1f}% of a core over {r.idle_s:.1f} s "
        f"({r.heartbeats} heartbeat comments received in the window)."
    )
    print(
        f"During deliveries (both transports together): server "
        f"{100 * r.delivery_server_cpu_s / r.delivery_wall_s:.0f}%, generator "
        f"{100 * r.delivery_generator_cpu_s / r.delivery_wall_s:.0f}% of a core"
        + (" (*: the generator may be the limit)" if bound else "")
        + f"; Hub.publish {statistics.median(r.publish_ms):.1f} ms (median)."
    )
    worst = max(r.other_load_idle_pct, r.other_load_publications_pct)
    if worst >= 10:
        print(
            f"Warning: other processes used {r.other_load_idle_pct:.0f}% of a core while idle "
            f"and {r.other_load_publications_pct:.0f}% during the publications."
        )
    if args.json:
        data = {"options": vars(args), "result": r.__dict__}
        Path(args.json).write_text(json.dumps(data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sse", description=__doc__)
    parser.add_argument("--sessions", type=int, default=None, help="per transport (5000)")
    parser.add_argument("--publications", type=int, default=None, help="measured (default 20)")
    parser.add_argument("--idle", type=float, default=None, help="idle window, s (default 10)")
    parser.add_argument("--quick", action="store_true", help="500 sessions, 5 publications, 2 s")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per phase (60)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--role", choices=("driver", "server"), default="driver")
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sessions is None:
        args.sessions = 500 if args.quick else 5000
    if args.publications is None:
        args.publications = 5 if args.quick else 20
    if args.idle is None:
        args.idle = 2.0 if args.quick else 10.0
    if args.sessions <= BASELINE_SESSIONS or args.publications < 1:
        parser.error(f"--sessions must be > {BASELINE_SESSIONS}, --publications >= 1")

    if args.role == "server":
        raise_open_files()
        pin(args.cpu)
        run_child(server_main(args))
        return
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
        generator_loop = f"uvloop {metadata.version('uvloop')}"
    except ImportError:
        factory, generator_loop = None, "asyncio"
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus: tuple[int | None, int | None] = (None, None)
    if len(allowed) >= 2 and not args.no_pin:
        cpus = (allowed[0], allowed[1])
    try:
        raise_open_files()
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 2 * args.sessions + SPARE_FDS
        if soft != resource.RLIM_INFINITY and need > soft:
            raise BenchError(f"{2 * args.sessions} sessions need {need} files; the limit is {soft}")
        pin(cpus[1])
        with asyncio.Runner(loop_factory=factory) as runner:
            result = runner.run(run(args, cpus))
        report(args, result, cpus[0] is not None, generator_loop)
        code = 0
    except (BenchError, WorkloadError, OSError) as exc:
        print(f"sse: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("sse: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
