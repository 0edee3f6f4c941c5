"""A real redis-server per test module, and a key prefix per test, for the tests of the
Redis broker's modules."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from helpers.redis_server import RedisServer, require_redis

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    # Each test has keys of its own in the shared server.
    return f"m{next(_prefixes)}"
