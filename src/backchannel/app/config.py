"""The standalone server's configuration: a TOML file, overridden by environment variables.

Sections and keys are documented in docs/config.md. Every scalar setting ``[section] key``
can be overridden by the environment variable ``BACKCHANNEL_SECTION_KEY`` (for example
``BACKCHANNEL_SERVER_PORT=9000``, ``BACKCHANNEL_API_KEY=...``); channel namespaces are
set in the file only. Unknown sections and keys are refused, so a typo is an error
rather than a setting silently ignored.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..exceptions import InvalidArgument
from ..hub import ChannelOptions, HubOptions

__all__ = [
    "ApiConfig",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "LongPollConfig",
    "ServerConfig",
    "load_config",
]


@dataclass(slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    #: PEM certificate chain and key: serve https:// and wss://.
    tls_cert: str = ""
    tls_key: str = ""
    #: Accept WebSocket upgrades at ``/ws``. False leaves long polling only (what a
    #: client behind a proxy that strips upgrades sees).
    websocket: bool = True
    #: Origins allowed for WebSocket and, with CORS, for long polling; empty: any origin
    #: for WebSocket, same-origin only for long polling. "*" allows every origin.
    origins: list[str] = field(default_factory=list)
    #: New connections (WebSocket upgrades and long-poll opens) per second per client
    #: address, with bursts of ``open_burst``: one address cannot flood the hub with
    #: sessions. 429 past it.
    open_rate: float = 20.0
    open_burst: int = 100
    #: Addresses of your reverse proxies. For a request from one of them, the client's
    #: address (what rate limits count by) is the last X-Forwarded-For entry that is not
    #: a proxy; otherwise every client would share the proxy's bucket.
    trusted_proxies: list[str] = field(default_factory=list)
    #: Largest body of an HTTP request (API, long-poll send): 1 MiB. 413 past it.
    max_body_size: int = 2**20
    #: Serve the demo chat page at ``/`` and ``POST /demo/token``, which gives anyone a
    #: token for any user name: for trying backchannel out, never for production.
    demo: bool = True


@dataclass(slots=True)
class AuthConfig:
    #: HS256 secret of connection tokens. Empty: a random one per process (tokens from
    #: ``backchannel token`` then cannot work; the demo's still do).
    secret: str = ""
    #: PEM file of an RS256 public key, to accept tokens signed by your own backend.
    public_key_file: str = ""
    #: Let clients connect without a token (user "").
    anonymous: bool = False


@dataclass(slots=True)
class ApiConfig:
    #: The HTTP API's key (``Authorization: apikey KEY``). Empty: a random one per
    #: process, printed at start.
    key: str = ""
    #: Requests per second per client address, bursts of ``burst``: 429 past it.
    rate: float = 200.0
    burst: int = 400


@dataclass(slots=True)
class BrokerConfig:
    #: Redis URL (``redis://``, ``rediss://`` for TLS, ``redis://:password@host:6379/0``):
    #: several nodes then act as one hub. Empty: the in-memory broker (one process).
    url: str = ""
    #: Prefix of every key and pub/sub channel: deployments sharing one Redis stay apart.
    prefix: str = "backchannel"


@dataclass(slots=True)
class LongPollConfig:
    poll_timeout: float = 25.0
    idle_timeout: float = 60.0


def _demo_namespaces() -> dict[str, ChannelOptions]:
    """The channels the demo chat uses: rooms with history and presence, and typing
    notices that are not kept."""
    return {
        "chat": ChannelOptions(
            history_size=100, history_ttl=3600.0, presence=True, join_leave=True
        ),
        "typing": ChannelOptions(),
        "orders": ChannelOptions(history_size=20, history_ttl=600.0, publish="server"),
    }


@dataclass(slots=True)
class Config:
    """The whole configuration of ``backchannel serve``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    longpoll: LongPollConfig = field(default_factory=LongPollConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    #: HubOptions' limits, by field name (``[hub]`` in the file).
    hub: dict[str, Any] = field(default_factory=dict)
    #: Channel namespaces (``[channels.NAME]``); ``[channels.default]`` is for names
    #: without a namespace. A file that has ``[channels]`` replaces the demo's.
    channels: dict[str, ChannelOptions] = field(default_factory=_demo_namespaces)

    def hub_options(self) -> HubOptions:
        namespaces = dict(self.channels)
        # No [channels.default]: names without a namespace are refused (102) when
        # namespaces are configured (HubOptions.channel).
        default = namespaces.pop("default", None)
        return HubOptions(
            namespaces=namespaces,
            default=default,
            anonymous=self.auth.anonymous,
            **self.hub,
        )


_SECTIONS = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "api": ApiConfig,
    "longpoll": LongPollConfig,
    "broker": BrokerConfig,
}
_HUB_FIELDS = {
    f.name: f.type
    for f in dataclasses.fields(HubOptions)
    if f.name not in ("namespaces", "default", "anonymous")
}
_CHANNEL_FIELDS = {f.name for f in dataclasses.fields(ChannelOptions)}


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The configuration from a TOML file (or the defaults), then the environment."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as file:
                data = tomllib.load(file)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read config {path}: {exc}") from exc
        _apply_file(config, data, str(path))
    _apply_environ(config, environ if environ is not None else {})
    # Built here so that a bad [hub] or [channels] value is reported at start.
    config.hub_options()
    return config


def _apply_file(config: Config, data: dict[str, Any], where: str) -> None:
    for section, values in data.items():
        if not isinstance(values, dict):
            raise InvalidArgument(f"{where}: {section} must be a table")
        if section in _SECTIONS:
            target = getattr(config, section)
            for key, value in values.items():
                _set(target, key, value, f"{where}: [{section}] {key}")
        elif section == "hub":
            for key, value in values.items():
                if key not in _HUB_FIELDS:
                    raise InvalidArgument(f"{where}: [hub] has no setting {key!r}")
                config.hub[key] = value
        elif section == "channels":
            config.channels = {}
            for name, options in values.items():
                if not isinstance(options, dict):
                    raise InvalidArgument(f"{where}: [channels.{name}] must be a table")
                unknown = set(options) - _CHANNEL_FIELDS
                if unknown:
                    raise InvalidArgument(
                        f"{where}: [channels.{name}] has no setting {sorted(unknown)[0]!r}"
                    )
                try:
                    config.channels[name] = ChannelOptions(**options)
                except (TypeError, InvalidArgument) as exc:
                    raise InvalidArgument(f"{where}: [channels.{name}]: {exc}") from exc
        else:
            raise InvalidArgument(f"{where}: unknown section [{section}]")


def _apply_environ(config: Config, environ: Mapping[str, str]) -> None:
    for section in _SECTIONS:
        target = getattr(config, section)
        for f in dataclasses.fields(target):
            name = f"BACKCHANNEL_{section}_{f.name}".upper()
            if name in environ:
                _set(target, f.name, _parse(environ[name], getattr(target, f.name), name), name)
    for key in _HUB_FIELDS:
        name = f"BACKCHANNEL_HUB_{key}".upper()
        if name in environ:
            default = getattr(HubOptions(), key)
            config.hub[key] = _parse(environ[name], default, name)


def _parse(text: str, like: Any, where: str) -> Any:
    """An environment variable's text as the type of the setting's default."""
    try:
        if isinstance(like, bool):
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if isinstance(like, int):
            return int(text)
        if isinstance(like, float):
            return float(text)
        if isinstance(like, list):
            return [item.strip() for item in text.split(",") if item.strip()]
        return text
    except ValueError as exc:
        raise InvalidArgument(f"{where}: cannot read {text!r} as {type(like).__name__}") from exc


def _set(target: Any, key: str, value: Any, where: str) -> None:
    if key not in {f.name for f in dataclasses.fields(target)}:
        raise InvalidArgument(f"{where}: no such setting")
    like = getattr(target, key)
    if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    valid = isinstance(value, type(like)) and (
        isinstance(like, bool) or not isinstance(value, bool)
    )
    if isinstance(like, list):
        valid = isinstance(value, list) and all(isinstance(item, str) for item in value)
    if not valid:
        raise InvalidArgument(f"{where}: expected {type(like).__name__}, got {value!r}")
    setattr(target, key, value)
