"""Hub fan-out: what one publication to N local subscribers costs in the hub.

``python -m benchmarks.fanout [--subscribers 100,1000] [--publications K] [--burst K]
[--quick]``.
For each N, two fresh processes: a hub server (``Hub`` with the memory broker, served by
``backchannel.asyncio.serve`` on uvloop, pinned to the first CPU) and a subscriber process
(N raw WebSocket clients, each connected and subscribed to ``bench:fanout``, pinned to
the second CPU). This process drives both over their stdin and stdout (JSON lines): it
asks the server for one ``Hub.publish`` at a time and waits until the subscriber process
reports that all N clients have received it before asking for the next, so each figure
is one isolated fan-out.

The memory broker delivers inside ``publish``, so the time of ``await hub.publish(...)``
is the whole fan-out; ``Hub.on_publication`` (encode + the registry's fan-out) is also timed on its
own. In the server process only, ``wire.encode_publication``, the sans-I/O
``Connection.send_text`` and the hub's ``broadcast`` are wrapped with counters: how many
times each publication was encoded as JSON and framed, the bytes of the frames built and
the bytes written (checked against what the subscribers received).

With ``--burst K`` each step is one command for K ``hub.publish`` calls back to back, and
the subscriber process reports once all N clients have all K: deliveries/s, the server's
CPU time per delivery and how many frames carried them (a hub may join publications
queued for a session into one frame, one per line; the clients count lines). This file
also runs against the hub before its session outbox (see ``benchmarks.compare``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast
from unittest import mock

import backchannel
from backchannel.asyncio import broadcast as real_broadcast
from backchannel.asyncio import serve
from backchannel.asyncio.connection import Connection as AsyncConnection
from backchannel.hub import wire
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.wire import Publication
from backchannel.protocol import speedups
from backchannel.protocol.connection import Connection as SansioConnection

# This file also drives the hub as it was before the session outbox
# (``python -m benchmarks.compare`` runs it against an older source tree on PYTHONPATH),
# where the WebSocket transport was ``backchannel.hub.websocket``, not
# ``backchannel.hub.transports.websocket``, and ``Hub.channels`` a dict, not a method.
try:
    from backchannel.hub.transports import websocket as hub_websocket
except ImportError:  # before the session outbox
    from backchannel.hub import websocket as hub_websocket  # type: ignore[no-redef]
websocket_handler = hub_websocket.websocket_handler

ROOT = Path(__file__).resolve().parent.parent
#: The source tree this process runs (``src`` of a checkout, first on PYTHONPATH or not).
SOURCE = str(Path(backchannel.__file__).resolve().parent.parent)
HOST = "127.0.0.1"
CHANNEL = "bench:fanout"
TEXT = "x" * 32
#: Clients opening their connection and subscribing at the same time.
CONNECT_CONCURRENCY = 100
#: Longest HTTP response head a client accepts.
MAX_HEAD = 16 * 1024
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT = 0x1
OP_CLOSE = 0x8
MICRO = "\u00b5"


class BenchError(Exception):
    """A phase failed or timed out; the message says which."""


# Helpers shared by the processes.


def raise_open_files() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: N sockets per process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def emit(**fields: Any) -> None:
    """One JSON line to the driver."""
    sys.stdout.write(json.dumps(fields, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_child(main: Any) -> None:
    """Run a child's coroutine on uvloop (asyncio without it); errors go to the driver."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    except (BenchError, OSError, TimeoutError, ValueError, KeyError, AssertionError) as exc:
        emit(event="error", message=f"{type(exc).__name__}: {exc}")
        sys.exit(1)


# The server process.


@dataclass
class Counts:
    """What happened during one publication, from the counting wrappers."""

    json_encodes: int = 0
    frames: int = 0
    frame_bytes: int = 0
    targets: int = 0
    skipped: int = 0

    def reset(self) -> None:
        self.json_encodes = self.frames = self.frame_bytes = self.targets = self.skipped = 0

    def written_bytes(self) -> int:
        # broadcast writes the same frame object to every connection it does not skip.
        if not self.frames:
            return 0
        return (self.targets - self.skipped) * self.frame_bytes // self.frames


def install_counters(stack: contextlib.ExitStack, counts: Counts) -> None:
    original_encode = wire.encode_publication
    original_send_text = SansioConnection.send_text
    original_broadcast = real_broadcast  # what websocket.py imported as broadcast

    def encode_publication(publication: Publication) -> str:
        counts.json_encodes += 1
        return original_encode(publication)

    def send_text(
        self: SansioConnection,
        data: str | bytes,
        *,
        fin: bool = True,
        compress: bool | None = None,
    ) -> bytes:
        frame = original_send_text(self, data, fin=fin, compress=compress)
        counts.frames += 1
        counts.frame_bytes += len(frame)
        return frame

    def broadcast(
        connections: Iterable[AsyncConnection],
        message: str | bytes | bytearray | memoryview,
    ) -> list[AsyncConnection]:
        conns = connections if isinstance(connections, list) else list(connections)
        skipped = original_broadcast(conns, message)
        counts.targets += len(conns)
        counts.skipped += len(skipped)
        return skipped

    # hub.py calls wire.encode_publication and websocket.py its own global broadcast, so
    # patching the module attributes is enough; send_text is patched on the class.
    stack.enter_context(mock.patch.object(wire, "encode_publication", encode_publication))
    stack.enter_context(mock.patch.object(SansioConnection, "send_text", send_text))
    stack.enter_context(mock.patch.object(hub_websocket, "broadcast", broadcast))


def local_subscribers(hub: Hub) -> int:
    """Subscribers of the benchmark's channel on this node."""
    channels: Any = hub.channels
    if callable(channels):
        return int(channels().get(CHANNEL, 0))
    # Before the session outbox: a dict of channel -> {session: subscription}.
    return len(channels.get(CHANNEL, ()))


class TimedHub(Hub):
    """A hub that times its broker handler for publications."""

    on_publication_ns: int = -1

    def on_publication(self, publication: Publication) -> None:
        start = time.perf_counter_ns()
        super().on_publication(publication)
        self.on_publication_ns = time.perf_counter_ns() - start


async def server_main(args: argparse.Namespace) -> None:
    counts = Counts()
    options = HubOptions(
        anonymous=True,
        namespaces={"bench": ChannelOptions()},
        max_connections_per_user=args.subscribers + 10,
    )
    reader = await stdin_reader()
    # status, every publication (a burst: its command and a CPU reading), quit, and
    # some slack: the driver sends no more.
    max_commands = 2 * args.total + 10
    hub = TimedHub(options)
    with contextlib.ExitStack() as stack:
        install_counters(stack, counts)
        async with (
            hub,
            serve(
                websocket_handler(hub),
                HOST,
                0,
                compression=None,
                ping_interval=None,
            ) as server,
        ):
            emit(
                event="ready",
                port=server.port,
                loop=loop_name(),
                speedups=speedups.ACTIVE,
                source=SOURCE,
            )
            for _ in range(max_commands):
                try:
                    async with asyncio.timeout(args.timeout * 2):
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
                        subscribers=local_subscribers(hub),
                        sessions=len(hub.sessions),
                    )
                elif name == "publish":
                    i = command["i"]
                    counts.reset()
                    hub.on_publication_ns = -1
                    start_ns = time.monotonic_ns()
                    start = time.perf_counter_ns()
                    await hub.publish(CHANNEL, {"n": i, "text": TEXT})
                    publish_ns = time.perf_counter_ns() - start
                    emit(
                        event="published",
                        i=i,
                        start_ns=start_ns,
                        publish_ns=publish_ns,
                        on_publication_ns=hub.on_publication_ns,
                        json_encodes=counts.json_encodes,
                        frames=counts.frames,
                        frame_bytes=counts.frame_bytes,
                        targets=counts.targets,
                        skipped=counts.skipped,
                        written_bytes=counts.written_bytes(),
                    )
                elif name == "burst":
                    # K publications back to back, without waiting for any delivery.
                    first, k = command["first"], command["k"]
                    counts.reset()
                    cpu_ns = time.process_time_ns()
                    start_ns = time.monotonic_ns()
                    start = time.perf_counter_ns()
                    for i in range(first, first + k):
                        await hub.publish(CHANNEL, {"n": i, "text": TEXT})
                    publish_ns = time.perf_counter_ns() - start
                    emit(
                        event="burst",
                        first=first,
                        start_ns=start_ns,
                        cpu_ns=cpu_ns,
                        publish_ns=publish_ns,
                        json_encodes=counts.json_encodes,
                        frames=counts.frames,
                        targets=counts.targets,
                        skipped=counts.skipped,
                    )
                elif name == "cpu":
                    # Asked once the burst has reached every client: what was written
                    # later (an outbox drained by its task) is in this reading too.
                    emit(event="cpu", cpu_ns=time.process_time_ns())
                else:
                    raise BenchError(f"unknown command {name!r}")
            raise BenchError(f"more than {max_commands} commands")


# The subscriber process.


def mask_payload(payload: bytes, key: bytes) -> bytes:
    size = len(payload)
    stream = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")
    return masked.to_bytes(size, "big")


def client_text_frame(text: str) -> bytes:
    payload = text.encode()
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | OP_TEXT, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x80 | OP_TEXT, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | OP_TEXT, 0x80 | 127]) + size.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + mask_payload(payload, key)


def command(cid: int, method: str, **params: Any) -> bytes:
    return client_text_frame(json.dumps({"id": cid, "method": method, "params": params}))


class Subscribers:
    """State shared by the N clients: setup failures and publications received."""

    def __init__(self, n: int, total: int) -> None:
        loop = asyncio.get_running_loop()
        self.n = n
        self.total = total
        self.error: asyncio.Future[None] = loop.create_future()
        self.received = [0] * total
        self.received_bytes = [0] * total
        self.complete: list[asyncio.Future[None]] = [loop.create_future() for _ in range(total)]
        #: When the last of the N clients received each publication (time.monotonic_ns).
        self.done_ns = [0] * total
        #: Publication frames and publications (lines) received, all clients together.
        self.frames = 0
        self.lines = 0
        self.transports: list[asyncio.Transport] = []
        self.closing = False

    def fail(self, message: str) -> None:
        if not self.error.done():
            self.error.set_exception(BenchError(message))

    def publication(self, i: int, size: int) -> None:
        if not 0 <= i < self.total:
            self.fail(f"publication {i} out of range")
            return
        self.received[i] += 1
        self.received_bytes[i] += size
        if self.received[i] == self.n:
            self.done_ns[i] = time.monotonic_ns()
            self.complete[i].set_result(None)


class Subscriber(asyncio.Protocol):
    """One raw WebSocket client: handshake, connect, subscribe, then count publications."""

    def __init__(self, shared: Subscribers, port: int) -> None:
        self.shared = shared
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.live = False
        self.next = 0  # the publication expected next
        self.key = base64.b64encode(os.urandom(16))
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _fail(self, message: str) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(BenchError(message))
        self.shared.fail(message)
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self.shared.transports.append(self.transport)
        self.transport.write(
            b"GET / HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (HOST.encode(), self.port, self.key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.shared.closing:
            self._fail(f"a connection was lost: {exc or 'closed by the server'}")

    def data_received(self, data: bytes) -> None:
        # An exception here would only be logged by the loop: fail the run instead.
        try:
            self._receive(data)
        except Exception as exc:
            self._fail(f"{type(exc).__name__} on a message: {exc}")

    def _receive(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self._fail("HTTP response head too long")
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest()).lower()
            if not head.startswith(b"http/1.1 101") or accept not in head:
                self._fail(f"handshake refused: {head[:80]!r}")
                return
            self.upgraded = True
            assert self.transport is not None
            self.transport.write(command(1, "connect"))
        self._read_frames()

    def _read_frames(self) -> None:
        buf = self.buffer
        pos = 0
        # Each pass consumes one whole frame (at least 2 bytes) or stops.
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if second & 0x80:
                self._fail("masked frame from the server")
                return
            size = second & 0x7F
            head = 2
            if size == 126:
                head = 4
            elif size == 127:
                head = 10
            if len(buf) - pos < head:
                break
            if head > 2:
                size = int.from_bytes(buf[pos + 2 : pos + head], "big")
            end = pos + head + size
            if end > len(buf):
                break
            if first != 0x80 | OP_TEXT:
                opcode = first & 0x0F
                if opcode == OP_CLOSE and size >= 2:
                    code = int.from_bytes(buf[pos + head : pos + head + 2], "big")
                    self._fail(f"the server closed a connection with {code}")
                else:
                    self._fail(f"unexpected frame, first byte {first:#04x}")
                return
            self._message(bytes(buf[pos + head : end]), end - pos)
            pos = end
        del buf[:pos]

    def _message(self, payload: bytes, frame_size: int) -> None:
        if self.live:
            # One frame may carry several publications, one per line (a hub's outbox
            # drained in one frame): count lines, not frames. The frame's bytes go to its
            # first publication.
            shared = self.shared
            shared.frames += 1
            for line in payload.split(b"\n"):
                obj = json.loads(line)
                if obj.get("push") != "publication" or obj.get("channel") != CHANNEL:
                    self._fail(f"unexpected message {line[:80]!r}")
                    return
                i = obj["data"]["n"]
                if i != self.next:
                    self._fail(f"publication {i} where {self.next} was expected")
                    return
                self.next += 1
                shared.lines += 1
                shared.publication(i, frame_size)
                frame_size = 0
            return
        for line in payload.split(b"\n"):
            obj = json.loads(line)
            if "error" in obj or "result" not in obj:
                self._fail(f"command refused: {line[:120]!r}")
                return
            assert self.transport is not None
            if obj["id"] == 1:
                self.transport.write(command(2, "subscribe", channel=CHANNEL))
            elif obj["id"] == 2:
                self.live = True
                self.subscribed.set_result(None)
            else:
                self._fail(f"unexpected reply {line[:80]!r}")
                return


async def wait_or_fail(
    target: asyncio.Future[Any], shared: Subscribers, stop: asyncio.Task[bytes], limit: float
) -> bool:
    """Wait for ``target``; False when the driver closed stdin first; raise on failure."""
    async with asyncio.timeout(limit):
        await asyncio.wait({target, shared.error, stop}, return_when=asyncio.FIRST_COMPLETED)
    if shared.error.done():
        shared.error.result()
    if target.done():
        target.result()
        return True
    return False


async def open_subscriber(shared: Subscribers, port: int, gate: asyncio.Semaphore) -> None:
    loop = asyncio.get_running_loop()
    async with gate:
        _, client = await loop.create_connection(lambda: Subscriber(shared, port), HOST, port)
        await client.subscribed


async def subscriber_main(args: argparse.Namespace) -> None:
    shared = Subscribers(args.subscribers, args.total)
    reader = await stdin_reader()
    stop = asyncio.get_running_loop().create_task(reader.readline())
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    opening = asyncio.gather(
        *(open_subscriber(shared, args.port, gate) for _ in range(args.subscribers))
    )
    try:
        try:
            if not await wait_or_fail(opening, shared, stop, args.timeout):
                return
        except TimeoutError:
            done = sum(1 for t in shared.transports if not t.is_closing())
            raise BenchError(
                f"{args.subscribers} subscriptions not done within {args.timeout:g} s "
                f"({done} connections open)"
            ) from None
        emit(event="subscribed", connections=len(shared.transports))
        # One step per publication, or per burst of K: each client receives them in
        # order, so the last one of a step received everywhere completes the step.
        k = args.burst
        for first in range(0, args.total, k):
            i = first + k - 1
            cpu_ns = time.process_time_ns()
            frames, lines = shared.frames, shared.lines
            try:
                if not await wait_or_fail(shared.complete[i], shared, stop, args.timeout):
                    return
            except TimeoutError:
                raise BenchError(
                    f"publication {i}: {shared.received[i]} of {args.subscribers} clients "
                    f"received it within {args.timeout:g} s"
                ) from None
            emit(
                event="received",
                i=i,
                bytes=sum(shared.received_bytes[first : i + 1]),
                at_ns=shared.done_ns[i],
                cpu_ns=time.process_time_ns() - cpu_ns,
                frames=shared.frames - frames,
                lines=shared.lines - lines,
            )
        async with asyncio.timeout(args.timeout):
            await stop  # the driver closes stdin when done
    finally:
        opening.cancel()
        stop.cancel()
        shared.closing = True
        for transport in shared.transports:
            transport.abort()


# The driver.


class Child:
    """A child process speaking JSON lines on its stdin and stdout."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc

    @classmethod
    async def spawn(cls, name: str, args: Sequence[str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.fanout",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            # Ctrl-C reaches the driver only, which then ends its children.
            start_new_session=True,
        )
        return cls(name, proc)

    async def expect(self, event: str, what: str, limit: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(limit):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            raise BenchError(f"{self.name}: no {what} within {limit:g} s") from None
        if not line:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()
            code = self.proc.returncode
            raise BenchError(f"{self.name} exited (code {code}) while waiting for {what}")
        message: dict[str, Any] = json.loads(line)
        if message.get("event") == "error":
            raise BenchError(f"{self.name}: {message.get('message')}")
        if message.get("event") != event:
            raise BenchError(f"{self.name}: expected {event!r}, got {line[:200]!r}")
        return message

    async def send(self, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(fields).encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self, limit: float) -> None:
        """Close stdin and wait for the process to exit; kill it after ``limit``."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(limit):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
            raise BenchError(f"{self.name} did not exit within {limit:g} s") from None

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


@dataclass
class Run:
    """The measured publications of one N."""

    subscribers: int
    loop: str = ""
    speedups: bool = False
    source: str = ""
    publish_ns: list[int] = field(default_factory=list)
    #: From just before ``hub.publish`` to the last client receiving it.
    end_to_end_ns: list[int] = field(default_factory=list)
    on_publication_ns: list[int] = field(default_factory=list)
    json_encodes: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    frame_bytes: list[int] = field(default_factory=list)
    written_bytes: list[int] = field(default_factory=list)
    received_bytes: list[int] = field(default_factory=list)
    skipped: int = 0


@dataclass
class BurstRun:
    """The measured bursts of one N: K publications back to back, each."""

    subscribers: int
    burst: int
    loop: str = ""
    speedups: bool = False
    source: str = ""
    #: From just before the first ``hub.publish`` to the last client receiving the last.
    burst_ns: list[int] = field(default_factory=list)
    #: The K ``hub.publish`` calls.
    publish_ns: list[int] = field(default_factory=list)
    #: Server CPU from the first ``hub.publish`` until every client had all K.
    server_cpu_ns: list[int] = field(default_factory=list)
    #: Subscriber process CPU meanwhile.
    subscriber_cpu_ns: list[int] = field(default_factory=list)
    #: Publication frames and publications received, by all clients together.
    frames: list[int] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    json_encodes: list[int] = field(default_factory=list)
    skipped: int = 0

    @property
    def deliveries(self) -> int:
        return self.subscribers * self.burst


async def start_children(
    n: int, args: argparse.Namespace, cpus: tuple[int | None, int | None], children: list[Child]
) -> tuple[Child, Child, dict[str, Any]]:
    """Start the server and the subscriber process; wait until all N are subscribed."""
    total = (args.warmup + args.publications) * args.burst
    common = ["--subscribers", str(n), "--total", str(total), "--timeout", str(args.timeout)]
    common += ["--burst", str(args.burst)]
    server_args = ["--role", "server", *common]
    if cpus[0] is not None:
        server_args += ["--cpu", str(cpus[0])]
    server = await Child.spawn("server", server_args)
    children.append(server)
    ready = await server.expect("ready", "listening port", args.timeout)

    sub_args = ["--role", "subscriber", *common, "--port", str(ready["port"])]
    if cpus[1] is not None:
        sub_args += ["--cpu", str(cpus[1])]
    subscriber = await Child.spawn("subscriber process", sub_args)
    children.append(subscriber)
    await subscriber.expect("subscribed", f"{n} subscriptions", args.timeout)
    await server.send(cmd="status")
    status = await server.expect("status", "status", args.timeout)
    if status["subscribers"] != n:
        raise BenchError(f"the hub has {status['subscribers']} subscribers, not {n}")
    return server, subscriber, ready


async def end_children(children: list[Child], args: argparse.Namespace) -> None:
    server, subscriber = children
    await subscriber.stop(args.timeout)
    await server.send(cmd="quit")
    await server.stop(args.timeout)


async def reap(children: list[Child]) -> None:
    for child in children:
        child.kill()
    for child in children:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await child.proc.wait()


async def run_burst(
    n: int, args: argparse.Namespace, cpus: tuple[int | None, int | None]
) -> BurstRun:
    k = args.burst
    children: list[Child] = []
    run = BurstRun(n, k)
    try:
        server, subscriber, ready = await start_children(n, args, cpus, children)
        run.loop, run.speedups, run.source = ready["loop"], ready["speedups"], ready["source"]
        for step in range(args.warmup + args.publications):
            first = step * k
            last = first + k - 1
            await server.send(cmd="burst", first=first, k=k)
            pub = await server.expect("burst", f"burst {step}", args.timeout)
            got = await subscriber.expect("received", f"burst {step} everywhere", args.timeout)
            await server.send(cmd="cpu")
            cpu = await server.expect("cpu", "CPU reading", args.timeout)
            if pub["first"] != first or got["i"] != last:
                raise BenchError(f"burst {step}: replies for {pub['first']} and {got['i']}")
            if got["lines"] != n * k:
                raise BenchError(f"burst {step}: {got['lines']} publications received, not {n * k}")
            if step < args.warmup:
                continue
            run.burst_ns.append(got["at_ns"] - pub["start_ns"])
            run.publish_ns.append(pub["publish_ns"])
            run.server_cpu_ns.append(cpu["cpu_ns"] - pub["cpu_ns"])
            run.subscriber_cpu_ns.append(got["cpu_ns"])
            run.frames.append(got["frames"])
            run.lines.append(got["lines"])
            run.json_encodes.append(pub["json_encodes"])
            run.skipped += pub["skipped"]
        await end_children(children, args)
        return run
    finally:
        await reap(children)


async def run_one(n: int, args: argparse.Namespace, cpus: tuple[int | None, int | None]) -> Run:
    total = args.warmup + args.publications
    children: list[Child] = []
    run = Run(n)
    try:
        server, subscriber, ready = await start_children(n, args, cpus, children)
        run.loop, run.speedups, run.source = ready["loop"], ready["speedups"], ready["source"]
        for i in range(total):
            await server.send(cmd="publish", i=i)
            pub = await server.expect("published", f"publication {i}", args.timeout)
            got = await subscriber.expect("received", f"publication {i} everywhere", args.timeout)
            if pub["i"] != i or got["i"] != i:
                raise BenchError(f"publication {i}: replies for {pub['i']} and {got['i']}")
            if pub["on_publication_ns"] < 0:
                raise BenchError(f"publication {i}: Hub.on_publication was not called")
            if i < args.warmup:
                continue
            run.publish_ns.append(pub["publish_ns"])
            run.end_to_end_ns.append(got["at_ns"] - pub["start_ns"])
            run.on_publication_ns.append(pub["on_publication_ns"])
            run.json_encodes.append(pub["json_encodes"])
            run.frames.append(pub["frames"])
            run.frame_bytes.append(pub["frame_bytes"])
            run.written_bytes.append(pub["written_bytes"])
            run.received_bytes.append(got["bytes"])
            run.skipped += pub["skipped"]
        await end_children(children, args)
        return run
    finally:
        await reap(children)


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def p90(values: Sequence[int]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 9 // 10) - 1)]


def spread(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return f"{low}" if low == high else f"{low}-{high}"


def fmt_bytes(value: float) -> str:
    return f"{value:,.0f} B".replace(",", " ")


def table(runs: Sequence[Run]) -> str:
    rows = [
        f"| subscribers | `hub.publish`, {MICRO}s (median / p90) "
        f"| `on_publication`, {MICRO}s (median / p90) | per subscriber, ns (publish / N) "
        "| JSON encodes / pub | frames built / pub | bytes framed once | bytes written "
        f"| end to end, {MICRO}s (median / p90) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        pub_med = statistics.median(run.publish_ns)
        on_med = statistics.median(run.on_publication_ns)
        rows.append(
            f"| {run.subscribers} "
            f"| {pub_med / 1e3:.1f} / {p90(run.publish_ns) / 1e3:.1f} "
            f"| {on_med / 1e3:.1f} / {p90(run.on_publication_ns) / 1e3:.1f} "
            f"| {pub_med / run.subscribers:.0f} "
            f"| {spread(run.json_encodes)} "
            f"| {spread(run.frames)} "
            f"| {fmt_bytes(statistics.median(run.frame_bytes))} "
            f"| {fmt_bytes(statistics.median(run.written_bytes))} "
            f"| {statistics.median(run.end_to_end_ns) / 1e3:.1f} "
            f"/ {p90(run.end_to_end_ns) / 1e3:.1f} |"
        )
    return "\n".join(rows)


def deliveries_per_s(run: BurstRun) -> list[float]:
    return [run.deliveries / (ns / 1e9) for ns in run.burst_ns]


def burst_table(runs: Sequence[BurstRun]) -> str:
    rows = [
        "| subscribers | burst | deliveries/s (median / min) | burst, ms (median / max) "
        "| K x `hub.publish`, ms (median) | server CPU / delivery, ns "
        "| subscriber CPU, % of the burst | frames / publication-subscriber "
        "| JSON encodes / pub |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        rates = deliveries_per_s(run)
        cpu = statistics.median(run.server_cpu_ns) / run.deliveries
        share = statistics.median(
            c / w for c, w in zip(run.subscriber_cpu_ns, run.burst_ns, strict=True)
        )
        mark = "*" if share >= 0.9 else ""
        frames = statistics.median(f / run.deliveries for f in run.frames)
        encodes = statistics.median(e / run.burst for e in run.json_encodes)
        rows.append(
            f"| {run.subscribers} | {run.burst} "
            f"| {statistics.median(rates):,.0f}{mark} / {min(rates):,.0f} ".replace(",", " ")
            + f"| {statistics.median(run.burst_ns) / 1e6:.1f} / {max(run.burst_ns) / 1e6:.1f} "
            f"| {statistics.median(run.publish_ns) / 1e6:.1f} "
            f"| {cpu:.0f} "
            f"| {share * 100:.0f} "
            f"| {frames:.3f} "
            f"| {encodes:g} |"
        )
    return "\n".join(rows)


def burst_notes(runs: Sequence[BurstRun]) -> list[str]:
    out = []
    for run in runs:
        if run.skipped:
            out.append(f"N={run.subscribers}: {run.skipped} deliveries skipped (slow consumer)")
        if max(run.json_encodes) != run.burst:
            out.append(f"N={run.subscribers}: a publication was encoded more than once")
    return out


def notes(runs: Sequence[Run]) -> list[str]:
    out = []
    for run in runs:
        if run.written_bytes != run.received_bytes:
            out.append(
                f"N={run.subscribers}: bytes written by the server and received by the "
                "subscribers differ"
            )
        if run.skipped:
            out.append(f"N={run.subscribers}: {run.skipped} deliveries skipped (slow consumer)")
        if max(run.json_encodes) != 1 or max(run.frames) != 1:
            out.append(f"N={run.subscribers}: a publication was encoded more than once")
    return out


def machine_line(runs: Sequence[Run] | Sequence[BurstRun]) -> str:
    try:
        uvloop_version = f" {metadata.version('uvloop')}"
    except metadata.PackageNotFoundError:
        uvloop_version = ""
    loop = runs[0].loop if runs else "?"
    compiled = "on" if runs and runs[0].speedups else "off"
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"server on {loop}{uvloop_version if loop == 'uvloop' else ''}, "
        f"compiled speedups {compiled}"
    )


async def driver_main(args: argparse.Namespace) -> int:
    counts = [int(part) for part in args.subscribers_list.split(",") if part.strip()]
    if not counts or min(counts) < 1:
        raise BenchError("--subscribers takes positive counts, e.g. 100,1000")
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cpus: tuple[int | None, int | None] = (None, None)
    if len(allowed) >= 2 and not args.no_pin:
        cpus = (allowed[0], allowed[1])
    if args.burst > 1:
        bursts = []
        for n in counts:
            print(
                f"N={n}: {args.warmup} warm-up + {args.publications} bursts of {args.burst}",
                file=sys.stderr,
            )
            bursts.append(await run_burst(n, args, cpus))
        print(machine_line(bursts))
        print(
            f"{args.publications} bursts of {args.burst} publications of "
            "{'n': i, 'text': 'x' * 32} per row"
        )
        print()
        print(burst_table(bursts))
        for note in burst_notes(bursts):
            print(f"\nNote: {note}")
        write_json(args.json, machine_line(bursts), bursts)
        return 0
    runs = []
    for n in counts:
        print(f"N={n}: {args.warmup} warm-up + {args.publications} publications", file=sys.stderr)
        runs.append(await run_one(n, args, cpus))
    print(machine_line(runs))
    print(f"{args.publications} publications of {{'n': i, 'text': 'x' * 32}} per row")
    print()
    print(table(runs))
    for note in notes(runs):
        print(f"\nNote: {note}")
    write_json(args.json, machine_line(runs), runs)
    return 0


def write_json(path: str | None, machine: str, runs: Sequence[Run] | Sequence[BurstRun]) -> None:
    """Every figure, per publication or burst (``benchmarks.compare`` reads this)."""
    if path is None:
        return
    mode = "burst" if runs and isinstance(runs[0], BurstRun) else "single"
    with open(path, "w") as f:
        json.dump({"machine": machine, "mode": mode, "runs": [asdict(r) for r in runs]}, f)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__)
    parser.add_argument(
        "--subscribers",
        dest="subscribers_list",
        default="100,1000",
        help="subscriber counts, comma-separated (default 100,1000)",
    )
    parser.add_argument("--publications", type=int, default=None, help="measured (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up publications (5)")
    parser.add_argument("--quick", action="store_true", help="10 publications, 2 warm-up")
    parser.add_argument(
        "--burst",
        type=int,
        default=1,
        metavar="K",
        help="publish K back to back per step and time until all N have all K "
        "(--publications and --warmup then count bursts: default 5 and 1)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write figures as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per phase (60)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    # Internal: the child processes.
    parser.add_argument("--role", choices=("driver", "server", "subscriber"), default="driver")
    parser.add_argument("--total", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publications is None:
        if args.burst > 1:
            args.publications = 3 if args.quick else 5
        else:
            args.publications = 10 if args.quick else 50
    if args.warmup is None:
        if args.burst > 1:
            args.warmup = 1
        else:
            args.warmup = 2 if args.quick else 5
    if args.publications < 1 or args.warmup < 0 or args.timeout <= 0 or args.burst < 1:
        parser.error("--publications and --burst must be >= 1, --warmup >= 0, --timeout > 0")

    raise_open_files()
    if args.role != "driver":
        args.subscribers = int(args.subscribers_list)
        pin(args.cpu)
        run_child(server_main(args) if args.role == "server" else subscriber_main(args))
        return
    try:
        code = asyncio.run(driver_main(args))
    except BenchError as exc:
        print(f"fanout: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("fanout: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
