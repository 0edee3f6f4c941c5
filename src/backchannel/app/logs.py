"""The server's logs: a level, text or JSON lines, and an access log (docs/operations.md,
"Logs").

Everything backchannel logs goes through the ``backchannel`` logger and its children:
``backchannel.access`` (one line per HTTP request, WebSocket upgrade, session connect
and disconnect), ``backchannel.hub``, ``backchannel.app``, ``backchannel.alerts``... The
command line sets them up with :func:`configure`; an application that embeds the server
configures logging its own way and gets the same records.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

from ..hub import Hooks
from ..hub.codes import Disconnect
from ..hub.session import Session

__all__ = ["FORMATS", "LEVELS", "AccessLog", "JsonFormatter", "configure"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

#: The logger of the access log.
access = logging.getLogger("backchannel.access")

# The attributes every LogRecord has: what is not one of them was given as ``extra``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``message``, the fields given as ``extra``, and ``error`` (the exception, on one
    line) when there is one. For log collectors that parse lines."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Log backchannel's records at ``level`` and above to ``stream`` (standard error),
    as text or JSON lines. Replaces what an earlier call set up."""
    if level not in LEVELS:
        raise ValueError(f"log level: one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format: one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("backchannel")
    root = logging.getLogger("backchannel")
    for old in [h for h in root.handlers if h.get_name() == "backchannel"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Our records are handled here; the root logger's handlers would print them twice.
    root.propagate = False


def request(address: str, method: str, path: str, status: int, size: int, seconds: float) -> None:
    """One line for an HTTP request (or a WebSocket upgrade, status 101)."""
    if access.isEnabledFor(logging.INFO):
        access.info(
            "%s %s %s %d %d %.1fms",
            address,
            method,
            path,
            status,
            size,
            seconds * 1000,
            extra={
                "address": address,
                "method": method,
                "path": path,
                "status": status,
                "bytes": size,
                "ms": round(seconds * 1000, 1),
            },
        )


class AccessLog(Hooks):
    """Observers that log each session's connect and disconnect (with its code) in the
    access log. Given as one of ``Hub(observers=...)``: it runs after the events, in the
    hooks' task, never on a session's path."""

    async def on_connect(self, session: Session) -> None:
        access.info(
            "connect %s user=%s transport=%s",
            session.client,
            session.user,
            session.transport_name,
            extra={
                "event": "connect",
                "client": session.client,
                "user": session.user,
                "transport": session.transport_name,
            },
        )

    async def on_disconnect(self, session: Session, disconnect: Disconnect | None) -> None:
        # None: the client left, or its connection was lost (no code of the server's).
        code = disconnect.code if disconnect is not None else None
        reason = disconnect.reason if disconnect is not None else "client left"
        access.info(
            "disconnect %s user=%s code=%s reason=%s",
            session.client,
            session.user,
            code,
            reason,
            extra={
                "event": "disconnect",
                "client": session.client,
                "user": session.user,
                "code": code,
                "reason": reason,
            },
        )
