"""Held long polls: what N of them cost the server, and how fast a publication reaches them.

``python -m benchmarks.longpoll [--sessions N] [--publications K] [--idle S] [--quick]
[--json FILE]``. For each transport (long polling, then WebSocket for comparison) a fresh
hub server process (``Hub`` with the memory broker, ``backchannel.asyncio.serve`` with
``LongPoll`` as ``process_request``, on uvloop, pinned to the first CPU) and this process
as the load generator (raw asyncio protocols, pinned to the second CPU):

1. N sessions are opened, 200 at a time. Long polling: ``POST /lp`` with ``connect`` and
   ``subscribe`` to ``bench:all``, then ``GET /lp?sid=..&ack=..`` until both replies are
   in, then one more GET that the server holds: one TCP connection per session, HTTP/1.1
   keep-alive written by hand. WebSocket: the same two commands in one frame.
2. The server's RSS (``/proc/<pid>/status``) is read before the sessions (fresh, and with
   10 sessions as a baseline) and once the server itself reports all N polls held
   (``LongPollTransport._waiter`` pending) or all N subscribers; the growth over the
   baseline, divided by N - 10, is the cost of one held poll.
3. Its CPU time (``/proc/<pid>/stat``, 10 ms ticks) is read around an idle window.
4. K publications, one at a time, each through ``Hub.publish`` in the server process
   (what a backend's HTTP API does): the server stamps the monotonic clock just before
   the call, the generator stamps each delivery as it arrives (the same system-wide
   clock), and the next publication waits until every poll has been answered, re-sent
   with the new ack and is held again, so each figure is one isolated fan-out. A
   long-poll client re-polls as soon as it has its answer, as a browser does, so the
   server handles the first re-polls while it is still answering the last polls.
5. The server times its cyclic GC's pauses (``gc.callbacks``) and reports them per cycle:
   they explain most of the gap between the median and the max.

The generator runs on uvloop when it is installed, like the server, and stamps arrivals
in Python: its own delay is part of each figure, and its CPU share during the deliveries
is printed next to the server's so that it can be seen not to be the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from backchannel.asyncio import serve
from backchannel.cli.serve import freeze_startup_objects
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.transports.longpoll import LongPoll
from backchannel.hub.transports.websocket import websocket_handler
from backchannel.protocol import speedups

from .fanout import (
    WS_GUID,
    BenchError,
    Child,
    client_text_frame,
    cpu_model,
    emit,
    loop_name,
    pin,
    raise_open_files,
    run_child,
    stdin_reader,
)
from .loadgen import WorkloadError, process_cpu, rss_kib

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PATH = "/lp"
CHANNEL = "bench:all"
TRANSPORTS = ("longpoll", "websocket")
#: Sessions opening at the same time: enough to be quick, few enough that the listen
#: backlog (511) never overflows and no connect waits for a SYN retry.
OPEN_CONCURRENCY = 200
#: Sessions open when the baseline RSS is read, so that what the first session allocates
#: once (imports, caches, the first task) is not charged to every held poll.
BASELINE_SESSIONS = 10
#: File descriptors kept free for the loop, the pipes and the interpreter.
SPARE_FDS = 100
#: Longest HTTP response head the generator accepts.
MAX_HEAD = 16 * 1024
#: Seconds between two status requests while waiting for the server to hold every poll:
#: the first, doubled each time up to the second.
STATUS_INTERVAL = 0.005
MAX_STATUS_INTERVAL = 0.1
FIN_TEXT = 0x81  # the first byte of a whole text frame
OPCODE_CLOSE = 0x8
#: The generator counts as the bottleneck of a delivery from this share of its core on.
CLIENT_BOUND = 0.9
#: CPU used by other processes, in % of one core, from which the report warns.
OTHER_LOAD_WARNING = 10.0

#: What a session sends first: the same two commands over both transports.
OPEN_COMMANDS = "\n".join(
    [
        json.dumps({"id": 1, "method": "connect"}),
        json.dumps({"id": 2, "method": "subscribe", "params": {"channel": CHANNEL}}),
    ]
)


# --- the server process -------------------------------------------------------------------


def held_polls(long_poll: LongPoll) -> int:
    """Sessions whose poll is parked on its future right now. A private attribute, read
    only: the generator has no other way to know that a GET it wrote is held, and a
    publication made before that would be delivered by the re-poll instead."""
    return sum(
        1
        for transport in long_poll.sessions.values()
        if transport._waiter is not None and not transport._waiter.done()
    )


class GcClock:
    """Pauses of the cyclic garbage collector in the server (``gc.callbacks``): with N
    sessions' objects alive, a full collection is long enough to show in the figures."""

    def __init__(self) -> None:
        self.total_ns = 0
        self.full = 0
        #: The longest pause since the last publish command, in wall-clock time and in
        #: this thread's CPU time (which other processes on a busy machine do not inflate).
        self.longest_ns = 0
        self.longest_cpu_ns = 0
        self._start = 0
        self._start_cpu = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter_ns()
            self._start_cpu = time.thread_time_ns()
            return
        pause = time.perf_counter_ns() - self._start
        self.total_ns += pause
        self.longest_ns = max(self.longest_ns, pause)
        self.longest_cpu_ns = max(self.longest_cpu_ns, time.thread_time_ns() - self._start_cpu)
        if info["generation"] == 2:
            self.full += 1

    def fields(self) -> dict[str, int]:
        return {
            "gc_ns": self.total_ns,
            "gc_full": self.full,
            "gc_longest_ns": self.longest_ns,
            "gc_longest_cpu_ns": self.longest_cpu_ns,
            # What a full collection walks (frozen objects are left out).
            "gc_tracked": len(gc.get_objects()),
        }


async def server_main(args: argparse.Namespace) -> None:
    options = HubOptions(
        anonymous=True,
        namespaces={"bench": ChannelOptions()},
        # Anonymous sessions share the user "" (not limited today); keep it so if that
        # changes, rather than measure refused connects.
        max_connections_per_user=args.sessions + 10,
    )
    reader = await stdin_reader()
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    hub = Hub(options)
    # The poll timeout outlasts the whole run, so a poll is only ever answered by a
    # publication; the generator fails on an empty answer instead of counting it.
    long_poll = LongPoll(hub, path=PATH, poll_timeout=args.poll_timeout)
    # No pings (they would wake every WebSocket connection during the idle window) and no
    # compression (the raw clients do not offer it anyway): both transports served as in
    # benchmarks.fanout.
    async with (
        hub,
        serve(
            websocket_handler(hub),
            HOST,
            0,
            process_request=long_poll,
            compression=None,
            ping_interval=None,
        ) as server,
    ):
        if not args.no_freeze:
            # What `backchannel serve` does once it listens.
            freeze_startup_objects()
        emit(event="ready", port=server.port, loop=loop_name(), speedups=speedups.ACTIVE)
        while True:
            try:
                # The driver is silent for the idle window and while sessions open.
                async with asyncio.timeout(args.idle + 2 * args.timeout):
                    line = await reader.readline()
            except TimeoutError:
                raise BenchError("no command from the driver") from None
            if not line:
                return  # the driver is gone
            command = json.loads(line)
            name = command["cmd"]
            if name == "quit":
                return
            if name == "status":
                emit(
                    event="status",
                    sessions=len(hub.sessions),
                    subscribers=hub.channels().get(CHANNEL, 0),
                    held=held_polls(long_poll),
                    **gc_clock.fields(),
                )
            elif name == "publish":
                i = command["i"]
                gc_clock.longest_ns = 0
                gc_clock.longest_cpu_ns = 0
                # time.monotonic is CLOCK_MONOTONIC on Linux: one clock for every process,
                # so the generator can subtract this from its own stamps.
                start = time.monotonic_ns()
                await hub.publish(CHANNEL, {"n": i})
                emit(event="published", i=i, t0_ns=start, publish_ns=time.monotonic_ns() - start)
            else:
                raise BenchError(f"unknown command {name!r}")


# --- the load generator: clients ---------------------------------------------------------


class Tally:
    """State shared by the N clients: the first failure, and when each delivery arrived."""

    def __init__(self, sessions: int, publications: int) -> None:
        loop = asyncio.get_running_loop()
        self.sessions = sessions
        self.error: asyncio.Future[None] = loop.create_future()
        #: Monotonic arrival stamps (ns) of each publication, one per session.
        self.arrivals: list[list[int]] = [[] for _ in range(publications)]
        self.complete: list[asyncio.Future[None]] = [
            loop.create_future() for _ in range(publications)
        ]
        self.transports: list[asyncio.Transport] = []
        self.live = 0
        self.closing = False

    def fail(self, message: str) -> None:
        if not self.error.done():
            self.error.set_exception(BenchError(message))

    def delivered(self, i: int, now: int) -> None:
        if not 0 <= i < len(self.arrivals):
            self.fail(f"publication {i} was never published")
            return
        arrivals = self.arrivals[i]
        arrivals.append(now)
        if len(arrivals) == self.sessions:
            self.complete[i].set_result(None)

    def close(self) -> None:
        self.closing = True
        if self.error.done():
            # Mark it retrieved: the run is ending on this error or on an earlier one.
            self.error.exception()
        # abort: no FIN handshake to wait for and no TIME_WAIT sockets left behind for the
        # next transport's 5 000 connections.
        for transport in self.transports:
            transport.abort()


class BenchClient(asyncio.Protocol):
    """One session: sends connect + subscribe, then checks and stamps what it receives.

    Protocols rather than streams: a delivery is one callback, not a task waking up, so
    the generator's cost per delivery stays well under the server's.
    """

    def __init__(self, tally: Tally, port: int) -> None:
        self.tally = tally
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.replies: set[int] = set()
        self.next = 0  # the publication expected next
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.tally.transports.append(self.transport)
        self.start()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.tally.closing:
            self.fail(f"a connection was lost: {exc or 'closed by the server'}")

    def data_received(self, data: bytes) -> None:
        # Stamped before any parsing: the delivery time is when the bytes reached us.
        now = time.monotonic_ns()
        if self.tally.closing:
            return
        # An exception here would only be logged by the loop: fail the run instead.
        try:
            self.buffer += data
            self.receive(now)
        except Exception as exc:
            self.fail(f"{type(exc).__name__} on {bytes(data[:80])!r}: {exc}")

    def fail(self, message: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(BenchError(message))
        self.tally.fail(message)
        if self.transport is not None:
            self.transport.abort()

    def line(self, obj: dict[str, Any], now: int) -> None:
        """One wire line: a reply while subscribing, then only publications."""
        if obj.get("push") == "publication" and self.ready.done():
            n = obj["data"]["n"]
            if obj["channel"] != CHANNEL or n != self.next:
                raise BenchError(f"publication {n} on {obj['channel']}, expected {self.next}")
            self.next += 1
            self.tally.delivered(n, now)
        elif obj.get("id") in (1, 2) and "result" in obj and not self.ready.done():
            self.replies.add(obj["id"])
            if len(self.replies) == 2:
                self.tally.live += 1
                self.ready.set_result(None)
        else:
            raise BenchError(f"unexpected line {json.dumps(obj)[:120]}")

    def start(self) -> None:
        raise NotImplementedError

    def receive(self, now: int) -> None:
        raise NotImplementedError


def content_length(head: bytes) -> int:
    for header in head.split(b"\r\n")[1:]:
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise BenchError(f"a response without Content-Length: {head[:120]!r}")


class PollClient(BenchClient):
    """A long-polling session on one kept-alive connection: at most one request is out at
    any time (the open, then always the next poll)."""

    def __init__(self, tally: Tally, port: int) -> None:
        super().__init__(tally, port)
        self.sid: bytes | None = None
        self.ack = 0
        self.host = f"Host: {HOST}:{port}\r\n".encode()

    def start(self) -> None:
        body = OPEN_COMMANDS.encode()
        head = b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n"
        self._write(head % (PATH.encode(), self.host, len(body)) + body)

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def poll(self) -> None:
        assert self.sid is not None
        request = b"GET %s?sid=%s&ack=%d HTTP/1.1\r\n%s\r\n"
        self._write(request % (PATH.encode(), self.sid, self.ack, self.host))

    def receive(self, now: int) -> None:
        buffer = self.buffer
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BenchError("HTTP response head too long")
                return
            head = bytes(buffer[:end])
            size = end + 4 + content_length(head)
            if len(buffer) < size:
                return
            body = bytes(buffer[end + 4 : size])
            del buffer[:size]
            self.response(int(head[9:12]), body, now)

    def response(self, status: int, body: bytes, now: int) -> None:
        if status != 200:
            raise BenchError(f"HTTP {status}: {body[:120]!r}")
        if self.sid is None:
            self.sid = json.loads(body)["sid"].encode()
            self.poll()
            return
        first, _, rest = body.partition(b"\n")
        batch = json.loads(first)["batch"]
        if not rest:
            raise BenchError("a poll was answered empty: it was held past the poll timeout")
        if batch <= self.ack:
            raise BenchError(f"batch {batch} sent again after ack {self.ack}")
        self.ack = batch
        for text in rest.split(b"\n"):
            self.line(json.loads(text), now)
        # The next poll goes out at once, with the new ack: this is what a browser does.
        self.poll()


class WsClient(BenchClient):
    """A WebSocket session: handshake, one frame with both commands, then frames."""

    def __init__(self, tally: Tally, port: int) -> None:
        super().__init__(tally, port)
        self.key = base64.b64encode(os.urandom(16))
        self.upgraded = False

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"GET / HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (HOST.encode(), self.port, self.key)
        )

    def receive(self, now: int) -> None:
        buffer = self.buffer
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise BenchError("HTTP response head too long")
                return
            head = bytes(buffer[:end]).lower()
            del buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).lower()
            if not head.startswith(b"http/1.1 101") or accept not in head:
                raise BenchError(f"handshake refused: {head[:80]!r}")
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(client_text_frame(OPEN_COMMANDS))
        pos = 0
        # Each pass consumes one whole frame or stops; the server sends small unmasked
        # text frames, and anything else (a close) ends the run.
        while len(buffer) - pos >= 2:
            first, second = buffer[pos], buffer[pos + 1]
            size = second & 0x7F
            head_size = {126: 4, 127: 10}.get(size, 2)
            if len(buffer) - pos < head_size:
                break
            if head_size > 2:
                size = int.from_bytes(buffer[pos + 2 : pos + head_size], "big")
            end = pos + head_size + size
            if end > len(buffer):
                break
            payload = bytes(buffer[pos + head_size : end])
            if first != FIN_TEXT or second & 0x80:
                if first & 0x0F == OPCODE_CLOSE and size >= 2:
                    code = int.from_bytes(payload[:2], "big")
                    raise BenchError(f"the server closed a connection with {code}")
                raise BenchError(f"unexpected frame, first bytes {first:#04x} {second:#04x}")
            for text in payload.split(b"\n"):
                self.line(json.loads(text), now)
            pos = end
        del buffer[:pos]


CLIENTS: dict[str, Callable[[Tally, int], BenchClient]] = {
    "longpoll": PollClient,
    "websocket": WsClient,
}


# --- the load generator: driving one transport --------------------------------------------


@dataclass
class Result:
    """The figures of one transport; times in ms, memory in KiB, CPU in seconds."""

    transport: str
    sessions: int
    publications: int
    loop: str = ""
    speedups: bool = False
    setup_s: float = 0.0
    rss_fresh_kib: int = 0
    rss_base_kib: int = 0
    rss_full_kib: int = 0
    rss_end_kib: int = 0
    idle_s: float = 0.0
    idle_server_cpu_s: float = 0.0
    #: Per publication: ``Hub.publish`` in the server, and the median and last delivery
    #: after the publish call.
    publish_ms: list[float] = field(default_factory=list)
    t50_ms: list[float] = field(default_factory=list)
    tlast_ms: list[float] = field(default_factory=list)
    #: Wall and CPU time over the deliveries (publish command to last arrival), and server
    #: CPU over whole cycles (to every poll held again: deliveries, re-polls, status).
    delivery_wall_s: float = 0.0
    delivery_server_cpu_s: float = 0.0
    delivery_generator_cpu_s: float = 0.0
    cycle_server_cpu_s: float = 0.0
    #: Per cycle: the server's time in the cyclic GC, its full (generation 2)
    #: collections, and its longest pause.
    gc_ms: list[float] = field(default_factory=list)
    gc_full: list[int] = field(default_factory=list)
    gc_longest_ms: list[float] = field(default_factory=list)
    gc_longest_cpu_ms: list[float] = field(default_factory=list)
    #: Objects the server's collector tracks after each cycle.
    gc_tracked: list[int] = field(default_factory=list)
    #: CPU used by other processes, % of one core, over the idle window and over the
    #: publications: the server and the generator must have their CPUs to themselves.
    other_load_idle_pct: float = 0.0
    other_load_publications_pct: float = 0.0

    @property
    def kib_per_session(self) -> float:
        return (self.rss_full_kib - self.rss_base_kib) / (self.sessions - BASELINE_SESSIONS)

    @property
    def idle_pct(self) -> float:
        return 100 * self.idle_server_cpu_s / self.idle_s

    @property
    def deliveries_per_s(self) -> float:
        return self.sessions / (statistics.median(self.tlast_ms) / 1e3)

    @property
    def client_bound(self) -> bool:
        return self.delivery_generator_cpu_s >= CLIENT_BOUND * self.delivery_wall_s

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            kib_per_session=self.kib_per_session,
            idle_server_cpu_pct=self.idle_pct,
            deliveries_per_s=self.deliveries_per_s,
            client_bound=self.client_bound,
        )
        return out


class ServerProcess(Child):
    """The hub server, a child process driven over JSON lines (benchmarks.fanout's)."""

    @classmethod
    async def start(cls, args: argparse.Namespace, cpu: int | None) -> ServerProcess:
        argv = [
            "--role",
            "server",
            "--sessions",
            str(args.sessions),
            "--idle",
            str(args.idle),
            "--timeout",
            str(args.timeout),
            "--poll-timeout",
            str(args.poll_timeout),
        ]
        if cpu is not None:
            argv += ["--cpu", str(cpu)]
        if args.no_freeze:
            argv.append("--no-freeze")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.longpoll",
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            # Ctrl-C reaches the driver only, which then ends the server.
            start_new_session=True,
        )
        return cls("server", proc)

    def _read(self, read: Callable[[int], Any]) -> Any:
        try:
            return read(self.proc.pid)
        except OSError:
            raise BenchError(f"the server exited (code {self.proc.returncode})") from None

    def cpu(self) -> float:
        """CPU seconds used so far, from /proc: the server is not asked, so not woken."""
        return float(self._read(process_cpu))

    def rss(self) -> int:
        return int(self._read(rss_kib))

    async def status(self, limit: float) -> dict[str, Any]:
        await self.send(cmd="status")
        return await self.expect("status", "status", limit)


async def settle(
    server: ServerProcess, kind: str, tally: Tally, n: int, limit: float
) -> dict[str, Any]:
    """Wait until the server has n subscribers and, for long polling, holds n polls."""
    deadline = time.monotonic() + limit
    # Each status request costs the server a walk over its sessions: ask rarely once the
    # answer is slow to come, so the cycle's CPU is the re-polls' and not ours.
    interval = STATUS_INTERVAL
    while True:
        if tally.error.done():
            tally.error.result()
        status = await server.status(limit)
        if status["subscribers"] == n and (kind != "longpoll" or status["held"] == n):
            return status
        if time.monotonic() > deadline:
            raise BenchError(
                f"the server has {status['subscribers']} subscribers and holds "
                f"{status['held']} polls, not {n}, after {limit:g} s"
            )
        await asyncio.sleep(interval)
        interval = min(2 * interval, MAX_STATUS_INTERVAL)


async def open_sessions(kind: str, tally: Tally, port: int, count: int, limit: float) -> None:
    """Open ``count`` sessions, OPEN_CONCURRENCY at a time, each up to its held poll."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    factory = CLIENTS[kind]

    async def one() -> None:
        async with gate:
            _, client = await loop.create_connection(lambda: factory(tally, port), HOST, port)
            # Shielded: a cancelled wait must not cancel the client's own future, which
            # its replies may still resolve before the sockets are closed.
            await asyncio.shield(client.ready)

    before = tally.live
    opening = asyncio.gather(*(one() for _ in range(count)))
    waiting: set[asyncio.Future[Any]] = {opening, tally.error}
    try:
        async with asyncio.timeout(limit):
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise BenchError(
            f"only {tally.live - before} of {count} {kind} sessions subscribed within {limit:g} s"
        ) from None
    finally:
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, BenchError, OSError):
                await opening
    if tally.error.done():
        tally.error.result()
    opening.result()


async def delivered(tally: Tally, i: int, limit: float) -> None:
    try:
        async with asyncio.timeout(limit):
            await asyncio.wait(
                {tally.complete[i], tally.error}, return_when=asyncio.FIRST_COMPLETED
            )
    except TimeoutError:
        raise BenchError(
            f"publication {i}: {len(tally.arrivals[i])} of {tally.sessions} sessions "
            f"received it within {limit:g} s"
        ) from None
    if tally.error.done():
        tally.error.result()


_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float:
    """CPU seconds used by everything on the machine (every CPU, hypervisor steal
    included), from /proc/stat: what is not ours is other load that skews the figures."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy.
    return (sum(fields) - fields[3] - fields[4]) / _CLOCK_TICK


@dataclass(frozen=True)
class Clocks:
    """The server's, the generator's and the machine's CPU seconds and the wall clock,
    read together at the start and the end of a phase."""

    server: float
    generator: float
    machine: float
    wall: float

    @classmethod
    def read(cls, server: ServerProcess) -> Clocks:
        return cls(server.cpu(), time.process_time(), machine_cpu(), time.monotonic())

    def others_pct(self, end: Clocks) -> float:
        """CPU used by other processes since this reading, in % of one core."""
        ours = end.server - self.server + end.generator - self.generator
        return 100 * (end.machine - self.machine - ours) / (end.wall - self.wall)


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run_transport(kind: str, args: argparse.Namespace, cpu: int | None) -> Result:
    n, k = args.sessions, args.publications
    result = Result(kind, n, k)
    tally = Tally(n, k)
    server = await ServerProcess.start(args, cpu)
    try:
        ready = await server.expect("ready", "listening port", args.timeout)
        result.loop, result.speedups = ready["loop"], ready["speedups"]
        port = ready["port"]
        result.rss_fresh_kib = server.rss()

        await open_sessions(kind, tally, port, BASELINE_SESSIONS, args.timeout)
        await settle(server, kind, tally, BASELINE_SESSIONS, args.timeout)
        result.rss_base_kib = server.rss()

        note(f"{kind}: opening {n} sessions")
        start = time.monotonic()
        await open_sessions(kind, tally, port, n - BASELINE_SESSIONS, args.timeout)
        await settle(server, kind, tally, n, args.timeout)
        result.setup_s = time.monotonic() - start
        result.rss_full_kib = server.rss()

        note(f"{kind}: {n} sessions open in {result.setup_s:.1f} s; idle for {args.idle:g} s")
        start_idle = Clocks.read(server)
        await asyncio.sleep(args.idle)
        end_idle = Clocks.read(server)
        result.idle_server_cpu_s = end_idle.server - start_idle.server
        result.idle_s = end_idle.wall - start_idle.wall
        result.other_load_idle_pct = start_idle.others_pct(end_idle)
        if tally.error.done():
            tally.error.result()  # anything received while idle is a failure
        # Every poll is still held: nothing was answered, nothing timed out.
        before = await settle(server, kind, tally, n, args.timeout)

        note(f"{kind}: {k} publications")
        # The generator's own GC pauses would count as delivery delay: it makes no cycles
        # while measuring (bytes, small dicts), so its collector is off until the end.
        # The server's stays on: its pauses are part of what is measured.
        gc.collect()
        gc.disable()
        start_publications = Clocks.read(server)
        for i in range(k):
            # The server's CPU comes in 10 ms ticks, a window of one delivery is tens of
            # ms: the sums over K windows are what the report divides.
            cycle_cpu0 = server.cpu()
            gen_cpu0, wall0 = time.process_time(), time.monotonic()
            await server.send(cmd="publish", i=i)
            published = await server.expect("published", f"publication {i}", args.timeout)
            await delivered(tally, i, args.timeout)
            server_cpu, gen_cpu = server.cpu(), time.process_time()
            result.delivery_wall_s += time.monotonic() - wall0
            t0 = published["t0_ns"]
            arrivals = [stamp - t0 for stamp in tally.arrivals[i]]
            result.publish_ms.append(published["publish_ns"] / 1e6)
            result.t50_ms.append(statistics.median(arrivals) / 1e6)
            result.tlast_ms.append(max(arrivals) / 1e6)
            result.delivery_server_cpu_s += server_cpu - cycle_cpu0
            result.delivery_generator_cpu_s += gen_cpu - gen_cpu0
            # Isolated fan-outs: the next publication waits for every re-poll to be held.
            status = await settle(server, kind, tally, n, args.timeout)
            result.cycle_server_cpu_s += server.cpu() - cycle_cpu0
            result.gc_ms.append((status["gc_ns"] - before["gc_ns"]) / 1e6)
            result.gc_full.append(status["gc_full"] - before["gc_full"])
            result.gc_longest_ms.append(status["gc_longest_ns"] / 1e6)
            result.gc_longest_cpu_ms.append(status["gc_longest_cpu_ns"] / 1e6)
            result.gc_tracked.append(status["gc_tracked"])
            before = status
        result.other_load_publications_pct = start_publications.others_pct(Clocks.read(server))
        result.rss_end_kib = server.rss()

        tally.close()
        await server.send(cmd="quit")
        await server.stop(args.timeout)
        return result
    finally:
        gc.enable()
        tally.close()
        server.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.proc.wait()


# --- report -------------------------------------------------------------------------------


def machine_line(results: Sequence[Result], generator_loop: str) -> str:
    try:
        uvloop_version = f" {metadata.version('uvloop')}"
    except metadata.PackageNotFoundError:
        uvloop_version = ""
    loop = results[0].loop if results else "?"
    compiled = "on" if results and results[0].speedups else "off"
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"server on {loop}{uvloop_version if loop == 'uvloop' else ''}, "
        f"generator on {generator_loop}; compiled speedups {compiled}"
    )


def med_max(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def table(results: Sequence[Result]) -> str:
    rows = [
        "| transport | sessions | open, s | server RSS, MiB (base / full) | KiB per session "
        "| idle server CPU | `hub.publish`, ms | t_50, ms (median / max) "
        "| t_last, ms (median / max) | deliveries/s | CPU during delivery, server / generator "
        "| server CPU per cycle, ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rate = f"{r.deliveries_per_s:,.0f}".replace(",", " ") + ("*" if r.client_bound else "")
        rows.append(
            f"| {label(r)} | {r.sessions} | {r.setup_s:.1f} "
            f"| {r.rss_base_kib / 1024:.1f} / {r.rss_full_kib / 1024:.1f} "
            f"| {r.kib_per_session:.1f} | {r.idle_pct:.1f}% "
            f"| {statistics.median(r.publish_ms):.2f} "
            f"| {med_max(r.t50_ms)} | {med_max(r.tlast_ms)} | {rate} "
            f"| {100 * r.delivery_server_cpu_s / r.delivery_wall_s:.0f}% / "
            f"{100 * r.delivery_generator_cpu_s / r.delivery_wall_s:.0f}% "
            f"| {1e3 * r.cycle_server_cpu_s / r.publications:.0f} |"
        )
    return "\n".join(rows)


def label(result: Result) -> str:
    return "long polling (held GET)" if result.transport == "longpoll" else "WebSocket"


def gc_lines(results: Sequence[Result]) -> list[str]:
    """What the cyclic GC took from the server during the publications: it explains most
    of the gap between the median and the max."""
    out = []
    for r in results:
        slow = [i for i, full in enumerate(r.gc_full) if full]
        if len(slow) > 8:
            where = f" ({len(slow)} of them had one or more)"
        else:
            where = f" (publications {', '.join(map(str, slow))})" if slow else ""
        out.append(
            f"Server GC, {label(r)}: {sum(r.gc_full)} full collection(s) in {r.publications} "
            f"cycles{where}, longest pause {max(r.gc_longest_ms):.1f} ms "
            f"({max(r.gc_longest_cpu_ms):.1f} ms of CPU), "
            f"{max(r.gc_tracked)} objects tracked, "
            f"{sum(r.gc_ms):.0f} ms in all "
            f"({100 * sum(r.gc_ms) / 1e3 / max(r.cycle_server_cpu_s, 1e-9):.0f}% of the "
            "cycles' server CPU)"
        )
    return out


def load_warnings(results: Sequence[Result]) -> list[str]:
    out = []
    for r in results:
        worst = max(r.other_load_idle_pct, r.other_load_publications_pct)
        if worst >= OTHER_LOAD_WARNING:
            out.append(
                f"Warning, {label(r)}: other processes used {r.other_load_idle_pct:.0f}% of a "
                f"core while idle and {r.other_load_publications_pct:.0f}% during the "
                "publications: these figures are skewed; run again on a quiet machine."
            )
    return out


LEGEND = """\
open: time to open every session after the baseline ones, up to the server holding them.
KiB per session: server RSS growth from the baseline (10 sessions) to N, over N - 10.
idle server CPU: % of one core over the idle window (/proc/<pid>/stat, 10 ms ticks).
hub.publish: its median time in the server; long polling only queues the text and wakes the
polls there, WebSocket writes the frame to every socket.
t_50 / t_last: from the Hub.publish call to the median / last arrival at the generator.
deliveries/s: N / median t_last. CPU during delivery: % of one core over publish-to-last-
arrival (a * on deliveries/s: the generator was >= 90% busy, so it may be the limit); the
server's comes in 10 ms ticks, rough when the K windows add up to well under a second.
server CPU per cycle: a publication's delivery plus, for long polling, the N re-polls."""


async def driver_main(args: argparse.Namespace) -> tuple[list[Result], bool]:
    """Run each transport in turn; the results, and whether the processes were pinned."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus: tuple[int | None, int | None] = (None, None)
    if len(allowed) >= 2 and not args.no_pin:
        cpus = (allowed[0], allowed[1])
    pin(cpus[1])
    kinds = ["longpoll"] if args.no_websocket else list(TRANSPORTS)
    return [await run_transport(kind, args, cpus[0]) for kind in kinds], cpus[0] is not None


def report(
    args: argparse.Namespace, results: list[Result], pinned: bool, generator_loop: str
) -> None:
    machine = machine_line(results, generator_loop)
    print(machine)
    print(
        f"{args.sessions} sessions on {CHANNEL}, {args.publications} publications of "
        f"{{'n': i}} one at a time, {args.idle:g} s idle window"
        + ("" if pinned else ", processes not pinned")
    )
    print()
    print(table(results))
    print()
    for line in gc_lines(results) + load_warnings(results):
        print(line)
    print()
    print(LEGEND)
    if args.json:
        data = {
            "machine": machine,
            "options": {
                "sessions": args.sessions,
                "publications": args.publications,
                "idle": args.idle,
                "poll_timeout": args.poll_timeout,
                "pinned": pinned,
            },
            "results": [r.to_json() for r in results],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")


def check_open_files(sessions: int) -> None:
    """Each process holds one socket per session: fail now rather than at socket N."""
    raise_open_files()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and sessions + SPARE_FDS > soft:
        raise BenchError(
            f"{sessions} sessions need {sessions + SPARE_FDS} files; the limit is {soft}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.longpoll", description=__doc__)
    parser.add_argument("--sessions", type=int, default=None, help="held polls (default 5000)")
    parser.add_argument("--publications", type=int, default=None, help="measured (default 20)")
    parser.add_argument("--idle", type=float, default=None, help="idle window, s (default 10)")
    parser.add_argument("--quick", action="store_true", help="500 sessions, 5 publications, 2 s")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per phase (60)")
    parser.add_argument("--no-websocket", action="store_true", help="long polling only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="leave start-up objects to the collector (backchannel serve freezes them)",
    )
    # Internal: the server process.
    parser.add_argument("--role", choices=("driver", "server"), default="driver")
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--poll-timeout", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sessions is None:
        args.sessions = 500 if args.quick else 5000
    if args.publications is None:
        args.publications = 5 if args.quick else 20
    if args.idle is None:
        args.idle = 2.0 if args.quick else 10.0
    if args.sessions <= BASELINE_SESSIONS or args.publications < 1:
        parser.error(f"--sessions must be > {BASELINE_SESSIONS}, --publications >= 1")
    if args.idle <= 0 or args.timeout <= 0:
        parser.error("--idle and --timeout must be > 0")
    if not args.poll_timeout:
        # Longer than anything a run can last before it fails on a timeout: opening,
        # settling, the idle window and one publication, with room to spare.
        args.poll_timeout = args.idle + 10 * args.timeout

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
    try:
        check_open_files(args.sessions)
        with asyncio.Runner(loop_factory=factory) as runner:
            results, pinned = runner.run(driver_main(args))
        report(args, results, pinned, generator_loop)
        code = 0
    except (BenchError, WorkloadError, OSError) as exc:
        print(f"longpoll: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("longpoll: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
