"""Which Redis errors mean "Redis cannot be reached now", and turning them into
:class:`~backchannel.exceptions.BrokerUnavailable` (clients get the temporary error 116)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from redis.exceptions import ClusterDownError, ReadOnlyError, SlotNotCoveredError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ....exceptions import BrokerUnavailable
from ..calls import BrokerCalls

__all__ = ["DOWN", "reachable"]

#: Redis errors that mean "not reachable now" rather than a bug: besides a broken or
#: slow connection, a cluster whose slot has no master yet (failover under way) or
#: that asks to try again (a slot moving), and a server that is a replica now (a
#: Sentinel failover the client has not followed yet). None of them ran the command.
DOWN = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    SlotNotCoveredError,
    TryAgainError,
    ReadOnlyError,
)


class reachable(contextlib.AbstractAsyncContextManager[None]):
    """One round trip to Redis, named ``operation``: recorded in ``calls`` (count, error,
    latency), and "Redis cannot be reached" turned into BrokerUnavailable."""

    __slots__ = ("_calls", "_operation", "_started")

    def __init__(self, calls: BrokerCalls, operation: str) -> None:
        self._calls = calls
        self._operation = operation
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._calls.record(
            self._operation, time.perf_counter() - self._started, failed=exc is not None
        )
        if exc is not None and isinstance(exc, DOWN):
            raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc
