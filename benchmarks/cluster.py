"""One publication to N subscribers spread over several ``backchannel serve`` nodes on Redis.

``python -m benchmarks.cluster [--subscribers N] [--publications K] [--burst B] [--quick]
[--json FILE]``.
One ``redis-server`` (no persistence) on a free loopback port, then, per scenario, fresh
``python -m backchannel serve`` processes (on uvloop when it is installed) with the broker
settings in their environment and a prefix of their own, and this process as the load
generator (raw asyncio protocols, pinned to the last CPU):

* ``memory``: one node with the in-memory broker (no Redis), N subscribers: the baseline.
* ``redis-1``: one node on Redis, N subscribers (scenario A).
* ``redis-2``: two nodes on the same Redis, N / 2 subscribers each (scenario B).
* ``cluster-3``: two nodes on a Redis Cluster of three masters (no replicas: a replica
  adds nothing to its master's load), made by this run with ``redis-cli --cluster
  create``, N / 2 subscribers each (needs the Redis Cluster broker).

Every subscriber is an anonymous WebSocket client on ``/ws`` that sends ``connect`` and
``subscribe`` to ``bench:all`` in one frame, answers the server's pings, and checks and
stamps each publication as it arrives. Then K publications (after a warm-up), one at a
time, each by ``POST /api/publish`` on node 0 over one kept-alive connection: the time of
one is from writing the POST to the last delivery, and the next waits until every
subscriber has it and the API has answered, so each figure is one isolated fan-out. With
Redis, node 0 runs the publish script, Redis PUBLISHes to every node subscribed to the
channel (node 0 included) and each node fans out to its own subscribers.

Then a burst: B more publications sent back to back over a few API connections (each
sends its next when the API has answered), timed to the last delivery of the last one:
publications/s and deliveries/s that the cluster keeps up, and the nodes' CPU per
delivery. Each Redis's (each shard's) INFO commandstats is read around the measured
publications and around the burst: Redis commands per publication, per shard.

The nodes' and Redis's CPU time (``/proc/<pid>/stat``) is read around each publication.
On a 2-core machine the nodes, Redis and the generator cannot each have a core: the
generator is pinned, the servers are left to the scheduler (or, with ``--pin-servers``,
share the first CPU), so ``redis-2`` against ``redis-1`` shows what a second node costs or
gains on the same machine, not what a second machine would give.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import platform
import re
import resource
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

from backchannel.protocol import speedups

from .fanout import (
    WS_GUID,
    BenchError,
    client_text_frame,
    cpu_model,
    mask_payload,
    pin,
    raise_open_files,
)
from .loadgen import process_cpu
from .longpoll import (
    CHANNEL,
    CLIENT_BOUND,
    FIN_TEXT,
    MAX_HEAD,
    OPCODE_CLOSE,
    OPEN_COMMANDS,
    OTHER_LOAD_WARNING,
    BenchClient,
    Tally,
    content_length,
    machine_cpu,
    med_max,
    note,
)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"
OPCODE_PING = 0x9
PONG = 0x8A  # FIN + pong
#: Sessions opening at the same time: quick, and well under the listen backlog.
OPEN_CONCURRENCY = 200
#: File descriptors kept free for the loop, the pipes and the interpreter.
SPARE_FDS = 100
#: Pause after each publication, outside the measured delivery window but inside the CPU
#: cycle: what a node still does after the last write (freeing, GC) is charged to it.
GAP = 0.05
#: API connections sending the burst's publications at once.
BURST_CONNECTIONS = 4
#: Seconds a node or Redis gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
#: The banner ``backchannel serve`` prints first.
BANNER = re.compile(rb"^backchannel on http://127\.0\.0\.1:(\d+)/")
#: Configuration a node must not inherit from this shell: each scenario sets its own.
CONFIG_ENV = re.compile(r"^BACKCHANNEL_(SERVER|AUTH|API|LONGPOLL|BROKER|HUB)_")

#: The nodes' file: a namespace without history or presence, no demo, and new
#: connections and API requests from one address not rate-limited (the generator opens
#: N of them, and the burst publishes as fast as the nodes answer).
NODE_CONFIG = """\
[server]
demo = false
open_rate = 1000000.0
open_burst = 1000000

[api]
rate = 1000000.0
burst = 1000000

[channels.bench]
"""


@dataclass(frozen=True)
class Scenario:
    name: str
    nodes: int
    redis: bool
    #: Redis Cluster masters (0: one plain Redis).
    shards: int = 0


SCENARIOS = {
    "memory": Scenario("memory", 1, False),
    "redis-1": Scenario("redis-1", 1, True),
    "redis-2": Scenario("redis-2", 2, True),
    "cluster-3": Scenario("cluster-3", 2, True, shards=3),
}
DEFAULT_SCENARIOS = list(SCENARIOS)


# --- child processes ----------------------------------------------------------------------


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    """What a child runs before exec: its CPUs (set explicitly, since the driver's own
    pinning would otherwise be inherited), and SIGTERM when the driver dies, even by
    SIGKILL, so that no node or Redis outlives a run that could not clean up."""

    def setup() -> None:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


class Process:
    """A node or Redis: its CPU time from /proc, SIGTERM then SIGKILL to stop it."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.log = log

    @staticmethod
    async def spawn(
        argv: Sequence[str],
        log: Path,
        env: dict[str, str] | None,
        cpus: set[int] | None,
        *,
        banner: bool,
    ) -> asyncio.subprocess.Process:
        """Start a child; what it prints goes to ``log``, except stdout with ``banner``
        (a pipe, for the node's first line)."""
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if banner else err,
                stderr=err,
                cwd=ROOT,
                env=env,
                # Ctrl-C reaches the driver only, which then stops every child in order.
                start_new_session=True,
                preexec_fn=_child_setup(cpus),
            )
        return proc

    def cpu(self) -> float:
        try:
            return process_cpu(self.proc.pid)
        except OSError:
            raise BenchError(
                f"{self.name} exited (code {self.proc.returncode}){self.tail()}"
            ) from None

    def tail(self) -> str:
        """The end of the child's stderr, for an error message."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace").strip()
            if text:
                return ":\n  " + "\n  ".join(text.splitlines()[-8:])
        return ""

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self.proc.wait()
        except TimeoutError:
            self.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.proc.wait()

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cluster_port() -> int:
    """A free port for a Redis Cluster node: at most 55535, with the bus port (10 000
    higher) free too."""
    for _ in range(100):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((HOST, port + 10000))
            except OSError:
                continue
        return port
    raise BenchError("no free port pair for a Redis Cluster node")


class Redis(Process):
    """Debian's redis-server on a free loopback port, without persistence (as
    tests/helpers/redis_server.py starts it)."""

    port = 0

    @classmethod
    async def start(cls, folder: Path, cpus: set[int] | None, limit: float, *extra: str) -> Redis:
        port = cluster_port() if extra else free_port()
        folder = folder / f"redis-{port}"
        folder.mkdir()
        argv = [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            HOST,
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *extra,
        ]
        log = folder / "redis.log"
        redis = cls("redis-server", await cls.spawn(argv, log, None, cpus, banner=False), log)
        redis.port = port
        deadline = time.monotonic() + limit
        while not await redis.ping():
            if redis.proc.returncode is not None or time.monotonic() > deadline:
                await redis.stop()
                raise BenchError(f"redis-server did not start on port {port}{redis.tail()}")
            await asyncio.sleep(0.02)
        return redis

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    async def ping(self) -> bool:
        try:
            return (await self.command("PING")).startswith(b"PONG")
        except (OSError, TimeoutError, BenchError):
            return False

    async def command(self, *args: str) -> bytes:
        """One command on a connection of its own: its simple or bulk string reply."""
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection(HOST, self.port)
            try:
                request = b"*%d\r\n" % len(args)
                for arg in args:
                    request += b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode())
                writer.write(request)
                line = await reader.readline()
                if line.startswith(b"$"):
                    size = int(line[1:])
                    return b"" if size < 0 else (await reader.readexactly(size + 2))[:-2]
                if line.startswith((b"+", b":")):
                    return line[1:].rstrip()
                raise BenchError(f"redis-server on port {self.port}: {line[:200]!r}")
            finally:
                writer.close()

    async def commands(self) -> dict[str, int]:
        """Commands run so far, by name (INFO commandstats), without the INFOs that
        read them."""
        stats = await self.command("INFO", "commandstats")
        counts: dict[str, int] = {}
        for line in stats.decode().splitlines():
            name, _, rest = line.partition(":")
            if name.startswith("cmdstat_") and rest.startswith("calls="):
                counts[name[len("cmdstat_") :]] = int(rest[6:].partition(",")[0])
        counts.pop("info", None)
        return counts


async def start_shards(
    folder: Path, shards: int, cpus: set[int] | None, limit: float
) -> list[Redis]:
    """A Redis Cluster of ``shards`` masters and no replicas (a replica adds no load to
    its master's throughput), made with ``redis-cli --cluster create``."""
    started: list[Redis] = []
    try:
        for _ in range(shards):
            started.append(
                await Redis.start(
                    folder, cpus, limit, "--cluster-enabled", "yes",
                    "--cluster-node-timeout", "5000",
                )
            )  # fmt: skip
        hosts = [f"{HOST}:{redis.port}" for redis in started]
        create = await asyncio.create_subprocess_exec(
            REDIS_CLI, "--cluster", "create", *hosts, "--cluster-replicas", "0",
            "--cluster-yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(limit):
            out, _ = await create.communicate()
        if create.returncode != 0:
            raise BenchError(f"redis-cli --cluster create failed: {out[-500:]!r}")
        deadline = time.monotonic() + limit
        for redis in started:
            while b"cluster_state:ok" not in await redis.command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise BenchError(f"the cluster is not ready within {limit:g} s")
                await asyncio.sleep(0.05)
        return started
    except BaseException:
        await asyncio.gather(*(redis.stop() for redis in started))
        raise


def cluster_url(shards: Sequence[Redis]) -> str:
    """The broker URL of a Redis Cluster: its masters as seeds."""
    return "redis+cluster://" + ",".join(f"{HOST}:{r.port}" for r in shards) + "/"


class Node(Process):
    """``python -m backchannel serve`` on a port of its own."""

    port = 0
    _drain: asyncio.Task[None] | None = None

    @classmethod
    async def start(
        cls,
        name: str,
        config: Path,
        env: dict[str, str],
        loop: str,
        cpus: set[int] | None,
        limit: float,
    ) -> Node:
        argv = [sys.executable, "-m", "backchannel", "serve", "--config", str(config)]
        argv += ["--host", HOST, "--port", "0", "--loop", loop]
        log = config.parent / f"{name}.log"
        node = cls(name, await cls.spawn(argv, log, env, cpus, banner=True), log)
        try:
            assert node.proc.stdout is not None
            async with asyncio.timeout(limit):
                line = await node.proc.stdout.readline()
            match = BANNER.match(line)
            if match is None:
                raise BenchError(f"{name}: expected the banner, got {line[:200]!r}{node.tail()}")
            node.port = int(match[1])
        except TimeoutError:
            await node.stop()
            raise BenchError(f"{name}: no banner within {limit:g} s{node.tail()}") from None
        except BaseException:
            await node.stop()
            raise
        # Whatever it prints later must not fill the pipe and stall it.
        node._drain = asyncio.get_running_loop().create_task(node._read_rest())
        return node

    async def _read_rest(self) -> None:
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    async def stop(self) -> None:
        await super().stop()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


# --- the load generator --------------------------------------------------------------------


class Pings:
    """Pings answered during the publications: the nodes ping every connection every
    20 s (not configurable in ``backchannel serve``), and a ping and its pong that fall
    inside a measured window add to it. Reported, so that a run where they did shows."""

    count = 0


class NodeClient(BenchClient):
    """A subscriber of ``/ws``: benchmarks.longpoll's WebSocket client, plus pongs.

    The node pings each connection 20 s after it opened and then every 20 s; a ping
    not answered within 20 s closes the connection, and a slow run keeps its
    connections that long.
    """

    def __init__(self, tally: Tally, port: int) -> None:
        super().__init__(tally, port)
        self.key = base64.b64encode(os.urandom(16))
        self.upgraded = False

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"GET /ws HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (HOST.encode(), self.port, self.key)
        )

    def line(self, obj: dict[str, Any], now: int) -> None:
        # The burst's publications come from several API connections at once, so their
        # numbers arrive in the order the node accepted them, not in numeric order.
        burst_from = getattr(self.tally, "burst_from", None)
        if obj.get("push") == "publication" and burst_from is not None:
            n = obj["data"]["n"]
            if obj["channel"] != CHANNEL or not burst_from <= n < len(self.tally.arrivals):
                raise BenchError(f"publication {n} on {obj['channel']} in the burst")
            self.tally.delivered(n, now)
            return
        super().line(obj, now)

    def receive(self, now: int) -> None:
        buffer = self.buffer
        assert self.transport is not None
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
            self.transport.write(client_text_frame(OPEN_COMMANDS))
        pos = 0
        # Each pass consumes one whole frame or stops. The server's frames are small and
        # unmasked: text (one or more lines), a ping, or a close that ends the run.
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
            pos = end
            if first == FIN_TEXT and not second & 0x80:
                for text in payload.split(b"\n"):
                    self.line(json.loads(text), now)
            elif first == 0x80 | OPCODE_PING and size <= 125:
                key = os.urandom(4)
                pong = bytes([PONG, 0x80 | size]) + key + mask_payload(payload, key)
                self.transport.write(pong)
                Pings.count += 1
            elif first & 0x0F == OPCODE_CLOSE and size >= 2:
                code = int.from_bytes(payload[:2], "big")
                raise BenchError(f"the server closed a connection with {code}: {payload[2:]!r}")
            else:
                raise BenchError(f"unexpected frame, first bytes {first:#04x} {second:#04x}")
        del buffer[:pos]


class ApiClient(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection to node 0's API, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[tuple[int, bytes, int]] | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done() and not self.closing:
            self.answer.set_exception(BenchError(f"the API connection was lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        head = bytes(self.buffer[:end])
        try:
            size = end + 4 + content_length(head)
        except (BenchError, ValueError) as exc:
            self.answer.set_exception(BenchError(str(exc)))
            return
        if len(self.buffer) >= size:
            body = bytes(self.buffer[end + 4 : size])
            del self.buffer[:size]
            self.answer.set_result((int(head[9:12]), body, now))

    def close(self) -> None:
        self.closing = True
        answer = self.answer
        if answer is not None and answer.done() and not answer.cancelled():
            answer.exception()  # retrieved: the run is ending on this error or an earlier one
        if self.transport is not None:
            self.transport.abort()

    def post(self, request: bytes) -> tuple[int, asyncio.Future[tuple[int, bytes, int]]]:
        """Write a request: its send stamp (monotonic ns) and the future of its answer
        (status, body, arrival stamp)."""
        if self.transport is None or self.transport.is_closing():
            raise BenchError("the API connection was closed")
        self.answer = asyncio.get_running_loop().create_future()
        start = time.monotonic_ns()
        self.transport.write(request)
        return start, self.answer


def publish_request(port: int, key: str, i: int) -> bytes:
    body = json.dumps({"channel": CHANNEL, "data": {"n": i}}).encode()
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: apikey %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (HOST.encode(), port, key.encode(), len(body), body)
    )


async def open_sessions(tally: Tally, port: int, limit: float) -> None:
    """Open ``tally.sessions`` subscribers of one node, OPEN_CONCURRENCY at a time."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> None:
        async with gate:
            _, client = await loop.create_connection(lambda: NodeClient(tally, port), HOST, port)
            # Shielded: a cancelled wait must not cancel the client's own future.
            await asyncio.shield(client.ready)

    opening = asyncio.gather(*(one() for _ in range(tally.sessions)))
    waiting: set[asyncio.Future[Any]] = {opening, tally.error}
    try:
        async with asyncio.timeout(limit):
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        raise BenchError(
            f"only {tally.live} of {tally.sessions} sessions subscribed on port {port} "
            f"within {limit:g} s"
        ) from None
    finally:
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, BenchError, OSError):
                await opening
    if tally.error.done():
        tally.error.result()
    opening.result()


async def delivered(tallies: Sequence[Tally], i: int, limit: float) -> None:
    """Wait until every subscriber of every node has publication i; fail on any error."""
    pending: set[asyncio.Future[None]] = {tally.complete[i] for tally in tallies}
    errors = {tally.error for tally in tallies}
    try:
        async with asyncio.timeout(limit):
            while pending:
                done, _ = await asyncio.wait(pending | errors, return_when=asyncio.FIRST_COMPLETED)
                for tally in tallies:
                    if tally.error.done():
                        tally.error.result()
                pending -= done
    except TimeoutError:
        got = ", ".join(f"{len(t.arrivals[i])} of {t.sessions}" for t in tallies)
        raise BenchError(f"publication {i}: received by {got} within {limit:g} s") from None


# --- one scenario --------------------------------------------------------------------------


@dataclass
class Result:
    """The figures of one scenario; times in ms, CPU in seconds."""

    scenario: str
    nodes: int
    subscribers: list[int]
    publications: int
    loop: str = ""
    setup_s: float = 0.0
    #: Per publication, from writing the POST: the API's answer, the median and the last
    #: delivery over every subscriber, and the last delivery of each node's subscribers.
    api_ms: list[float] = field(default_factory=list)
    t50_ms: list[float] = field(default_factory=list)
    tlast_ms: list[float] = field(default_factory=list)
    node_tlast_ms: list[list[float]] = field(default_factory=list)
    #: Summed over the K publications. Delivery: from the POST to the last delivery and
    #: the API answer. Cycle: the same plus GAP.
    delivery_wall_s: float = 0.0
    cycle_wall_s: float = 0.0
    node_delivery_cpu_s: list[float] = field(default_factory=list)
    node_cycle_cpu_s: list[float] = field(default_factory=list)
    redis_delivery_cpu_s: float = 0.0
    redis_cycle_cpu_s: float = 0.0
    generator_delivery_cpu_s: float = 0.0
    generator_cycle_cpu_s: float = 0.0
    #: CPU used by other processes during the publications, % of one core.
    other_load_pct: float = 0.0
    #: Pings answered during the publications.
    pings: int = 0
    #: Redis commands each Redis (each shard) ran during the measured publications, by
    #: name (INFO commandstats; background work such as refreshes included).
    redis_ops: list[dict[str, int]] = field(default_factory=list)
    #: The burst: publications sent back to back by BURST_CONNECTIONS API connections,
    #: from the first POST to the last delivery of the last one.
    burst: int = 0
    burst_wall_s: float = 0.0
    burst_node_cpu_s: list[float] = field(default_factory=list)
    burst_redis_cpu_s: float = 0.0
    burst_ops: list[dict[str, int]] = field(default_factory=list)

    @property
    def ops_per_publication(self) -> float:
        """Redis commands per publication, over every Redis (every shard)."""
        return sum(sum(ops.values()) for ops in self.redis_ops) / self.publications

    @property
    def publications_per_s(self) -> float:
        return self.burst / self.burst_wall_s if self.burst_wall_s else 0.0

    @property
    def burst_deliveries_per_s(self) -> float:
        return self.publications_per_s * self.total

    @property
    def cpu_per_delivery_us(self) -> float:
        """The nodes' CPU per delivery in the burst, µs."""
        deliveries = self.burst * self.total
        return 1e6 * sum(self.burst_node_cpu_s) / deliveries if deliveries else 0.0

    @property
    def total(self) -> int:
        return sum(self.subscribers)

    @property
    def deliveries_per_s(self) -> float:
        return self.total / (statistics.median(self.tlast_ms) / 1e3)

    @property
    def client_bound(self) -> bool:
        return self.generator_delivery_cpu_s >= CLIENT_BOUND * self.delivery_wall_s

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            deliveries_per_s=self.deliveries_per_s,
            client_bound=self.client_bound,
            ops_per_publication=self.ops_per_publication,
            publications_per_s=self.publications_per_s,
            burst_deliveries_per_s=self.burst_deliveries_per_s,
            cpu_per_delivery_us=self.cpu_per_delivery_us,
        )
        return out


def node_env(scenario: Scenario, servers: Sequence[Redis], api_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not CONFIG_ENV.match(k)}
    env.update(
        BACKCHANNEL_AUTH_ANONYMOUS="true",
        # Shared by the nodes of a scenario, as a cluster needs.
        BACKCHANNEL_AUTH_SECRET=secrets.token_urlsafe(32),
        BACKCHANNEL_API_KEY=api_key,
    )
    if scenario.redis:
        assert servers
        env["BACKCHANNEL_BROKER_URL"] = cluster_url(servers) if scenario.shards else servers[0].url
        # A prefix per scenario: nothing of an earlier scenario is seen by the next.
        env["BACKCHANNEL_BROKER_PREFIX"] = f"bench-{scenario.name}-{secrets.token_hex(4)}"
    return env


def share(total: int, parts: int) -> list[int]:
    """``total`` subscribers over ``parts`` nodes, the remainder on the first ones."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run_scenario(
    scenario: Scenario,
    args: argparse.Namespace,
    folder: Path,
    servers: Sequence[Redis],
    server_cpus: set[int] | None,
) -> Result:
    counts = share(args.subscribers, scenario.nodes)
    total_pubs = args.warmup + args.publications
    result = Result(scenario.name, scenario.nodes, counts, args.publications, loop=args.loop)
    result.burst = args.burst
    api_key = secrets.token_urlsafe(24)
    env = node_env(scenario, servers, api_key)
    config = folder / "node.toml"
    config.write_text(NODE_CONFIG)
    nodes: list[Node] = []
    tallies: list[Tally] = []
    api = ApiClient()
    try:
        for n in range(scenario.nodes):
            name = f"{scenario.name} node {n}"
            nodes.append(await Node.start(name, config, env, args.loop, server_cpus, args.timeout))
        note(f"{scenario.name}: {scenario.nodes} node(s), opening {args.subscribers} sessions")
        start = time.monotonic()
        for node, count in zip(nodes, counts, strict=True):
            tally = Tally(count, total_pubs + args.burst)
            tallies.append(tally)
            await open_sessions(tally, node.port, args.timeout)
        result.setup_s = time.monotonic() - start
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: api, HOST, nodes[0].port)

        note(
            f"{scenario.name}: {result.setup_s:.1f} s to subscribe; "
            f"{args.warmup} warm-up + {args.publications} publications"
        )
        result.node_delivery_cpu_s = [0.0] * len(nodes)
        result.node_cycle_cpu_s = [0.0] * len(nodes)
        result.node_tlast_ms = [[] for _ in nodes]
        # The generator makes no cycles while measuring (bytes, small dicts): its
        # collector is off so that its pauses are not counted as delivery time. The
        # nodes' stays on: their pauses are part of what is measured.
        gc.collect()
        gc.disable()
        start_clocks = read_clocks(nodes, servers)
        pings = 0
        ops_before: list[dict[str, int]] = []
        for i in range(total_pubs):
            measured = i >= args.warmup
            if i == args.warmup:
                ops_before = [await redis.commands() for redis in servers]
                start_clocks, pings = read_clocks(nodes, servers), Pings.count
            for tally in tallies:
                if tally.error.done():
                    tally.error.result()  # a subscriber failed since the last publication
            before = read_clocks(nodes, servers)
            sent, answer = api.post(publish_request(nodes[0].port, api_key, i))
            await delivered(tallies, i, args.timeout)
            try:
                async with asyncio.timeout(args.timeout):
                    status, body, answered = await answer
            except TimeoutError:
                raise BenchError(f"publication {i}: no API answer in {args.timeout:g} s") from None
            if status != 200:
                raise BenchError(f"publication {i}: API answered {status} {body[:200]!r}")
            after = read_clocks(nodes, servers)
            await asyncio.sleep(GAP)
            settled = read_clocks(nodes, servers)
            if not measured:
                continue
            arrivals = [stamp - sent for tally in tallies for stamp in tally.arrivals[i]]
            result.api_ms.append((answered - sent) / 1e6)
            result.t50_ms.append(statistics.median(arrivals) / 1e6)
            result.tlast_ms.append(max(arrivals) / 1e6)
            for n, tally in enumerate(tallies):
                result.node_tlast_ms[n].append((max(tally.arrivals[i]) - sent) / 1e6)
            # The window ends at the later of the last delivery and the API's answer.
            result.delivery_wall_s += after.wall - before.wall
            result.cycle_wall_s += settled.wall - before.wall
            for n in range(len(nodes)):
                result.node_delivery_cpu_s[n] += after.nodes[n] - before.nodes[n]
                result.node_cycle_cpu_s[n] += settled.nodes[n] - before.nodes[n]
            result.redis_delivery_cpu_s += after.redis - before.redis
            result.redis_cycle_cpu_s += settled.redis - before.redis
            result.generator_delivery_cpu_s += after.generator - before.generator
            result.generator_cycle_cpu_s += settled.generator - before.generator
        result.other_load_pct = start_clocks.others_pct(read_clocks(nodes, servers))
        result.pings = Pings.count - pings
        result.redis_ops = [
            ops_delta(before, await redis.commands())
            for before, redis in zip(ops_before, servers, strict=True)
        ]
        if args.burst:
            await run_burst(result, args, nodes, servers, tallies, api_key, total_pubs)
        return result
    except BenchError as exc:
        # A lost connection is usually a node that died: say which, with its last words.
        await asyncio.sleep(0.1)
        dead = [node for node in nodes if node.proc.returncode is not None]
        if dead:
            node = dead[0]
            raise BenchError(
                f"{exc}; {node.name} exited (code {node.proc.returncode}){node.tail()}"
            ) from None
        raise
    finally:
        gc.enable()
        api.close()
        # The clients first (abort: no closing handshakes, no TIME_WAIT sockets left for
        # the next scenario), then the nodes, which then have nobody to say goodbye to.
        for tally in tallies:
            tally.close()
        await asyncio.gather(*(node.stop() for node in nodes))


async def run_burst(
    result: Result,
    args: argparse.Namespace,
    nodes: Sequence[Node],
    servers: Sequence[Redis],
    tallies: Sequence[Tally],
    api_key: str,
    first: int,
) -> None:
    """``args.burst`` publications back to back over BURST_CONNECTIONS API connections
    to node 0 (each sends its next when the API answered the last, not waiting for
    deliveries): how many publications and deliveries per second the cluster keeps up."""
    note(f"{result.scenario}: a burst of {args.burst} publications")
    loop = asyncio.get_running_loop()
    clients = [ApiClient() for _ in range(BURST_CONNECTIONS)]
    try:
        for client in clients:
            await loop.create_connection(lambda c=client: c, HOST, nodes[0].port)  # type: ignore[misc]
        ops_before = [await redis.commands() for redis in servers]
        for tally in tallies:
            tally.burst_from = first  # type: ignore[attr-defined]
        before = read_clocks(nodes, servers)

        async def send(client: ApiClient, numbers: range) -> None:
            for i in numbers:
                _, answer = client.post(publish_request(nodes[0].port, api_key, i))
                status, body, _ = await answer
                if status != 200:
                    raise BenchError(f"publication {i}: API answered {status} {body[:200]!r}")

        last = first + args.burst
        senders = [
            send(client, range(first + n, last, BURST_CONNECTIONS))
            for n, client in enumerate(clients)
        ]
        async with asyncio.timeout(args.timeout):
            await asyncio.gather(*senders)
        for i in range(first, last):
            await delivered(tallies, i, args.timeout)
        after = read_clocks(nodes, servers)
        result.burst_ops = [
            ops_delta(b, await redis.commands())
            for b, redis in zip(ops_before, servers, strict=True)
        ]
    finally:
        for client in clients:
            client.close()
    # The burst ends at the last delivery, which the clients stamped.
    start_ns = before.wall_ns
    end_ns = max(max(tally.arrivals[i]) for tally in tallies for i in range(first, last))
    result.burst_wall_s = (end_ns - start_ns) / 1e9
    result.burst_node_cpu_s = [a - b for a, b in zip(after.nodes, before.nodes, strict=True)]
    result.burst_redis_cpu_s = after.redis - before.redis


def ops_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two readings of INFO commandstats, by name."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in sorted(delta.items()) if calls}


@dataclass(frozen=True)
class Clocks:
    """CPU seconds of the nodes, Redis, this process and the whole machine, and the
    wall clock, read together."""

    nodes: list[float]
    redis: float
    generator: float
    machine: float
    wall: float
    #: The wall clock in the clients' units (monotonic ns), to compare with arrivals.
    wall_ns: int

    def others_pct(self, end: Clocks) -> float:
        """CPU used by other processes since this reading, in % of one core."""
        ours = sum(end.nodes) - sum(self.nodes) + end.redis - self.redis
        ours += end.generator - self.generator
        return 100 * (end.machine - self.machine - ours) / (end.wall - self.wall)


def read_clocks(nodes: Sequence[Node], servers: Sequence[Redis]) -> Clocks:
    return Clocks(
        [node.cpu() for node in nodes],
        sum(redis.cpu() for redis in servers),
        time.process_time(),
        machine_cpu(),
        time.monotonic(),
        time.monotonic_ns(),
    )


# --- the shard check ----------------------------------------------------------------------

#: The shard check: channels the publications are spread over (round robin), each
#: publication kept in a history of this size, and publishes in flight at once.
SHARD_CHANNELS = 300
SHARD_HISTORY_SIZE = 100
SHARD_INFLIGHT = 32


class Quiet:
    """A broker handler that drops everything: the shard check publishes only."""

    def on_publication(self, publication: Any) -> None: ...

    def on_join(self, channel: str, who: Any) -> None: ...

    def on_leave(self, channel: str, who: Any) -> None: ...

    def on_lost(self, channel: str) -> None: ...

    def on_control(self, message: dict[str, Any]) -> None: ...


@dataclass
class ShardLoad:
    """One Redis (one shard) in the shard check."""

    port: int
    channels: int = 0
    publications: int = 0
    commands: int = 0
    cpu_s: float = 0.0


@dataclass
class ShardCheck:
    """Publications spread over many channels through the broker itself (history on),
    on one Redis and then on the cluster: each Redis's commands against the model's
    (commands per publication on one Redis, times the publications of the channels
    whose slot it owns)."""

    target: str
    publications: int
    wall_s: float = 0.0
    shards: list[ShardLoad] = field(default_factory=list)

    @property
    def commands_per_publication(self) -> float:
        return sum(s.commands for s in self.shards) / self.publications

    @property
    def cpu_per_publication_us(self) -> float:
        return 1e6 * sum(s.cpu_s for s in self.shards) / self.publications


def slot_owners(nodes_text: str) -> dict[int, int]:
    """Slot -> port of the master that owns it, from CLUSTER NODES."""
    owners: dict[int, int] = {}
    for line in nodes_text.splitlines():
        fields = line.split()
        if len(fields) < 9 or "master" not in fields[2]:
            continue
        port = int(fields[1].partition("@")[0].rpartition(":")[2])
        for span in fields[8:]:
            if span.startswith("["):
                continue  # a slot being migrated
            low, _, high = span.partition("-")
            for slot in range(int(low), int(high or low) + 1):
                owners[slot] = port
    return owners


async def shard_check(
    target: str, url: str, servers: Sequence[Redis], publications: int, *, kept: bool = True
) -> ShardCheck:
    """Publish ``publications`` over SHARD_CHANNELS channels through a RedisBroker on
    ``url`` (with a history of SHARD_HISTORY_SIZE when ``kept``, else none), and read
    each server's commands and CPU around it."""
    from redis.crc import key_slot

    from backchannel.hub.brokers import HistoryOptions
    from backchannel.hub.brokers.redis import RedisBroker
    from backchannel.hub.brokers.redis.keys import Keys

    prefix = f"shards-{secrets.token_hex(4)}"
    channels = [f"bench:{n}" for n in range(SHARD_CHANNELS)]
    history = HistoryOptions(size=SHARD_HISTORY_SIZE, ttl=300.0) if kept else None
    check = ShardCheck(target, publications)
    owner: dict[str, int] = {}
    if len(servers) > 1:
        slots = slot_owners((await servers[0].command("CLUSTER", "NODES")).decode())
        keys = Keys(prefix)
        owner = {c: slots[key_slot(keys.stream(c).encode())] for c in channels}
    else:
        owner = dict.fromkeys(channels, servers[0].port)
    by_port = {redis.port: ShardLoad(redis.port) for redis in servers}
    broker = RedisBroker(url, prefix=prefix)
    await broker.start(Quiet())
    try:
        # Warm-up: every channel once, so that every shard has the scripts loaded and
        # every stream exists; then only the steady state is counted.
        for channel in channels:
            await broker.publish(channel, {"n": -1}, history=history)
        ops_before = [await redis.commands() for redis in servers]
        cpu_before = [redis.cpu() for redis in servers]
        start = time.monotonic()
        numbers = iter(range(publications))

        async def publisher() -> None:
            for n in numbers:
                await broker.publish(channels[n % len(channels)], {"n": n}, history=history)

        await asyncio.gather(*(publisher() for _ in range(SHARD_INFLIGHT)))
        check.wall_s = time.monotonic() - start
        for n, redis in enumerate(servers):
            load = by_port[redis.port]
            load.commands = sum(ops_delta(ops_before[n], await redis.commands()).values())
            load.cpu_s = redis.cpu() - cpu_before[n]
    finally:
        await broker.close()
    for n in range(publications):
        load = by_port[owner[channels[n % len(channels)]]]
        load.publications += 1
    for channel in channels:
        by_port[owner[channel]].channels += 1
    check.shards = list(by_port.values())
    return check


#: The refresh costs: channels a node holds (each with one presence entry: personal
#: channels, the worst case), and refreshes timed.
REFRESH_CHANNELS = 10_000
REFRESH_ROUNDS = 10


@dataclass
class RefreshCost:
    """What one node's periodic refreshes cost Redis, per channel it holds."""

    what: str
    items: int
    rounds: int
    commands: int = 0
    cpu_s: float = 0.0
    #: This process's CPU: what the refresh costs the node that sends it.
    node_cpu_s: float = 0.0
    wall_s: float = 0.0

    @property
    def per_item_us(self) -> float:
        return 1e6 * self.cpu_s / (self.items * self.rounds)

    @property
    def node_per_item_us(self) -> float:
        return 1e6 * self.node_cpu_s / (self.items * self.rounds)


async def refresh_costs(redis_server: Redis) -> list[RefreshCost]:
    """Occupancy and presence refreshes of REFRESH_CHANNELS channels, REFRESH_ROUNDS
    times each, on one Redis: Redis commands and CPU per channel refreshed."""
    import redis.asyncio as redis_client

    from backchannel.hub.brokers.calls import BrokerCalls
    from backchannel.hub.brokers.redis.keys import Keys
    from backchannel.hub.brokers.redis.occupancy import RedisOccupancy
    from backchannel.hub.brokers.redis.presence import RedisPresence
    from backchannel.hub.wire import ClientInfo

    client = redis_client.Redis.from_url(redis_server.url)
    keys = Keys(f"refresh-{secrets.token_hex(4)}")

    def now_ms() -> int:
        return int(time.time() * 1000)

    occupancy = RedisOccupancy(client, keys, "node-a", now_ms, BrokerCalls())
    presence = RedisPresence(client, keys, now_ms, BrokerCalls())
    channels = [f"user:{n}" for n in range(REFRESH_CHANNELS)]
    entries = [(c, ClientInfo(f"client-{n}", f"user-{n}")) for n, c in enumerate(channels)]
    try:
        for channel in channels:
            await occupancy.occupy(channel)
        await presence.refresh(entries, 60.0)
        costs = []
        for what, refresh in (
            ("occupancy, per channel held", occupancy.refresh),
            ("presence, per entry (one per channel)", lambda: presence.refresh(entries, 60.0)),
        ):
            cost = RefreshCost(what, REFRESH_CHANNELS, REFRESH_ROUNDS)
            before, cpu = await redis_server.commands(), redis_server.cpu()
            start, node_cpu = time.monotonic(), time.process_time()
            for _ in range(REFRESH_ROUNDS):
                await refresh()
            cost.wall_s = time.monotonic() - start
            cost.node_cpu_s = time.process_time() - node_cpu
            cost.cpu_s = redis_server.cpu() - cpu
            cost.commands = sum(ops_delta(before, await redis_server.commands()).values())
            costs.append(cost)
        return costs
    finally:
        await client.flushdb()
        await client.aclose()


def refresh_table(costs: Sequence[RefreshCost]) -> str:
    rows = [
        "| refresh | channels | commands per channel | Redis CPU per channel, µs "
        "| node CPU per channel, µs | wall per refresh, ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for cost in costs:
        per = cost.commands / (cost.items * cost.rounds)
        rows.append(
            f"| {cost.what} | {cost.items} | {per:.2f} | {cost.per_item_us:.2f} "
            f"| {cost.node_per_item_us:.2f} | {1e3 * cost.wall_s / cost.rounds:.0f} |"
        )
    return "\n".join(rows)


def shard_table(checks: Sequence[ShardCheck]) -> str:
    """The first check is the model's base (one Redis, history on)."""
    base = checks[0].commands_per_publication if checks else 0.0
    rows = [
        "| target | shard | channels | publications | commands: model / measured | "
        "measured / model | commands/s | Redis CPU per publication, µs |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for check in checks:
        for n, load in enumerate(check.shards):
            model = base * load.publications
            ratio = f"{load.commands / model:.2f}" if model else "-"
            per_pub = f"{1e6 * load.cpu_s / load.publications:.0f}" if load.publications else "-"
            expected = f"{model:,.0f}"
            if check.target.endswith("(no history)"):
                expected, ratio = "-", "-"  # another workload: not the model's
            rows.append(
                f"| {check.target} | {n + 1} ({load.port}) | {load.channels} | {load.publications} "
                f"| {expected} / {load.commands:,.0f} | {ratio} "
                f"| {load.commands / check.wall_s:,.0f} | {per_pub} |".replace(",", " ")
            )
    return "\n".join(rows)


# --- report --------------------------------------------------------------------------------


def pct(cpu_s: float, wall_s: float) -> str:
    return f"{100 * cpu_s / wall_s:.0f}%"


def per_pub(cpu_s: float, k: int) -> str:
    return f"{1e3 * cpu_s / k:.0f}"


def timing_table(results: Sequence[Result]) -> str:
    base = next((r for r in results if r.scenario == "redis-1"), None)
    rows = [
        "| scenario | nodes x subscribers | API answer, ms | t_50, ms (median / max) "
        "| t_last, ms (median / max) | t_last per node, ms (median) | deliveries/s "
        "| vs redis-1 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rate = f"{r.deliveries_per_s:,.0f}".replace(",", " ") + ("*" if r.client_bound else "")
        ratio = f"{r.deliveries_per_s / base.deliveries_per_s:.2f}" if base else "-"
        per_node = " / ".join(f"{statistics.median(t):.1f}" for t in r.node_tlast_ms)
        rows.append(
            f"| {r.scenario} | {' + '.join(map(str, r.subscribers))} "
            f"| {statistics.median(r.api_ms):.1f} | {med_max(r.t50_ms)} "
            f"| {med_max(r.tlast_ms)} | {per_node} | {rate} | {ratio} |"
        )
    return "\n".join(rows)


def cpu_table(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | CPU per publication, ms: node(s) / Redis / generator "
        "| CPU during delivery, % of a core: node(s) / Redis / generator |",
        "| --- | ---: | ---: |",
    ]
    for r in results:
        k, wall = r.publications, r.delivery_wall_s
        redis = r.scenario != "memory"
        cycle = [per_pub(c, k) for c in r.node_cycle_cpu_s]
        cycle += [per_pub(r.redis_cycle_cpu_s, k) if redis else "-"]
        cycle += [per_pub(r.generator_cycle_cpu_s, k)]
        during = [pct(c, wall) for c in r.node_delivery_cpu_s]
        during += [pct(r.redis_delivery_cpu_s, wall) if redis else "-"]
        during += [pct(r.generator_delivery_cpu_s, wall)]
        rows.append(f"| {r.scenario} | {' / '.join(cycle)} | {' / '.join(during)} |")
    return "\n".join(rows)


def top_ops(ops: dict[str, int], publications: int) -> str:
    """The commands most run, per publication."""
    ranked = sorted(ops.items(), key=lambda item: -item[1])[:4]
    return ", ".join(f"{name} {calls / publications:.2f}" for name, calls in ranked) or "-"


def redis_table(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | Redis commands per publication | by command, per publication "
        "| per Redis (shard): commands per publication |",
        "| --- | ---: | --- | --- |",
    ]
    for r in results:
        if not r.redis_ops:
            continue
        every: dict[str, int] = {}
        for ops in r.redis_ops:
            for name, calls in ops.items():
                every[name] = every.get(name, 0) + calls
        shards = " / ".join(f"{sum(ops.values()) / r.publications:.2f}" for ops in r.redis_ops)
        rows.append(
            f"| {r.scenario} | {r.ops_per_publication:.2f} | {top_ops(every, r.publications)} "
            f"| {shards} |"
        )
    return "\n".join(rows)


def burst_table(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | burst | publications/s | deliveries/s | node CPU per delivery, µs "
        "| Redis CPU per publication, µs | per Redis (shard): commands/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        if not r.burst_wall_s:
            continue
        redis_us = f"{1e6 * r.burst_redis_cpu_s / r.burst:.0f}" if r.burst_ops else "-"
        shards = " / ".join(
            f"{sum(ops.values()) / r.burst_wall_s:,.0f}".replace(",", " ") for ops in r.burst_ops
        )
        rows.append(
            f"| {r.scenario} | {r.burst} | {r.publications_per_s:,.0f} "
            f"| {r.burst_deliveries_per_s:,.0f} | {r.cpu_per_delivery_us:.2f} | {redis_us} "
            f"| {shards or '-'} |".replace(",", " ")
        )
    return "\n".join(rows)


def load_warnings(results: Sequence[Result]) -> list[str]:
    return [
        f"Warning, {r.scenario}: other processes used {r.other_load_pct:.0f}% of a core during "
        "the publications: these figures are skewed; run again on a quiet machine."
        for r in results
        if r.other_load_pct >= OTHER_LOAD_WARNING
    ]


LEGEND = """\
Times are from writing POST /api/publish on node 0 to: its answer (API answer), the median
and the last delivery over all subscribers (t_50, t_last), the last delivery on each node.
deliveries/s: subscribers / median t_last. vs redis-1: deliveries/s over redis-1's.
CPU per publication: /proc/<pid>/stat (10 ms ticks) from the POST to the last delivery plus
a {gap:g} ms pause, summed over the publications and divided by their number. CPU during
delivery: % of one core from the POST to the last delivery (a * on deliveries/s: the
generator was >= {bound:.0f}% busy, so it may be the limit).
Redis commands: INFO commandstats of each Redis (each shard) before and after the
measured publications, per publication; this includes the nodes' background work
(occupancy and presence refreshes, health checks) in that time.
Burst: publications sent back to back over {connections} API connections to node 0;
publications/s from the first POST to the last delivery of the last publication,
deliveries/s that times the subscribers; node CPU per delivery: the nodes' CPU in the
burst over its deliveries."""


def machine_line(loop: str, generator_loop: str) -> str:
    uvloop_version = ""
    with contextlib.suppress(metadata.PackageNotFoundError):
        uvloop_version = f" {metadata.version('uvloop')}"
    redis_version = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
        found = re.search(r"v=(\S+)", out)
        redis_version = found[1] if found else "?"
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"nodes on {loop}{uvloop_version if loop == 'uvloop' else ''}, generator on "
        f"{generator_loop}; compiled speedups {'on' if speedups.ACTIVE else 'off'}; "
        f"redis-server {redis_version}"
    )


def report(
    args: argparse.Namespace,
    results: list[Result],
    checks: list[ShardCheck],
    refreshes: list[RefreshCost],
    placement: str,
    generator_loop: str,
) -> None:
    machine = machine_line(args.loop, generator_loop)
    print(machine)
    print(
        f"{args.subscribers} subscribers of {CHANNEL} (no history, no presence), "
        f"{args.publications} publications of {{'n': i}} one at a time after {args.warmup} "
        f"warm-up, by POST /api/publish on node 0; {placement}"
    )
    print()
    print(timing_table(results))
    print()
    print(cpu_table(results))
    print()
    if any(r.redis_ops for r in results):
        print(redis_table(results))
        print()
    if any(r.burst_wall_s for r in results):
        print(burst_table(results))
        print()
    # Clamped: 10 ms ticks read at slightly different times can make it a little negative.
    others = ", ".join(f"{r.scenario} {max(0.0, r.other_load_pct):.0f}%" for r in results)
    pings = ", ".join(f"{r.scenario} {r.pings}" for r in results)
    print(f"Other processes' CPU during the publications, % of a core: {others}")
    print(f"Pings answered during the publications: {pings}")
    for line in load_warnings(results):
        print(line)
    print()
    print(LEGEND.format(gap=GAP * 1e3, bound=CLIENT_BOUND * 100, connections=BURST_CONNECTIONS))
    if checks:
        print()
        print(
            f"Shard check: {args.shard_check} publications (history {SHARD_HISTORY_SIZE}) "
            f"over {SHARD_CHANNELS} channels, {SHARD_INFLIGHT} in flight, by a RedisBroker in "
            "this process; model: the commands per publication measured on one Redis, times "
            "the publications of the channels whose slot each shard owns."
        )
        print()
        print(shard_table(checks))
    if refreshes:
        print()
        print(
            f"What a node's periodic refreshes cost one Redis: {REFRESH_CHANNELS} channels "
            f"held, each with one presence entry, refreshed {REFRESH_ROUNDS} times "
            "(occupancy every 5 s, presence every presence_ttl / 3)."
        )
        print()
        print(refresh_table(refreshes))
    if args.json:
        data = {
            "machine": machine,
            "options": {
                "subscribers": args.subscribers,
                "publications": args.publications,
                "warmup": args.warmup,
                "burst": args.burst,
                "placement": placement,
                "gap_s": GAP,
            },
            "results": [r.to_json() for r in results],
            "refreshes": [
                {**asdict(r), "per_item_us": r.per_item_us, "node_per_item_us": r.node_per_item_us}
                for r in refreshes
            ],
            "shard_checks": [
                {**asdict(c), "commands_per_publication": c.commands_per_publication}
                for c in checks
            ],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")


# --- driver --------------------------------------------------------------------------------


async def driver_main(
    args: argparse.Namespace,
) -> tuple[list[Result], list[ShardCheck], list[RefreshCost], str]:
    """Run each scenario in turn; the results, and where the processes ran."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    generator_cpu: int | None = None
    # Every child gets its CPUs explicitly: without that it would inherit the generator's.
    server_cpus: set[int] | None = set(allowed) or None
    if len(allowed) >= 2 and not args.no_pin:
        generator_cpu = allowed[-1]
        if args.pin_servers:
            server_cpus = {allowed[0]}
    if generator_cpu is None:
        placement = "no process pinned"
    elif not args.pin_servers:
        placement = f"generator pinned to CPU {generator_cpu}, nodes and Redis unpinned"
    else:
        placement = (
            f"generator pinned to CPU {generator_cpu}, nodes and Redis all on CPU {allowed[0]}"
        )
    pin(generator_cpu)
    # SIGTERM stops the run as Ctrl-C does: through the finally blocks that stop every
    # child (which would otherwise only get SIGTERM from the kernel, see _child_setup).
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    results: list[Result] = []
    checks: list[ShardCheck] = []
    refreshes: list[RefreshCost] = []
    scenarios = [SCENARIOS[name] for name in args.scenarios]
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        folder = Path(tmp)
        single: list[Redis] = []
        shards: dict[int, list[Redis]] = {}
        try:
            if any(s.redis and not s.shards for s in scenarios):
                single.append(await Redis.start(folder, server_cpus, args.timeout))
            for scenario in scenarios:
                servers: list[Redis] = []
                if scenario.shards:
                    if scenario.shards not in shards:
                        shards[scenario.shards] = await start_shards(
                            folder, scenario.shards, server_cpus, args.timeout
                        )
                    servers = shards[scenario.shards]
                elif scenario.redis:
                    servers = single
                results.append(await run_scenario(scenario, args, folder, servers, server_cpus))
            if args.shard_check:
                note(f"shard check: {args.shard_check} publications over {SHARD_CHANNELS} channels")
                if not single:
                    single.append(await Redis.start(folder, server_cpus, args.timeout))
                checks.append(
                    await shard_check("one Redis", single[0].url, single, args.shard_check)
                )
                checks.append(
                    await shard_check(
                        "one Redis (no history)",
                        single[0].url,
                        single,
                        args.shard_check,
                        kept=False,
                    )
                )
                refreshes.extend(await refresh_costs(single[0]))
                for count, group in sorted(shards.items()):
                    checks.append(
                        await shard_check(
                            f"cluster-{count}", cluster_url(group), group, args.shard_check
                        )
                    )
        finally:
            every = single + [redis for group in shards.values() for redis in group]
            await asyncio.gather(*(redis.stop() for redis in every))
    return results, checks, refreshes, placement


def check_open_files(subscribers: int) -> None:
    """This process holds one socket per subscriber: fail now rather than at socket N."""
    raise_open_files()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and subscribers + SPARE_FDS > soft:
        raise BenchError(
            f"{subscribers} subscribers need {subscribers + SPARE_FDS} files; the limit is {soft}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=None, help="in all (default 2000)")
    parser.add_argument("--publications", type=int, default=None, help="measured (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up publications (2)")
    parser.add_argument(
        "--burst", type=int, default=None, help="publications sent back to back (default 50)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="1000 subscribers, 5 publications, a burst of 30"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument(
        "--shard-check",
        type=int,
        default=None,
        metavar="K",
        help="publications of the shard check, on one Redis and on each cluster of the "
        "scenarios (default 3000; 0: none)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per phase (60)")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default {','.join(DEFAULT_SCENARIOS)})",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the generator")
    parser.add_argument(
        "--pin-servers", action="store_true", help="nodes and Redis all on the first CPU"
    )
    args = parser.parse_args(argv)
    if args.subscribers is None:
        # Small enough that every scenario, the shard check and the refresh costs take
        # under two minutes in all on two cores.
        args.subscribers = 1000 if args.quick else 2000
    if args.publications is None:
        args.publications = 5 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.burst is None:
        args.burst = 30 if args.quick else 50
    if args.shard_check is None:
        args.shard_check = 1000 if args.quick else 3000
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: one or more of {', '.join(SCENARIOS)}")
    if (
        args.subscribers < 2
        or args.publications < 1
        or args.warmup < 0
        or args.burst < 0
        or args.timeout <= 0
    ):
        parser.error(
            "--subscribers >= 2, --publications >= 1, --warmup >= 0, --burst >= 0, --timeout > 0"
        )
    if any(SCENARIOS[name].redis for name in args.scenarios) and not Path(REDIS_SERVER).exists():
        parser.error(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    if any(SCENARIOS[name].shards for name in args.scenarios) and not Path(REDIS_CLI).exists():
        parser.error(f"{REDIS_CLI} is not installed (apt-get install redis-tools)")
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
        args.loop = "uvloop"
        generator_loop = f"uvloop {metadata.version('uvloop')}"
    except ImportError:
        factory, args.loop, generator_loop = None, "asyncio", "asyncio"
    try:
        # Raised here, so that the nodes inherit the limit: each holds its share of sockets.
        check_open_files(args.subscribers)
        with asyncio.Runner(loop_factory=factory) as runner:
            results, checks, refreshes, placement = runner.run(driver_main(args))
        report(args, results, checks, refreshes, placement, generator_loop)
        code = 0
    except (BenchError, OSError) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("cluster: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
