"""The hub's wire format, version 1: JSON commands, replies and pushes (docs/protocol.md).

Sans-I/O: text in, objects out, and back. A WebSocket text message (or a long-polling
body) holds one or more JSON objects separated by newlines, so that several replies and
pushes can travel in one frame.

* A **command** from the client: ``{"id": 1, "method": "subscribe", "params": {...}}``.
* A **reply** to it: ``{"id": 1, "result": {...}}`` or
  ``{"id": 1, "error": {"code": 103, "message": "...", "temporary": false}}``.
* A **push** from the server, with no id: ``{"push": "publication", "channel": ...}``.

A text that is not JSON, or an object without a usable id and method, cannot be answered
and raises :class:`InvalidMessage` (the connection ends with 3501). A known command with
bad parameters is answered with error 107; an unknown method with error 104.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

try:  # The ``speed`` extra: a compiled JSON codec; the stdlib one is the fallback.
    import orjson
except ImportError:  # pragma: no cover - depends on the install
    orjson = None  # type: ignore[assignment]

from ..exceptions import PeerError
from . import codes
from .codes import Error

__all__ = [
    "METHODS",
    "PROTOCOL_VERSION",
    "ClientInfo",
    "Command",
    "InvalidMessage",
    "Position",
    "Publication",
    "decode_commands",
    "dumps",
    "encode",
    "encode_disconnect",
    "encode_dropped",
    "encode_error",
    "encode_join",
    "encode_leave",
    "encode_publication",
    "encode_result",
    "encode_subscribe",
    "encode_unsubscribe",
]

#: The version a client names in its connect command (``params.v``).
PROTOCOL_VERSION = 1

#: Each method and the parameters it takes: name -> (type, required).
METHODS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "connect": {
        "v": (int, False),
        "token": (str, False),
        "name": (str, False),
        "data": (object, False),
    },
    "subscribe": {
        "channel": (str, True),
        "token": (str, False),
        "recover": (bool, False),
        "epoch": (str, False),
        "offset": (int, False),
    },
    "unsubscribe": {"channel": (str, True)},
    "publish": {"channel": (str, True), "data": (object, True), "idempotency_key": (str, False)},
    "presence": {
        "channel": (str, True),
        "limit": (int, False),
        "cursor": (str, False),
        "count_only": (bool, False),
    },
    "history": {
        "channel": (str, True),
        "epoch": (str, False),
        "offset": (int, False),
        "limit": (int, False),
    },
    "rpc": {"method": (str, True), "data": (object, False)},
    "send": {"data": (object, True)},
    "ping": {},
    "refresh": {"token": (str, True)},
}

#: Commands per text frame (a batch); more is a protocol violation.
MAX_BATCH = 100

#: Nesting of arrays and objects in a command's params: deep enough for any real data,
#: shallow enough that encoding it again can never exhaust the stack.
MAX_DEPTH = 32


class InvalidMessage(PeerError):
    """A client's text that cannot be answered: not JSON, or no id or method."""


@dataclass(frozen=True, slots=True)
class Command:
    """One command from a client. ``error`` is set when it is to be answered with an
    error rather than run (unknown method, bad parameters)."""

    id: int
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    error: Error | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a channel's stream: the epoch names the stream, the offset the
    publication (the first is 1)."""

    epoch: str
    offset: int

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Position | None:
        """The position a command's ``epoch`` and ``offset`` name, if any."""
        if "epoch" not in params and "offset" not in params:
            return None
        return cls(params.get("epoch", ""), params.get("offset", 0))


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a connection is: client id (one per connection), user id, optional info."""

    client: str
    user: str
    info: Any = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"client": self.client, "user": self.user}
        if self.info is not None:
            out["info"] = self.info
        return out


@dataclass(frozen=True, slots=True)
class Publication:
    """A message in a channel; ``offset`` is 0 in channels without history."""

    channel: str
    data: Any
    offset: int = 0
    epoch: str = ""
    publisher: ClientInfo | None = None
    #: ``data`` as wire JSON, when the hub already encoded it (to check its size): the
    #: push is built around these characters instead of encoding the data again.
    encoded: str | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"channel": self.channel, "data": self.data}
        if self.offset:
            out["offset"] = self.offset
            out["epoch"] = self.epoch
        if self.publisher is not None:
            out["info"] = self.publisher.to_json()
        return out


# Compact and deterministic: equal objects give equal bytes (the vectors rely on it).
# Built once: json.dumps with any non-default option builds a new encoder on every call.
_stdlib_dumps: Callable[[Any], str] = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _stdlib_loads(text: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 section 6): refuse them here, or they
    # would be accepted now and fail when the publication is encoded for others.
    return json.loads(text, parse_constant=refuse_constant)


def _orjson_dumps(obj: Any) -> str:
    # NaN and infinities are refused before anything is encoded (check_value), where
    # orjson alone would write them as null.
    # orjson's output is compact UTF-8 with the same escapes as the stdlib's with
    # ensure_ascii=False. What it does not take (integers past 64 bits, keys that are
    # not strings) goes the stdlib way, so both codecs accept the same values.
    try:
        return orjson.dumps(obj).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _stdlib_dumps(obj)


def _orjson_loads(text: str) -> Any:
    # orjson refuses a few texts the stdlib takes (a \ud800 escape) and reads integers
    # past 64 bits as floats; the stdlib decides those (an integer past 2**64 has 20
    # digits or more), so both codecs give every text the same value.
    if _LONG_DIGITS.search(text) is not None:
        return _stdlib_loads(text)
    try:
        return orjson.loads(text)
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        return _stdlib_loads(text)


_LONG_DIGITS = re.compile(r"[0-9]{20}")


_dumps: Callable[[Any], str] = _stdlib_dumps
_loads: Callable[[str], Any] = _stdlib_loads


def use_codec(name: str) -> None:
    """Encode and decode with ``"orjson"`` or ``"stdlib"`` from now on. The default is
    orjson when it is installed (the ``speed`` extra) unless the environment variable
    ``BACKCHANNEL_JSON`` is ``stdlib``; tests run both."""
    global _dumps, _loads
    if name == "orjson":
        if orjson is None:
            raise ValueError(
                "BACKCHANNEL_JSON=orjson needs orjson (pip install backchannel[speed])"
            )
        _dumps, _loads = _orjson_dumps, _orjson_loads
    elif name == "stdlib":
        _dumps, _loads = _stdlib_dumps, _stdlib_loads
    else:
        raise ValueError(f"BACKCHANNEL_JSON must be orjson or stdlib, not {name!r}")


def codec() -> str:
    """The JSON codec in use: "orjson" or "stdlib"."""
    return "orjson" if _dumps is _orjson_dumps else "stdlib"


# Read at import; a bad value is reported by the server's configuration (app/config.py)
# as one line, so here it only leaves the default.
use_codec(
    "stdlib" if orjson is None or os.environ.get("BACKCHANNEL_JSON") == "stdlib" else "orjson"
)


def dumps(obj: Any) -> str:
    """``obj`` as compact wire JSON (UTF-8 characters unescaped)."""
    return _dumps(obj)


def decode_commands(text: str | bytes) -> list[Command]:
    """The commands in one text frame (newline-separated JSON objects)."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise InvalidMessage("commands must be UTF-8 JSON") from exc
    # Blank lines are skipped; blank means JSON whitespace only (RFC 8259 section 2).
    lines = [line for line in text.split("\n") if line.strip(" \t\r")]
    if not lines:
        raise InvalidMessage("empty message")
    if len(lines) > MAX_BATCH:
        raise InvalidMessage(f"more than {MAX_BATCH} commands in one message")
    return [_decode_command(line) for line in lines]


def _decode_command(line: str) -> Command:
    try:
        obj = _loads(line)
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("malformed JSON") from exc
    if not isinstance(obj, dict):
        raise InvalidMessage("a command is a JSON object")
    cid = obj.get("id")
    # bool is an int in Python; an id of true is not an id.
    if type(cid) is not int or cid < 1 or cid >= 2**53:
        raise InvalidMessage("a command needs an integer id from 1 to 2**53-1")
    method = obj.get("method")
    if not isinstance(method, str):
        raise InvalidMessage("a command needs a method")
    params = obj.get("params", {})
    schema = METHODS.get(method)
    if schema is None:
        error = codes.METHOD_NOT_FOUND.with_message(f"no method {method!r}")
        return Command(cid, method, {}, error)
    if not isinstance(params, dict):
        return Command(cid, method, {}, codes.BAD_REQUEST.with_message("params is an object"))
    problem = check_params(params, schema) or _check_value(params, 0)
    if problem:
        return Command(cid, method, {}, codes.BAD_REQUEST.with_message(problem))
    return Command(cid, method, params)


def check_params(
    params: Mapping[str, Any], schema: Mapping[str, tuple[type | tuple[type, ...], bool]]
) -> str:
    for name, (kind, required) in schema.items():
        if name not in params:
            if required:
                return f"missing parameter {name!r}"
            continue
        value = params[name]
        if kind is object:
            continue
        if kind is int and (type(value) is not int or value < 0):
            return f"parameter {name!r} must be a non-negative integer"
        if kind is not int and not isinstance(value, kind):
            return f"parameter {name!r} must be of type {kind.__name__}"  # type: ignore[union-attr]
    for name in params:
        if name not in schema:
            return f"unknown parameter {name!r}"
    return ""


def check_value(value: Any) -> str:
    """Why a value could not be sent as wire JSON (NaN, a lone surrogate, nested deeper
    than MAX_DEPTH), or "" when it can."""
    return _check_value(value, 0)


def refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_value(value: Any, depth: int) -> str:
    """Why a decoded value could not be sent on as JSON in UTF-8, or ""."""
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} deep"
    if isinstance(value, str):
        # A \ud800 escape decodes to a lone surrogate, which has no UTF-8 form.
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return "a string holds a lone UTF-16 surrogate"
        return ""
    if isinstance(value, float):
        # 1e400 is valid JSON, but a float infinity that cannot be encoded again.
        return "" if math.isfinite(value) else "a number is out of range"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _check_value(key, depth + 1) or _check_value(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = _check_value(item, depth + 1)
            if problem:
                return problem
    return ""


def encode(objects: list[str]) -> str:
    """Join encoded replies and pushes into one frame."""
    return "\n".join(objects)


def encode_result(cid: int, result: Mapping[str, Any] | None = None) -> str:
    return _dumps({"id": cid, "result": dict(result or {})})


def encode_error(cid: int, error: Error) -> str:
    return _dumps(
        {
            "id": cid,
            "error": {"code": error.code, "message": error.message, "temporary": error.temporary},
        }
    )


def encode_publication(publication: Publication) -> str:
    """The push every subscriber gets, built around the publication's encoded data (the
    same characters as encoding the whole object: key order push, channel, data,
    offset, epoch, info)."""
    data = publication.encoded
    if data is None:
        data = _dumps(publication.data)
    parts = ['{"push":"publication","channel":', _dumps(publication.channel), ',"data":', data]
    if publication.offset:
        parts += [',"offset":', str(publication.offset), ',"epoch":', _dumps(publication.epoch)]
    if publication.publisher is not None:
        parts += [',"info":', _dumps(publication.publisher.to_json())]
    parts.append("}")
    return "".join(parts)


def encode_join(channel: str, who: ClientInfo) -> str:
    return _dumps({"push": "join", "channel": channel, "info": who.to_json()})


def encode_leave(channel: str, who: ClientInfo) -> str:
    return _dumps({"push": "leave", "channel": channel, "info": who.to_json()})


def encode_subscribe(channel: str, position: Mapping[str, Any]) -> str:
    """The server subscribed this client: ``position`` is the subscribe result's epoch
    and offset (empty for a channel without history)."""
    return _dumps({"push": "subscribe", "channel": channel, **position})


def encode_unsubscribe(channel: str, error: Error) -> str:
    return _dumps(
        {"push": "unsubscribe", "channel": channel, "code": error.code, "reason": error.message}
    )


def encode_disconnect(disconnect: codes.Disconnect) -> str:
    return _dumps(
        {
            "push": "disconnect",
            "code": disconnect.code,
            "reason": disconnect.reason,
            "reconnect": disconnect.reconnect,
        }
    )


def encode_dropped(channel: str, position: Position | None) -> str:
    """Publications of ``channel`` up to ``position`` (the last one dropped) were not
    sent to this client, whose outbox was full (the ``drop`` slow-consumer policy): it
    reads them from history. No position in a channel without history."""
    out: dict[str, Any] = {"push": "dropped", "channel": channel}
    if position is not None:
        out["epoch"] = position.epoch
        out["offset"] = position.offset
    return _dumps(out)
