"""Cluster tests' helpers: ``backchannel serve`` nodes as processes on one Redis, a
steady publisher through the HTTP API, and a test client that reconnects and recovers
as a real one does (docs/howto/cluster.md, "When a node dies").

    cluster = Cluster(tmp_path, redis.url)
    nodes = await cluster.start(3)                 # three processes, one Redis
    balancer = Balancer([node.port for node in nodes])
    client = cluster.track(Subscriber("alice", "feed:1", balancer))
    client.start()
    ...
    await cluster.close()                          # clients closed, nodes killed

Every wait has a deadline; node output goes to files in the test's folder, and the tail
of each node's stderr is printed when the cluster closes (pytest shows it on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from backchannel.asyncio import ClientConnection, connect
from backchannel.exceptions import BackchannelError, ConnectionClosed
from backchannel.hub.token import make_token
from helpers.http import Http, Reply

SECRET = "cluster-test-secret-of-at-least-32-bytes"
API_KEY = "cluster-test-api-key"
AUTH = [("Authorization", f"apikey {API_KEY}")]

#: Seconds a node (or a worker parent) has to print its banner.
START_TIMEOUT = 20.0
#: Seconds a node has to exit after SIGTERM (it closes every client first).
STOP_TIMEOUT = 20.0
#: Seconds a client has for connect and subscribe on a fresh connection.
HANDSHAKE_TIMEOUT = 10.0

#: ``backchannel on http://127.0.0.1:PORT/ (what)``: a node's first line, or
#: ``(N workers)`` from the parent of ``--workers``.
BANNER = re.compile(r"^backchannel on http://127\.0\.0\.1:(\d+)/ \((.+)\)$", re.MULTILINE)
NODE_BANNER = "hub at /ws, /sse and /lp"


def node_env(redis_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of a node: this one without BACKCHANNEL_* settings (only what the
    test gives counts) nor PYTHONUNBUFFERED (output is buffered as in production, so a
    line the server does not flush is not seen), plus the cluster's shared secrets."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BACKCHANNEL_") and name != "PYTHONUNBUFFERED"
    }
    env.update(
        BACKCHANNEL_AUTH_SECRET=SECRET,
        BACKCHANNEL_API_KEY=API_KEY,
        BACKCHANNEL_SERVER_DEMO="false",
        # Hundreds of test clients come from one address, at once; a cluster behind a
        # load balancer sees them from many.
        BACKCHANNEL_SERVER_OPEN_BURST="2000",
    )
    if redis_url is not None:
        env.update(BACKCHANNEL_BROKER_URL=redis_url, BACKCHANNEL_BROKER_PREFIX=prefix)
    env.update(extra)
    return env


def token(user: str) -> str:
    return make_token(SECRET, user, ttl=3600)


class Node:
    """One ``backchannel serve`` process; its stdout and stderr go to files."""

    def __init__(self, folder: Path, name: str, args: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.stdout_path = folder / f"{name}.out"
        self.stderr_path = folder / f"{name}.err"
        command = [sys.executable, "-m", "backchannel", "serve", "--host", "127.0.0.1"]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            # A session (process group) of its own: killing the group takes the workers
            # of ``--workers`` with their parent.
            self.process = subprocess.Popen(
                [*command, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        self.port = 0

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def banners(self, what: str) -> list[int]:
        """The ports of the banner lines printed so far that end with ``(what)``."""
        return [int(m.group(1)) for m in BANNER.finditer(self.output()) if m.group(2) == what]

    async def ready(self, what: str = NODE_BANNER, count: int = 1) -> int:
        """Wait for ``count`` banner lines ``(what)``; the port they name."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ports = self.banners(what)
            if len(ports) >= count:
                assert len(set(ports)) == 1, ports
                self.port = ports[0]
                return self.port
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.returncode}) before printing "
                    f"'({what})':\n{self.output()}\n{self.errors()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} printed no '({what})' banner within {START_TIMEOUT} s; "
                    f"stdout so far: {self.output()!r}\nstderr: {self.errors()}"
                )
            await asyncio.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    async def exited(self, seconds: float = STOP_TIMEOUT) -> int:
        """Wait (in a thread) for the process to end; its exit status. TimeoutError after
        ``seconds``."""
        try:
            return await asyncio.to_thread(self.process.wait, seconds)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{self.name} still runs after {seconds} s") from exc

    async def kill(self) -> None:
        """SIGKILL to the node's process group: it dies at once, as on a crashed machine
        (with ``--workers``, the workers too)."""
        if self.running:  # not reaped yet: the group id is still this node's
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.exited()

    async def stop(self) -> int:
        """SIGTERM, and the exit status once it has stopped."""
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        return await self.exited()


class Closable(Protocol):
    async def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


class Cluster:
    """Nodes on one Redis with a prefix of their own, and the clients to close at the end."""

    def __init__(self, folder: Path, redis_url: str | None, *, config: str | None = None) -> None:
        self.folder = folder
        self.redis_url = redis_url
        self.prefix = f"cluster-{secrets.token_hex(4)}"
        self.config: Path | None = None
        if config is not None:
            self.config = folder / "backchannel.toml"
            self.config.write_text(config)
        self.nodes: list[Node] = []
        self.clients: list[Closable] = []

    def env(self, **extra: str) -> dict[str, str]:
        return node_env(self.redis_url, self.prefix, **extra)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> Node:
        """Start ``backchannel serve --host 127.0.0.1 ARGS`` (``--port 0`` unless given)."""
        if "--port" not in args:
            args = ("--port", "0", *args)
        if self.config is not None and "--config" not in args:
            args = (*args, "--config", str(self.config))
        node = Node(self.folder, f"node{len(self.nodes)}", args, env or self.env())
        self.nodes.append(node)
        return node

    async def start(self, count: int) -> list[Node]:
        """``count`` nodes, started together; returns once each listens."""
        nodes = [self.spawn() for _ in range(count)]
        for node in nodes:
            await node.ready()
        return nodes

    def track(self, client: C) -> C:
        self.clients.append(client)
        return client

    async def close(self) -> None:
        """Close the clients (while their nodes still answer), then kill what runs."""
        clients, self.clients = self.clients, []
        try:
            async with asyncio.timeout(30):
                await asyncio.gather(
                    *(client.close() for client in clients), return_exceptions=True
                )
        finally:
            for node in self.nodes:
                with contextlib.suppress(TimeoutError):
                    await node.kill()
            for node in self.nodes:
                tail = node.errors()[-3000:]
                if tail:
                    print(f"--- {node.name} stderr (last 3000 characters) ---\n{tail}")


async def api(port: int, method: str, params: Any) -> Reply:
    """``POST /api/<method>`` on a connection of its own."""
    http = await Http.open(port)
    try:
        return await http.exchange("POST", f"/api/{method}", json.dumps(params), AUTH)
    finally:
        await http.close()


async def healthz(port: int) -> dict[str, Any]:
    """``GET /healthz`` on a new connection (with ``--workers``, any worker may take it)."""
    http = await Http.open(port)
    try:
        reply = await http.exchange("GET", "/healthz")
        assert reply.status == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer
    finally:
        await http.close()


class Publisher:
    """Publishes numbered messages ``{"n": i}`` through ``POST /api/publish`` on one node,
    one every ``interval`` seconds (a steady rate: late ones do not bunch up), and
    records which were accepted (200, with their offset) and which were refused (503
    with the temporary error 116: not published, says docs/api.md)."""

    def __init__(self, port: int, channel: str, *, interval: float = 0.02) -> None:
        self.port = port
        self.channel = channel
        self.interval = interval
        self.sent = 0
        #: (offset, data) of each accepted publication, in the order of the answers.
        self.accepted: list[tuple[int, Any]] = []
        self.refused: list[Any] = []
        self._stop = False
        self.finished = False
        self._progress = asyncio.Condition()

    def stop(self) -> None:
        """Send no more (the one under way finishes)."""
        self._stop = True

    async def run(self, count: int) -> None:
        """Up to ``count`` messages (fewer after :meth:`stop`)."""
        http = await Http.open(self.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for n in range(count):
                if self._stop:
                    break
                await asyncio.sleep(max(0.0, start + n * self.interval - loop.time()))
                data = {"n": n}
                body = json.dumps({"channel": self.channel, "data": data})
                reply = await http.exchange("POST", "/api/publish", body, AUTH)
                if reply.status == 200:
                    self.accepted.append((reply.json()["offset"], data))
                elif reply.status == 503 and reply.json()["error"]["code"] == 116:
                    self.refused.append(data)
                else:
                    raise AssertionError(f"publish {n}: {reply.status} {reply.text}")
                async with self._progress:
                    self.sent += 1
                    self._progress.notify_all()
        finally:
            async with self._progress:
                self.finished = True
                self._progress.notify_all()
            await http.close()

    async def wait(self, predicate: Callable[[Publisher], bool]) -> None:
        """Until ``predicate(self)`` holds (checked after each answer); AssertionError if
        the publisher ends first. No deadline of its own: wrap it in one."""
        async with self._progress:
            await self._progress.wait_for(lambda: predicate(self) or self.finished)
        if not predicate(self):
            raise AssertionError(
                f"the publisher ended first: {self.sent} sent, {len(self.accepted)} "
                f"accepted, {len(self.refused)} refused"
            )


class Balancer:
    """Round robin over the nodes' ports, as a load balancer without health checks: a
    client that reaches a dead node (connection refused) tries again with the next."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self._next = 0

    def pick(self) -> int:
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        return port


class Subscriber:
    """A hub client subscribed to one channel (with history) that reconnects as a real
    client does: when its connection ends it waits a jittered, growing backoff, connects
    to the next node the balancer gives, sends connect, then subscribe with ``recover``,
    ``epoch`` and ``offset`` of the last publication it got; it takes the publications of
    the reply, then live pushes, skipping offsets it already has.

    What it got is in ``received`` ((offset, data), in order, each once); anything that
    should not happen (a gap in offsets, another epoch, ``recovered: false``, a refusal
    that is not temporary, a push it does not expect) is in ``problems``.
    """

    #: Backoff bounds (seconds): full jitter, doubling after each failed attempt.
    BACKOFF_MIN = 0.1
    BACKOFF_MAX = 2.0

    def __init__(
        self, user: str, channel: str, balancer: Balancer, *, port: int | None = None
    ) -> None:
        self.user = user
        self.channel = channel
        self.balancer = balancer
        self.token = token(user)
        self._first_port = port
        #: The (epoch, offset) of the last publication applied (or the stream's top at the
        #: first subscribe).
        self.position: tuple[str, int] | None = None
        self.received: list[tuple[int, Any]] = []
        #: When each of ``received`` arrived (time.monotonic()).
        self.arrivals: list[float] = []
        #: Publications that came in subscribe replies (recovered after a reconnect).
        self.recovered = 0
        #: Publications received again (an offset already applied) and skipped.
        self.skipped = 0
        self.problems: list[str] = []
        #: The node (port) of each successful subscribe, and when (time.monotonic()).
        self.subscriptions: list[tuple[int, float]] = []
        #: Close codes of the connections that ended, and why attempts failed.
        self.close_codes: list[int | None] = []
        self.failed_attempts: list[str] = []
        self.given_up = False
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # Driving it.

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def port(self) -> int | None:
        """The node of the current (or last) subscription."""
        return self.subscriptions[-1][0] if self.subscriptions else None

    async def wait_subscribed(self, count: int = 1) -> None:
        """Until the ``count``-th successful subscribe; no deadline of its own."""
        await self._wait(lambda: len(self.subscriptions) >= count)

    async def wait_offset(self, offset: int) -> None:
        """Until the last publication applied has ``offset`` or more; no deadline of its
        own."""
        await self._wait(lambda: self.position is not None and self.position[1] >= offset)

    async def _wait(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self.given_up or (self._task is not None and self._task.done()):
                raise AssertionError(f"{self.user} stopped: {self.problems}")
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ws is not None:  # cancelled before its connection was set up
            await self._ws.close()

    # The client.

    async def _run(self) -> None:
        port = self._first_port if self._first_port is not None else self.balancer.pick()
        attempt = 0
        while not self.given_up:
            if await self._connection(port):
                attempt = 0
            else:
                attempt += 1
            self._changed.set()
            if self.given_up:
                return
            # Full jitter: the clients of a node that died do not all come back at once.
            bound = min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2**attempt)
            await asyncio.sleep(random.uniform(0, bound))
            port = self.balancer.pick()

    async def _connection(self, port: int) -> bool:
        """One connection, until it ends; whether it got subscribed."""
        try:
            ws = await connect(
                f"ws://127.0.0.1:{port}/ws",
                proxy=None,
                compression=None,
                ping_interval=None,
                open_timeout=HANDSHAKE_TIMEOUT,
                close_timeout=2,
                max_queue=1024,
            )
        except (OSError, BackchannelError, TimeoutError) as exc:
            self.failed_attempts.append(f"{port}: {exc!r}")
            return False
        self._ws = ws
        subscribed = False
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                reply = await self._call(ws, 1, "connect", token=self.token)
                if "result" in reply:
                    params: dict[str, Any] = {"channel": self.channel}
                    if self.position is not None:
                        epoch, offset = self.position
                        params.update(recover=True, epoch=epoch, offset=offset)
                    reply = await self._call(ws, 2, "subscribe", **params)
            if "error" in reply:
                error = reply["error"]
                self.failed_attempts.append(f"{port}: error {error}")
                if not error["temporary"]:
                    self.problems.append(f"refused on {port}: {error}")
                    self.given_up = True
                return False
            self._subscribed(port, reply["result"])
            subscribed = True
            async for message in ws:
                assert isinstance(message, str)
                for line in message.split("\n"):
                    self._push(json.loads(line))
        except ConnectionClosed:
            pass
        except TimeoutError:
            self.failed_attempts.append(f"{port}: no answer within {HANDSHAKE_TIMEOUT} s")
        finally:
            self._ws = None
            await ws.close()
            self.close_codes.append(ws.close_code)
        return subscribed

    async def _call(self, ws: ClientConnection, id: int, method: str, **params: Any) -> Any:
        """Send a command; read until its reply, handling pushes meanwhile."""
        await ws.send(json.dumps({"id": id, "method": method, "params": params}))
        while True:
            message = await ws.recv()
            assert isinstance(message, str)
            for line in message.split("\n"):
                obj = json.loads(line)
                if obj.get("id") == id:
                    return obj
                self._push(obj)

    def _subscribed(self, port: int, result: dict[str, Any]) -> None:
        top = (result["epoch"], result["offset"])
        if self.position is None:
            self.position = top
        else:
            if result.get("recovered") is not True:
                self.problems.append(f"not recovered on {port} from {self.position}: {result}")
            for publication in result.get("publications", []):
                self._apply(publication)
                self.recovered += 1
            if self.position != top:
                self.problems.append(f"recovered up to {self.position}, the stream is at {top}")
        self.subscriptions.append((port, time.monotonic()))
        self._changed.set()

    def _push(self, push: dict[str, Any]) -> None:
        kind = push.get("push")
        if kind == "publication" and push["channel"] == self.channel:
            self._apply(push)
        elif kind == "disconnect":
            if not push["reconnect"]:
                self.problems.append(f"disconnected for good: {push}")
                self.given_up = True
        elif kind not in ("join", "leave"):
            self.problems.append(f"unexpected: {push}")

    def _apply(self, publication: dict[str, Any]) -> None:
        assert self.position is not None
        epoch, offset = self.position
        if publication["epoch"] != epoch:
            self.problems.append(f"epoch {publication['epoch']} after {epoch}")
        elif publication["offset"] <= offset:
            self.skipped += 1
            return
        elif publication["offset"] != offset + 1:
            self.problems.append(f"gap: offset {publication['offset']} after {offset}")
        self.received.append((publication["offset"], publication["data"]))
        self.arrivals.append(time.monotonic())
        self.position = (publication["epoch"], publication["offset"])
        self._changed.set()
