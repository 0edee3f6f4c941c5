"""For the tests of the Redis broker's modules: a real redis-server per test module, a
real Redis Cluster shared by the cluster tests, and a key prefix per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from helpers.redis_cluster import RedisCluster
from helpers.redis_server import RedisServer, require_redis

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Six redis-server processes (three masters, three replicas), shared by the cluster
    tests of this folder; tests that kill a master make a cluster of their own."""
    require_redis()
    with RedisCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    # Each test has keys of its own in the shared server.
    return f"m{next(_prefixes)}"
