"""Which Redis errors mean "Redis cannot be reached now", and turning them into
:class:`~backchannel.exceptions.BrokerUnavailable` (clients get the temporary error 116)."""

from __future__ import annotations

import contextlib
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ....exceptions import BrokerUnavailable

__all__ = ["DOWN", "reachable"]

#: Redis errors that mean "not reachable now" rather than a bug.
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


class reachable(contextlib.AbstractAsyncContextManager[None]):
    """Turn "Redis cannot be reached" into BrokerUnavailable."""

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None and isinstance(exc, DOWN):
            raise BrokerUnavailable(f"Redis is unreachable: {exc}") from exc
