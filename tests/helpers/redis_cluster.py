"""Real Redis topologies for tests, from Debian's ``redis-server`` and ``redis-cli``:

    with RedisCluster(tmp_path) as cluster:       # 3 masters + 3 replicas on loopback
        url = cluster.url                         # redis+cluster://127.0.0.1:P1,.../
        cluster.kill_master_of("key")             # SIGKILL; returns once a replica took over

    with RedisSentinels(tmp_path) as setup:       # a master, a replica, three sentinels
        url = setup.url                           # redis+sentinel://127.0.0.1:S1,.../mymaster
        setup.kill_master()                       # SIGKILL; returns once promoted

Failover is made fast (``cluster-node-timeout`` and ``down-after-milliseconds`` low) and
waited for by asking Redis (``CLUSTER INFO``, ``SENTINEL get-master-addr-by-name``),
never by sleeping for a guessed time. Everything runs in temporary folders, on free
ports, and is killed on exit.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from helpers.redis_server import REDIS_SERVER, _free_port

REDIS_CLI = str(Path(REDIS_SERVER).with_name("redis-cli"))
#: Bounds against a hang, not waits: each loop asks Redis and stops as soon as it can.
START_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 30.0
#: Milliseconds before a silent master counts as down (cluster and sentinel).
NODE_TIMEOUT_MS = 1000


def _command(port: int, *args: str) -> str:
    """One command through redis-cli, its reply as text ("" when it could not connect)."""
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def _wait_until(what: str, ready: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _answers(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=1) as sock,
    ):
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")
    return False


class _Processes:
    """redis-server processes, each in its own folder, killed on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str, sentinel: bool = False) -> None:
        home = self.folder / str(port)
        home.mkdir(exist_ok=True)
        common = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(home)]
        common += ["--daemonize", "no", "--loglevel", "warning"]
        if sentinel:
            config = home / "sentinel.conf"
            config.write_text("\n".join(args) + "\n")
            command = [REDIS_SERVER, str(config), "--sentinel", *common]
        else:
            command = [REDIS_SERVER, *common, "--save", "", "--appendonly", "no", *args]
            # A replica's first sync starts at once, not after the default 5 s wait for
            # more replicas: a master killed before its replica synced loses its data.
            command += ["--repl-diskless-sync-delay", "0"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        self.processes[port] = process

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited")
            return _answers(port)

        _wait_until(f"redis-server on {port}", up, START_TIMEOUT)

    def kill(self, port: int) -> None:
        process = self.processes.pop(port)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()


class RedisCluster:
    """Three masters and three replicas (``redis-cli --cluster create
    --cluster-replicas 1``)."""

    def __init__(self, folder: Path, *, masters: int = 3) -> None:
        self._servers = _Processes(folder)
        self.ports = [_cluster_port() for _ in range(masters * 2)]
        self.masters = masters

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{port}" for port in self.ports[: self.masters])
        return f"redis+cluster://{seeds}/"

    def __enter__(self) -> Self:
        try:
            for port in self.ports:
                self._servers.start(
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A replica whose master died takes over however long it was apart.
                    "--cluster-replica-validity-factor",
                    "0",
                )
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [
                    REDIS_CLI,
                    "--cluster",
                    "create",
                    *nodes,
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                capture_output=True,
                timeout=60,
                check=True,
            )
            _wait_until("the cluster", self._settled, START_TIMEOUT)
        except BaseException:
            self._servers.stop_all()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._servers.stop_all()

    def _info(self, port: int) -> dict[str, str]:
        lines = _command(port, "CLUSTER", "INFO").splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def _roles(self, port: int) -> dict[int, str]:
        """Port -> "master" / "slave" of the live nodes, as ``port`` sees them."""
        roles: dict[int, str] = {}
        for line in _command(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if len(fields) < 3 or "fail" in fields[2]:
                continue
            node_port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
            roles[node_port] = "master" if "master" in fields[2] else "slave"
        return roles

    def _settled(self) -> bool:
        """Every live node sees the cluster ok, with ``masters`` live masters and its
        replicas all replicating."""
        for port in self._servers.processes:
            info = self._info(port)
            if info.get("cluster_state") != "ok":
                return False
            roles = self._roles(port)
            live = {p: r for p, r in roles.items() if p in self._servers.processes}
            if list(live.values()).count("master") != self.masters:
                return False
            replication = _command(port, "INFO", "replication")
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False  # a replica still loading its master's data
        return True

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot."""
        port = next(iter(self._servers.processes))
        slot = int(_command(port, "CLUSTER", "KEYSLOT", key))
        for entry in _slots(port):
            start, end, master = entry
            if start <= slot <= end:
                return master
        raise RuntimeError(f"no master owns slot {slot}")

    def kill_master_of(self, key: str) -> int:
        """SIGKILL the master owning ``key``; return once its replica took over and
        every live node sees the cluster ok again. Returns the killed port."""
        port = self.sigkill_master_of(key)
        self.wait_taken_over(port)
        return port

    def sigkill_master_of(self, key: str) -> int:
        """SIGKILL the master owning ``key`` and reap it; return at once (the failover
        is still to come: :meth:`wait_taken_over`). Returns the killed port."""
        port = self.master_of(key)
        self._servers.kill(port)
        return port

    def wait_taken_over(self, dead: int) -> None:
        """Return once a replica took over from ``dead`` and every live node sees the
        cluster ok again."""
        _wait_until("a replica taking over", self._taken_over(dead), FAILOVER_TIMEOUT)

    def move_slot_of(self, key: str) -> tuple[int, int]:
        """Move ``key``'s slot, with its keys, to another master, as a resharding does
        (CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE); return once every
        node names the new owner. Returns (old master, new master) ports."""
        source = self.master_of(key)
        port = next(iter(self._servers.processes))
        slot = _command(port, "CLUSTER", "KEYSLOT", key)
        target = next(m for _, _, m in _slots(port) if m != source)
        source_id = _command(source, "CLUSTER", "MYID")
        target_id = _command(target, "CLUSTER", "MYID")
        _command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        _command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        for _ in range(1000):  # bounded: a slot holds few keys in a test
            keys = _command(source, "CLUSTER", "GETKEYSINSLOT", slot, "100").split()
            if not keys:
                break
            _command(source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys)
        for node in (target, source, *self._servers.processes):
            _command(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

        def moved() -> bool:
            return all(
                any(start <= int(slot) <= end and m == target for start, end, m in _slots(p))
                for p in self._servers.processes
            )

        _wait_until("the slot moving", moved, FAILOVER_TIMEOUT)
        return source, target

    def _taken_over(self, dead: int) -> object:
        def check() -> bool:
            for port in self._servers.processes:
                if self._info(port).get("cluster_state") != "ok":
                    return False
                if any(master == dead for _, _, master in _slots(port)):
                    return False
            return True

        return check


def _cluster_port() -> int:
    """A free port of at most 55535 whose cluster bus port (10000 higher) is free too."""
    for _ in range(200):
        port = _free_port()
        if port <= 55535:
            with contextlib.suppress(OSError), socket.socket() as sock:
                sock.bind(("127.0.0.1", port + 10000))
                return port
    raise RuntimeError("no free port for a cluster node")


def _slots(port: int) -> list[tuple[int, int, int]]:
    """(first slot, last slot, master port) from ``CLUSTER SLOTS`` (redis-cli's raw
    output: start, end, then ip, port, id of the master and of each replica)."""
    done = subprocess.run(
        [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), "--json", "CLUSTER", "SLOTS"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    ranges: list[tuple[int, int, int]] = []
    with contextlib.suppress(ValueError):
        for entry in json.loads(done.stdout or "[]"):
            ranges.append((int(entry[0]), int(entry[1]), int(entry[2][1])))
    return ranges


class RedisSentinels:
    """A master, one replica and three sentinels watching them as ``mymaster``
    (quorum 2), every process ``redis-server`` (sentinels with ``--sentinel``)."""

    NAME = "mymaster"

    def __init__(self, folder: Path) -> None:
        self._servers = _Processes(folder)
        self.master = _free_port()
        self.replica = _free_port()
        self.sentinels = [_free_port() for _ in range(3)]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{seeds}/{self.NAME}"

    def __enter__(self) -> Self:
        try:
            self._servers.start(self.master)
            self._servers.start(self.replica, "--replicaof", "127.0.0.1", str(self.master))
            _wait_until("the replica", self._replicating, START_TIMEOUT)
            for port in self.sentinels:
                self._servers.start(
                    port,
                    f"sentinel monitor {self.NAME} 127.0.0.1 {self.master} 2",
                    f"sentinel down-after-milliseconds {self.NAME} {NODE_TIMEOUT_MS}",
                    f"sentinel failover-timeout {self.NAME} 10000",
                    f"sentinel parallel-syncs {self.NAME} 1",
                    sentinel=True,
                )
            _wait_until("the sentinels", self._watched, START_TIMEOUT)
        except BaseException:
            self._servers.stop_all()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._servers.stop_all()

    def _replicating(self) -> bool:
        return "master_link_status:up" in _command(self.replica, "INFO", "replication")

    def _watched(self) -> bool:
        """Every sentinel knows the replica and the two other sentinels."""
        for port in self.sentinels:
            info = _command(port, "SENTINEL", "MASTER", self.NAME).splitlines()
            fields = dict(zip(info[::2], info[1::2], strict=False))
            if fields.get("num-slaves") != "1" or fields.get("num-other-sentinels") != "2":
                return False
        return True

    def master_address(self) -> int:
        """The master's port, as the first live sentinel says."""
        reply = _command(self.sentinels[0], "SENTINEL", "get-master-addr-by-name", self.NAME)
        return int(reply.splitlines()[1])

    def kill_master(self) -> int:
        """SIGKILL the master; return once every sentinel names the replica as master and
        it answers as one. Returns the killed port."""
        dead = self.sigkill_master()
        self.wait_promoted(dead)
        return dead

    def sigkill_master(self) -> int:
        """SIGKILL the master and reap it; return at once (the failover is still to
        come: :meth:`wait_promoted`). Returns the killed port."""
        self._servers.kill(self.master)
        return self.master

    def wait_promoted(self, dead: int) -> None:
        """Return once every sentinel names the replica as master (in ``dead``'s place)
        and it answers as one."""
        assert dead == self.master, "wait for the master that was killed"

        def promoted() -> bool:
            for port in self.sentinels:
                reply = _command(port, "SENTINEL", "get-master-addr-by-name", self.NAME)
                if reply.splitlines()[1:] != [str(self.replica)]:
                    return False
            return "role:master" in _command(self.replica, "INFO", "replication")

        _wait_until("the sentinels promoting the replica", promoted, FAILOVER_TIMEOUT)
        self.master, self.replica = self.replica, dead
