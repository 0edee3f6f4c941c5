"""How the Redis broker writes values into Redis and reads them back.

Everything is compact JSON. A publication is stored and carried as
``["p", offset, epoch, data, publisher]`` (offset 0 and epoch ``""`` when it is not in a
stream); the Lua scripts of :mod:`.history` build that text themselves, so that the
bytes delivered by pub/sub are the bytes kept in history.
"""

from __future__ import annotations

import json
from typing import Any

from ...wire import ClientInfo, Publication

__all__ = ["client_info", "dumps", "publication", "text"]


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def client_info(obj: dict[str, Any]) -> ClientInfo:
    return ClientInfo(obj["client"], obj["user"], obj.get("info"))


def publication(channel: str, message: Any) -> Publication:
    """A publication from its stored form: ``["p", offset, epoch, data, publisher]``."""
    _, offset, epoch, data, info = json.loads(message)
    return Publication(channel, data, offset, epoch, None if info is None else client_info(info))
