"""The RedisServer helper: a test talks to its own redis-server, even when the port it
picked was taken (by another test run's redis-server) before its server bound it."""

from __future__ import annotations

from pathlib import Path

import redis

from helpers.redis_server import RedisServer, require_redis


def test_a_port_taken_before_the_server_binds_it_is_replaced_by_a_free_one(
    tmp_path: Path,
) -> None:
    require_redis()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with RedisServer(tmp_path / "a") as other:
        mine = RedisServer(tmp_path / "b")
        mine.port = other.port  # as if the other run had picked the same port first
        with mine:
            assert mine.port != other.port
            assert mine.process is not None and other.process is not None
            for server in (mine, other):
                client = redis.Redis(port=server.port)
                try:
                    assert client.info("server")["process_id"] == server.process.pid
                finally:
                    client.close()
            port = mine.port
            mine.restart()  # a restart keeps its port: its clients know it
            assert mine.port == port
