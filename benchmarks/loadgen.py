"""The load generator: raw asyncio protocols that speak just enough WebSocket.

The generator has to cost much less per message than any server it measures, so it never
parses frames. Client frames are encoded (and masked) once and written as ready bytes;
the servers' answers are unmasked frames of a size known in advance, so each connection
counts received *bytes* and derives the number of messages from them. Correctness is
checked cheaply instead: the first bytes of each stream and the last chunk received at the
end of each phase must equal the expected reply frames, and the byte counts must come out
exact (a stray or missing frame shifts them).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

# The sample key of RFC 6455 (section 1.3) and the accept value that goes with it.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#: Fixed, non-zero masking key for every client frame.
MASK = b"\x5a\x3c\xa7\x19"
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
#: How much of the end of a stream is compared with the expected frames.
TAIL = 4096
#: Largest HTTP response head accepted from a server.
MAX_HEAD = 65536


class WorkloadError(Exception):
    """A server answered something other than what the workload expects."""


# --- frames -------------------------------------------------------------------------------


def upgrade_request(host: str, port: int, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode("ascii")


def _length_header(first: int, mask_bit: int, size: int) -> bytes:
    if size < 126:
        return bytes((first, mask_bit | size))
    if size < 65536:
        return bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")


def mask_bytes(payload: bytes, mask: bytes = MASK) -> bytes:
    size = len(payload)
    if size == 0:
        return b""
    key = (mask * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")
    return masked.to_bytes(size, "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame as a client sends it."""
    return _length_header(0x80 | opcode, 0x80, len(payload)) + MASK + mask_bytes(payload)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame as a server sends it."""
    return _length_header(0x80 | opcode, 0, len(payload)) + payload


def expected_tail(frame: bytes) -> bytes:
    """The last TAIL bytes of a stream made of ``frame`` repeated."""
    return (frame * (TAIL // len(frame) + 1))[-TAIL:]


CLOSE_FRAME = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
OK_FRAME = server_frame(OP_TEXT, b"ok")


# --- sizes, progress, metering ------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does. Counts scale with ``--scale``/``--quick``."""

    rtt_warmup: int = 2_000
    rtt_count: int = 30_000
    throughput_connections: int = 50
    throughput_window: int = 100
    throughput_warmup: int = 100_000
    throughput_count: int = 1_000_000
    bulk_size: int = 2**20
    bulk_warmup: int = 10
    bulk_count: int = 300
    broadcast_subscribers: int = 2_000
    broadcast_warmup: int = 10
    broadcast_count: int = 100
    #: Broadcasts in flight at once (see Broadcasts).
    broadcast_window: int = 8
    memory_baseline: int = 10
    memory_connections: int = 5_000
    handshake_loops: int = 10
    handshake_count: int = 5_000
    #: Connections opened at once when a workload needs many.
    open_concurrency: int = 200
    #: Longest measured phase of rtt, throughput and bulk, in seconds.
    time_cap: float = 10.0
    text_size: int = 32

    def scaled(self, factor: float) -> Sizes:
        """Counts times ``factor``; the shape of each workload (connections, window,
        subscribers, message sizes) stays the same so figures remain comparable."""

        def n(value: int) -> int:
            return max(1, round(value * factor))

        return replace(
            self,
            rtt_warmup=n(self.rtt_warmup),
            rtt_count=n(self.rtt_count),
            throughput_warmup=n(self.throughput_warmup),
            throughput_count=n(self.throughput_count),
            bulk_warmup=n(self.bulk_warmup),
            bulk_count=n(self.bulk_count),
            broadcast_warmup=n(self.broadcast_warmup),
            broadcast_count=n(self.broadcast_count),
            memory_connections=n(self.memory_connections),
            handshake_count=n(self.handshake_count),
            time_cap=max(2.0, self.time_cap * factor),
        )


@dataclass
class Progress:
    """What the runner's status line shows about the workload in progress."""

    phase: str = ""
    #: Returns how much is done in the current phase, in ``unit`` x seconds.
    counter: Callable[[], float] | None = None
    unit: str = ""
    started: float = 0.0

    def set(self, phase: str, counter: Callable[[], float] | None = None, unit: str = "") -> None:
        self.phase = phase
        self.counter = counter
        self.unit = unit
        self.started = time.perf_counter()

    def rate(self) -> float | None:
        if self.counter is None:
            return None
        elapsed = time.perf_counter() - self.started
        return self.counter() / elapsed if elapsed > 0 else None


_CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # Fields 14 and 15 of stat(5); fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICK


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise WorkloadError(f"no VmRSS for pid {pid}")


@dataclass
class Meter:
    """Wall time and CPU time of the server and of this process over a measured phase."""

    server_pid: int
    wall: float = 0.0
    server_cpu: float = 0.0
    gen_cpu: float = 0.0
    _start: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._start = (time.perf_counter(), process_cpu(self.server_pid), own_cpu())

    def stop(self) -> None:
        wall, server, gen = self._start
        self.wall = time.perf_counter() - wall
        self.server_cpu = process_cpu(self.server_pid) - server
        self.gen_cpu = own_cpu() - gen


@dataclass
class Measurement:
    value: float
    wall: float
    server_cpu: float
    gen_cpu: float
    detail: str = ""

    @property
    def server_pct(self) -> float:
        return 100 * self.server_cpu / self.wall if self.wall > 0 else 0.0

    @property
    def gen_pct(self) -> float:
        return 100 * self.gen_cpu / self.wall if self.wall > 0 else 0.0


@dataclass
class Context:
    host: str
    port: int
    server_pid: int
    sizes: Sizes
    progress: Progress = field(default_factory=Progress)


# --- connections --------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """A WebSocket client connection that does the opening handshake by hand and then
    hands every received chunk to :meth:`on_data`."""

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.upgraded = False
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.upgraded:
            self.on_data(data)
            return
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) > MAX_HEAD:
                self._reject(f"response head over {MAX_HEAD} bytes")
            self._head = head
            return
        self._head = b""
        status = head[: head.find(b"\r\n")]
        if not status.startswith(b"HTTP/1.1 101"):
            self._reject(f"handshake refused: {status.decode('latin-1')!r}")
            return
        if ACCEPT not in head[:end]:
            self._reject("handshake response without the expected Sec-WebSocket-Accept")
            return
        self.upgraded = True
        self.on_open()
        if not self.opened.done():
            self.opened.set_result(None)
        rest = head[end + 4 :]
        if rest:
            self.on_data(rest)

    def _reject(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(WorkloadError(reason))
        self.transport.abort()

    def on_open(self) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                WorkloadError(f"connection lost during the handshake: {exc or 'closed'}")
            )
        if not self.closed.done():
            self.closed.set_result(None)


class Pool:
    """Every connection a workload opened, so that it can close them all at the end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.clients: list[Client] = []

    async def connect(self, factory: Callable[[bytes], Client], path: str) -> Client:
        loop = asyncio.get_running_loop()
        request = upgrade_request(self.ctx.host, self.ctx.port, path)
        _, client = await loop.create_connection(
            lambda: factory(request), self.ctx.host, self.ctx.port
        )
        self.clients.append(client)
        await client.opened
        return client

    async def connect_many(
        self, factory: Callable[[bytes], Client], path: str, count: int
    ) -> list[Client]:
        """Open ``count`` connections, ``open_concurrency`` at a time."""
        opened: list[Client] = []
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                opened.append(await self.connect(factory, path))

        async with asyncio.TaskGroup() as group:
            for _ in range(min(count, self.ctx.sizes.open_concurrency)):
                group.create_task(worker())
        return opened

    async def close(self, grace: float = 5.0) -> None:
        """Close every connection with a close frame, then drop whatever is left."""
        waits = []
        for client in self.clients:
            if client.closed.done():
                continue
            if client.upgraded and not client.transport.is_closing():
                client.transport.write(CLOSE_FRAME)
            else:
                client.transport.abort()
            waits.append(client.closed)
        if waits:
            await asyncio.wait(waits, timeout=grace)
        self.abort()

    def abort(self) -> None:
        for client in self.clients:
            if not client.closed.done():
                client.transport.abort()
        self.clients.clear()


# --- echo workloads: rtt, throughput, bulk ------------------------------------------------


class EchoPhase:
    """A fixed number of messages echoed across connections, possibly cut short by a
    deadline (then every message already sent is still awaited)."""

    def __init__(self, count: int) -> None:
        self.remaining = count
        self.sent = 0
        self.received = 0
        self.target = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def take(self, wanted: int) -> int:
        granted = wanted if wanted < self.remaining else self.remaining
        self.remaining -= granted
        self.sent += granted
        return granted

    def stop_sending(self) -> None:
        self.remaining = 0
        self.target = self.sent
        self.check()

    def check(self) -> None:
        if self.received >= self.target and not self.done.done():
            self.done.set_result(None)


class EchoClient(Client):
    """Keeps up to ``window`` messages in flight; as soon as k replies are complete it
    writes k more frames in one write."""

    def __init__(self, request: bytes, frame: bytes, reply: bytes, window: int) -> None:
        super().__init__(request)
        self.reply = reply
        self.reply_len = len(reply)
        self.batches = [frame * k for k in range(window + 1)]
        self.window = window
        self.pending = 0
        self.last = b""
        self.phase: EchoPhase | None = None
        self.on_data = self._first_data  # type: ignore[method-assign]

    def start(self, phase: EchoPhase) -> None:
        self.phase = phase
        granted = phase.take(self.window)
        if granted:
            self.transport.write(self.batches[granted])

    def _first_data(self, data: bytes) -> None:
        size = min(len(data), self.reply_len)
        if data[:size] != self.reply[:size]:
            self._fail("first reply is not the expected echo frame")
            return
        del self.on_data
        self.on_data(data)

    def on_data(self, data: bytes) -> None:
        self.last = data
        total = self.pending + len(data)
        done = total // self.reply_len
        if not done:
            self.pending = total
            return
        self.pending = total - done * self.reply_len
        phase = self.phase
        if phase is None:
            self._fail("data received outside a phase")
            return
        phase.received += done
        if done > self.window:
            self._fail("more replies than messages in flight")
        elif phase.remaining:
            granted = phase.take(done)
            if granted:
                self.transport.write(self.batches[granted])
        elif phase.received >= phase.target:
            phase.check()

    def _fail(self, reason: str) -> None:
        if self.phase is not None and not self.phase.done.done():
            self.phase.done.set_exception(WorkloadError(reason))
        self.transport.abort()

    def verify(self) -> None:
        """At the end of a phase the stream must end exactly on a reply frame."""
        if self.pending:
            raise WorkloadError(f"{self.pending} bytes past the last complete reply")
        if self.last:
            tail = expected_tail(self.reply)
            size = min(len(self.last), TAIL)
            if self.last[-size:] != tail[-size:]:
                raise WorkloadError("reply stream does not end with the expected echo frames")


async def _echo_phase(
    ctx: Context,
    clients: Sequence[EchoClient],
    count: int,
    label: str,
    meter: Meter | None,
    time_cap: float,
    unit: str,
    unit_size: float,
) -> EchoPhase:
    loop = asyncio.get_running_loop()
    phase = EchoPhase(count)
    ctx.progress.set(label, lambda: phase.received * unit_size, unit)
    cap = loop.call_later(time_cap, phase.stop_sending)
    if meter is not None:
        meter.start()
    try:
        for client in clients:
            client.start(phase)
        await phase.done
    finally:
        cap.cancel()
    if meter is not None:
        meter.stop()
    for client in clients:
        client.verify()
    return phase


async def _echo_workload(
    ctx: Context,
    *,
    connections: int,
    window: int,
    opcode: int,
    payload: bytes,
    warmup: int,
    count: int,
    unit: str = "msg/s",
    unit_size: float = 1.0,
) -> tuple[EchoPhase, Meter]:
    frame = client_frame(opcode, payload)
    reply = server_frame(opcode, payload)

    def factory(request: bytes) -> Client:
        return EchoClient(request, frame, reply, window)

    pool = Pool(ctx)
    try:
        ctx.progress.set("connecting")
        clients = await pool.connect_many(factory, "/echo", connections)
        echo_clients = [c for c in clients if isinstance(c, EchoClient)]
        # Warm-up and measurement together stay well under the 20 s after which some
        # servers send a keepalive ping (a frame this generator would miscount).
        cap = ctx.sizes.time_cap
        await _echo_phase(ctx, echo_clients, warmup, "warm-up", None, cap / 4, unit, unit_size)
        meter = Meter(ctx.server_pid)
        phase = await _echo_phase(
            ctx, echo_clients, count, "measuring", meter, cap, unit, unit_size
        )
        await pool.close()
        return phase, meter
    finally:
        pool.abort()


async def rtt(ctx: Context) -> Measurement:
    """Round trips per second: one connection, one 32-byte text message in flight."""
    s = ctx.sizes
    phase, meter = await _echo_workload(
        ctx,
        connections=1,
        window=1,
        opcode=OP_TEXT,
        payload=b"r" * s.text_size,
        warmup=s.rtt_warmup,
        count=s.rtt_count,
        unit="round trips/s",
    )
    return Measurement(
        phase.received / meter.wall,
        meter.wall,
        meter.server_cpu,
        meter.gen_cpu,
        f"{phase.received} round trips",
    )


async def throughput(ctx: Context) -> Measurement:
    """Messages per second: many connections, many 32-byte text messages in flight each."""
    s = ctx.sizes
    phase, meter = await _echo_workload(
        ctx,
        connections=s.throughput_connections,
        window=s.throughput_window,
        opcode=OP_TEXT,
        payload=b"t" * s.text_size,
        warmup=s.throughput_warmup,
        count=s.throughput_count,
    )
    return Measurement(
        phase.received / meter.wall,
        meter.wall,
        meter.server_cpu,
        meter.gen_cpu,
        f"{phase.received} messages",
    )


async def bulk(ctx: Context) -> Measurement:
    """MB/s (10^6 bytes of payload echoed per second): 1 MiB binary messages, one at a time."""
    s = ctx.sizes
    payload = bytes(range(256)) * (s.bulk_size // 256) + b"b" * (s.bulk_size % 256)
    phase, meter = await _echo_workload(
        ctx,
        connections=1,
        window=1,
        opcode=OP_BINARY,
        payload=payload,
        warmup=s.bulk_warmup,
        count=s.bulk_count,
        unit="MB/s",
        unit_size=s.bulk_size / 1e6,
    )
    return Measurement(
        phase.received * s.bulk_size / 1e6 / meter.wall,
        meter.wall,
        meter.server_cpu,
        meter.gen_cpu,
        f"{phase.received} messages of {s.bulk_size} bytes",
    )


# --- broadcast ----------------------------------------------------------------------------


class Broadcasts:
    """Broadcasts kept ``window`` in flight: a broadcast is complete once every subscriber
    has its copy and the publisher has its "ok"; each completion lets the next one go.

    Several in flight let each subscriber read a few messages at once, which keeps the
    load generator (one Python process reading 2 000 sockets) from being the limit; the
    server still writes every delivery to every subscriber.
    """

    def __init__(self, subscribers: int, reply_len: int, window: int) -> None:
        self.per_round = subscribers * reply_len
        self.window = window
        self.bytes = 0
        self.oks = 0
        self.sent = 0
        self.completed = 0
        self.count = 0
        self._bytes_base = 0
        self._oks_base = 0
        self.publisher: PublisherClient | None = None
        self.done: asyncio.Future[None] | None = None

    def run(self, count: int) -> asyncio.Future[None]:
        """Send ``count`` broadcasts; the future completes when all are delivered."""
        self.done = asyncio.get_running_loop().create_future()
        self._bytes_base = self.bytes
        self._oks_base = self.oks
        self.count = count
        self.sent = 0
        self.completed = 0
        self._top_up()
        return self.done

    def _top_up(self) -> None:
        assert self.publisher is not None
        n = min(self.count - self.sent, self.window - (self.sent - self.completed))
        if n > 0:
            self.sent += n
            self.publisher.send(n)

    def check(self) -> None:
        """Called on every read: count completed broadcasts and send the next ones."""
        if self.done is None or self.done.done():
            return
        delivered = (self.bytes - self._bytes_base) // self.per_round
        completed = min(self.oks - self._oks_base, delivered)
        if self.bytes - self._bytes_base > self.sent * self.per_round:
            self.fail("subscribers received more bytes than were broadcast")
            return
        if completed == self.completed:
            return
        self.completed = completed
        if completed >= self.count:
            self.done.set_result(None)
        else:
            self._top_up()

    def fail(self, reason: str) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(WorkloadError(reason))


class SubscriberClient(Client):
    def __init__(self, request: bytes, state: Broadcasts) -> None:
        super().__init__(request)
        self.state = state
        self.received = 0
        self.last = b""

    def on_data(self, data: bytes) -> None:
        size = len(data)
        self.received += size
        self.last = data
        state = self.state
        state.bytes += size
        if state.bytes - state._bytes_base >= (state.completed + 1) * state.per_round:
            state.check()


class PublisherClient(Client):
    def __init__(self, request: bytes, state: Broadcasts, frame: bytes) -> None:
        super().__init__(request)
        self.state = state
        self.frame = frame
        self.received = 0
        self.pending = 0
        self.last = b""

    def send(self, n: int) -> None:
        self.transport.write(self.frame * n)

    def on_data(self, data: bytes) -> None:
        self.received += len(data)
        self.last = data
        self.pending += len(data)
        oks, self.pending = divmod(self.pending, len(OK_FRAME))
        state = self.state
        state.oks += oks
        if state.oks - state._oks_base > state.sent:
            state.fail("publisher received more than one reply per broadcast")
            return
        state.check()


async def broadcast(ctx: Context) -> Measurement:
    """Deliveries per second: a 32-byte text message from /pub to every /sub connection."""
    s = ctx.sizes
    payload = b"B" * s.text_size
    reply = server_frame(OP_TEXT, payload)
    state = Broadcasts(s.broadcast_subscribers, len(reply), s.broadcast_window)
    pool = Pool(ctx)
    try:
        ctx.progress.set("connecting", lambda: len(pool.clients), "conn/s")
        subscribers = await pool.connect_many(
            lambda request: SubscriberClient(request, state), "/sub", s.broadcast_subscribers
        )
        frame = client_frame(OP_TEXT, payload)
        publisher = await pool.connect(
            lambda request: PublisherClient(request, state, frame), "/pub"
        )
        assert isinstance(publisher, PublisherClient)
        state.publisher = publisher
        ctx.progress.set(
            "warm-up", lambda: state.completed * s.broadcast_subscribers, "deliveries/s"
        )
        await state.run(s.broadcast_warmup)
        meter = Meter(ctx.server_pid)
        ctx.progress.set(
            "measuring", lambda: state.completed * s.broadcast_subscribers, "deliveries/s"
        )
        meter.start()
        await state.run(s.broadcast_count)
        meter.stop()
        rounds = s.broadcast_warmup + s.broadcast_count
        for sub in subscribers:
            assert isinstance(sub, SubscriberClient)
            if sub.received != rounds * len(reply):
                raise WorkloadError(
                    f"a subscriber got {sub.received} bytes, expected {rounds * len(reply)}"
                )
            # The last read may hold several messages, the first of them cut.
            expected = reply * (len(sub.last) // len(reply) + 2)
            if sub.last != expected[len(expected) - len(sub.last) :]:
                raise WorkloadError("a subscriber's stream does not end with the message")
        if publisher.received != rounds * len(OK_FRAME) or publisher.last[-4:] != OK_FRAME:
            raise WorkloadError("the publisher did not get one 'ok' per broadcast")
        await pool.close()
    finally:
        pool.abort()
    deliveries = s.broadcast_subscribers * s.broadcast_count
    return Measurement(
        deliveries / meter.wall,
        meter.wall,
        meter.server_cpu,
        meter.gen_cpu,
        f"{s.broadcast_count} broadcasts to {s.broadcast_subscribers} subscribers",
    )


# --- memory -------------------------------------------------------------------------------


async def stable_rss(pid: int, polls: int = 25, interval: float = 0.2) -> int:
    """The server's RSS once two readings in a row agree within 1% (at most ``polls``)."""
    previous = rss_kib(pid)
    for _ in range(polls):
        await asyncio.sleep(interval)
        current = rss_kib(pid)
        if abs(current - previous) <= 0.01 * previous:
            return current
        previous = current
    return previous


async def memory(ctx: Context) -> Measurement:
    """Server memory per idle connection, in KiB (RSS growth / connections)."""
    s = ctx.sizes
    pool = Pool(ctx)
    meter = Meter(ctx.server_pid)
    meter.start()
    try:
        ctx.progress.set("baseline")
        await pool.connect_many(Client, "/echo", s.memory_baseline)
        before = await stable_rss(ctx.server_pid)
        ctx.progress.set("connecting", lambda: len(pool.clients) - s.memory_baseline, "conn/s")
        await pool.connect_many(Client, "/echo", s.memory_connections)
        ctx.progress.set("settling")
        after = await stable_rss(ctx.server_pid)
        meter.stop()
        await pool.close(grace=10.0)
    finally:
        pool.abort()
    return Measurement(
        (after - before) / s.memory_connections,
        meter.wall,
        meter.server_cpu,
        meter.gen_cpu,
        f"RSS {before} KiB -> {after} KiB with {s.memory_connections} more connections",
    )


# --- handshakes ---------------------------------------------------------------------------


class HandshakeClient(Client):
    """Opens, closes with code 1000 at once, and waits for the server to drop the TCP
    connection (or, if the server keeps it open after its close frame, drops it itself)."""

    #: How long after the server's close frame to wait for it to close TCP.
    linger = 1.0

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.received = b""
        self._timer: asyncio.TimerHandle | None = None

    def on_open(self) -> None:
        self.transport.write(CLOSE_FRAME)

    def on_data(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= 4 and self._timer is None:
            if self.received[0] != 0x80 | OP_CLOSE:
                self.transport.abort()
                return
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.linger, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)


async def handshakes(ctx: Context) -> Measurement:
    """Complete opening + closing handshakes per second, from 10 concurrent loops."""
    s = ctx.sizes
    loop = asyncio.get_running_loop()
    request = upgrade_request(ctx.host, ctx.port, "/echo")
    left = s.handshake_count
    completed = 0
    live: set[asyncio.BaseTransport] = set()

    async def worker() -> None:
        nonlocal left, completed
        while left > 0:
            left -= 1
            transport, client = await loop.create_connection(
                lambda: HandshakeClient(request), ctx.host, ctx.port
            )
            live.add(transport)
            try:
                await client.opened
                await client.closed
            finally:
                live.discard(transport)
            if client.received[:1] != bytes((0x80 | OP_CLOSE,)):
                raise WorkloadError("the server did not answer the close frame")
            completed += 1

    meter = Meter(ctx.server_pid)
    ctx.progress.set("measuring", lambda: completed, "handshakes/s")
    meter.start()
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(s.handshake_loops):
                group.create_task(worker())
    finally:
        for transport in live:
            transport.abort()
    meter.stop()
    return Measurement(
        completed / meter.wall,
        meter.wall,
        meter.server_cpu,
        meter.gen_cpu,
        f"{completed} handshakes",
    )


Workload = Callable[[Context], Awaitable[Measurement]]


@dataclass(frozen=True)
class WorkloadInfo:
    name: str
    run: Workload
    unit: str
    #: True when a smaller figure is better (memory).
    lower_is_better: bool = False
    #: Run on a server process started just for this workload.
    fresh_server: bool = False


WORKLOADS: dict[str, WorkloadInfo] = {
    w.name: w
    for w in (
        WorkloadInfo("rtt", rtt, "round trips/s"),
        WorkloadInfo("throughput", throughput, "msg/s"),
        WorkloadInfo("bulk", bulk, "MB/s"),
        WorkloadInfo("broadcast", broadcast, "deliveries/s"),
        WorkloadInfo("memory", memory, "KiB/conn", lower_is_better=True, fresh_server=True),
        WorkloadInfo("handshakes", handshakes, "handshakes/s"),
    )
}
